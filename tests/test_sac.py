"""SAC: its pure pieces (the losses against hand computations, one actor step
in the right direction), the agent contract (traces, seeds, sweeps), bad
input, fast learning on one-step probes (discrete and continuous), the brax
inverted_pendulum preset, and (marked slow) learning on Pendulum-v1,
CartPole-v1 and brax inverted_pendulum."""
import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import sac
from envs.core import Box
from envs.probes import ProbeEnv
from envs.rewards import scaled_reward
from envs.wrappers import ClipAction, EpisodeStats, FlattenObservation
from src import config as cfg
from src.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 envs x 4 steps per iteration, 2 gradient steps per iteration, 8 iterations
TINY = sac.SACConfig(env="Pendulum-v1", total_steps=64, num_envs=2, num_steps=4, updates_per_step=0.25,
                     buffer_size=64, sgd_batch_size=16, learning_starts=16, hidden=(16, 16), eval_episodes=2)
SHORT_EPISODE = 10   # Pendulum truncated after 10 steps, so episodes finish within the tiny run


def tiny_agent(config=TINY, **kwargs):
    env, params = envs.make(config.env)
    if config.env == "Pendulum-v1":
        params = params.replace(max_steps_in_episode=SHORT_EPISODE)
    return sac.make(config, env, params, **kwargs)


