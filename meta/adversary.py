"""Learned adversaries against a trained (or training) victim.

- The optimal observation attack (ATLA-style): the adversary is a PPO agent
  (our agents.ppo) in an environment whose step lets a frozen victim act on
  the observation perturbed by eps * tanh(a) and pays the adversary -r. The
  victim's parameters and eps are env_params leaves (`AdversaryParams`), so a
  population of adversaries over eps values and victims is one vmap of
  `ppo.train`.
- Adversarial cheap talk (Lu et al. 2023): the adversary only appends a
  message tanh(MLP(obs)) to the victim's observation, and is trained by an
  antithetic ES over whole victim training runs (fitness: minus the victim's
  final return).
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

import envs
from agents import ppo
from envs.core import Box, Environment
from envs.wrappers import EpisodeStats
from src import attacks, normalize
from src.config import ConfigError
from src.networks import MLP, ActorCritic


# ----------------------------------------------------------------------------- victims

def ppo_victim(agent) -> attacks.Victim:
    """The static description of a PPO agent as an attack victim;
    vparams come from `ppo_vparams(train_state)`."""
    network, config = agent.network, agent.config
    discrete = envs.is_discrete(agent.env, agent.env_params)

    def norm(vp, obs):
        return normalize.normalize(vp["obs_stats"], obs) if config.normalize_obs else obs

    return attacks.Victim(
        policy=lambda vp, x: network.apply(vp["params"], x, method=ActorCritic.policy),
        value=lambda vp, x: network.apply(vp["params"], x, method=ActorCritic.value),
        normalize=norm, discrete=discrete)


def ppo_vparams(train_state):
    return {"params": train_state.params, "obs_stats": train_state.obs_stats}


def sac_victim(agent) -> attacks.Victim:
    """A SAC agent as a victim: its actor (deterministic action tanh(mean),
    mapped to the action box). SAC has Q(s, a) critics but no state-value
    critic, so `value` is None and the critic attack refuses it."""
    actor, config = agent.network["actor"], agent.config
    discrete = envs.is_discrete(agent.env, agent.env_params)
    action_map = None
    if not discrete:
        space = agent.env.action_space(agent.env_params)
        low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
        action_map = lambda u: low + 0.5 * (jnp.tanh(u) + 1.0) * (high - low)  # noqa: E731

    def norm(vp, obs):
        return normalize.normalize(vp["obs_stats"], obs) if config.normalize_obs else obs

    return attacks.Victim(policy=lambda vp, x: actor.apply(vp["params"]["actor"], x), value=None,
                          normalize=norm, discrete=discrete, action_map=action_map)


VICTIMS = {"ppo": (ppo_victim, ppo_vparams), "sac": (sac_victim, ppo_vparams)}


def victim_of(agent):
    """(Victim, vparams_from_train_state) for an agent of a known algorithm."""
    algo = agent.config.algo
    if algo not in VICTIMS:
        raise ConfigError(f"cannot attack a {algo!r} agent; supported: {', '.join(VICTIMS)}")
    make_victim, vparams = VICTIMS[algo]
    return make_victim(agent), vparams


# ----------------------------------------------------------------------------- optimal attack

@struct.dataclass
class AdversaryParams:
    env: object        # the victim environment's params
    victim: object     # the frozen victim's parameters
    eps: jax.Array     # the ball's radius


@struct.dataclass
class AdversaryState:
    env_state: object
    obs: jax.Array     # the victim's current (clean) observation


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
        return obs, AdversaryState(state, obs)

    def step(self, key, state, action, params):
        act_key, step_key = jax.random.split(key)
        victim_action, _, _ = attacks.attacked_action(self._attack, self._threat, self._victim, params.victim,
                                                      act_key, state.obs, params.eps, action)
        obs, env_state, reward, terminated, truncated, info = self._env.step(step_key, state.env_state,
                                                                             victim_action, params.env)
        return obs, AdversaryState(env_state, obs), -reward, terminated, truncated, info

    def observation_space(self, params):
        return self._env.observation_space(params.env)

    def action_space(self, params):
        return Box(-jnp.inf, jnp.inf, (self._obs_dim,), jnp.float32)


ADVERSARY_CONFIG = ppo.PPOConfig(
    env="adversary", total_steps=200_000, num_envs=16, num_steps=64, num_epochs=4, num_minibatches=4,
    lr=3e-4, gamma=0.99, ent_coef=0.0, normalize_obs=True, normalize_reward=True, anneal_lr=True)


class OptimalAttack(NamedTuple):
    agent: object          # the adversary's PPO agent
    env: AdversaryEnv
    act: object            # (adv_params, raw_obs) -> pre-tanh action (the policy's mean)


def optimal_attack(env, env_params, victim, vparams_like, config: ppo.PPOConfig = ADVERSARY_CONFIG,
                   threat=attacks.ThreatModel(), show_progress=False) -> OptimalAttack:
    """Build the adversary's PPO agent. Train with
    `agent.train(key, hparams, env_params=AdversaryParams(env_params, vparams, eps))`
    (vmap it over eps and victims), then `adversary_params(ts)` feeds the
    'learned' attack (`act`)."""
    adv_env = EpisodeStats(AdversaryEnv(env, env_params, victim, vparams_like, threat=threat))
    agent = ppo.make(dataclasses.replace(config, env="adversary"), env=adv_env,
                     env_params=adv_env.default_params, show_progress=show_progress)

    def act(adv_params, obs):
        x = normalize.normalize(adv_params["obs_stats"], obs) if agent.config.normalize_obs else obs
        return agent.network.apply(adv_params["params"], x, method=ActorCritic.policy)[0]

    return OptimalAttack(agent, adv_env, act)


def adversary_params(train_state):
    return {"params": train_state.params, "obs_stats": train_state.obs_stats}


# ----------------------------------------------------------------------------- cheap talk

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


def cheap_talk_fitness(victim_config, env, env_params, message_size=2, hidden=(16,)):
    """(fitness(flat_adversary, key) -> victim's final return, unravel, flat_init, victim agent).

    One fitness call is one whole victim training run on the message-augmented env."""
    talk = CheapTalkEnv(env, env_params, message_size, hidden)
    agent = ppo.make(victim_config, env=talk, env_params=talk.default_params)
    hparams = ppo.hparams_from(victim_config)
    flat_init, unravel = ravel_pytree(talk.init_adversary(jax.random.PRNGKey(0)))

    def victim_return(flat, key):
        train_key, eval_key = jax.random.split(key)
        ts, _ = agent.train(train_key, hparams, env_params=CheapTalkParams(env_params, unravel(flat)))
        returns, _ = agent.evaluate(ts, eval_key, 8, env_params=CheapTalkParams(env_params, unravel(flat)))
        return returns.mean()

    return victim_return, unravel, flat_init, agent


def centered_ranks(x):
    ranks = jnp.argsort(jnp.argsort(x)).astype(jnp.float32)
    return ranks / jnp.maximum(x.shape[0] - 1, 1) - 0.5


def es_step(fitness, mean, key, pairs: int, sigma, lr):
    """One antithetic ES step that MAXIMISES fitness(params, key): 2*pairs
    evaluations (vmapped; each pair shares its evaluation key) and a
    centred-rank gradient estimate. Returns (new mean, fitness values)."""
    noise_key, eval_key = jax.random.split(key)
    z = jax.random.normal(noise_key, (pairs, mean.shape[0]))
    population = jnp.concatenate([mean + sigma * z, mean - sigma * z])
    keys = jax.random.split(eval_key, pairs)
    values = jax.vmap(fitness)(population, jnp.concatenate([keys, keys]))
    weights = centered_ranks(values)
    grad = ((weights[:pairs] - weights[pairs:])[:, None] * z).sum(0) / (2 * pairs * sigma)
    return mean + lr * grad, values


def train_cheap_talk(victim_config, env, env_params, key, generations: int = 10, pairs: int = 4,
                     sigma: float = 0.5, lr: float = 0.5, message_size: int = 2, hidden=(16,), sign=-1.0,
                     callback=None):
    """ES over the message network: sign=-1 minimises the victim's return
    (adversarial), +1 maximises it (an ally). A Python loop over jitted
    generations, so it can log between them. Returns (flat params, history)."""
    if generations < 1 or pairs < 1 or not sigma > 0:
        raise ConfigError("cheap talk needs generations >= 1, pairs >= 1 and sigma > 0")
    fitness, unravel, mean, _ = cheap_talk_fitness(victim_config, env, env_params, message_size, hidden)
    generation = jax.jit(lambda m, k: es_step(lambda p, kk: sign * fitness(p, kk), m, k, pairs, sigma, lr))
    history = []
    for g, gen_key in enumerate(jax.random.split(key, generations)):
        mean, values = generation(mean, gen_key)
        history.append(float(sign * values.mean()))
        if callback:
            callback(g, history[-1])
    return mean, history


# ----------------------------------------------------------------------------- adversarial training (alternating)

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


def adversarial_training(victim_config: ppo.PPOConfig, eps: float, rounds: int,
                         adversary_config: ppo.PPOConfig = ADVERSARY_CONFIG):
    """ATLA-style alternating training: each round, the victim runs
    num_iterations/rounds PPO iterations against the frozen adversary, then the
    adversary the same number of its own iterations against the frozen victim
    (raw observation units, L-inf ball of radius eps).

    Returns (init(key) -> (victim_ts, adversary_ts), round(victim_ts,
    adversary_ts) -> (victim_ts, adversary_ts, metrics), victim agent). Each
    piece is pure: jit it, vmap it over seeds."""
    if victim_config.num_iterations % rounds:
        raise ConfigError(f"rounds ({rounds}) must divide the victim's iterations ({victim_config.num_iterations})")
    per_round = victim_config.num_iterations // rounds
    env, env_params = envs.make(victim_config.env, **victim_config.env_kwargs)
    plain = ppo.make(victim_config, env, env_params)
    victim = ppo_victim(plain)
    threat = attacks.ThreatModel(units="raw")
    vparams_like = ppo_vparams(jax.eval_shape(plain.init, jax.random.PRNGKey(0), ppo.hparams_from(victim_config)))
    vparams_like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), vparams_like)
    adv_config = dataclasses.replace(adversary_config, total_steps=per_round * rounds * adversary_config.batch_size)
    attack = optimal_attack(env, env_params, victim, vparams_like, adv_config, threat)
    adv_like = adversary_params(jax.eval_shape(attack.agent.init, jax.random.PRNGKey(0),
                                               ppo.hparams_from(adv_config)))
    adv_like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), adv_like)
    attacked = AttackedEnv(env, env_params, attack.act, adv_like, eps)
    victim_agent = ppo.make(victim_config, attacked, attacked.default_params)
    hp_v, hp_a = ppo.hparams_from(victim_config), ppo.hparams_from(adv_config)
    eps = jnp.float32(eps)

    def init(key):
        v_key, a_key = jax.random.split(key)
        return victim_agent.init(v_key, hp_v, attacked.default_params), attack.agent.init(a_key, hp_a)

    def one_round(v_ts, a_ts):
        v_ts, v_metrics = victim_agent.run(v_ts, hp_v, env_params=AttackedParams(env_params, adversary_params(a_ts), eps),
                                           num_iterations=per_round)
        a_ts, a_metrics = attack.agent.run(a_ts, hp_a, env_params=AdversaryParams(env_params, ppo_vparams(v_ts), eps),
                                           num_iterations=per_round)
        return v_ts, a_ts, {"victim_return": v_metrics["episode_return"][-1],
                            "adversary_return": a_metrics["episode_return"][-1]}

    return init, one_round, plain
