"""Online preference optimisation without a reward model: SPO (Swamy et al.
2024, "a minimaximalist approach"), side by side with reward model + PPO on
the same reference, under a preference oracle that may be non-Markovian.

1. The reference policy, its rollouts and the reward model come from the
   reward-model loop (`meta/reward_model.py`): PPO on the gold reward, then
   `pairs` segment pairs of its rollouts labelled by `oracle`
   (`envs.preferences.ORACLES`), then a Bradley-Terry reward model over
   (s, a, s'). With `oracle: worst` a segment is judged by its worst step's
   gold reward, which no sum of per-step rewards equals.
2. `rlhf`: PPO continued from the reference on the reward model minus
   beta * log(pi / pi_ref) (the reward-model loop's RL stage).
3. `spo`: PPO continued from the reference where every rollout (num_envs x
   num_steps) is cut into segments of `segment_len` steps and each segment
   earns, on each of its steps, its win rate against the other envs'
   segments of the same time window: the mean over them of the oracle's
   probability that it is preferred (with label noise eps,
   eps + (1 - 2 eps) p: the expected label, so no labels are sampled),
   shifted and scaled to the gold reward's per-step mean and spread on the
   reference's rollouts (the critic PPO continues with was fitted to gold). No reward model is fitted; the oracle is asked
   about K^2 pairs per iteration (K segments), where rlhf asked about
   `pairs` once. The KL penalty to the reference, if beta > 0, is PPO's
   per-step reward as in rlhf. Segments may span an episode end, as the
   preference data's do.
4. Every `eval_every` iterations each run and the reference play
   `eval_episodes` fresh episodes from the same start states and action
   noise (one key per seed). The first floor(horizon / segment_len)
   segments of each episode are scored by the oracle; reported are the
   win rate against the reference (the oracle's probability that the
   policy's segment t of episode e is preferred to the reference's, averaged
   over t and e), the oracle's metric (the mean segment score: the mean
   worst-moment reward for `worst`, the mean segment return for `bt`), gold
   return and KL(pi || pi_ref) along the policy's own actions.

Each method is one program vmapped over seeds; the loop runs `eval_every`
iterations at a time, checkpointing between chunks, and resumes exactly.
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents import ppo
from envs import preferences as prefs
from envs.core import episode_limit
from meta import reward_model as rmod
from src.config import ConfigError
from src.networks import ActorCritic, RecurrentActorCritic, log_prob, unroll

METHODS = ("spo", "p3o", "dno", "rlhf")


@dataclasses.dataclass(frozen=True)
class SPOConfig(rmod.PreferenceData):
    oracle: str = "worst"
    methods: tuple[str, ...] = METHODS
    pairs: int = 1000                  # the reward model's pairs (rlhf)
    beta: float = 0.0                  # KL penalty to the reference: spo, p3o, rlhf
    # DNO: each iteration a preference loss on the iteration's own pairs, the
    # policy the rollout came from as its reference (agents/preference_losses.py)
    dno_loss: str = "dpo"
    dno_beta: float = 1.0
    dno_steps: int = 10                # Adam steps per iteration, full batch
    dno_lr: float = 3e-5              # 1e-4 and 1e-3 drift far on Pendulum (RESULTS.md)
    dno_margin: float = 0.1            # pairs whose win rates differ less are dropped
    # spo, p3o and dno act in paired envs (ppo's paired_envs: env 2i and 2i+1
    # start from the same state and share the environment's randomness), their
    # envs reset at the start so every pair is in step; rlhf is unchanged
    paired_starts: bool = False
    # the reward model (rlhf), as meta/reward_model.py's
    rm_hidden: tuple[int, ...] = (64, 64)
    rm_steps: int = 2000
    rm_lr: float = 1e-3
    rm_batch: int = 64
    # PPO from the reference
    rl_steps: int = 393_216
    eval_every: int = 8
    eval_episodes: int = 64

    def rm_config(self) -> rmod.RewardModelConfig:
        data = {k: getattr(self, k) for k in rmod.DATA_FIELDS}
        return rmod.RewardModelConfig(**data, pairs=(self.pairs,), beta=(self.beta,), aggregate=("mean",),
                                      rm_hidden=self.rm_hidden, rm_steps=self.rm_steps, rm_lr=self.rm_lr,
                                      rm_batch=self.rm_batch, rl_steps=self.rl_steps, eval_every=self.eval_every,
                                      eval_episodes=self.eval_episodes, bon=(), bon_episodes=1)

    def validate(self):
        rm_config = self.rm_config().validate()
        if not self.methods or any(m not in METHODS for m in self.methods) or len(set(self.methods)) != len(
                self.methods):
            raise ConfigError(f"methods {list(self.methods)}: give one or more of {', '.join(METHODS)}, each once")
        if self.gold != "env":
            raise ConfigError(f"SPO scores segments by the environment's own reward: set gold=env (got {self.gold!r})")
        rl = rm_config.rl_config()
        if rl.num_steps % self.segment_len:
            fits = [d for d in range(1, rl.num_steps + 1) if rl.num_steps % d == 0]
            near = min(fits, key=lambda d: abs(d - self.segment_len))
            raise ConfigError(f"SPO cuts each env's rollout of num_steps={rl.num_steps} into segments of "
                              f"segment_len={self.segment_len} steps: choose a segment_len that divides "
                              f"{rl.num_steps} (the nearest is {near}), or change ppo.num_steps")
        if rl.num_envs < 2:
            raise ConfigError("SPO compares each env's segment with the other envs' of the same time window: set "
                              "ppo.num_envs >= 2")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0 (a KL penalty), got {self.beta}")
        if ("p3o" in self.methods or self.paired_starts) and rl.num_envs % 2:
            raise ConfigError(f"P3O and paired_starts pair env 2i with env 2i+1: set ppo.num_envs to an even number "
                              f"(got {rl.num_envs})")
        if "dno" in self.methods:
            from agents import preference_losses as pl
            try:
                pl.get(self.dno_loss)
            except ValueError as e:
                raise ConfigError(f"dno_loss: {e}") from None
            if self.dno_beta <= 0 or self.dno_lr <= 0 or self.dno_steps < 1:
                raise ConfigError(f"DNO needs dno_beta > 0, dno_lr > 0 and dno_steps >= 1, got "
                                  f"{self.dno_beta}, {self.dno_lr}, {self.dno_steps}")
            if not 0 <= self.dno_margin < 1:
                raise ConfigError(f"dno_margin is a difference of win rates, in [0, 1): got {self.dno_margin}")
        return self


# ----------------------------------------------------------------------------- the self-play reward

def win_rates(scores, temperature, label_noise, oracle: str = "bt"):
    """Each segment's mean probability, under the oracle, of being preferred
    to each other segment: scores [K] (or [K, criteria]) -> [K]. The
    diagonal (a segment against itself, 0.5 at any temperature) is left out."""
    p = prefs.prefer(scores[:, None], scores[None, :], oracle, temperature)
    noise = jnp.asarray(label_noise, jnp.float32)
    p = noise + (1.0 - 2.0 * noise) * p
    k = scores.shape[0]
    return (p.sum(axis=1) - p.diagonal()) / (k - 1)


def segment_win_reward(gold, segment_len: int, oracle: str, temperature, label_noise):
    """SPO's win rates for a time-major rollout's gold rewards [T, N]: every
    step of a segment gets the segment's win rate against the other envs'
    segments of the same time window.

    The same window, not the whole batch: envs that start together are at
    the same phase of their episodes (Pendulum's start hanging down, swing
    up, then balance), and against the whole batch a segment's win rate says
    mostly which phase it is in, which its actions do not choose. On every
    step, not at the segment's last: with PPO's short discount (Pendulum's
    gamma 0.9) a reward at the end would barely reach the segment's early
    actions, which the oracle judges as much."""
    return per_step(window_win_rates(gold, segment_len, oracle, temperature, label_noise).T, segment_len)


def windows(x, segment_len: int):
    """A time-major rollout field [T, N, ...] -> [N, T / segment_len, segment_len, ...]."""
    steps, num_envs = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape(num_envs, steps // segment_len, segment_len, *x.shape[2:])


def per_step(values, segment_len: int):
    """One value per env and window [N, W] -> on every step of its segment, time-major [T, N]."""
    steps = jnp.broadcast_to(values[..., None], (*values.shape, segment_len))
    return steps.reshape(values.shape[0], -1).T


def window_win_rates(gold, segment_len: int, oracle: str, temperature, label_noise):
    """Each segment's win rate against the other envs' segments of its time
    window (`win_rates`), for a time-major rollout's gold rewards [T, N]: [W, N]."""
    scores = prefs.segment_scores(windows(gold, segment_len), oracle)             # [N, W(, criteria)]
    return jax.vmap(lambda window: win_rates(window, temperature, label_noise, oracle), in_axes=1)(scores)