def leaves_close(a, b, rtol=1e-4, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- pure pieces

def test_polyak_update_matches_hand_computation():
    target = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(-4.0)}
    online = {"w": jnp.array([3.0, -2.0]), "b": jnp.array(6.0)}
    out = sac.polyak_update(target, online, jnp.float32(0.1))
    np.testing.assert_allclose(out["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 0.9 * -4 + 0.1 * 6, rtol=1e-6)
    leaves_close(sac.polyak_update(target, online, 1.0), online, rtol=0, atol=0)


def test_temperature_loss_sign_and_fixed_point():
    grad = jax.grad(sac.temperature_loss)
    log_alpha = jnp.float32(0.3)
    # entropy below the target: the gradient is negative, so descent raises alpha
    assert grad(log_alpha, jnp.float32(-2.0), jnp.float32(-1.0)) < 0
    # entropy above the target: alpha falls
    assert grad(log_alpha, jnp.float32(0.5), jnp.float32(-1.0)) > 0
    # at the target: no gradient at all
    assert grad(log_alpha, jnp.float32(-1.0), jnp.float32(-1.0)) == 0
    # the entropy is a fixed input: no gradient flows into the policy through it
    assert jax.grad(sac.temperature_loss, argnums=1)(log_alpha, jnp.float32(-2.0), jnp.float32(-1.0)) == 0
    # the value: log(alpha) * (entropy - target)
    np.testing.assert_allclose(sac.temperature_loss(log_alpha, jnp.float32(-2.0), jnp.float32(-1.0)),
                               0.3 * (-2.0 - -1.0), rtol=1e-6)


def test_squashed_log_prob_is_the_change_of_variables():
    mean = jnp.array([[0.3, -1.0], [2.0, 0.0]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -1.0]])
    key = jax.random.PRNGKey(3)
    action, logp = sac.squashed_sample(key, mean, log_std)
    assert action.shape == (2, 2) and bool(jnp.all(jnp.abs(action) < 1))
    u = jnp.arctanh(action)
    expected = jnp.sum(jax.scipy.stats.norm.logpdf(u, mean, jnp.exp(log_std)) - jnp.log(1 - action**2), axis=-1)
    np.testing.assert_allclose(logp, expected, rtol=1e-4, atol=1e-4)
    # the sum runs over the action's own (last) axis, whatever the batch shape:
    # one unbatched action, and a [2, 1, 2] batch
    for shape in ((2,), (2, 1, 2)):
        m, s = jnp.broadcast_to(mean[0], shape), jnp.broadcast_to(log_std[0], shape)
        action, logp = sac.squashed_sample(key, m, s)
        u = jnp.arctanh(action)
        expected = jnp.sum(jax.scipy.stats.norm.logpdf(u, m, jnp.exp(s)) - jnp.log(1 - action**2), axis=-1)
        assert logp.shape == shape[:-1]
        np.testing.assert_allclose(logp, expected, rtol=1e-4, atol=1e-4)
    # far into the tails tanh saturates; the stable form stays finite
    _, logp = sac.squashed_sample(key, jnp.full((1, 2), 30.0), jnp.zeros((1, 2)))
    assert bool(jnp.isfinite(logp).all())


def test_squashed_density_integrates_to_one():
    """The density squashed_sample reports at its own samples, integrated over
    them (sorted: a dense random grid on (-1, 1)), is a probability density;
    without the tanh Jacobian (or with it the wrong way round) it is not."""
    n = 200_000
    action, logp = sac.squashed_sample(jax.random.PRNGKey(0), jnp.full((n, 1), 0.4), jnp.full((n, 1), math.log(0.7)))
    order = np.argsort(np.asarray(action[:, 0]))
    a, density = np.asarray(action[order, 0], np.float64), np.exp(np.asarray(logp[order], np.float64))
    assert abs(np.trapezoid(density, a) - 1.0) < 1e-2


# Hand computations of the losses on a tiny batch (B = 3 states, |A| = 3 actions),
# in numpy and plain loops, independent of the module's own helpers. The twin
# critics disagree in both directions, so min and max of the two differ.
ALPHA = 0.3
GAMMA = 0.9
LOGITS = np.array([[0.2, -1.0, 0.5], [1.5, 0.0, -0.3], [-0.7, 0.4, 0.1]], np.float32)
TWIN_Q = np.array([[[1.0, -2.0, 0.5], [3.0, 0.2, -1.0], [0.0, 1.0, 2.0]],
                   [[0.4, -1.0, 1.5], [2.0, 0.9, -0.5], [0.3, -1.0, 2.5]]], np.float32)   # [2, B, |A|]
REWARD = np.array([1.0, -0.5, 2.0], np.float32)
TERMINATED = np.array([0.0, 1.0, 0.0], np.float32)


def np_log_softmax(logits):
    out = np.zeros_like(logits, dtype=np.float64)
    for b, row in enumerate(logits):
        total = sum(math.exp(x) for x in row)
        out[b] = [x - math.log(total) for x in row]
    return out


def np_soft_value_discrete(logits, twin_q, alpha):
    logp = np_log_softmax(logits)
    values = []
    for b in range(logits.shape[0]):
        values.append(sum(math.exp(logp[b, a]) * (min(twin_q[0, b, a], twin_q[1, b, a]) - alpha * logp[b, a])
                          for a in range(logits.shape[1])))
    return np.array(values)


def test_soft_value_discrete_is_the_expectation_of_the_twin_minimum():
    got = sac.soft_value_discrete(jax.nn.log_softmax(LOGITS), jnp.asarray(TWIN_Q), ALPHA)
    want = np_soft_value_discrete(LOGITS, TWIN_Q, ALPHA)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the expectation is over the last (action) axis for any batch shape: one state, and the batch as [3, 1]
    one = sac.soft_value_discrete(jax.nn.log_softmax(LOGITS[0]), jnp.asarray(TWIN_Q[:, 0]), ALPHA)
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-6)
    column = sac.soft_value_discrete(jax.nn.log_softmax(LOGITS[:, None]), jnp.asarray(TWIN_Q[:, :, None]), ALPHA)
    np.testing.assert_allclose(column[:, 0], want, rtol=1e-5, atol=1e-6)


def test_soft_value_continuous_is_the_twin_minimum_less_alpha_logp():
    twin_q = np.array([[1.0, -2.0, 0.5], [0.4, -1.0, 1.5]], np.float32)   # [2, B] at sampled actions
    logp = np.array([-0.5, 1.2, 0.3], np.float32)
    want = [min(twin_q[0, b], twin_q[1, b]) - ALPHA * logp[b] for b in range(3)]
    np.testing.assert_allclose(sac.soft_value_continuous(jnp.asarray(twin_q), jnp.asarray(logp), ALPHA), want,
                               rtol=1e-6)


def test_soft_q_target_bootstraps_unless_terminated():
    next_v = np.array([10.0, 10.0, -4.0], np.float32)
    got = sac.soft_q_target(jnp.asarray(REWARD), jnp.asarray(TERMINATED), GAMMA, jnp.asarray(next_v))
    # state 1 terminated: its target is the reward alone
    np.testing.assert_allclose(got, [1.0 + 0.9 * 10.0, -0.5, 2.0 + 0.9 * -4.0], rtol=1e-6)


