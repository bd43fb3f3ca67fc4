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
from jax.flatten_util import ravel_pytree

import envs
from agents import ppo
from envs.adversarial import (AdversaryEnv, AdversaryParams, AdversaryState, AttackedEnv,  # noqa: F401
                              AttackedParams, CheapTalkEnv, CheapTalkParams)
from envs.wrappers import EpisodeStats
from robustness import attacks
from src import normalize
from src.config import ConfigError
from src.networks import ActorCritic


# ----------------------------------------------------------------------------- victims

def ppo_victim(agent) -> attacks.Victim:
    """The static description of a PPO agent as an attack victim;
    vparams come from `ppo_vparams(train_state)`."""
    network, config = agent.network, agent.config
    discrete = envs.is_discrete(agent.env, agent.env_params)

    def norm(vp, obs):
        return normalize.normalize(vp["obs_stats"], obs) if config.normalize_obs else obs

    if config.recurrent:   # the episode loops put the carry in vp["carry"] step by step
        def heads(vp, x):
            return network.apply(vp["params"], vp["carry"], x)[1]

        return attacks.Victim(
            policy=lambda vp, x: heads(vp, x)[0], value=lambda vp, x: heads(vp, x)[1], normalize=norm,
            discrete=discrete, memory=attacks.Memory(
                initial=network.initial_carry, advance=lambda vp, x: network.apply(vp["params"], vp["carry"], x)[0]))
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


def train_cheap_talk(victim_config, env, env_params, key, generations: int = 10, pairs: int = 4,
                     sigma: float = 0.5, lr: float = 0.5, message_size: int = 2, hidden=(16,), sign=-1.0,
                     callback=None):
    """ES over the message network: sign=-1 minimises the victim's return
    (adversarial), +1 maximises it (an ally). A Python loop over jitted
    generations, so it can log between them. Returns (flat params, history)."""
    if generations < 1 or pairs < 1 or not sigma > 0:
        raise ConfigError("cheap talk needs generations >= 1, pairs >= 1 and sigma > 0")
    from meta import es as es_lib

    fitness, unravel, mean, _ = cheap_talk_fitness(victim_config, env, env_params, message_size, hidden)
    # OpenES through the one ES adapter: antithetic pairs sharing their evaluation key, centred ranks, and a
    # plain gradient step (mean + lr * estimate)
    es = es_lib.make(es_lib.ESConfig("openes", 2 * pairs, sigma, lr, optimizer="sgd"), mean)

    @jax.jit
    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state)
        values = sign * jax.vmap(fitness)(population, es.member_keys(eval_key, 1)[:, 0])
        state, _ = es.tell(tell_key, population, values, state)
        return state, values

    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, mean)
    history = []
    for g, gen_key in enumerate(jax.random.split(loop_key, generations)):
        state, values = generation(state, gen_key)
        history.append(float(sign * values.mean()))
        if callback:
            callback(g, history[-1])
    return es.mean(state), history


# ----------------------------------------------------------------------------- adversarial training (alternating)

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