# A win rate among many segments is about uniform on [0, 1]: standard
# deviation 1 / sqrt(12)
WIN_RATE_STD = 1.0 / math.sqrt(12.0)


def on_gold_scale(wins, gold_mean, gold_std):
    """Win rates as rewards with the per-step mean and spread of the gold
    reward on the reference's rollouts. PPO continues from the reference's
    critic, fitted to gold-scale returns: a reward on another scale (win
    rates near 0.5, or a reward model's mean 0) leaves that critic's values
    wrong by a constant, and gamma * V(s') - V(s) then pays for reaching the
    states it rates worst (V < 0 makes -(1 - gamma) V(s') positive). The
    first runs, on raw win rates, lost gold steadily (-354 to -538 under
    the bt oracle)."""
    return gold_mean + gold_std * (wins - 0.5) / WIN_RATE_STD


def episode_segment_scores(gold, segment_len: int, oracle: str):
    """[..., E, H] per-step gold of E episodes -> the oracle's scores of
    their first floor(H / segment_len) segments, [..., E, n]."""
    n = gold.shape[-1] // segment_len
    return prefs.segment_scores(gold[..., :n * segment_len].reshape(*gold.shape[:-1], n, segment_len), oracle)


def win_rate_against(scores, reference_scores, temperature, oracle: str = "bt"):
    """The oracle's probability that segment t of episode e beats the
    reference's segment t of episode e (same start state), averaged."""
    return prefs.prefer(scores, reference_scores, oracle, temperature).mean()