def test_discrete_critic_target_and_loss_by_hand():
    """The discrete critic loss, from the helpers in the order make() calls them:
    the target bootstraps from the target critics' soft value, and each online
    critic is regressed on it at the action taken."""
    next_logits = LOGITS[::-1].copy()
    online_q = TWIN_Q + np.float32(0.25) * np.arange(9, dtype=np.float32).reshape(3, 3)
    action = np.array([2, 0, 1])
    next_v = sac.soft_value_discrete(jax.nn.log_softmax(next_logits), jnp.asarray(TWIN_Q), ALPHA)
    target = sac.soft_q_target(jnp.asarray(REWARD), jnp.asarray(TERMINATED), GAMMA, next_v)
    q = sac.q_of_actions(jnp.asarray(online_q), jnp.asarray(action))
    loss = sac.critic_loss_of(q, target)

    v = np_soft_value_discrete(next_logits, TWIN_Q, ALPHA)
    want_target = [REWARD[b] + (GAMMA * v[b] if not TERMINATED[b] else 0.0) for b in range(3)]
    want_q = [[online_q[i, b, action[b]] for b in range(3)] for i in range(2)]
    want_loss = sum(0.5 * sum((want_q[i][b] - want_target[b]) ** 2 for b in range(3)) / 3 for i in range(2))
    np.testing.assert_allclose(target, want_target, rtol=1e-5)
    np.testing.assert_allclose(q, want_q, rtol=1e-6)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)


def test_continuous_critic_loss_by_hand():
    q = np.array([[0.5, 2.0, -1.0], [1.5, 0.0, -2.0]], np.float32)
    target = np.array([1.0, 1.0, -1.5], np.float32)
    want = 0.5 * ((0.5**2 + 1.0**2 + 0.5**2) / 3 + (0.5**2 + 1.0**2 + 0.5**2) / 3)
    np.testing.assert_allclose(sac.critic_loss_of(jnp.asarray(q), jnp.asarray(target)), want, rtol=1e-6)


def test_discrete_actor_loss_by_hand():
    logp = np_log_softmax(LOGITS)
    want_loss = np.mean([sum(math.exp(logp[b, a]) * (ALPHA * logp[b, a] - min(TWIN_Q[0, b, a], TWIN_Q[1, b, a]))
                             for a in range(3)) for b in range(3)])
    want_ent = np.mean([-sum(math.exp(logp[b, a]) * logp[b, a] for a in range(3)) for b in range(3)])
    loss, ent = sac.actor_loss_discrete(jax.nn.log_softmax(LOGITS), jnp.asarray(TWIN_Q), ALPHA)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-5)
    # the sums run over the action (last) axis: one state alone gives that state's term
    one, one_ent = sac.actor_loss_discrete(jax.nn.log_softmax(LOGITS[1]), jnp.asarray(TWIN_Q[:, 1]), ALPHA)
    np.testing.assert_allclose(one, sum(math.exp(logp[1, a]) * (ALPHA * logp[1, a] - min(TWIN_Q[0, 1, a], TWIN_Q[1, 1, a]))
                                        for a in range(3)), rtol=1e-5)
    np.testing.assert_allclose(one_ent, -sum(math.exp(logp[1, a]) * logp[1, a] for a in range(3)), rtol=1e-5)
    # the critics are constants of the actor's loss
    grad_q = jax.grad(lambda q: sac.actor_loss_discrete(jax.nn.log_softmax(LOGITS), q, ALPHA)[0])(jnp.asarray(TWIN_Q))
    assert not np.asarray(grad_q).any()


def test_continuous_actor_loss_by_hand():
    twin_q = np.array([[1.0, -2.0, 0.5], [0.4, -1.0, 1.5]], np.float32)
    logp = np.array([-0.5, 1.2, 0.3], np.float32)
    want_loss = np.mean([ALPHA * logp[b] - min(twin_q[0, b], twin_q[1, b]) for b in range(3)])
    loss, ent = sac.actor_loss_continuous(jnp.asarray(logp), jnp.asarray(twin_q), ALPHA)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(ent, -np.mean(logp), rtol=1e-6)
    # the gradient wrt the critics' values is -1/B on the smaller of each pair:
    # descent on the actor's loss pushes the actions towards higher min-Q
    grad_q = jax.grad(lambda q: sac.actor_loss_continuous(jnp.asarray(logp), q, ALPHA)[0])(jnp.asarray(twin_q))
    np.testing.assert_allclose(grad_q, [[0, -1 / 3, -1 / 3], [-1 / 3, 0, 0]], atol=1e-7)


