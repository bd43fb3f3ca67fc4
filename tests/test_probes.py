"""PPO on the probe environments: each checks one piece against a known answer."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import ppo

CONFIG = ppo.PPOConfig(num_envs=16, num_steps=8, num_minibatches=2, total_steps=16 * 8 * 60,
                       hidden=(32, 32), lr=3e-3, ent_coef=0.0, gamma=0.9, anneal_lr=False)


def trained(env):
    config = dataclasses.replace(CONFIG, env=env)
    agent = ppo.make(config)
    ts, _ = jax.jit(agent.train)(jax.random.PRNGKey(0), ppo.hparams_from(config))

    def value(obs):
        return np.asarray(agent.network.apply(ts.params, jnp.array(obs, jnp.float32), method=agent.network.value))

    def prob_of(obs, action):
        logits = agent.network.apply(ts.params, jnp.array(obs, jnp.float32), method=agent.network.policy)
        return np.asarray(jax.nn.softmax(logits)[..., action])

    return value, prob_of


def test_constant_reward_value():
    value, _ = trained("probe/constant")
    np.testing.assert_allclose(value([[0.0]]), [1.0], atol=0.05)


def test_observation_dependent_value():
    value, _ = trained("probe/observation")
    np.testing.assert_allclose(value([[-1.0], [1.0]]), [-1.0, 1.0], atol=0.1)


def test_discounting_value():
    value, _ = trained("probe/discounting")
    np.testing.assert_allclose(value([[0.0], [1.0]]), [CONFIG.gamma, 1.0], atol=0.05)


def test_action_dependent_reward_policy():
    value, prob_of = trained("probe/action")
    assert prob_of([[0.0]], 0)[0] > 0.95
    np.testing.assert_allclose(value([[0.0]]), [1.0], atol=0.1)


def test_observation_and_action_dependent_policy():
    value, prob_of = trained("probe/observation_action")
    probs = prob_of([[-1.0], [1.0]], 1)
    assert probs[0] < 0.05 and probs[1] > 0.95, probs
    np.testing.assert_allclose(value([[-1.0], [1.0]]), [1.0, 1.0], atol=0.1)
