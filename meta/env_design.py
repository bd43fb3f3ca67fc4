"""Unsupervised environment design: a level buffer, level scores, and the
methods DR, PLR, robust PLR, ACCEL and PAIRED, as pure functions.

Levels are env_params pytrees from a `envs.levels.LevelSpace`. The student is
our PPO (memory-free, or recurrent with `ppo: {memory: gru|lstm}`), driven
one iteration at a time through `agent.step`; it trains on a
different level per parallel environment because the level space's
environment keeps the level in its state (`envs.levels.LevelInState`):
swapping levels is the agent contract's `reset_envs` with the new levels
(which also restarts a recurrent student's carry: a new level is a new
episode).

One outer iteration trains the student exactly once (num_envs * num_steps
env steps), for every method, so methods compare at equal student env steps
and gradient updates. What differs is which levels it trains on and what
else is spent on scoring (rollouts that are not trained on):

    dr          train on fresh random levels
    plr         coin(replay_prob): train on levels replayed from the buffer,
                else on fresh ones; then score what was trained on (insert or
                update)
    (`score_trained_rollout`: levels trained on are scored from the rollout
    trained on instead of a fresh one after the update: one rollout fewer)
    robust_plr  score a fresh batch without training on it (insert); then
                train on a replayed batch and rescore it
    accel       train on a replayed batch and rescore it; then coin: edit
                (mutate) those levels, or draw fresh ones, score without
                training, insert
    paired      an adversary (a level distribution trained by REINFORCE)
                proposes levels; protagonist and antagonist PPO both train on
                them; the adversary's reward is the regret
                max(antagonist return) - mean(protagonist return)

The replay coin is drawn from a key shared by all vmapped seeds, so that
`lax.cond` stays a branch instead of becoming a select that runs both sides;
every other random choice is per seed.

Scores (higher = replay sooner), for one level from a rollout of T steps:
    positive value loss   mean_t max(A_t, 0), A the GAE(gamma, lambda) advantages
    MaxMC                 mean_t (R_max - V(s_t)), R_max the highest episode
                          return ever seen on the level (undiscounted)
    algorithmic regret    R_ref - R_learner: the return of a reference PPO
                          trained from scratch on the level, minus the learner's
"""
import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from agents import ppo
from agents.base import evaluate_with_memory
from src import config as cfg
from src.config import ConfigError
from src.evaluate import evaluate as run_evaluation
from src.gae import gae

METHODS = ("dr", "plr", "robust_plr", "accel", "paired")
SCORES = ("pvl", "maxmc", "regret")


# ---------------------------------------------------------------- the buffer

@struct.dataclass
class Buffer:
    levels: object          # level pytree, leading axis = capacity
    scores: jax.Array       # float32 [capacity]
    max_returns: jax.Array  # float32 [capacity], best episode return seen (MaxMC)
    reference: jax.Array    # float32 [capacity], reference learner's return (algorithmic regret)
    last_seen: jax.Array    # int32 [capacity], clock at the last sample or insert
    filled: jax.Array       # bool [capacity]
    clock: jax.Array        # int32 [], advanced once per outer iteration


def buffer_init(template, capacity: int) -> Buffer:
    if capacity < 1:
        raise ConfigError(f"buffer capacity must be >= 1, got {capacity}")
    zeros = jnp.zeros((capacity,), jnp.float32)
    return Buffer(jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), template),
                  zeros, jnp.full((capacity,), -jnp.inf, jnp.float32), zeros,
                  jnp.zeros((capacity,), jnp.int32), jnp.zeros((capacity,), bool), jnp.zeros((), jnp.int32))


def tick(buffer: Buffer) -> Buffer:
    return buffer.replace(clock=buffer.clock + 1)


def size(buffer: Buffer):
    return buffer.filled.sum()


