"""brax environments behind our API.

brax's own wrappers fold time-outs into `done` and reset to a cached first
state; we keep terminated and truncated apart, reset with a fresh key, and
never step a finished episode (brax keeps simulating past a fall, and ant
then produces NaNs).
"""
import contextlib
import io
import warnings

import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Environment
from src.config import ConfigError

BRAX_ENVS = (
    "ant", "fast", "halfcheetah", "hopper", "humanoid", "humanoidstandup", "inverted_pendulum",
    "inverted_double_pendulum", "pusher", "reacher", "swimmer", "walker2d",
)
SPRING_UNSUPPORTED = ("swimmer",)
BRAX_BACKENDS = ("generalized", "positional", "spring", "mjx")


def _import_brax_envs():
    # brax prints "Failed to import warp" on every import and warns that it is
    # unmaintained; neither matters for the CPU/GPU backends we use.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from brax import envs as brax_envs
        from brax import fluid
    if not isinstance(fluid.jp, _ClipCompatNumpy):
        fluid.jp = _ClipCompatNumpy()
    return brax_envs


class _ClipCompatNumpy:
    """jax.numpy as brax.fluid expects it: brax 0.14 calls `clip(x, a_min=...)`,
    a keyword jax 0.10 removed, which breaks swimmer (the one fluid env)."""

    def __getattr__(self, name):
        return getattr(jnp, name)

    @staticmethod
    def clip(x, a_min=None, a_max=None, **kwargs):
        return jnp.clip(x, kwargs.pop("min", a_min), kwargs.pop("max", a_max))


@struct.dataclass
class BraxParams:
    """brax physics is fixed at construction; kept as a pytree for the API."""


@struct.dataclass
class BraxState:
    brax_state: object
    time: jax.Array


class BraxEnv(Environment):
    def __init__(self, name: str, backend: str | None = None, episode_length: int = 1000, **kwargs):
        # spring is the fastest backend on CPU; envs that do not support it
        # (swimmer) fall back to generalized unless a backend is named.
        if backend is None:
            backend = "generalized" if name in SPRING_UNSUPPORTED else "spring"
        if backend not in BRAX_BACKENDS:
            raise ConfigError(f"unknown brax backend {backend!r}; choose one of {', '.join(BRAX_BACKENDS)}")
        if int(episode_length) < 1:
            raise ConfigError(f"episode_length must be >= 1, got {episode_length}")
        brax_envs = _import_brax_envs()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = brax_envs.get_environment(name, backend=backend, **kwargs)
        self.name = f"brax/{name}"
        self.backend = backend
        self.episode_length = int(episode_length)

    @classmethod
    def of(cls, env, episode_length: int = 1000):
        """Adapt an instance of a brax environment (`brax.envs.Env`, e.g. one of your own)."""
        if int(episode_length) < 1:
            raise ConfigError(f"episode_length must be >= 1, got {episode_length}")
        self = cls.__new__(cls)
        self._env = env
        self.name = f"brax/{type(getattr(env, 'unwrapped', env)).__name__}"
        self.backend = getattr(env, "backend", None)
        self.episode_length = int(episode_length)
        return self

    @property
    def default_params(self):
        return BraxParams()

    def _reset_brax(self, key):
        state = self._env.reset(key)
        # reset and step states hold the same leaves but some are Python floats
        # in one and arrays in the other; unify so the two can be selected between.
        return jax.tree.map(jnp.asarray, state)

    def reset(self, key, params):
        state = self._reset_brax(key)
        return state.obs, BraxState(state, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        stepped = jax.tree.map(jnp.asarray, self._env.step(state.brax_state, action))
        time = state.time + 1
        terminated = stepped.done > 0.5
        truncated = jnp.logical_and(time >= self.episode_length, jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        fresh = self._reset_brax(key)
        next_brax = jax.tree.map(lambda r, s: jnp.where(done, r, s), fresh, stepped)
        next_state = BraxState(next_brax, jnp.where(done, 0, time))
        info = {
            "final_observation": stepped.obs,
            "terminated": terminated,
            "truncated": truncated,
            "discount": 1.0 - terminated.astype(jnp.float32),
        }
        return next_brax.obs, next_state, stepped.reward.astype(jnp.float32), terminated, truncated, info

    def observation_space(self, params):
        # brax's `observation_size` runs a reset eagerly, op by op, on every
        # call (12 s for humanoid on 2 CPU cores); its shape needs only a trace.
        if getattr(self, "_obs_size", None) is None:
            obs = jax.eval_shape(lambda key: self._env.reset(key).obs, jax.random.PRNGKey(0))
            self._obs_size = int(obs.shape[-1])
        return Box(-jnp.inf, jnp.inf, (self._obs_size,), jnp.float32)

    def action_space(self, params):
        return Box(-1.0, 1.0, (self._env.action_size,), jnp.float32)