# One actor gradient step on a fixed batch, through the real networks and the
# reparameterised sample: it must raise the min-Q of the policy's own actions
# (alpha = 0, where the actor's loss is exactly -min-Q) and, with alpha > 0,
# lower the actor loss. Parameters are drawn in numpy and each test is one
# jitted program (op by op, flax's init and the gradients compile per primitive).

def numpy_params(module, seed, *example):
    """Parameters of `module`'s shapes, normal with 1/sqrt(fan-in) scale, from numpy."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example)
    return jax.tree.map(lambda s: (rng.normal(size=s.shape) / math.sqrt(s.shape[0])).astype(np.float32), shapes)


def _actor_step(score, loss_of, actor_params, lr):
    """[alpha 0, alpha 0.5] of (score before, score after, loss before, loss
    after) for one gradient-descent step on loss_of(actor_params, alpha)."""
    def one(alpha):
        loss, grads = jax.value_and_grad(loss_of)(actor_params, alpha)
        stepped = jax.tree.map(lambda p, g: p - lr * g, actor_params, grads)
        return score(actor_params), score(stepped), loss, loss_of(stepped, alpha)
    return np.asarray(jax.jit(jax.vmap(one))(jnp.array([0.0, 0.5]))).T


def test_continuous_actor_step_raises_min_q_of_its_actions():
    actor, critic = sac.Actor(2, False, (16, 16)), sac.TwinQ(1, (16, 16))
    obs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    actor_params = numpy_params(actor, 1, obs[0])
    critic_params = numpy_params(critic, 2, obs[0], np.zeros(2, np.float32))
    noise_key = jax.random.PRNGKey(3)   # the same reparameterisation noise before and after

    def min_q(actor_params):
        action, _ = sac.squashed_sample(noise_key, *actor.apply(actor_params, obs))
        return critic.apply(critic_params, obs, action).min(axis=0).mean()

    def loss_of(actor_params, alpha):
        action, logp = sac.squashed_sample(noise_key, *actor.apply(actor_params, obs))
        return sac.actor_loss_continuous(logp, critic.apply(critic_params, obs, action), alpha)[0]

    (q_before, q_after, loss, _), (_, _, loss_alpha, loss_alpha_after) = _actor_step(min_q, loss_of, actor_params, 0.1)
    np.testing.assert_allclose(loss, -q_before, rtol=1e-5)
    assert q_after > q_before + 1e-4, (q_before, q_after)
    assert loss_alpha_after < loss_alpha - 1e-4, (loss_alpha, loss_alpha_after)


def test_discrete_actor_step_raises_expected_min_q():
    actor = sac.Actor(3, True, (16, 16))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 4)).astype(np.float32)
    qs = rng.normal(size=(2, 64, 3)).astype(np.float32)   # the twin critics' values, fixed
    actor_params = numpy_params(actor, 1, obs[0])

    def expected_min_q(actor_params):
        return jnp.sum(jax.nn.softmax(actor.apply(actor_params, obs)) * qs.min(axis=0), axis=-1).mean()

    def loss_of(actor_params, alpha):
        return sac.actor_loss_discrete(jax.nn.log_softmax(actor.apply(actor_params, obs)), qs, alpha)[0]

    (q_before, q_after, loss, _), (_, _, loss_alpha, loss_alpha_after) = _actor_step(
        expected_min_q, loss_of, actor_params, 0.1)
    np.testing.assert_allclose(loss, -q_before, rtol=1e-5)
    assert q_after > q_before + 1e-4, (q_before, q_after)
    assert loss_alpha_after < loss_alpha - 1e-4, (loss_alpha, loss_alpha_after)


# ----------------------------------------------------------------------------- config

BAD = {
    "buffer smaller than batch": (dict(buffer_size=100, sgd_batch_size=256), "sgd_batch_size"),
    "zero envs": (dict(num_envs=0), "num_envs"),
    "fewer steps than one iteration": (dict(total_steps=10, num_envs=4, num_steps=4), "one iteration"),
    "fractional updates per iteration": (dict(num_envs=1, num_steps=2, updates_per_step=0.3), "whole number"),
    "learning never starts": (dict(total_steps=1000, learning_starts=1000), "learning_starts"),
    "tau zero": (dict(tau=0.0), "tau"),
    "negative lr": (dict(lr=-1.0), "lr"),
    "entropy scale above one": (dict(target_entropy_scale=1.5), "target_entropy_scale"),
    "target entropy not a number": (dict(target_entropy="high"), "target_entropy"),
    "buffer smaller than one step": (dict(num_envs=512, buffer_size=256, sgd_batch_size=8), "num_envs"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_config_is_refused(name):
    changes, words = BAD[name]
    with pytest.raises(ConfigError, match=words):
        dataclasses.replace(sac.SACConfig(), **changes).validate()


def test_fractional_update_ratio_is_allowed_when_whole_per_iteration():
    config = dataclasses.replace(sac.SACConfig(), num_envs=1, num_steps=4, updates_per_step=0.25).validate()
    assert config.num_updates == 1 and config.batch_size == 4


def test_target_entropy_is_refused_for_discrete_actions():
    with pytest.raises(ConfigError, match="target_entropy_scale"):
        sac.make(dataclasses.replace(TINY, env="CartPole-v1", target_entropy=-1.0))


def test_preflight_counts_replay_memory_and_refuses_too_much():
    message = sac.preflight(TINY, 8)
    per = sac.transition_bytes(3, 1)   # Pendulum: obs 3, action 1
    assert f"{per} B" in message and "8 runs" in message
    with pytest.raises(ConfigError, match="buffer_size"):
        sac.preflight(dataclasses.replace(TINY, buffer_size=10**12), 1)


@pytest.mark.parametrize("preset", ["sac_pendulum.yaml", "sac_cartpole.yaml", "sac_inverted_pendulum.yaml"])
def test_presets_build_through_run_py(preset):
    import run
    args = run.parse_args(["train", "--config", os.path.join(ROOT, "configs", preset)])
    module, config = run.build_config(args)
    assert module is sac and config.algo == "sac"
    assert config.num_iterations * config.batch_size == config.total_steps
    chunk = run.chunk_length(config)
    assert chunk >= 1 and run.experiment.stop_point(config.num_iterations, chunk, None) == config.num_iterations


# ----------------------------------------------------------------------------- the agent contract

@pytest.fixture(scope="module")
def counted():
    """The tiny agent's train, jitted, counting Python-side traces."""
    agent = tiny_agent()
    traces = []

    def train(key, hparams):
        traces.append(1)
        return agent.train(key, hparams)

    return agent, jax.jit(train), traces


