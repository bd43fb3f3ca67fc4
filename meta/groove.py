"""GROOVE's setting: algorithmic regret drives a level buffer while evolution
strategies meta-train a learned PPO objective (agents/objectives.py,
meta/es.py).

One generation:
  1. levels: with probability replay_prob (a coin shared by the vmapped seeds)
     K levels replayed from the buffer (rank/staleness prioritised), else K
     fresh ones from the level space's generator;
  2. every ES member's objective trains a PPO from scratch on each of the K
     levels (a "lifetime"); its fitness is the mean final return;
  3. the ES mean's objective and a reference PPO-clip learner are each
     trained from scratch on the K levels; algorithmic regret
     = reference return - learned-objective return scores the levels
     (insert fresh ones, rescore replayed ones).

Held-out evaluation trains the ES mean's objective (and PPO-clip, for
reference) from scratch on each held-out level and counts solved episodes.
"""
import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from agents import ppo
from meta import env_design as ed
from meta import es as es_lib
from agents import objectives as lo
from src import config as cfg
from src.config import ConfigError


@dataclasses.dataclass(frozen=True)
class GrooveConfig:
    env: str = "cartpole-levels"
    method: str = "groove"
    seed: int = 0
    seeds: int = 2
    generations: int = 10
    eval_every: int = 5
    eval_episodes: int = 4
    levels_per_generation: int = 4
    space_kwargs: dict = dataclasses.field(default_factory=dict)
    # buffer
    capacity: int = 64
    replay_prob: float = 0.5
    temperature: float = 0.3
    staleness_coef: float = 0.3
    # inner PPO lifetime
    lifetime_iterations: int = 16
    num_envs: int = 8
    num_steps: int = 32
    num_epochs: int = 2
    num_minibatches: int = 2
    hidden: tuple[int, ...] = (32, 32)
    lr: float = 1e-3
    gamma: float = 0.99
    ent_coef: float = 0.01
    # ES over the drift network
    pop: int = 8
    sigma: float = 0.03
    es_lr: float = 0.01
    drift_hidden: int = 32
    # any other PPOConfig key of the learner and the reference (e.g. memory: lstm)
    ppo: dict = dataclasses.field(default_factory=dict)

    def validate(self):
        from envs.levels import SPACES
        if self.method != "groove":
            raise ConfigError(f"GrooveConfig is for method 'groove', got {self.method!r}")
        if self.env not in SPACES:
            raise ConfigError(f"unknown level space {self.env!r}; valid: {', '.join(SPACES)}")
        for name in ("seeds", "generations", "eval_every", "eval_episodes", "levels_per_generation", "capacity",
                     "lifetime_iterations", "pop", "drift_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.generations % self.eval_every:
            raise ConfigError(f"generations ({self.generations}) must be a multiple of eval_every ({self.eval_every})")
        if self.capacity < self.levels_per_generation:
            raise ConfigError(f"capacity ({self.capacity}) must be at least levels_per_generation "
                              f"({self.levels_per_generation})")
        es_lib.ESConfig(pop=self.pop, sigma=self.sigma, lr=self.es_lr).validate()
        self.ppo_config().validate()
        return self

    def ppo_config(self):
        return cfg.inner_config(ppo.PPOConfig, dict(
            env=self.env, total_steps=self.lifetime_iterations * self.num_envs * self.num_steps,
            num_envs=self.num_envs, num_steps=self.num_steps, num_epochs=self.num_epochs,
            num_minibatches=self.num_minibatches, hidden=tuple(self.hidden), lr=self.lr, gamma=self.gamma,
            ent_coef=self.ent_coef), self.ppo, "ppo")

    @property
    def num_iterations(self):
        return self.generations


@struct.dataclass
class GrooveState:
    es_state: object
    buffer: ed.Buffer
    key: jax.Array


class Groove(NamedTuple):
    config: GrooveConfig
    space: object
    init: Callable        # key -> GrooveState
    generation: Callable  # (state, coin_key) -> (state, metrics)
    evaluate: Callable    # (state, key) -> {"learned": solved [L, E], "ppo_clip": solved [L, E], ...}
    mean_objective: Callable


def make(config: GrooveConfig, space=None) -> Groove:
    from envs import levels as level_spaces
    config = config.validate()
    if space is None:
        space = level_spaces.make(config.env, **config.space_kwargs)
    objective = lo.learned(None)
    learner = ppo.make(config.ppo_config(), env=space.env, env_params=space.template, objective=objective)
    reference = ppo.make(config.ppo_config(), env=space.env, env_params=space.template)
    hparams = ppo.hparams_from(learner.config)
    template = lo.init_drift(jax.random.key(0), hidden=config.drift_hidden)
    es = es_lib.make(es_lib.ESConfig(pop=config.pop, sigma=config.sigma, lr=config.es_lr), template)
    K = config.levels_per_generation
    window = lo.final_window(config.lifetime_iterations)

    def lifetime_return(objective_params, level, key):
        _, metrics = learner.train(key, hparams, None, objective_params, env_params=level)
        return lo.final_return(metrics, window)

    def reference_return(level, key):
        _, metrics = reference.train(key, hparams, env_params=level)
        return lo.final_return(metrics, window)

    def score(mean_params, levels, key):
        keys = jax.random.split(key, K)
        ref = jax.vmap(reference_return)(levels, keys)
        mine = jax.vmap(lifetime_return, in_axes=(None, 0, 0))(mean_params, levels, keys)
        return ed.algorithmic_regret(ref, mine), ref, mine

    def init(key):
        es_key, fit_key, level_key, score_key, key = jax.random.split(key, 5)
        # start from PPO-clip (the LPO initialisation): regret starts near 0
        mean, _ = lo.fit_to_ppo_clip(fit_key, hidden=config.drift_hidden, steps=300)
        es_state = es.init(es_key, mean)
        levels = jax.vmap(space.sample)(jax.random.split(level_key, K))
        regret, ref, _ = score(mean, levels, score_key)
        buffer = ed.insert(ed.buffer_init(space.template, config.capacity), levels, regret, reference=ref)
        return GrooveState(es_state, buffer, key)

    def generation(state, coin_key):
        key, level_key, ask_key, eval_key, tell_key, score_key = jax.random.split(state.key, 6)
        replay = jax.random.uniform(coin_key) < config.replay_prob
        buffer, idx, replayed = ed.sample(state.buffer, level_key, K, config.temperature, config.staleness_coef)
        fresh = jax.vmap(space.sample)(jax.random.split(level_key, K))
        levels = jax.tree.map(lambda a, b: jnp.where(replay, a, b), replayed, fresh)
        pop, es_state = es.ask(ask_key, state.es_state)
        keys = jax.random.split(eval_key, K)   # every member meets the same levels and seeds
        fitness = jax.vmap(lambda p: jax.vmap(lifetime_return, in_axes=(None, 0, 0))(p, levels, keys).mean())(pop)
        es_state, _ = es.tell(tell_key, pop, fitness, es_state)
        regret, ref, mine = score(es.mean(es_state), levels, score_key)
        buffer = jax.lax.cond(replay, lambda b: ed.update(b, idx, regret),
                              lambda b: ed.insert(state.buffer, fresh, regret, reference=ref), buffer)
        buffer = ed.tick(buffer)
        metrics = {"fitness_mean": fitness.mean(), "fitness_max": fitness.max(), "regret": regret.mean(),
                   "learned_return": mine.mean(), "reference_return": ref.mean(),
                   "replayed": replay.astype(jnp.float32), "buffer_size": ed.size(buffer).astype(jnp.float32),
                   "buffer_mean_score": jnp.where(buffer.filled, buffer.scores, 0.0).sum()
                   / jnp.maximum(ed.size(buffer), 1)}
        return state.replace(es_state=es_state, buffer=buffer, key=key), metrics

    def evaluate(state, key):
        """Solved episodes of a learner trained from scratch on each held-out level."""
        mean = es.mean(state.es_state)
        levels = space.held_out
        n = jax.tree.leaves(levels)[0].shape[0]

        def on(level, key):
            tk, ek = jax.random.split(key)
            ts, _ = learner.train(tk, hparams, None, mean, env_params=level)
            mine = ed.evaluate_policy(learner, ts, level, ek, config.eval_episodes, space.max_steps)[0]
            ts, _ = reference.train(tk, hparams, env_params=level)
            ref = ed.evaluate_policy(reference, ts, level, ek, config.eval_episodes, space.max_steps)[0]
            return mine, ref

        mine, ref = jax.vmap(on)(levels, jax.random.split(key, n))
        return {"returns": mine, "solved": space.solved(mine), "ppo_clip_returns": ref,
                "ppo_clip_solved": space.solved(ref)}

    return Groove(config, space, init, generation, evaluate, lambda s: es.mean(s.es_state))
