"""Probe environments (after rejax/Andy Jones' debugging probes).

Each isolates one thing a learner must get right, with a known answer:
  probe/constant            obs 0, reward 1, one step            -> V = 1
  probe/observation         obs +-1, reward = obs, one step      -> V(obs) = obs
  probe/discounting         two steps, reward 1 at the end       -> V(t=0) = gamma, V(t=1) = 1
  probe/action              obs 0, reward 1 iff action 0         -> pi picks 0, V = 1
  probe/observation_action  obs +-1, reward 1 iff action matches -> pi(obs), V = 1
"""
import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Discrete, Environment


@struct.dataclass
class ProbeParams:
    pass


@struct.dataclass
class ProbeState:
    obs: jax.Array
    time: jax.Array


class ProbeEnv(Environment):
    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"probe/{kind}"
        self.horizon = 2 if kind == "discounting" else 1

    @property
    def default_params(self):
        return ProbeParams()

    def _initial_obs(self, key):
        if self.kind in ("observation", "observation_action"):
            return jnp.where(jax.random.bernoulli(key), 1.0, -1.0).reshape(1).astype(jnp.float32)
        return jnp.zeros((1,), jnp.float32)

    def reset(self, key, params):
        obs = self._initial_obs(key)
        return obs, ProbeState(obs, jnp.zeros((), jnp.int32))

    def _reward(self, state, action):
        if self.kind == "constant":
            return jnp.float32(1.0)
        if self.kind == "observation":
            return state.obs[0]
        if self.kind == "discounting":
            return jnp.where(state.time == self.horizon - 1, 1.0, 0.0).astype(jnp.float32)
        if self.kind == "action":
            return jnp.where(action == 0, 1.0, 0.0).astype(jnp.float32)
        matches = jnp.where(state.obs[0] > 0, action == 1, action == 0)
        return jnp.where(matches, 1.0, 0.0).astype(jnp.float32)

    def step(self, key, state, action, params):
        reward = self._reward(state, action)
        time = state.time + 1
        terminated = time >= self.horizon
        next_obs = jnp.full((1,), time, jnp.float32) if self.kind == "discounting" else state.obs
        reset_obs, reset_state = self.reset(key, params)
        obs = jnp.where(terminated, reset_obs, next_obs)
        new_state = jax.tree.map(lambda r, s: jnp.where(terminated, r, s), reset_state, ProbeState(next_obs, time))
        info = {"final_observation": next_obs, "terminated": terminated,
                "truncated": jnp.bool_(False), "discount": 1.0 - terminated.astype(jnp.float32)}
        return obs, new_state, reward, terminated, jnp.bool_(False), info

    def observation_space(self, params):
        return Box(-1.0, float(self.horizon), (1,), jnp.float32)

    def action_space(self, params):
        return Discrete(2)


PROBES = ("constant", "observation", "discounting", "action", "observation_action")
