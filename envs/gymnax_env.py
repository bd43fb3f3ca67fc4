"""gymnax environments behind our API: dtypes made uniform, nothing else changed."""
import jax.numpy as jnp
import gymnax

from envs.core import Environment


class GymnaxEnv(Environment):
    def __init__(self, name: str, **kwargs):
        self.name = name
        self._env, self._default_params = gymnax.make(name, **kwargs)

    @classmethod
    def of(cls, env, params=None):
        """Adapt an instance of a gymnax-1.0 environment (a subclass of
        `gymnax.environments.environment.Environment`, e.g. one of your own)."""
        self = cls.__new__(cls)
        self.name = getattr(env, "name", type(env).__name__)
        self._env = env
        self._default_params = env.default_params if params is None else params
        return self

    @property
    def default_params(self):
        return self._default_params

    def reset(self, key, params):
        obs, state = self._env.reset(key, params)
        return obs.astype(jnp.float32), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        # Some gymnax envs emit int observations or weakly-typed flags; the
        # learners assume float32 observations/rewards and bool flags.
        info = dict(info)
        info["final_observation"] = info["final_observation"].astype(jnp.float32)
        info["terminated"] = jnp.asarray(terminated, bool)
        info["truncated"] = jnp.asarray(truncated, bool)
        return (obs.astype(jnp.float32), state, jnp.asarray(reward, jnp.float32),
                info["terminated"], info["truncated"], info)

    def observation_space(self, params):
        return self._env.observation_space(params)

    def action_space(self, params):
        return self._env.action_space(params)