def test_train_is_traced_once(counted):
    agent, train, traces = counted
    hp = sac.hparams_from(TINY)
    first = train(jax.random.PRNGKey(0), hp)
    second = train(jax.random.PRNGKey(1), hp.replace(lr=jnp.float32(1e-3), gamma=jnp.float32(0.9),
                                                      init_alpha=jnp.float32(0.2)))
    jax.block_until_ready(second)
    assert len(traces) == 1
    assert not leaves_equal(first[1], second[1])


def test_same_seed_same_numbers(counted):
    agent, train, traces = counted
    hp = sac.hparams_from(TINY)
    a = train(jax.random.PRNGKey(5), hp)
    b = train(jax.random.PRNGKey(5), hp)
    c = train(jax.random.PRNGKey(6), hp)
    assert leaves_equal(a, b)
    assert not leaves_equal(a[0].params, c[0].params)
    assert len(traces) == 1


def test_metrics_are_per_iteration_scalars(counted):
    agent, train, _ = counted
    state, metrics = train(jax.random.PRNGKey(0), sac.hparams_from(TINY))
    n = TINY.num_iterations
    for name in ("episode_return", "env_steps", "q_loss", "actor_loss", "alpha", "entropy", "q_mean"):
        assert metrics[name].shape == (n,), name
    np.testing.assert_array_equal(metrics["env_steps"], np.arange(1, n + 1) * TINY.batch_size)
    learning = np.arange(1, n + 1) * TINY.batch_size >= TINY.learning_starts
    assert np.isnan(np.asarray(metrics["q_loss"])[~learning]).all()
    assert np.isfinite(np.asarray(metrics["q_loss"])[learning]).all()
    assert np.isfinite(np.asarray(metrics["episode_return"])[-1])   # episodes of 10 steps finished
    assert int(state.iteration) == n and int(state.buffer.size) == TINY.total_steps


