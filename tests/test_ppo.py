import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import ppo
from envs.rewards import scaled_reward
from src import checkpoint
from src.config import ConfigError, override
from tests.helpers import TraceCounter, tree_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ppo.PPOConfig(total_steps=4 * 32 * 6, num_envs=4, num_steps=32, hidden=(32, 32))


def small_agent(**changes):
    config = dataclasses.replace(SMALL, **changes)
    return ppo.make(config), ppo.hparams_from(config)


def test_same_seed_same_numbers_and_other_seed_other_numbers():
    agent, hp = small_agent()
    train = jax.jit(agent.train)
    a = train(jax.random.PRNGKey(3), hp)
    b = train(jax.random.PRNGKey(3), hp)
    c = train(jax.random.PRNGKey(4), hp)
    assert tree_equal(a, b)
    assert not tree_equal(a[0].params, c[0].params)


def test_train_is_traced_once_across_seeds_and_hyperparameters():
    agent, hp = small_agent()
    counted = TraceCounter(agent.train)
    train = jax.jit(counted)
    train(jax.random.PRNGKey(0), hp)
    train(jax.random.PRNGKey(1), hp.replace(lr=jnp.float32(1e-3), clip_eps=jnp.float32(0.1)))
    assert counted.count == 1


def test_vmapped_sweep_equals_separate_runs():
    agent, hp = small_agent()
    lrs = jnp.array([1e-4, 3e-3], jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    swept = jax.vmap(lambda k, lr: agent.train(k, hp.replace(lr=lr)))(keys, lrs)
    for i in range(2):
        single = jax.jit(agent.train)(keys[i], hp.replace(lr=lrs[i]))
        for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(jax.tree.map(lambda v: v[i], swept))):
            np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
    # and the sweep really changed something
    assert not np.allclose(swept[1]["policy_loss"][0], swept[1]["policy_loss"][1])


def test_metrics_are_per_iteration_not_per_step():
    agent, hp = small_agent()
    _, metrics = jax.jit(agent.train)(jax.random.PRNGKey(0), hp)
    assert {"episode_return", "env_steps", "policy_loss", "value_loss", "entropy"} <= set(metrics)
    for value in metrics.values():
        assert value.shape == (SMALL.num_iterations,)
    np.testing.assert_array_equal(metrics["env_steps"], np.arange(1, 7) * 128)


def test_step_is_one_iteration_of_train():
    agent, hp = small_agent()
    key = jax.random.PRNGKey(0)
    ts = agent.init(key, hp)
    step = jax.jit(agent.step)
    for _ in range(SMALL.num_iterations):
        ts, _ = step(ts, hp)
    trained, _ = jax.jit(agent.train)(key, hp)
    for x, y in zip(jax.tree.leaves(ts.params), jax.tree.leaves(trained.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_custom_objective_is_used():
    """A zero policy objective with no entropy bonus leaves the actor untouched."""
    zero = lambda params, ratio, advantage, progress: 0.0 * ratio  # noqa: E731
    config = dataclasses.replace(SMALL, ent_coef=0.0)
    agent = ppo.make(config, objective=zero)
    hp = ppo.hparams_from(config)
    key = jax.random.PRNGKey(0)
    start = agent.init(key, hp)
    trained, _ = jax.jit(agent.train)(key, hp)
    assert tree_equal(start.params["params"]["actor"], trained.params["params"]["actor"])
    assert not tree_equal(start.params["params"]["critic"], trained.params["params"]["critic"])


def test_gradient_through_step_is_finite_when_some_gradients_are_exactly_zero():
    """Outer loops differentiate through `step`. On the gridworld most one-hot
    inputs never occur, so their first-layer gradients are exactly 0, where
    Adam's sqrt(v) has an infinite derivative unless eps_root > 0."""
    config = dataclasses.replace(SMALL, env="gridworld/barfi", num_steps=8, hidden=(8,), total_steps=4 * 8 * 2)
    agent = ppo.make(config, reward_fn=scaled_reward)
    hp = ppo.hparams_from(config)
    ts = agent.init(jax.random.PRNGKey(0), hp)

    def outcome(shift):   # the goal is rarely reached in 8 steps: a shift moves every reward
        stepped, _ = agent.step(ts, hp, {"scale": jnp.float32(1.0), "shift": shift})
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(stepped.params))

    grad = jax.jit(jax.grad(outcome))(jnp.float32(0.1))
    assert np.isfinite(float(grad)) and float(grad) != 0.0, grad


def test_continuous_actions_train():
    agent, hp = small_agent(env="Pendulum-v1", normalize_obs=True, normalize_reward=True)
    ts, metrics = jax.jit(agent.train)(jax.random.PRNGKey(0), hp)
    assert ts.params["params"]["log_std"].shape == (1,)
    assert np.isfinite(np.asarray(metrics["value_loss"])).all()
    action = agent.act(ts.params, jnp.zeros((5, 3)), jax.random.PRNGKey(1), True, ts.obs_stats)
    assert action.shape == (5, 1)


@pytest.mark.parametrize("changes, message", [
    (dict(num_minibatches=3), "divisible by num_minibatches"),
    (dict(total_steps=100), "at least num_envs\\*num_steps"),
    (dict(num_envs=0), "num_envs must be >= 1"),
    (dict(gamma=1.5), "gamma"),
    (dict(activation="gelu"), "activation"),
])
def test_impossible_configs_fail_before_compiling(changes, message):
    with pytest.raises(ConfigError, match=message):
        ppo.make(dataclasses.replace(SMALL, **changes))


def test_unknown_and_mistyped_keys_fail():
    with pytest.raises(ConfigError, match="Did you mean 'num_envs'"):
        override(SMALL, ["num_env=8"])
    with pytest.raises(ConfigError, match="expects int"):
        override(SMALL, ["num_envs=lots"])
    assert override(SMALL, ["lr=1e-3", "hidden=[8, 8]"]).hidden == (8, 8)


def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path):
    agent, hp = small_agent()
    ts = agent.init(jax.random.PRNGKey(0), hp)
    run3 = jax.jit(lambda t: agent.run(t, hp, num_iterations=3))
    half, _ = run3(ts)
    checkpoint.save(tmp_path / "ckpt", half)
    restored = checkpoint.restore(tmp_path / "ckpt", ts)
    assert tree_equal(restored, half)   # optimiser state and env state included
    assert restored.opt_state[1].count == 3 * SMALL.num_epochs * SMALL.num_minibatches
    resumed, resumed_metrics = run3(restored)
    full, full_metrics = jax.jit(lambda t: agent.run(t, hp, num_iterations=6))(ts)
    assert tree_equal(resumed, full)
    np.testing.assert_array_equal(resumed_metrics["policy_loss"], full_metrics["policy_loss"][3:])