def pairwise_advantage(gold, kl_reward, segment_len: int, oracle: str, temperature, label_noise, scale):
    """P3O's advantage for a time-major rollout ([T, N] gold rewards and
    per-step KL-penalty rewards): env 2i's segment in each time window is
    paired with env 2i+1's; the pair's reward difference, the oracle's
    expected preference on the gold scale (`scale` * (2p - 1), p with label
    noise) plus the difference of their summed KL penalties, is the
    advantage of every step of the first segment, and its negative of the
    second's. Trajectory-level, no critic: a pair shares its prompt (the same
    time window of envs started together), so no baseline is needed."""
    scores = prefs.segment_scores(windows(gold, segment_len), oracle)             # [N, W(, criteria)]
    noise = jnp.asarray(label_noise, jnp.float32)
    p = noise + (1.0 - 2.0 * noise) * prefs.prefer(scores[0::2], scores[1::2], oracle, temperature)   # [N/2, W]
    kl = windows(kl_reward, segment_len).sum(axis=-1)                             # [N, W]
    first = scale * (2.0 * p - 1.0) + kl[0::2] - kl[1::2]
    return per_step(jnp.stack([first, -first], axis=1).reshape(kl.shape), segment_len)   # envs 2i, 2i+1 interleaved


def nash_pairs(gold, segment_len: int, oracle: str, temperature, label_noise, margin):
    """DNO's pairs from one rollout: in each time window the segments are
    ranked by their win rate against the window's others (`win_rates`), and
    the k-th best is paired with the k-th worst (N/2 pairs per window).
    Returns (chosen, rejected) env indices [W, N/2] and a weight [W, N/2]:
    1 where the two win rates differ by at least `margin`, else 0."""
    wins = window_win_rates(gold, segment_len, oracle, temperature, label_noise)   # [W, N]
    order = jnp.argsort(-wins, axis=1)
    half = wins.shape[1] // 2
    chosen, rejected = order[:, :half], order[:, ::-1][:, :half]
    gap = jnp.take_along_axis(wins, chosen, 1) - jnp.take_along_axis(wins, rejected, 1)
    return chosen, rejected, (gap >= margin).astype(jnp.float32)