def test_truncation_stores_the_final_observation_without_termination(counted):
    agent, train, _ = counted
    state, _ = train(jax.random.PRNGKey(0), sac.hparams_from(TINY))
    data = jax.tree.map(np.asarray, state.buffer.data)
    # Pendulum never terminates: every transition bootstraps
    assert (data.terminated == 0).all()
    # slot = step * num_envs + env; step 9 of each env ends an episode (truncation):
    # next_obs is the real last observation, the next slot's obs a fresh reset
    envs_ = TINY.num_envs
    for env in range(envs_):
        end, after = (SHORT_EPISODE - 1) * envs_ + env, SHORT_EPISODE * envs_ + env
        assert not np.allclose(data.next_obs[end], data.obs[after])
        mid, mid_after = 3 * envs_ + env, 4 * envs_ + env
        np.testing.assert_array_equal(data.next_obs[mid], data.obs[mid_after])


def test_vmapped_sweep_equals_separate_runs(counted):
    agent, train, traces = counted
    base = sac.hparams_from(TINY)
    lrs, seeds = [3e-4, 3e-3], [0, 1]
    hps = jax.tree.map(lambda x: jnp.stack([x, x]), base).replace(
        lr=jnp.array(lrs, jnp.float32), tau=jnp.array([0.005, 0.05], jnp.float32))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.array(seeds))
    together = jax.jit(jax.vmap(agent.train))(keys, hps)
    for i in range(2):
        alone = train(keys[i], base.replace(lr=hps.lr[i], tau=hps.tau[i]))
        leaves_close(jax.tree.map(lambda x: x[i], together[1]), alone[1])
        leaves_close(jax.tree.map(lambda x: x[i], together[0].params), alone[0].params)
    assert len(traces) == 1


def test_actions_stay_in_the_box_and_evaluate_runs(counted):
    agent, train, _ = counted
    state, _ = train(jax.random.PRNGKey(0), sac.hparams_from(TINY))
    obs = jax.random.normal(jax.random.PRNGKey(1), (256, 3)) * 5
    for deterministic in (True, False):
        action = agent.act(state.params, obs, jax.random.PRNGKey(2), deterministic, state.obs_stats)
        assert action.shape == (256, 1)
        assert float(jnp.abs(action).max()) <= 2.0 and float(jnp.abs(action).max()) > 0
    returns, lengths = jax.jit(lambda ts, k: agent.evaluate(ts, k, 3))(state, jax.random.PRNGKey(0))
    assert returns.shape == (3,) and (np.asarray(lengths) == SHORT_EPISODE).all()


def test_discrete_step_with_a_reward_function():
    """CartPole through `step` (as outer loops drive it), with a parametrised
    reward: terminations cut the bootstrap and store the real last observation."""
    config = dataclasses.replace(TINY, env="CartPole-v1", num_envs=4, num_steps=48, updates_per_step=1 / 48,
                                 total_steps=192, buffer_size=192, learning_starts=0)
    agent = sac.make(config, reward_fn=scaled_reward)
    hp = sac.hparams_from(config)
    reward_params = {"scale": jnp.float32(0.0), "shift": jnp.float32(0.5)}
    state = jax.jit(agent.init)(jax.random.PRNGKey(0), hp)
    step = jax.jit(agent.step)
    for _ in range(2):
        state, metrics = step(state, hp, reward_params)
    assert set(metrics) >= {"episode_return", "env_steps", "q_loss", "alpha", "entropy"}
    assert int(metrics["env_steps"]) == 2 * config.batch_size
    assert np.isfinite(float(metrics["q_loss"])) and 0 < float(metrics["entropy"]) <= math.log(2) + 1e-6
    data = jax.tree.map(np.asarray, state.buffer.data)
    n = int(state.buffer.size)
    np.testing.assert_array_equal(data.reward[:n], 0.5)
    assert set(np.unique(data.action[:n])) <= {0, 1}
    ends = np.flatnonzero(data.terminated[:n - 4] == 1)
    assert len(ends) > 0, "random CartPole play should fail within 96 steps"
    for i in ends:   # the stored next_obs is past the failure bounds, the next obs a reset
        x, theta = data.next_obs[i, 0], data.next_obs[i, 2]
        assert abs(x) > 2.4 or abs(theta) > 12 * 2 * math.pi / 360
        assert not np.allclose(data.next_obs[i], data.obs[i + config.num_envs])


# ----------------------------------------------------------------------------- learning proxies (fast)

BANDIT_BEST = 0.5