def test_checkpoint_from_another_config_is_refused(tmp_path):
    agent, hp = small_agent()
    other, _ = small_agent(hidden=(8,))
    checkpoint.save(tmp_path / "ckpt", agent.init(jax.random.PRNGKey(0), hp))
    with pytest.raises(ConfigError, match="does not match"):
        checkpoint.restore(tmp_path / "ckpt", other.init(jax.random.PRNGKey(0), hp))


def test_reward_function_is_used_with_traced_parameters():
    """Scaling the reward by 0 makes every value target 0."""
    config = dataclasses.replace(SMALL, env="probe/constant", total_steps=4 * 32 * 40, lr=3e-3)
    agent = ppo.make(config, reward_fn=scaled_reward)
    hp = ppo.hparams_from(config)
    train = jax.jit(agent.train)
    values = []
    for scale in (0.0, 2.0):
        ts, _ = train(jax.random.PRNGKey(0), hp, {"scale": jnp.float32(scale), "shift": jnp.float32(0.0)})
        values.append(float(agent.network.apply(ts.params, jnp.zeros((1,)), method=agent.network.value)))
    np.testing.assert_allclose(values, [0.0, 2.0], atol=0.15)


def test_evaluate_counts_whole_episodes():
    agent, hp = small_agent(env="probe/discounting")
    ts = agent.init(jax.random.PRNGKey(0), hp)
    returns, lengths = jax.jit(lambda t, k: agent.evaluate(t, k, 7))(ts, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(returns, np.ones(7))
    np.testing.assert_array_equal(lengths, np.full(7, 2))


def test_cartpole_published_defaults_reach_475_over_8_seeds():
    config = ppo.PPOConfig()   # 4 envs x 128 steps, 5e5 steps, published defaults
    agent = ppo.make(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(8, dtype=jnp.uint32))
    _, metrics = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, ppo.hparams_from(config))
    final = np.asarray(metrics["episode_return"][:, -1])
    assert final.mean() >= 475, final


def test_acrobot_learns():
    config = ppo.PPOConfig(env="Acrobot-v1", total_steps=250_000)
    agent = ppo.make(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(4, dtype=jnp.uint32))
    states, _ = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, ppo.hparams_from(config))
    # deterministic evaluation: the last episode of 4 envs is too noisy a score on Acrobot
    returns, _ = jax.jit(jax.vmap(lambda ts, k: agent.evaluate(ts, k, 16)))(states, keys)
    final = np.asarray(returns).mean(axis=1)
    assert final.mean() >= -110, final     # random play scores about -500


def pendulum_final_returns(total_steps, seeds):
    from src.config import from_dict, load_yaml
    config = dataclasses.replace(from_dict(ppo.PPOConfig, load_yaml(os.path.join(ROOT, "configs", "ppo_pendulum.yaml"))),
                                 total_steps=total_steps)
    agent = ppo.make(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seeds, dtype=jnp.uint32))
    _, metrics = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, ppo.hparams_from(config))
    return np.asarray(metrics["episode_return"][:, -1])


def test_pendulum_continuous_learns_quickly():
    final = pendulum_final_returns(200_000, 2)
    assert final.mean() >= -600, final      # random play scores about -1200


@pytest.mark.slow
def test_pendulum_preset_reaches_minus_300():
    final = pendulum_final_returns(1_000_000, 4)
    assert final.mean() >= -300, final


@pytest.mark.slow
def test_brax_inverted_pendulum_preset_reaches_900():
    from src.config import from_dict, load_yaml
    config = from_dict(ppo.PPOConfig, load_yaml(os.path.join(ROOT, "configs", "ppo_brax_inverted_pendulum.yaml")))
    agent = ppo.make(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(4, dtype=jnp.uint32))
    _, metrics = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, ppo.hparams_from(config))
    final = np.asarray(metrics["episode_return"][:, -1])
    assert final.mean() >= 900, final