def segment_log_probs(network, params, rollout, segment_len: int, discrete: bool):
    """Each segment's summed log pi(a_t | .) under `params`, [N, W], for a
    PPO rollout [T, N]: on the network inputs the rollout acted on (already
    normalised: `Rollout.obs`), and, for a recurrent network, over the whole
    rollout unrolled from its first carry, as PPO's update does. At the
    parameters that collected it, the rollout's own log-probabilities."""
    if isinstance(network, RecurrentActorCritic):
        starts = jnp.concatenate([jnp.zeros_like(rollout.done[:1]), rollout.done[:-1]])
        dist, _ = unroll(network, params, jax.tree.map(lambda c: c[0], rollout.carry), rollout.obs, starts)
    else:
        dist = network.apply(params, rollout.obs, method=ActorCritic.policy)
    return windows(log_prob(dist, rollout.action, discrete), segment_len).sum(axis=-1)


# ----------------------------------------------------------------------------- programs

class Programs(NamedTuple):
    config: SPOConfig
    rm: rmod.Programs          # the reward-model loop's: reference, data, reward models, rlhf chunk
    chunks: dict               # method -> (TrainStates, params) -> TrainStates after eval_every iterations
    evaluate: object           # (TrainStates, reference policies, keys) -> (gold [E, H], log-ratio [E])
    reset_paired: object       # (TrainStates, keys) -> the same with every pair of envs reset in step
    start: object              # reference TrainStates -> the learners' first (memory: in the reference's envs)


_PROGRAMS = {}


def make(config: SPOConfig) -> Programs:
    """`build`, cached per config (by value): a stopped run resumed in the
    same process, and tests, reuse the compiled programs."""
    import json
    key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    if key not in _PROGRAMS:
        _PROGRAMS.clear()
        _PROGRAMS[key] = build(config)
    return _PROGRAMS[key]


