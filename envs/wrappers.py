"""Wrappers that change what a learner sees, never the dynamics."""
import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Wrapper


@struct.dataclass
class EpisodeStatsState:
    env_state: object
    episode_return: jax.Array
    episode_length: jax.Array
    last_return: jax.Array   # return of the last finished episode (NaN before the first)
    last_length: jax.Array


class EpisodeStats(Wrapper):
    """Adds the return and length of finished episodes to `info`.

    info["episode_done"] marks steps that ended an episode;
    info["episode_return"/"episode_length"] hold that episode's totals there,
    and info["last_return"] the most recent finished return at every step.
    """

    def reset(self, key, params):
        obs, state = self._env.reset(key, params)
        zero = jnp.zeros((), jnp.float32)
        return obs, EpisodeStatsState(state, zero, jnp.zeros((), jnp.int32), jnp.float32(jnp.nan), jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params):
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        new_state = EpisodeStatsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
            jnp.where(done, episode_return, state.last_return),
            jnp.where(done, episode_length, state.last_length),
        )
        info = {**info, "episode_done": done, "episode_return": episode_return,
                "episode_length": episode_length, "last_return": new_state.last_return}
        return obs, new_state, reward, terminated, truncated, info


class FlattenObservation(Wrapper):
    """Flat float32 observations (MinAtar grids, scalar FrozenLake states) for MLPs."""

    def reset(self, key, params):
        obs, state = self._env.reset(key, params)
        return jnp.ravel(obs).astype(jnp.float32), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = {**info, "final_observation": jnp.ravel(info["final_observation"]).astype(jnp.float32)}
        return jnp.ravel(obs).astype(jnp.float32), state, reward, terminated, truncated, info

    def observation_space(self, params):
        space = self._env.observation_space(params)
        size = 1
        for d in space.shape:
            size *= int(d)
        # a Discrete observation space (FrozenLake's state index) becomes a 1-vector box
        low = getattr(space, "low", 0.0)
        high = getattr(space, "high", getattr(space, "n", 1) - 1)
        low = jnp.broadcast_to(jnp.asarray(low, jnp.float32), space.shape).reshape(-1)
        high = jnp.broadcast_to(jnp.asarray(high, jnp.float32), space.shape).reshape(-1)
        return Box(low, high, (size,), jnp.float32)


class ClipAction(Wrapper):
    """Clips continuous actions to the action box, so Gaussian policies can sample freely."""

    def step(self, key, state, action, params):
        space = self._env.action_space(params)
        action = jnp.clip(action, space.low, space.high)
        return self._env.step(key, state, action, params)