class ContinuousBandit(ProbeEnv):
    """probe/constant with one continuous action a in [-1, 1] and reward
    1 - 4 (a - 0.5)^2: one step from obs 0, then termination. The best action
    lies inside the box, so the policy has to follow the critic's slope to it."""

    def __init__(self):
        super().__init__("constant")
        self.name = "probe/continuous_bandit"

    def _reward(self, state, action):
        return (1.0 - 4.0 * (action[0] - BANDIT_BEST) ** 2).astype(jnp.float32)

    def action_space(self, params):
        return Box(-1.0, 1.0, (1,), jnp.float32)


# 4 envs x 1 step per iteration, 4 gradient steps per iteration, 100 iterations.
# The observation is always 0, so the networks' outputs are their last biases,
# which start at 0: the initial policy picks either action with probability
# 0.5 (discrete), or has its deterministic action at 0 (continuous).
PROBE = sac.SACConfig(env="probe/action", total_steps=400, num_envs=4, num_steps=1, updates_per_step=1.0,
                      buffer_size=400, sgd_batch_size=32, learning_starts=32, hidden=(16, 16), lr=1e-2,
                      gamma=0.9)
PROBE_SEEDS = (0, 1)


def _train_seeds(agent, config, readout):
    """readout(final params) per seed, as numpy; one compiled program (train,
    then the readout) called per seed: vmapping over seeds triples SAC's
    compilation time on CPU, and reading the networks op by op costs seconds."""
    run = jax.jit(lambda key: readout(agent.train(key, sac.hparams_from(config))[0].params))
    return [jax.tree.map(np.asarray, run(jax.random.PRNGKey(seed))) for seed in PROBE_SEEDS]


OBS0 = jnp.zeros((1, 1))


@pytest.fixture(scope="module")
def action_probe():
    """Discrete SAC on probe/action (reward 1 iff action 0, one step), 2 seeds:
    the final pi(0) and the twin Q-values of both actions at the only state."""
    agent = sac.make(PROBE)

    def readout(params):
        return (jax.nn.softmax(agent.network["actor"].apply(params["actor"], OBS0))[0, 0],
                agent.network["critic"].apply(params["critic"], OBS0)[:, 0])   # [2 critics, 2 actions]
    return _train_seeds(agent, PROBE, readout)


@pytest.fixture(scope="module")
def bandit():
    """Continuous SAC on the one-step bandit above, 2 seeds: the final
    deterministic action and the twin Q-values of the best action."""
    env = EpisodeStats(ClipAction(FlattenObservation(ContinuousBandit())))
    config = dataclasses.replace(PROBE, env="probe/continuous_bandit")
    agent = sac.make(config, env, env.default_params)

    def readout(params):
        return (agent.act(params, OBS0, None, deterministic=True)[0, 0],
                agent.network["critic"].apply(params["critic"], OBS0, jnp.full((1, 1), BANDIT_BEST))[:, 0])
    return _train_seeds(agent, config, readout)


def test_discrete_sac_learns_the_action_probe(action_probe):
    """The policy moves from 0.5 to the rewarded action (a flipped actor loss
    moves it away), and both critics learn Q = (1, 0): the episode ends after
    the step, so nothing is bootstrapped (dropping the terminal mask inflates Q)."""
    for seed, (p0, q) in zip(PROBE_SEEDS, action_probe):
        print("seed", seed, "pi(0)", p0, "Q", q.tolist())
        assert p0 > 0.8, (seed, p0)
        np.testing.assert_allclose(q, [[1.0, 0.0], [1.0, 0.0]], atol=0.1, err_msg=f"seed {seed}")


def test_continuous_sac_learns_the_bandit(bandit):
    """The deterministic action moves from 0 to the best action 0.5 (a flipped
    actor loss drives it towards -1), and the critics value it at its reward,
    about 1 (no bootstrap past the termination)."""
    for seed, (action, q) in zip(PROBE_SEEDS, bandit):
        print("seed", seed, "action", action, "Q", q.tolist())
        assert abs(action - BANDIT_BEST) < 0.15, (seed, action)
        np.testing.assert_allclose(q, [1.0, 1.0], atol=0.15, err_msg=f"seed {seed}")


# ----------------------------------------------------------------------------- learning (slow)

def load_preset(name, **changes):
    values = cfg.load_yaml(os.path.join(ROOT, "configs", name))
    return dataclasses.replace(cfg.from_dict(sac.SACConfig, values), **changes).validate()