def score_probs(buffer: Buffer, temperature) -> jax.Array:
    """Rank prioritisation: h_i = (1/rank_i)^(1/T) over filled entries, rank 1
    the highest score (ties broken by index), normalised."""
    key = jnp.where(buffer.filled, -buffer.scores, jnp.inf)
    order = jnp.argsort(key, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(1, order.shape[0] + 1))
    h = jnp.where(buffer.filled, (1.0 / rank.astype(jnp.float32)) ** (1.0 / temperature), 0.0)
    return h / jnp.maximum(h.sum(), 1e-30)


def staleness_probs(buffer: Buffer) -> jax.Array:
    """P_C(i) proportional to clock - last_seen(i); uniform over filled when all are fresh."""
    stale = jnp.where(buffer.filled, (buffer.clock - buffer.last_seen).astype(jnp.float32), 0.0)
    uniform = buffer.filled / jnp.maximum(buffer.filled.sum(), 1)
    return jnp.where(stale.sum() > 0, stale / jnp.maximum(stale.sum(), 1e-30), uniform)


def replay_probs(buffer: Buffer, temperature, staleness_coef) -> jax.Array:
    """P = (1 - rho) P_S + rho P_C."""
    return (1.0 - staleness_coef) * score_probs(buffer, temperature) + staleness_coef * staleness_probs(buffer)


def sample(buffer: Buffer, key, num: int, temperature, staleness_coef):
    """`num` indices drawn (with replacement) from the replay distribution;
    the drawn entries are marked seen now. Returns (buffer, indices, levels)."""
    probs = replay_probs(buffer, temperature, staleness_coef)
    idx = jax.random.choice(key, probs.shape[0], (num,), p=probs)
    buffer = buffer.replace(last_seen=buffer.last_seen.at[idx].set(buffer.clock))
    return buffer, idx, jax.tree.map(lambda x: x[idx], buffer.levels)


def _matches(buffer: Buffer, level) -> jax.Array:
    same = jax.tree.leaves(jax.tree.map(
        lambda b, x: (b == x).reshape(b.shape[0], -1).all(axis=1), buffer.levels, level))
    return jnp.logical_and(jnp.all(jnp.stack(same), axis=0), buffer.filled)


def insert(buffer: Buffer, levels, scores, max_returns=None, reference=None, dedupe: bool = True) -> Buffer:
    """Insert a batch of scored levels one after another. Each goes to an empty
    slot if there is one, else replaces the lowest-scoring entry when its score
    is higher, else is dropped. With `dedupe`, a level already in the buffer
    only has its entry's score refreshed."""
    n = scores.shape[0]
    max_returns = jnp.full((n,), -jnp.inf, jnp.float32) if max_returns is None else max_returns
    reference = jnp.zeros((n,), jnp.float32) if reference is None else reference

    def one(buffer, item):
        level, score, best, ref = item
        empty = ~buffer.filled
        lowest = jnp.argmin(jnp.where(buffer.filled, buffer.scores, jnp.inf))
        slot = jnp.where(empty.any(), jnp.argmax(empty), lowest)
        write = empty.any() | (score > buffer.scores[lowest])
        if dedupe:
            match = _matches(buffer, level)
            dup = match.any()
            slot = jnp.where(dup, jnp.argmax(match), slot)
            best = jnp.where(dup, jnp.maximum(best, buffer.max_returns[slot]), best)
            write = write | dup

        def put(field, value):
            return field.at[slot].set(jnp.where(write, value, field[slot]))

        buffer = buffer.replace(
            levels=jax.tree.map(put, buffer.levels, level), scores=put(buffer.scores, score),
            max_returns=put(buffer.max_returns, best), reference=put(buffer.reference, ref),
            last_seen=put(buffer.last_seen, buffer.clock), filled=put(buffer.filled, True))
        return buffer, None

    buffer, _ = jax.lax.scan(one, buffer, (levels, scores, max_returns, reference))
    return buffer


