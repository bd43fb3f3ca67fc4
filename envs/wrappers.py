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


@struct.dataclass
class ReferenceParams:
    env: object          # the wrapped environment's params
    reference: object    # the reference policy's parameters, as `log_prob_step` takes them

    @property
    def max_steps_in_episode(self):   # envs.core.episode_limit reads it
        return getattr(self.env, "max_steps_in_episode", None)


@struct.dataclass
class ReferenceState:
    env_state: object
    obs: jax.Array       # the observation the next action is taken on
    carry: object        # the reference's carry, having seen this episode up to before `obs`

    @property
    def last_return(self):   # PPO's metrics read it from the outermost state
        return self.env_state.last_return


class ReferenceLogProb(Wrapper):
    """Adds info["reference_log_prob"]: log pi_ref(a_t | o_1..o_t) of the
    action taken, under a reference policy with memory that follows the
    same episode (its carry lives in this wrapper's state and restarts
    where an episode ends). A KL penalty to a recurrent reference needs
    it: the reference's probability of an action depends on the history,
    which a reward function of one transition does not see.

    log_prob_step(reference, carry, obs, action) -> (log prob, next carry);
    initial_carry() -> the carry at an episode's start. The reference's
    parameters are `ReferenceParams.reference`: traced, one per run."""

    def __init__(self, env, log_prob_step, initial_carry):
        super().__init__(env)
        self._log_prob_step, self._initial_carry = log_prob_step, initial_carry

    @property
    def default_params(self):
        raise TypeError("ReferenceLogProb has no default params: pass ReferenceParams(env_params, reference)")

    def reset(self, key, params):
        obs, state = self._env.reset(key, params.env)
        return obs, ReferenceState(state, obs, self._initial_carry())

    def step(self, key, state, action, params):
        log_prob, carry = self._log_prob_step(params.reference, state.carry, state.obs, action)
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params.env)
        done = jnp.logical_or(terminated, truncated)   # the wrapped env has begun a new episode
        carry = jax.tree.map(lambda c, i: jnp.where(done, i, c), carry, self._initial_carry())
        return obs, ReferenceState(env_state, obs, carry), reward, terminated, truncated, \
            {**info, "reference_log_prob": log_prob}

    def observation_space(self, params):
        return self._env.observation_space(params.env)

    def action_space(self, params):
        return self._env.action_space(params.env)
