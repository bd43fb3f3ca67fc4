"""Bring your own environment: `envs.wrap` on environments defined here, trained
by PPO and SAC (the README's example)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import envs
from agents import ppo, sac
from src.config import ConfigError


@struct.dataclass
class WalkState(environment.EnvState):
    position: jax.Array
    goal: jax.Array
    time: int


@struct.dataclass
class WalkParams(environment.EnvParams):
    distance: float = 1.0
    max_steps_in_episode: int = 20


class Walk(environment.Environment):
    """A user's gymnax environment: the goal lies `distance` to the left or the
    right (drawn at reset, observed); step left or right, -|distance to the
    goal| per step; the episode ends at the goal or after 20 steps. Walking
    straight there scores -4.5; always the same way, about -23 on average."""

    @property
    def default_params(self):
        return WalkParams()

    def reset_env(self, key, params):
        goal = jnp.where(jax.random.bernoulli(key), 1.0, -1.0) * params.distance
        state = WalkState(position=jnp.float32(0.0), goal=jnp.float32(goal), time=0)
        return self.get_obs(state), state

    def move(self, state, action):
        return state.position + jnp.where(action == 1, 0.1, -0.1)

    def step_env(self, key, state, action, params):
        state = WalkState(position=self.move(state, action), goal=state.goal, time=state.time + 1)
        distance = jnp.abs(state.position - state.goal)
        return self.get_obs(state), state, -distance, distance < 0.05, {}

    def get_obs(self, state, params=None, key=None):
        return jnp.array([state.position, state.goal, state.time / 20.0], jnp.float32)

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, (3,), jnp.float32)


class ContinuousWalk(Walk):
    """The same line with a velocity in [-1, 1] x 0.1 per step (for SAC's Gaussian actor)."""

    def move(self, state, action):
        return state.position + 0.1 * jnp.clip(jnp.reshape(action, ()), -1.0, 1.0)

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)


def final_returns(agent, hparams, seeds=2):
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    states, _ = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, hparams)
    returns, _ = jax.jit(jax.vmap(lambda ts, k: agent.evaluate(ts, k, 16)))(states, keys)
    return np.asarray(returns).mean(axis=1)


def test_ppo_learns_a_users_gymnax_environment():
    env, params = envs.wrap(Walk())
    config = ppo.PPOConfig(env="my-walk", total_steps=4 * 64 * 30, num_envs=4, num_steps=64, hidden=(32,), lr=3e-3)
    final = final_returns(ppo.make(config, env, params), ppo.hparams_from(config))
    assert (final > -8.0).all(), final      # straight to the goal -4.5; one way always about -23


@pytest.mark.slow   # 27 s; a user's environment stays covered by PPO's test above, SAC's learning by tests/test_sac.py
def test_sac_learns_a_users_continuous_gymnax_environment():
    env, params = envs.wrap(ContinuousWalk())
    config = dataclasses.replace(sac.SACConfig(), env="my-walk", total_steps=6000, num_envs=1, learning_starts=200,
                                 buffer_size=6000, hidden=(32, 32), sgd_batch_size=64)
    final = final_returns(sac.make(config, env, params), sac.hparams_from(config))
    assert (final > -8.0).all(), final


def test_wrapped_environment_speaks_the_api_of_envs_make():
    env, params = envs.wrap(Walk(), WalkParams(distance=0.3))
    assert params.distance == 0.3
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.dtype == jnp.float32 and obs.shape == (3,) and abs(float(obs[1])) == pytest.approx(0.3)
    toward = int(obs[1] > 0)
    for _ in range(3):   # three steps toward the goal: there, terminated, reset
        obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(1), state, toward, params)
    assert bool(terminated) and not bool(truncated) and bool(info["episode_done"])
    goal = float(info["final_observation"][1])
    np.testing.assert_allclose(info["final_observation"], [goal, goal, 0.15], atol=1e-6)
    assert float(obs[0]) == 0.0 and float(obs[2]) == 0.0
    np.testing.assert_allclose(info["episode_return"], -(0.2 + 0.1 + 0.0), atol=1e-6)
    # what gymnax.make returns wraps the same way
    cartpole, cartpole_params = envs.wrap(*__import__("gymnax").make("CartPole-v1"))
    assert envs.obs_size(cartpole, cartpole_params) == 4 and envs.is_discrete(cartpole, cartpole_params)


def test_environments_that_do_not_fit_fail_clearly():
    with pytest.raises(ConfigError, match="gymnax-1.0 environment, a brax environment or an envs.Environment"):
        envs.wrap(object())
    with pytest.raises(ConfigError, match="already wrapped"):
        envs.wrap(*envs.make("CartPole-v1"))

    class FiveTuple(envs.Environment):   # the old gymnax API: one done flag, no final observation
        default_params = None

        def reset(self, key, params):
            return jnp.zeros(2), jnp.int32(0)

        def step(self, key, state, action, params):
            return jnp.zeros(2), state, 0.0, False, {}

        def action_space(self, params):
            return envs.Discrete(2)

        def observation_space(self, params):
            return envs.Box(-1.0, 1.0, (2,), jnp.float32)

    with pytest.raises(ConfigError, match="must return \\(obs, state, reward, terminated, truncated, info\\)"):
        envs.wrap(FiveTuple())