def build(config: SPOConfig) -> Programs:
    config = config.validate()
    rm_config = config.rm_config()
    programs = rmod.make(rm_config)
    env, env_params = envs.make(config.env, **config.env_kwargs)
    horizon = episode_limit(env, env_params)
    rl_config = rm_config.rl_config()
    # the preference methods' own PPO (rlhf runs the reward-model loop's)
    pref_config = dataclasses.replace(rl_config, paired_envs=config.paired_starts)
    ref_agent = ppo.make(rm_config.reference_config(), env, env_params)
    # where the learners run: with a recurrent reference, an env that follows
    # log pi_ref(a_t | history) through each episode (`ppo.penalised_env`)
    learner = ppo.penalised_env(ref_agent, env, env_params)

    def log_ratio(params, transition):
        return transition.info["log_prob"] - ppo.reference_log_prob(ref_agent, params["ref"], transition)

    def kl_penalty(params, transition):
        return -params["beta"] * log_ratio(params, transition)

    def self_play(params, rollout):
        wins = segment_win_reward(rollout.env_reward, config.segment_len, config.oracle, params["temperature"],
                                  params["label_noise"])
        return rollout.reward + on_gold_scale(wins, params["gold_mean"], params["gold_std"])

    def p3o_advantage(params, rollout, advantages):
        scale = config.segment_len * params["gold_std"] / WIN_RATE_STD   # on the gold scale, as SPO's reward
        return pairwise_advantage(rollout.env_reward, rollout.reward, config.segment_len, config.oracle,
                                  params["temperature"], params["label_noise"], scale)

    spo_agent = ppo.make(pref_config, learner.env, learner.env_params, reward_fn=kl_penalty,
                         rollout_reward=self_play)
    p3o_agent = ppo.make(pref_config, learner.env, learner.env_params, reward_fn=kl_penalty,
                         advantage_fn=p3o_advantage)
    hparams = ppo.hparams_from(rl_config)
    network, discrete = spo_agent.network, envs.is_discrete(env, env_params)

    def ppo_chunk(agent):
        return lambda ts, params: agent.run(ts, hparams, params, None, learner.params(params["ref"]),
                                            num_iterations=config.eval_every)[0]

    from agents import preference_losses as pl
    from jax.flatten_util import ravel_pytree
    dno_loss = pl.LOSSES[config.dno_loss]
    # PPO's own optimiser, so DNO continues the reference's Adam state in the train state
    dno_tx = ppo.unscaled_adam(rl_config.max_grad_norm)
    length = float(config.segment_len)

    def dno_iteration(ts, params):
        """One DNO iteration: a rollout of the current policy (observation
        statistics frozen), its pairs (`nash_pairs`), then dno_steps Adam
        steps of the preference loss with the rollout's policy as reference."""
        ts, rollout = spo_agent.collect(ts, params, learner.params(params["ref"]), update_obs_stats=False)
        chosen, rejected, weight = nash_pairs(rollout.env_reward, config.segment_len, config.oracle,
                                              params["temperature"], params["label_noise"], config.dno_margin)
        old = windows(rollout.log_prob, config.segment_len).sum(axis=-1)               # [N, W]
        w = jnp.arange(chosen.shape[0])[:, None]
        pick = lambda x, env: x[env, w]                                                 # noqa: E731
        flat, unravel = ravel_pytree(ts.params)

        def segment_logp(flat_params, env):
            return pick(segment_log_probs(network, unravel(flat_params), rollout, config.segment_len, discrete), env)

        def loss_fn(flat_params):
            batch = pl.PairBatch(segment_logp(flat_params, chosen).ravel(), segment_logp(flat_params, rejected).ravel(),
                                 pick(old, chosen).ravel(), pick(old, rejected).ravel(),
                                 jnp.full(weight.size, length), jnp.full(weight.size, length), weight=weight.ravel())
            return dno_loss(batch, pl.loss_params(beta=config.dno_beta))

        def adam_step(carry, _):
            flat_params, opt_state = carry
            grads = jax.grad(loss_fn)(flat_params)
            updates, opt_state = dno_tx.update(grads, opt_state, flat_params)
            return (flat_params - config.dno_lr * updates, opt_state), None

        (flat, opt_state), _ = jax.lax.scan(adam_step, (flat, ts.opt_state), None, length=config.dno_steps)
        return ts.replace(params=unravel(flat), opt_state=opt_state, iteration=ts.iteration + 1)

    def dno_chunk(ts, params):
        return jax.lax.fori_loop(0, config.eval_every, lambda _, t: dno_iteration(t, params), ts)

    chunks = {"spo": ppo_chunk(spo_agent), "p3o": ppo_chunk(p3o_agent), "dno": dno_chunk}

    # the scorer's "reward" records [gold, log-ratio] per step
    scorer = ppo.make(dataclasses.replace(rl_config, num_envs=config.eval_episodes, num_minibatches=1), learner.env,
                      learner.env_params, reward_fn=lambda p, tr: jnp.stack([tr.reward, log_ratio(p, tr)]))

    def evaluate(ts, reference, key):
        levels = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.eval_episodes, *jnp.shape(x))),
                              learner.params(reference))
        reset_key, run_key = jax.random.split(key)
        fresh = scorer.reset_envs(ts.replace(key=run_key), reset_key, levels)
        _, rollout = scorer.collect(fresh, {"ref": reference}, learner.params(reference), horizon,
                                    update_obs_stats=False)
        per_step = jnp.swapaxes(rollout.reward, 0, 1)                        # [E, H, 2]
        return per_step[..., 0], per_step[..., 1].sum(axis=1)

    train_levels = jax.tree.map(lambda x: jnp.broadcast_to(x, (rl_config.num_envs, *jnp.shape(x))),
                                learner.env_params)

    def reset_paired(ts, key):
        return spo_agent.reset_envs(ts, key, train_levels)

    return Programs(config, programs, {m: jax.jit(jax.vmap(chunks[m])) for m in config.methods if m in chunks},
                    jax.jit(jax.vmap(evaluate)), jax.jit(jax.vmap(reset_paired)), learner.start)


