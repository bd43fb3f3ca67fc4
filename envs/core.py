"""The environment API every environment of ours speaks (gymnax 1.0 style).

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

`step` resets automatically; `info["final_observation"]` is the last real
observation of the episode that just ended (equal to `obs` otherwise), so a
learner can bootstrap truncated episodes and not terminated ones.
"""
from typing import Any

import jax.numpy as jnp
from gymnax.environments import spaces

Box = spaces.Box
Discrete = spaces.Discrete


class Environment:
    """Base class: subclasses define reset, step, spaces and default_params."""

    name: str = "environment"

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    def reset(self, key, params):
        raise NotImplementedError

    def step(self, key, state, action, params):
        raise NotImplementedError

    def observation_space(self, params):
        raise NotImplementedError

    def action_space(self, params):
        raise NotImplementedError


class Wrapper(Environment):
    """Delegates everything it does not override to the wrapped environment."""

    def __init__(self, env: Environment):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    @property
    def default_params(self):
        return self._env.default_params

    def reset(self, key, params):
        return self._env.reset(key, params)

    def step(self, key, state, action, params):
        return self._env.step(key, state, action, params)

    def observation_space(self, params):
        return self._env.observation_space(params)

    def action_space(self, params):
        return self._env.action_space(params)

    @property
    def unwrapped(self):
        return getattr(self._env, "unwrapped", self._env)


def is_discrete(env, params) -> bool:
    return isinstance(env.action_space(params), spaces.Discrete)


def action_dim(env, params) -> int:
    """Number of discrete actions, or the size of a continuous action vector."""
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    return int(jnp.prod(jnp.array(space.shape)))


def obs_size(env, params) -> int:
    shape = env.observation_space(params).shape
    return int(jnp.prod(jnp.array(shape))) if len(shape) else 1


def episode_limit(env, params, default: int = 1000) -> int:
    """The longest an episode can last (for evaluation rollouts)."""
    limit = getattr(params, "max_steps_in_episode", None)
    while limit is None and isinstance(env, Environment):
        limit = getattr(env, "episode_length", None) or getattr(env, "horizon", None)
        env = env.__dict__.get("_env")
    return int(limit) if limit is not None else default
