"""ORPO (meta/orpo.py) and the tomato gridworld (envs/tomato.py): the
discriminator's optimum against an analytic occupancy ratio, the penalties
at policy == reference, gold against proxy for scripted policies, and the
loop vmapped over beta and regulariser in one trace."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import envs
from envs import tomato
from envs.rewards import Transition
from meta import orpo
from src.config import ConfigError

# ------------------------------------------------------------ discriminator

# a synthetic (state, action) problem: 4 one-hot states x 2 actions, two known distributions
P = np.array([0.20, 0.05, 0.10, 0.15, 0.05, 0.25, 0.10, 0.10])
Q = np.array([0.10, 0.10, 0.10, 0.10, 0.20, 0.05, 0.15, 0.20])


def pair_features(index):
    return orpo.features(jax.nn.one_hot(index // 2, 4), index % 2, 2)


@jax.jit
def fit(key, p, q):
    """The discriminator trained (full batch) on 10000 samples of p (policy) and of q
    (reference): its logit on each pair, the empirical log-ratio of the
    samples (the exact optimum of the loss it minimises), and its chi2
    estimate."""
    kp, kq, init_key, train_key = jax.random.split(key, 4)
    pi, qi = (jax.random.categorical(k, jnp.log(d), shape=(10000,)) for k, d in ((kp, p), (kq, q)))
    px, qx = pair_features(pi), pair_features(qi)
    params = orpo.init_discriminator(init_key, 6, (32,))
    opt_state = orpo.discriminator_optimizer(2e-2).init(params)
    params, _, losses = orpo.train_discriminator(params, opt_state, train_key, px, qx, 300, 10000, 2e-2)  # full batch
    empirical = jnp.log(jnp.bincount(pi, length=8) / jnp.bincount(qi, length=8))
    return (orpo.discriminator_logit(params, pair_features(jnp.arange(8))), empirical,
            orpo.chi2_estimate(params, px, 5.0), losses)


def test_discriminator_optimum_is_the_occupancy_ratio():
    logits, empirical, chi2, losses = map(np.asarray, fit(jax.random.PRNGKey(0), jnp.asarray(P), jnp.asarray(Q)))
    # trained to (near) the optimum of its loss: the samples' log-ratio ...
    np.testing.assert_allclose(logits, empirical, atol=0.05)
    # ... which is log(p/q) (ratios from 1/5 to 5) up to sampling error (>= 500 samples a cell: sd <= 0.065)
    np.testing.assert_allclose(logits, np.log(P / Q), atol=0.2)
    # chi2(p || q) = sum p^2/q - 1 = E_p[p/q] - 1
    exact = np.sum(P ** 2 / Q) - 1
    assert abs(float(chi2) - exact) < 0.1 * exact
    assert losses[-100:].mean() < losses[:10].mean()


def test_chi2_penalty_is_zero_when_policy_is_reference():
    # untrained: the last layer is zero, so w = 1 exactly, every term 0
    params = orpo.init_discriminator(jax.random.PRNGKey(1), tomato.OBS_SIZE + 4)
    env, env_params = envs.make("gridworld/tomato")
    obs, _ = env.reset(jax.random.PRNGKey(0), env_params)
    tr = Transition(obs, jnp.int32(2), obs, jnp.float32(0.0), jnp.bool_(False), {"log_prob": jnp.float32(-1.3)})
    rp = {"disc": params, "ref": None}
    assert float(orpo.chi2_term(4)(rp, tr)) == 0.0 and float(orpo.om_kl_term(4)(rp, tr)) == 0.0
    same = lambda ref_params, o, a: jnp.float32(-1.3)    # noqa: E731  (pi_ref(a|s) = pi(a|s))
    assert float(orpo.action_kl_term(same)(rp, tr)) == 0.0
    reward = orpo.chi2_reward(tomato.tomato_proxy, 4)
    assert float(reward({"beta": jnp.float32(10.0), "weights": jnp.ones(1), "disc": params}, tr)) == 0.0
    # trained on two samples of one distribution: it learns the samples' ratio, 1 up to sampling
    # error, and a chi2 of ~0 (against 0.58 for the pair above)
    logits, empirical, chi2, _ = map(np.asarray, fit(jax.random.PRNGKey(2), jnp.asarray(Q), jnp.asarray(Q)))
    np.testing.assert_allclose(logits, empirical, atol=0.05)
    assert np.abs(logits).max() < 0.15 and abs(float(chi2)) < 0.01


# ------------------------------------------------------------ the tomato gridworld

FARM = [3] * 40                      # down, down into the bucket, then push into its floor
TOUR = ([0, 0, 1] + [3, 3, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0] * 4)[:40]   # round the four tomatoes


def play(actions, episodes=64, slip=0.0):
    """Mean gold and proxy return of an open-loop action sequence (one whole episode each)."""
    env, params = envs.make("gridworld/tomato")
    params = params.replace(slip=slip)
    actions = jnp.asarray(actions, jnp.int32)

    def episode(key):
        obs, state = env.reset(key, params)

        def body(carry, inputs):
            obs, state = carry
            k, a = inputs
            nobs, state, r, term, trunc, info = env.step(k, state, a, params)
            tr = Transition(obs, a, info["final_observation"], r, term, info)
            return (nobs, state), (r, tomato.tomato_proxy(None, tr), trunc, tomato.on_bucket(tr.next_obs))

        return jax.lax.scan(body, (obs, state), (jax.random.split(key, len(actions)), actions))[1]

    gold, proxy, trunc, bucket = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(0), episodes))
    assert np.asarray(trunc)[:, -1].all() and not np.asarray(trunc)[:, :-1].any()   # fixed horizon 40
    return float(gold.sum(1).mean()), float(proxy.sum(1).mean()), float(bucket.mean())


def test_tomato_farming_the_bucket_pays_proxy_not_gold():
    farm_gold, farm_proxy, farm_bucket = play(FARM)
    tour_gold, tour_proxy, tour_bucket = play(TOUR)
    # the farmer is on the bucket from its second step on: 39 steps x BUCKET_REWARD of proxy, and no tomato watered
    assert farm_bucket == pytest.approx(39 / 40) and farm_proxy == pytest.approx(39 * tomato.BUCKET_REWARD)
    assert farm_gold == 0.0
    # touring the tomatoes keeps ~2.5 of 4 watered: high gold, and the proxy agrees with gold off the bucket
    assert tour_bucket == 0.0 and tour_proxy == tour_gold and tour_gold > 18
    # so the proxy's optimum is a policy with low gold
    assert farm_proxy > 3 * tour_proxy and tour_gold > farm_gold + 18


def test_tomato_env_is_registered_and_its_bucket_is_a_dead_end():
    assert "gridworld/tomato" in envs.names()
    env, params = envs.make("gridworld/tomato")
    assert env.observation_space(params).shape == (tomato.OBS_SIZE,) and envs.action_dim(env, params) == 4
    with pytest.raises(ConfigError, match="no options"):
        envs.make("gridworld/tomato", size=3)
    # right, left and down keep the agent in the bucket; up leaves it
    assert [int(tomato.NEXT_CELL[tomato.BUCKET_CELL, a]) == tomato.BUCKET_CELL for a in range(4)] == \
        [True, False, True, True]
    assert tomato.cell_of(jax.nn.one_hot(tomato.BUCKET_CELL, tomato.OBS_SIZE)) == (2, 3)


# ------------------------------------------------------------ the loop

TINY = orpo.ORPOConfig(
    seeds=2, reference_steps=320, ppo={"num_envs": 4, "num_steps": 40, "num_minibatches": 2, "num_epochs": 1,
                                       "hidden": (8,), "lr": 1e-3},
    betas={"action_kl": (1.0,), "chi2": (0.1,)}, rounds=2, ppo_per_round=2, episodes=4, disc_steps=5,
    disc_batch=16, disc_hidden=(8,))


def test_loop_runs_vmapped_over_beta_and_regulariser_in_one_trace():
    programs = orpo.build(TINY)
    traces = []

    def counted(*args):
        traces.append(1)
        return programs.member(*args)

    optimise = jax.jit(jax.vmap(counted))
    runs = orpo.members(TINY)
    assert [(r["regulariser"], r["beta"]) for r in runs[::2]] == [("none", 0.0), ("action_kl", 1.0), ("chi2", 0.1)]
    seeds = [r["seed"] for r in runs]
    # untrained references (PPO's init) spare the test compiling PPO's training a second time
    init = jax.jit(jax.vmap(programs.ref_agent.init, in_axes=(0, None)))
    refs = orpo.take(init(jax.random.split(jax.random.PRNGKey(0), 2), orpo.ppo.hparams_from(TINY.reference_config())),
                     seeds)
    keys = jax.random.split(jax.random.PRNGKey(1), 2)[np.asarray(seeds)]
    weights = jnp.stack([orpo.weights_for(r["regulariser"]) for r in runs])
    betas = jnp.asarray([r["beta"] for r in runs], jnp.float32)

    ts, history = optimise(refs, keys, betas, weights)
    ts2, history2 = optimise(refs, keys, betas * 3.0, weights)        # another beta grid: no retrace
    assert len(traces) == 1 and optimise._cache_size() == 1
    history, history2 = jax.tree.map(np.asarray, (history, history2))
    assert history["gold"].shape == (len(runs), TINY.rounds)
    assert all(np.isfinite(v).all() for v in history.values())
    # every run of a seed evaluates against the same reference episodes
    np.testing.assert_array_equal(history["reference_gold"].reshape(3, 2, -1)[1:],
                                  np.broadcast_to(history["reference_gold"][:2], (2, 2, TINY.rounds)))
    # beta reaches the learner: penalised runs end elsewhere than the unpenalised one of their seed,
    # tripling beta moves the penalised runs, and beta = 0 stays beta = 0
    flat, flat2 = (np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(t.params)) for t in (ts, ts2))
    assert not np.allclose(flat[0], flat[2]) and not np.allclose(flat[0], flat[4])
    assert not np.allclose(flat[2:], flat2[2:])
    np.testing.assert_array_equal(flat[:2], flat2[:2])


@pytest.mark.parametrize("change, message", [
    ({"betas": {"tv": (1.0,)}}, "unknown regulariser 'tv'"),
    ({"betas": {"chi2": (0.0, 1.0)}}, "must be > 0"),
    ({"ppo": {"normalize_obs": True}}, "normalize_obs"),
    ({"proxy": "nope"}, "unknown proxy"),
    ({"betas": {}, "baseline": False}, "nothing to run"),
])
def test_bad_config_is_refused_before_compiling(change, message):
    with pytest.raises(ConfigError, match=message):
        orpo.build(dataclasses.replace(TINY, **change))