def update(buffer: Buffer, idx, scores, max_returns=None) -> Buffer:
    """New scores for replayed entries (one of the writes wins for a repeated index)."""
    buffer = buffer.replace(scores=buffer.scores.at[idx].set(scores))
    if max_returns is not None:
        buffer = buffer.replace(max_returns=buffer.max_returns.at[idx].max(max_returns))
    return buffer


# ---------------------------------------------------------------- scores

def positive_value_loss(rewards, values, next_values, terminated, done, gamma, lam):
    """Per level: mean over the T steps of max(GAE advantage, 0). Inputs [T, ...]."""
    advantages, _ = gae(rewards, values, next_values, terminated, done, gamma, lam)
    return jnp.maximum(advantages, 0.0).mean(axis=0)


def max_mc(values, max_return):
    """Per level: mean over the T steps of (R_max - V(s_t)). values [T, ...]."""
    return (max_return - values).mean(axis=0)


def algorithmic_regret(reference_return, learner_return):
    return reference_return - learner_return


def paired_regret(antagonist_returns, protagonist_returns):
    """PAIRED's estimate per level: the antagonist's best episode minus the
    protagonist's mean episode. Inputs [..., episodes]."""
    return antagonist_returns.max(axis=-1) - protagonist_returns.mean(axis=-1)


class LevelRollout(NamedTuple):
    """What scoring a level reads from a rollout (field names as agents/ppo.py's Rollout)."""
    reward: jax.Array        # [T, B]
    value: jax.Array
    next_value: jax.Array
    terminated: jax.Array
    done: jax.Array
    episode_done: jax.Array
    episode_return: jax.Array


def rollout_levels(agent, ts, levels, key, num_steps: int):
    """Every env of the learner reset on its own level (one level per env),
    then `num_steps` steps of the current (sampled) policy through the agent's
    `collect`, values recorded; nothing is trained and the learner's state is
    not changed. Used to score levels."""
    num = jax.tree.leaves(levels)[0].shape[0]
    if num != agent.config.num_envs:
        raise ValueError(f"{num} levels for {agent.config.num_envs} envs: score one level per env")
    reset_key, run_key = jax.random.split(key)
    scoring = agent.reset_envs(ts.replace(key=run_key), reset_key, levels)
    _, rollout = agent.collect(scoring, None, agent.env_params, num_steps)
    return rollout


def rollout_returns(rollout):
    """(mean, max) return of the episodes finished in the rollout, per level.
    A level with no finished episode counts the return so far of its running
    one (a lower bound: 0 for a maze never solved)."""
    finished = rollout.episode_done.sum(axis=0)
    total = (rollout.episode_return * rollout.episode_done).sum(axis=0)
    running = rollout.reward.sum(axis=0)   # no episode ended: the whole rollout is one partial episode
    mean = jnp.where(finished > 0, total / jnp.maximum(finished, 1), running)
    best = jnp.where(finished > 0, jnp.where(rollout.episode_done, rollout.episode_return, -jnp.inf).max(axis=0),
                     running)
    return mean, best


# ---------------------------------------------------------------- configuration

