"""Environments an adversary acts in or on, built around a victim's environment:

- `AdversaryEnv`: the adversary's view of the victim's environment. It sees
  the victim's clean observation, its action perturbs that observation inside
  the threat model's ball, the frozen victim acts on the perturbed one, and
  its reward is the victim's reward negated.
- `AttackedEnv`: the victim's environment with every observation (final ones
  included) perturbed by a learned adversary, for training the victim against
  it (ATLA).
- `CheapTalkEnv`: the victim's environment with a learned message appended to
  every observation (dynamics and rewards untouched).

The learners that train in them and the loops around them are in
`meta/adversary.py`."""
import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Environment
from robustness import attacks
from src.config import ConfigError
from src.networks import MLP, reset_carry


@struct.dataclass
class AdversaryParams:
    env: object        # the victim environment's params
    victim: object     # the frozen victim's parameters
    eps: jax.Array     # the ball's radius


@struct.dataclass
class AdversaryState:
    env_state: object
    obs: jax.Array     # the victim's current (clean) observation
    victim_carry: object = None   # a recurrent victim's carry (None without memory)


class AdversaryEnv(Environment):
    """The victim's environment seen by the adversary: observation = the
    victim's clean observation, action a in R^obs_dim, the victim acts
    (deterministically) on obs + project(eps * tanh(a)), reward = -r."""

    name = "adversary"

    def __init__(self, env, env_params, victim: attacks.Victim, vparams, eps: float = 0.1,
                 threat: attacks.ThreatModel = attacks.ThreatModel()):
        threat = threat.validate()
        if threat.budget != "step" or threat.target != "observation":
            raise ConfigError("the learned adversary perturbs observations with a per-step budget")
        self._env, self._victim, self._threat = env, victim, threat
        self._default = AdversaryParams(env_params, vparams, jnp.float32(eps))
        self._obs_dim = int(env.observation_space(env_params).shape[0])
        self._attack = lambda key, vp, x, e, a, raw: attacks.project(e * jnp.tanh(a), e, threat.norm)

    @property
    def default_params(self):
        return self._default

    def reset(self, key, params):
        obs, state = self._env.reset(key, params.env)
        memory = self._victim.memory
        return obs, AdversaryState(state, obs, None if memory is None else memory.initial())

    def step(self, key, state, action, params):
        # A recurrent victim acts from its carry, which moves on the perturbed
        # observations it saw. The adversary itself sees only the clean
        # observation, not that carry (as in AttackedEnv, where the learner's
        # carry is not the environment's to show).
        act_key, step_key = jax.random.split(key)
        memory = self._victim.memory
        vparams = params.victim if memory is None else attacks.with_carry(params.victim, state.victim_carry)
        victim_action, _, net_input = attacks.attacked_action(self._attack, self._threat, self._victim, vparams,
                                                              act_key, state.obs, params.eps, action)
        obs, env_state, reward, terminated, truncated, info = self._env.step(step_key, state.env_state,
                                                                             victim_action, params.env)
        carry = state.victim_carry
        if memory is not None:   # the wrapped env has started a new episode where this one ended
            carry = reset_carry(memory.advance(vparams, net_input), memory.initial(),
                                jnp.logical_or(terminated, truncated))
        return obs, AdversaryState(env_state, obs, carry), -reward, terminated, truncated, info

    def observation_space(self, params):
        return self._env.observation_space(params.env)

    def action_space(self, params):
        return Box(-jnp.inf, jnp.inf, (self._obs_dim,), jnp.float32)


@struct.dataclass
class CheapTalkParams:
    env: object
    adversary: object   # the message network's parameters


class CheapTalkEnv(Environment):
    """The victim's environment with a message tanh(MLP(obs)) of size
    `message_size` appended to every observation; dynamics and rewards are
    untouched, so the adversary can only mislead."""

    name = "cheap-talk"

    def __init__(self, env, env_params, message_size: int = 2, hidden=(16,)):
        self._env = env
        self._obs_dim = int(env.observation_space(env_params).shape[0])
        self.message_size = message_size
        self.network = MLP(tuple(hidden), message_size, "tanh")
        self._template = self.network.init(jax.random.PRNGKey(0), jnp.zeros((self._obs_dim,)))
        self._default = CheapTalkParams(env_params, self._template)

    def __getattr__(self, name):
        return getattr(self._env, name)

    @property
    def default_params(self):
        return self._default

    def init_adversary(self, key):
        return self.network.init(key, jnp.zeros((self._obs_dim,)))

    def _with_message(self, obs, params):
        return jnp.concatenate([obs, jnp.tanh(self.network.apply(params.adversary, obs))], -1)

    def reset(self, key, params):
        obs, state = self._env.reset(key, params.env)
        return self._with_message(obs, params), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params.env)
        info = {**info, "final_observation": self._with_message(info["final_observation"], params)}
        return self._with_message(obs, params), state, reward, terminated, truncated, info

    def observation_space(self, params):
        return Box(-jnp.inf, jnp.inf, (self._obs_dim + self.message_size,), jnp.float32)

    def action_space(self, params):
        return self._env.action_space(params.env)


@struct.dataclass
class AttackedParams:
    env: object
    adversary: object   # the learned adversary's parameters
    eps: jax.Array


class AttackedEnv(Environment):
    """The victim's environment with its observations (final ones included)
    perturbed by a learned adversary: obs + project(eps * tanh(adversary(obs))),
    in raw observation units. Returns the wrapped env's own state, so a victim
    trained here has the train-state structure of a plain one (its checkpoint
    loads as a plain run's)."""

    name = "attacked"

    def __init__(self, env, env_params, adversary_act, adversary_like, eps: float = 0.1, norm: str = "linf"):
        self._env, self._act, self._norm = env, adversary_act, norm
        self._default = AttackedParams(env_params, adversary_like, jnp.float32(eps))

    def __getattr__(self, name):
        return getattr(self._env, name)

    @property
    def default_params(self):
        return self._default

    def _perturb(self, obs, params):
        return obs + attacks.project(params.eps * jnp.tanh(self._act(params.adversary, obs)), params.eps, self._norm)

    def reset(self, key, params):
        obs, state = self._env.reset(key, params.env)
        return self._perturb(obs, params), state

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params.env)
        info = {**info, "final_observation": self._perturb(info["final_observation"], params)}
        return self._perturb(obs, params), state, reward, terminated, truncated, info

    def observation_space(self, params):
        return self._env.observation_space(params.env)

    def action_space(self, params):
        return self._env.action_space(params.env)