def final_returns(config, seeds, tail=0.05):
    """Per seed, the mean return of the episodes finished in the last `tail` of training."""
    agent = sac.make(config)
    hp = jax.tree.map(lambda x: jnp.broadcast_to(x, (seeds,)), sac.hparams_from(config))
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds) + config.seed)
    state, metrics = jax.jit(jax.vmap(agent.train))(keys, hp)
    done = np.asarray(metrics["episodes_finished"])
    total = np.nan_to_num(np.asarray(metrics["finished_return"])) * done
    start = int(config.num_iterations * (1 - tail))
    return total[:, start:].sum(1) / np.maximum(done[:, start:].sum(1), 1), agent, state, keys


@pytest.mark.slow
def test_pendulum_learns_within_2e4_steps():
    config = load_preset("sac_pendulum.yaml")
    assert config.total_steps <= 20_000
    returns, agent, state, keys = final_returns(config, 4)
    print("pendulum final returns per seed", returns)
    assert returns.mean() >= -200, returns


@pytest.mark.slow
def test_discrete_sac_solves_cartpole_within_1e5_steps():
    config = load_preset("sac_cartpole.yaml")
    assert config.total_steps <= 100_000
    returns, agent, state, keys = final_returns(config, config.seeds)
    print("cartpole final returns per seed", returns)
    assert returns.mean() >= 400, returns


# ----------------------------------------------------------------------------- brax inverted pendulum (issue 3)

def _one_step_linear_fit(env_name, env_kwargs, episodes=4, steps=300):
    """R^2 per observation dimension of a least-squares fit obs' ~ [obs, action, 1]
    on transitions of a noisy stabilising linear controller (episode ends dropped)."""
    env, params = envs.make(env_name, **env_kwargs)
    gains = jnp.array([0.1, 10.0, 0.0, 0.1])   # balances brax's pendulum on every backend

    def episode(key):
        obs, state = env.reset(key, params)

        def body(carry, k):
            obs, state = carry
            noise_key, step_key = jax.random.split(k)
            action = jnp.clip(obs @ gains + 0.2 * jax.random.normal(noise_key), -1.0, 1.0)[None]
            next_obs, state, _, terminated, truncated, info = env.step(step_key, state, action, params)
            return (next_obs, state), (obs, action[0], info["final_observation"], terminated | truncated)

        return jax.lax.scan(body, (obs, state), jax.random.split(key, steps))[1]

    obs, action, next_obs, done = map(np.asarray, jax.jit(jax.vmap(episode))(
        jax.random.split(jax.random.PRNGKey(0), episodes)))
    keep = ~done.reshape(-1)
    x = np.column_stack([obs.reshape(-1, obs.shape[-1]), action.reshape(-1), np.ones(action.size)])[keep]
    y = next_obs.reshape(-1, next_obs.shape[-1])[keep]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return 1.0 - (y - x @ coef).var(0) / y.var(0)


@pytest.mark.slow   # 21 s
def test_brax_inverted_pendulum_preset_observes_a_markov_state():
    """Issue 3: on brax's spring backend the observation (q, qd) of inverted_pendulum
    is not a Markov state (from (obs, action) a linear model explains only ~56% of the
    next pole velocity, ~100% once the previous observation is added), and SAC stays
    near 100 there; on the generalized backend it is about 97% and SAC reaches 1000 (benchmarks/results/sac_brax_ip.md).
    The preset must use a backend whose observations SAC can learn from."""
    config = load_preset("sac_inverted_pendulum.yaml")
    r2 = _one_step_linear_fit(config.env, config.env_kwargs)
    print("one-step linear fit R^2 per observation dimension", r2)
    assert r2.min() >= 0.9, r2


@pytest.mark.slow
def test_sac_solves_brax_inverted_pendulum_within_3e4_steps():
    config = load_preset("sac_inverted_pendulum.yaml")
    assert config.total_steps <= 30_000
    # the final policy, deterministic, 10 episodes per seed; the training episodes of the
    # last quarter are printed (once solved they mostly last 1000 steps, with occasional falls)
    returns, agent, state, keys = final_returns(config, 2, tail=0.25)
    evaluated = np.asarray(jax.jit(jax.vmap(lambda ts, k: agent.evaluate(ts, k, 10)[0]))(state, keys))
    print("brax inverted_pendulum: training returns (last quarter) per seed", returns,
          "deterministic evaluation per seed", evaluated.mean(1))
    assert evaluated.mean() >= 900, evaluated
