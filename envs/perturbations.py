"""Perturbations of the environment itself: robustness to distribution shift.

- `ObservationNoise(env, sigma)`: Gaussian noise on every observation the agent sees.
- `ActionNoise(env, sigma)`: Gaussian noise on continuous actions; for discrete
  actions, with probability sigma a uniformly random action is taken instead.
- `shift_params(env_params, **factors)`: physical parameters scaled by
  factors (e.g. CartPole pole length x0.5..x2), keeping derived constants
  (total mass, pole mass x length) consistent. Factors may be traced arrays,
  and `shifted_levels` stacks a grid of them into one env_params pytree with a
  leading axis, so an evaluation vmaps over levels: the same level-space
  convention (env_params is the level) as environment design.

The noise scales are pytree leaves of a params wrapper, so a sweep over noise
levels is a vmap too.
"""
import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Wrapper
from src.config import ConfigError


@struct.dataclass
class NoiseParams:
    env: object
    sigma: jax.Array


class _NoiseWrapper(Wrapper):
    """A wrapper whose noise scale sigma sits in NoiseParams beside the wrapped
    env's params (traced, so noise levels vmap)."""

    def __init__(self, env, sigma: float = 0.1):
        super().__init__(env)
        self._sigma = float(sigma)

    @property
    def default_params(self):
        return NoiseParams(self._env.default_params, jnp.float32(self._sigma))

    def observation_space(self, params):
        return self._env.observation_space(params.env)

    def action_space(self, params):
        return self._env.action_space(params.env)


class ObservationNoise(_NoiseWrapper):
    """obs + sigma * N(0, 1) on reset and step (info['final_observation'] too:
    it is what the agent bootstraps from). The noise scale lives in env_params
    (NoiseParams), so it is traced."""

    def reset(self, key, params):
        key, noise_key = jax.random.split(key)
        obs, state = self._env.reset(key, params.env)
        return obs + params.sigma * jax.random.normal(noise_key, obs.shape), state

    def step(self, key, state, action, params):
        key, noise_key = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params.env)
        noise = params.sigma * jax.random.normal(noise_key, obs.shape)
        info = {**info, "final_observation": info["final_observation"] + noise}
        return obs + noise, state, reward, terminated, truncated, info


class ActionNoise(_NoiseWrapper):
    """Continuous: action + sigma * N(0, 1). Discrete: a uniformly random
    action with probability sigma (epsilon-random), the discrete analogue."""

    def reset(self, key, params):
        return self._env.reset(key, params.env)

    def step(self, key, state, action, params):
        key, noise_key, choice_key = jax.random.split(key, 3)
        space = self._env.action_space(params.env)
        if isinstance(space, Box):
            action = action + params.sigma * jax.random.normal(noise_key, jnp.shape(action))
        else:
            random_action = jax.random.randint(noise_key, jnp.shape(action), 0, space.n).astype(jnp.asarray(action).dtype)
            action = jnp.where(jax.random.uniform(choice_key) < params.sigma, random_action, action)
        return self._env.step(key, state, action, params.env)


# Derived constants some gymnax envs store next to the physical ones.
_DERIVED = {
    "total_mass": lambda p: p.masscart + p.masspole,
    "polemass_length": lambda p: p.masspole * p.length,
}


def physical_fields(env_params):
    """The float fields of env_params that a shift may scale."""
    fields = getattr(env_params, "__dataclass_fields__", {})
    return [name for name in fields
            if name not in _DERIVED and name != "max_steps_in_episode"
            and jnp.issubdtype(jnp.asarray(getattr(env_params, name)).dtype, jnp.floating)]


def shift_params(env_params, **factors):
    """env_params with each named field multiplied by its factor (e.g.
    length=2.0), derived constants recomputed. Unknown names fail listing the choices."""
    valid = physical_fields(env_params)
    for name in factors:
        if name not in valid:
            raise ConfigError(f"cannot shift {name!r}: {type(env_params).__name__} has the physical parameters "
                              f"{', '.join(valid) or '(none)'}")
    shifted = env_params.replace(**{k: jnp.float32(getattr(env_params, k)) * v for k, v in factors.items()})
    fields = getattr(env_params, "__dataclass_fields__", {})
    derived = {k: f(shifted) for k, f in _DERIVED.items() if k in fields}
    return shifted.replace(**derived) if derived else shifted


def shifted_levels(env_params, name, factors):
    """One env_params pytree whose leaves have a leading axis over `factors`
    of the parameter `name` (vmap an evaluation over it)."""
    factors = jnp.asarray(factors, jnp.float32)
    if factors.ndim != 1 or factors.shape[0] < 1 or bool(jnp.any(factors <= 0)):
        raise ConfigError(f"shift factors must be a non-empty list of positive numbers, got {factors}")
    shift_params(env_params, **{name: 1.0})   # name check before tracing
    return jax.vmap(lambda f: shift_params(env_params, **{name: f}))(factors)