def run(config: SPOConfig, show_progress: bool = True, log=print, restore=None, on_chunk=None,
        stop_at: int | None = None):
    """The whole comparison. `restore(ts) -> (ts, iterations done)` and
    `on_chunk(ts, done, rows)` as in `meta.reward_model.sweep`; the state is
    a dict {method: TrainStates [seeds, ...]}. Returns a dict of plain
    numbers: the reward models' accuracy, the reference's scores and one row
    per (method, seed, evaluation)."""
    import time

    from src import progress
    programs = make(config)
    c = programs.config
    _, _, _, _, eval_keys = rmod.stage_keys(c.rm_config())
    ref_ts, rollouts, ensembles, accuracy, timing = rmod.learned_rewards(programs.rm, log)
    gold_mean, gold_std = rmod.gold_scale(rollouts)
    reference = rmod.policy_of(ref_ts)
    seeds = range(c.seeds)
    rlhf_params = {"rm": ensembles[c.pairs], "uwo_lambda": jnp.full((c.seeds,), 1.0, jnp.float32),
                   "ref": reference, "weights": jnp.tile(programs.rm.aggregation_weights["mean"], (c.seeds, 1)),
                   "beta": jnp.full((c.seeds,), c.beta, jnp.float32), "gold_mean": gold_mean, "gold_std": gold_std}
    spo_params = {"ref": reference, "beta": jnp.full((c.seeds,), c.beta, jnp.float32),
                  "temperature": jnp.full((c.seeds,), c.temperature, jnp.float32),
                  "label_noise": jnp.full((c.seeds,), c.label_noise, jnp.float32),
                  "gold_mean": gold_mean, "gold_std": gold_std}
    chunks = {m: (lambda ts, chunk=chunk: chunk(ts, spo_params)) for m, chunk in programs.chunks.items()}
    chunks["rlhf"] = lambda ts: programs.rm.rlhf_chunk(ts, rlhf_params)[0]

    ref_gold, _ = jax.tree.map(np.asarray, programs.evaluate(programs.start(ref_ts), reference, eval_keys))
    ref_scores = np.asarray(episode_segment_scores(jnp.asarray(ref_gold), c.segment_len, c.oracle))
    rows = []

    def record(states, iteration):
        batch = programs.rm.rl_agent.config.batch_size
        for method in c.methods:
            gold, ratio = jax.tree.map(np.asarray, programs.evaluate(states[method], reference, eval_keys))
            scores = np.asarray(episode_segment_scores(jnp.asarray(gold), c.segment_len, c.oracle))
            for s in seeds:
                kl = max(float(ratio[s].mean()), 0.0)
                rows.append({"method": method, "seed": s, "iteration": iteration, "env_steps": iteration * batch,
                             "win_rate": float(win_rate_against(jnp.asarray(scores[s]), jnp.asarray(ref_scores[s]),
                                                                c.temperature, c.oracle)),
                             "oracle_metric": float(scores[s].mean()), "gold": float(gold[s].sum(axis=1).mean()),
                             "kl": kl, "d": math.sqrt(kl)})

    states = {m: programs.start(ref_ts) for m in c.methods}
    if c.paired_starts:   # every pair of envs in step from the first rollout
        paired = programs.reset_paired(programs.start(ref_ts),
                                       jax.vmap(lambda k: jax.random.fold_in(k, 1 << 21))(eval_keys))
        states.update({m: paired for m in c.methods if m != "rlhf"})
    start = time.time()
    total = c.rm_config().rl_iterations()
    stop = total if stop_at is None else stop_at
    states, first = restore(states) if restore is not None else (states, 0)
    if first == 0:
        record(states, 0)
    with progress.bar(total, desc=f"{' and '.join(c.methods)}, {c.seeds} seeds", enabled=show_progress,
                      initial=first) as bar:
        for done in range(first + c.eval_every, stop + 1, c.eval_every):
            before = len(rows)
            states = {m: chunks[m](states[m]) for m in c.methods}
            record(states, done)
            if on_chunk is not None:
                on_chunk(states, done, rows[before if done > c.eval_every else 0:])
            if bar is not None:
                bar.update_to(done)
    timing["rl_s"] = time.time() - start
    log(f"{' and '.join(c.methods)}: {c.seeds} seeds x {total * programs.rm.rl_agent.config.batch_size} steps "
        f"in {timing['rl_s']:.0f} s")
    return {"accuracy": accuracy[c.pairs], "rows": rows, "timing": timing, "complete": stop >= total,
            "reference": {"oracle_metric": [float(ref_scores[s].mean()) for s in seeds],
                          "gold": [float(ref_gold[s].sum(axis=1).mean()) for s in seeds]}}


def summarise(config: SPOConfig, rows):
    """Per method: the final evaluation's win rate, oracle metric, gold and d,
    mean and standard error over seeds, and the best point of the mean
    curve (where the win rate peaks)."""
    out = {}
    for method in config.methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        last = max(r["iteration"] for r in mine)
        final = [r for r in mine if r["iteration"] == last]
        entry = {"iteration": last}
        for name in ("win_rate", "oracle_metric", "gold", "d"):
            values = np.array([r[name] for r in final])
            entry[name] = float(values.mean())
            entry[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        iterations = sorted({r["iteration"] for r in mine})
        curve = [np.mean([r["win_rate"] for r in mine if r["iteration"] == i]) for i in iterations]
        entry["peak_win_rate"], entry["peak_iteration"] = float(max(curve)), int(iterations[int(np.argmax(curve))])
        out[method] = entry
    return out