@dataclasses.dataclass(frozen=True)
class UEDConfig:
    env: str = "maze"                 # a level space of envs.levels
    method: str = "robust_plr"
    score: str = "pvl"                # pvl | maxmc | regret
    seed: int = 0
    seeds: int = 5
    num_iterations: int = 100         # student updates (each num_envs * num_steps env steps)
    eval_every: int = 20
    eval_episodes: int = 10           # per held-out level
    train_eval_levels: int = 0        # > 0: the summary adds the final solve rate on this many fresh generator levels
    buffer_iterations: tuple[int, ...] = ()     # iterations at which to picture the buffer (empty: start, middle, end)
    # level space (maze: height, width, max_walls, max_steps, num_edits; physics: mutation_scale)
    space_kwargs: dict = dataclasses.field(default_factory=dict)
    # buffer
    capacity: int = 256
    replay_prob: float = 0.5
    temperature: float = 0.3
    staleness_coef: float = 0.3
    dedupe: bool = True
    # score levels trained on (PLR's replays and new levels, ACCEL's and robust
    # PLR's replays) from the rollout trained on, with the values it was
    # collected with, as the PLR papers and jaxued do; false: from a fresh
    # rollout of the updated student (one more rollout per iteration)
    score_trained_rollout: bool = False
    # student PPO
    num_envs: int = 32
    num_steps: int = 128
    num_epochs: int = 4
    num_minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 3e-4
    gamma: float = 0.995
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    anneal_lr: bool = False
    normalize_obs: bool = False
    # algorithmic regret: reference PPO trained from scratch per scored level
    ref_iterations: int = 10
    ref_num_envs: int = 8
    ref_eval_episodes: int = 4
    # PAIRED adversary (REINFORCE)
    adversary_lr: float = 0.05
    adversary_ent_coef: float = 0.0
    paired_episodes: int = 4          # episodes per level for the regret estimate
    ppo: dict = dataclasses.field(default_factory=dict)   # any other PPOConfig key of the student (--set ppo.KEY=V)

    def validate(self):
        from envs.levels import SPACES
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.score not in SCORES:
            raise ConfigError(f"unknown score {self.score!r}; valid scores: {', '.join(SCORES)}")
        if self.env not in SPACES:
            raise ConfigError(f"unknown level space {self.env!r}; valid: {', '.join(SPACES)}")
        if self.train_eval_levels < 0:
            raise ConfigError(f"train_eval_levels must be >= 0, got {self.train_eval_levels}")
        for name in ("seeds", "num_iterations", "eval_every", "eval_episodes", "capacity", "num_envs",
                     "num_steps", "ref_iterations", "ref_num_envs", "ref_eval_episodes", "paired_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_iterations % self.eval_every:
            raise ConfigError(f"num_iterations ({self.num_iterations}) must be a multiple of eval_every "
                              f"({self.eval_every})")
        self.ppo_config()   # an unknown or doubly set `ppo:` key fails here
        if not 0 <= self.replay_prob <= 1 or not 0 <= self.staleness_coef <= 1 or self.temperature <= 0:
            raise ConfigError("need 0 <= replay_prob <= 1, 0 <= staleness_coef <= 1 and temperature > 0, got "
                              f"{self.replay_prob}, {self.staleness_coef}, {self.temperature}")
        if self.method in ("plr", "robust_plr", "accel") and self.capacity < self.num_envs:
            raise ConfigError(f"capacity ({self.capacity}) must be at least num_envs ({self.num_envs})")
        if any(i < 0 or i > self.num_iterations or i % self.eval_every for i in self.buffer_iterations):
            raise ConfigError(f"buffer_iterations must be multiples of eval_every ({self.eval_every}) in "
                              f"[0, {self.num_iterations}], got {list(self.buffer_iterations)}")
        # the student's own rules, before anything compiles (with memory:
        # minibatches split over envs, never over time steps)
        self.ppo_config().validate()
        # a recurrent student (ppo.memory: gru|lstm) is supported: its carry is
        # reset with every level swap (agent.reset_envs), carried through the
        # scoring rollouts (agent.collect) and restarted per held-out episode
        return self

    def ppo_config(self, reference: bool = False) -> "ppo.PPOConfig":
        num_envs = self.ref_num_envs if reference else self.num_envs
        iterations = self.ref_iterations if reference else self.num_iterations
        return cfg.inner_config(ppo.PPOConfig, dict(
            env=self.env, seeds=self.seeds, total_steps=iterations * num_envs * self.num_steps,
            num_envs=num_envs, num_steps=self.num_steps, num_epochs=self.num_epochs,
            num_minibatches=self.num_minibatches, hidden=tuple(self.hidden), anneal_lr=self.anneal_lr,
            normalize_obs=self.normalize_obs, lr=self.lr, gamma=self.gamma, gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef), self.ppo, "ppo")

    @property
    def uses_buffer(self):
        return self.method in ("plr", "robust_plr", "accel")

    def env_steps_per_iteration(self, max_steps: int) -> dict:
        """Env steps per outer iteration: trained on by the student, and in
        all (scoring rollouts and PAIRED's return estimates included, the
        algorithmic-regret reference runs excluded)."""
        batch = self.num_envs * self.num_steps
        scoring = {"dr": 0, "plr": 1, "robust_plr": 2, "accel": 2, "paired": 0}[self.method] * batch
        if self.score_trained_rollout and self.method in ("plr", "robust_plr", "accel"):
            scoring -= batch
        if self.method == "paired":   # antagonist training + whole evaluation episodes of both students
            return {"trained": batch,
                    "total": 2 * batch + 2 * self.num_envs * self.paired_episodes * max_steps}
        return {"trained": batch, "total": batch + scoring}


# ---------------------------------------------------------------- the methods

@struct.dataclass
class UEDState:
    student: object
    buffer: object
    antagonist: object       # PAIRED only (else None)
    adversary: object        # PAIRED: adversary params
    adversary_opt: object
    key: jax.Array


class UED(NamedTuple):
    config: UEDConfig
    space: object
    agent: object
    hparams: object
    init: Callable           # key -> UEDState
    iteration: Callable      # (state, coin_key) -> (state, metrics)
    evaluate: Callable       # (state, key) -> {"returns": [L, E], "solved": [L, E]}
    score_levels: Callable
    evaluate_training: Callable   # (state, key, num_levels) -> {"solved": [N], "solvable": [N]}


def make(config: UEDConfig, space=None) -> UED:
    """Pure functions of one environment-design run (vmap them over seeds)."""
    from envs import levels as level_spaces
    config = config.validate()
    if space is None:
        space = level_spaces.make(config.env, **config.space_kwargs)
    agent = ppo.make(config.ppo_config(), env=space.env, env_params=space.template)
    hparams = ppo.hparams_from(agent.config)
    ref_agent = ppo.make(config.ppo_config(reference=True), env=space.env, env_params=space.template)
    B, T = config.num_envs, config.num_steps
    gen = jax.vmap(space.sample)
    solvable = jax.vmap(space.solvable)
    adv_opt = optax.adam(config.adversary_lr)

    def train_on(ts, levels, key):
        return agent.step(agent.reset_envs(ts, key, levels), hparams)

    def reference_returns(levels, key):
        """A reference PPO trained from scratch on each level; its mean return."""
        def one(level, key):
            train_key, eval_key = jax.random.split(key)
            ts, _ = ref_agent.train(train_key, ppo.hparams_from(ref_agent.config), env_params=level)
            returns, _ = evaluate_policy(ref_agent, ts, level, eval_key, config.ref_eval_episodes, space.max_steps)
            return returns.mean()
        num = jax.tree.leaves(levels)[0].shape[0]
        return jax.vmap(one)(levels, jax.random.split(key, num))

    def score_levels(ts, levels, key, max_returns=None, reference=None):
        """(scores, best returns seen, reference returns) for a batch of levels."""
        roll_key, ref_key = jax.random.split(key)
        roll = rollout_levels(agent, ts, levels, roll_key, T)
        return score_rollout(roll, levels, ref_key, max_returns, reference)

    def score_rollout(roll, levels, ref_key, max_returns=None, reference=None):
        mean_ret, best_ret = rollout_returns(roll)
        best = best_ret if max_returns is None else jnp.maximum(best_ret, max_returns)
        if config.score == "pvl":
            scores = positive_value_loss(roll.reward, roll.value, roll.next_value, roll.terminated, roll.done,
                                         hparams.gamma, hparams.gae_lambda)
        elif config.score == "maxmc":
            scores = max_mc(roll.value, best)
        else:
            if reference is None:
                reference = reference_returns(levels, ref_key)
            scores = algorithmic_regret(reference, mean_ret)
        ref = jnp.zeros_like(scores) if reference is None else reference
        return scores, best, ref

    def init(key):
        student_key, level_key, score_key, adv_key, ant_key, key = jax.random.split(key, 6)
        student = agent.init(student_key, hparams)
        buffer = antagonist = adversary = adversary_opt = None
        if config.uses_buffer:
            # prefilled with one scored batch, so replay can start at once
            buffer = buffer_init(space.template, config.capacity)
            levels = gen(jax.random.split(level_key, B))
            scores, best, ref = score_levels(student, levels, score_key)
            buffer = insert(buffer, levels, scores, best, ref, config.dedupe)
        if config.method == "paired":
            antagonist = agent.init(ant_key, hparams)
            adversary = space.adversary_init(adv_key)
            adversary_opt = adv_opt.init(adversary)
        return UEDState(student, buffer, antagonist, adversary, adversary_opt, key)

    def sample_replay(buffer, key):
        return sample(buffer, key, B, config.temperature, config.staleness_coef)

    def replay_step(student, buffer, key):
        sample_key, train_key, score_key = jax.random.split(key, 3)
        buffer, idx, levels = sample_replay(buffer, sample_key)
        if config.score_trained_rollout:   # the rollout trained on, with the values it was collected with
            student, metrics, roll = agent.step(agent.reset_envs(student, train_key, levels), hparams,
                                                with_rollout=True)
            scores, best, _ = score_rollout(roll, levels, score_key, buffer.max_returns[idx], buffer.reference[idx])
        else:
            student, metrics = train_on(student, levels, train_key)
            scores, best, _ = score_levels(student, levels, score_key, buffer.max_returns[idx],
                                           buffer.reference[idx])
        return student, update(buffer, idx, scores, best), levels, metrics

    def explore(student, buffer, levels, key):
        scores, best, ref = score_levels(student, levels, key)
        return insert(buffer, levels, scores, best, ref, config.dedupe)

    def iteration(state, coin_key):
        key, k1, k2, k3, k4 = jax.random.split(state.key, 5)
        replay = jax.random.uniform(coin_key) < config.replay_prob   # shared by all seeds
        student, buffer = state.student, state.buffer
        extra = {}
        if config.method == "dr":
            levels = gen(jax.random.split(k1, B))
            student, metrics = train_on(student, levels, k2)
        elif config.method == "plr":
            def replay_branch(student, buffer):
                student, buffer, levels, metrics = replay_step(student, buffer, k2)
                return student, buffer, levels, metrics

            def new_branch(student, buffer):
                levels = gen(jax.random.split(k1, B))
                if config.score_trained_rollout:
                    student, metrics, roll = agent.step(agent.reset_envs(student, k2, levels), hparams,
                                                        with_rollout=True)
                    scores, best, ref = score_rollout(roll, levels, k3)
                    return student, insert(buffer, levels, scores, best, ref, config.dedupe), levels, metrics
                student, metrics = train_on(student, levels, k2)
                return student, explore(student, buffer, levels, k3), levels, metrics

            student, buffer, levels, metrics = jax.lax.cond(replay, replay_branch, new_branch, student, buffer)
        elif config.method == "robust_plr":
            buffer = explore(student, buffer, gen(jax.random.split(k1, B)), k3)
            student, buffer, levels, metrics = replay_step(student, buffer, k2)
        elif config.method == "accel":
            student, buffer, levels, metrics = replay_step(student, buffer, k2)
            # edit the levels just replayed (coin) or draw fresh ones; score, insert
            children = jax.lax.cond(
                replay, lambda: jax.vmap(space.mutate)(jax.random.split(k1, B), levels),
                lambda: gen(jax.random.split(k1, B)))
            buffer = explore(student, buffer, children, k3)
        else:   # paired
            levels, logp, ent = jax.vmap(space.adversary_sample, in_axes=(None, 0))(
                state.adversary, jax.random.split(k1, B))
            student, metrics = train_on(student, levels, k2)
            antagonist, _ = train_on(state.antagonist, levels, k3)
            ep_keys = jax.random.split(k4, 2)
            pro = returns_on(agent, student, levels, ep_keys[0], config.paired_episodes, space.max_steps)
            ant = returns_on(agent, antagonist, levels, ep_keys[1], config.paired_episodes, space.max_steps)
            regret = paired_regret(ant, pro)

            def adversary_loss(params):
                _, lp, en = jax.vmap(space.adversary_sample, in_axes=(None, 0))(params, jax.random.split(k1, B))
                advantage = jax.lax.stop_gradient(regret - regret.mean())
                return -(advantage * lp).mean() - config.adversary_ent_coef * en.mean()

            grads = jax.grad(adversary_loss)(state.adversary)
            updates, adversary_opt = adv_opt.update(grads, state.adversary_opt, state.adversary)
            state = state.replace(adversary=optax.apply_updates(state.adversary, updates),
                                  adversary_opt=adversary_opt, antagonist=antagonist)
            extra = {"regret": regret.mean(), "protagonist_return": pro.mean(), "antagonist_return": ant.mean(),
                     "adversary_entropy": ent.mean()}
        if buffer is not None:
            buffer = tick(buffer)
            extra.update(buffer_mean_score=jnp.where(buffer.filled, buffer.scores, 0.0).sum()
                         / jnp.maximum(size(buffer), 1),
                         buffer_size=size(buffer).astype(jnp.float32),
                         buffer_solvable=jnp.where(buffer.filled, solvable(buffer.levels), False).sum()
                         / jnp.maximum(size(buffer), 1))
        out = {"train_return": metrics["finished_return"], "episode_return": metrics["episode_return"],
               "solvable_trained": solvable(levels).mean(), "replayed": replay.astype(jnp.float32),
               "entropy": metrics["entropy"], "value_loss": metrics["value_loss"], **extra}
        return state.replace(student=student, buffer=buffer, key=key), out

    def evaluate(state, key):
        """Held-out levels, `eval_episodes` sampled-action episodes each."""
        levels = space.held_out
        returns = returns_on(agent, state.student, levels, key, config.eval_episodes, space.max_steps)
        return {"returns": returns, "solved": space.solved(returns)}

    def evaluate_training(state, key, num_levels: int):
        """The training distribution: `num_levels` (static) fresh levels of
        the generator, one sampled-action episode each, and whether each is
        solvable (a maze's goal may be walled off)."""
        level_key, run_key = jax.random.split(key)
        levels = gen(jax.random.split(level_key, num_levels))
        returns = returns_on(agent, state.student, levels, run_key, 1, space.max_steps)[:, 0]
        return {"solved": space.solved(returns), "solvable": solvable(levels)}

    return UED(config, space, agent, hparams, init, iteration, evaluate, score_levels, evaluate_training)


def evaluate_policy(agent, ts, level, key, episodes: int, max_steps: int):
    """Returns and lengths of whole episodes of the stochastic policy on one
    level; a student with memory starts each episode from a fresh carry."""
    if agent.initial_carry is not None:
        policy = lambda obs, k, c: agent.act(ts.params, obs, k, False, ts.obs_stats, carry=c)  # noqa: E731
        return evaluate_with_memory(agent.env, level, policy, agent.initial_carry, key, episodes, max_steps)
    policy = lambda obs, k: agent.act(ts.params, obs, k, False, ts.obs_stats)  # noqa: E731
    return run_evaluation(agent.env, level, policy, key, episodes, max_steps)


def returns_on(agent, ts, levels, key, episodes: int, max_steps: int):
    """[num_levels, episodes] returns of whole episodes on each level."""
    num = jax.tree.leaves(levels)[0].shape[0]
    return jax.vmap(lambda lv, k: evaluate_policy(agent, ts, lv, k, episodes, max_steps)[0])(
        levels, jax.random.split(key, num))
