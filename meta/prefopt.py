"""Direct preference optimisation of a control policy, offline: no reward
model, the policy itself trained on segment pairs (DPO, IPO, SLiC, cDPO,
robust DPO, SimPO, RPO, CoPG; `agents/preference_losses.py`). "DPO" here is
Direct Preference Optimisation, not the `--objective dpo` PPO drift.

1. The reference policy and the preference pairs are the reward-model
   loop's (`meta/reward_model.py`): PPO on the gold reward for
   `reference_steps`, its rollouts, and `pairs` segment pairs labelled by
   the Bradley-Terry oracle. For the same data settings and seed they are
   the very pairs a `run.py meta reward-model` run trains its reward models
   on, so the two pipelines' frontiers compare at equal data.
2. Each run (loss, beta, seed) starts from the reference's parameters and
   takes `steps` Adam steps on minibatches of `batch` pairs. A segment's
   log-probability is the sum over its steps of log pi(a_t | s_t) on the
   reference's (frozen) observation statistics; the reference's are computed
   once. The loss is picked by a traced index (`lax.switch`) and beta is a
   traced leaf, so every (loss, beta, seed) is one vmapped program.
3. Every `eval_every` steps the policy runs `eval_episodes` fresh episodes
   (the same start states at every point: one key per run): gold return and
   KL(pi || pi_ref) of the episode (the sum of log pi - log pi_ref along its
   own actions); d = sqrt(KL) is the frontier's x-axis.
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs
from agents import ppo
from agents import preference_losses as pl
from envs import overoptimisation as oo
from envs import preferences as prefs
from envs.core import episode_limit
from meta import reward_model as rmod
from src import normalize
from src.config import ConfigError
from src.networks import log_prob, unroll

# the data settings shared with meta/reward_model.py (same names, same meaning)
DATA_FIELDS = rmod.DATA_FIELDS


@dataclasses.dataclass(frozen=True)
class PrefOptConfig(rmod.PreferenceData):
    pairs: int = 2000
    # the losses and their coefficients (every one traced; one program for all)
    losses: tuple[str, ...] = ("dpo", "ipo", "slic")
    beta: tuple[float, ...] = (0.01, 0.1, 1.0)
    slic_margin: float = 1.0
    simpo_gamma: float = 0.5
    rpo_alpha: float = 1.0
    noise_rate: float = 0.0            # cdpo / robust_dpo's assumed label-flip rate
    # offline training
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-4
    max_grad_norm: float = 1.0
    eval_every: int = 100
    eval_episodes: int = 64

    def data_config(self) -> rmod.RewardModelConfig:
        """The reward-model loop's config with these data settings: its
        reference, rollouts and pairs are this loop's."""
        return rmod.RewardModelConfig(**{k: getattr(self, k) for k in DATA_FIELDS}, pairs=(self.pairs,))

    def validate(self):
        try:
            self.data_config().validate()
        except ConfigError as e:
            raise ConfigError(str(e)) from None
        if not self.losses or not self.beta:
            raise ConfigError("losses and beta each need at least one value")
        for name in self.losses:
            try:
                pl.get(name)
            except ValueError as e:
                raise ConfigError(f"{e} (the losses: key; 'dpo' is Direct Preference Optimisation)") from None
        if len(set(self.losses)) != len(self.losses):
            raise ConfigError(f"losses lists one twice: {list(self.losses)}")
        if any(b <= 0 for b in self.beta):
            raise ConfigError(f"beta must be > 0 for preference losses (it divides IPO's target and scales the "
                              f"log-ratios), got {list(self.beta)}")
        for name in self.losses:
            try:
                pl.check_noise_rate(name, self.noise_rate)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        for name in ("steps", "batch", "eval_every", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps % self.eval_every:
            raise ConfigError(f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every})")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        return self


class Programs(NamedTuple):
    config: PrefOptConfig
    data: object               # rmod.Programs of the data settings (reference, rollouts)
    pairs: object              # (rollouts, keys) -> training pairs per seed
    reference_logps: object    # (reference policies, pairs, rollouts) -> (first, second) summed log pi_ref per pair
    opt_init: object           # policy params -> Adam's state
    chunk: object              # (policy, opt state, key, member) -> the same after eval_every steps, mean loss
    evaluate: object           # (policy, reference, key) -> {"gold", "log_ratio"} per episode


def runs(config: PrefOptConfig):
    """The runs, one per (loss, beta, seed), in that nesting order."""
    return [{"loss": loss, "beta": b, "seed": s} for loss in config.losses for b in config.beta
            for s in range(config.seeds)]


def build(config: PrefOptConfig) -> Programs:
    config = config.validate()
    data_config = config.data_config()
    data = rmod.make(data_config)
    ref_config = data_config.reference_config()
    env, env_params = envs.make(data_config.env, **data_config.env_kwargs)
    ref_agent = ppo.make(ref_config, env, env_params)
    horizon = episode_limit(env, env_params)
    gold_fn, gold_params = data.gold
    losses = [pl.LOSSES[name] for name in config.losses]
    optimiser = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr))
    memory = ref_config.recurrent
    L = config.segment_len

    def segment_logp(params, obs_stats, segments):
        """Summed log pi(a_t | s_t) over each segment's steps: [P]."""
        return ref_agent.log_prob(params, segments.obs, segments.action, obs_stats).sum(axis=-1)

    def trajectory_log_probs(params, obs_stats, rollouts):
        """With memory: log pi(a_t | o_1..o_t) at every step of the reference's
        rollouts [E, T] (collected from fresh resets, so each env's history
        starts at its first step), the carry restarted after each episode's
        end: terminated, or the episode limit reached."""
        def episode_ends(count, terminated):
            done = jnp.logical_or(terminated, count + 1 >= horizon)
            return jnp.where(done, 0, count + 1), done

        terminated = jnp.swapaxes(rollouts.terminated, 0, 1)                            # [T, E]
        _, done = jax.lax.scan(episode_ends, jnp.zeros(terminated.shape[1], jnp.int32), terminated)
        starts = jnp.concatenate([jnp.zeros_like(done[:1]), done[:-1]])
        obs = jnp.swapaxes(rollouts.obs, 0, 1)
        x = normalize.normalize(obs_stats, obs) if ref_config.normalize_obs else obs
        dist, _ = unroll(ref_agent.network, params, ref_agent.initial_carry((obs.shape[1],)), x, starts)
        return jnp.swapaxes(log_prob(dist, jnp.swapaxes(rollouts.action, 0, 1), ref_agent.network.discrete), 0, 1)

    def pair_logps(params, obs_stats, rollouts, starts):
        """With memory: each pair's (first, second) summed log-probs given their
        histories, from the segments' places in the rollouts."""
        logp = trajectory_log_probs(params, obs_stats, rollouts)
        return tuple(prefs.windows_at(logp, traj, start, L).sum(axis=-1) for traj, start in starts)

    def pairs_of(rollouts, key):
        pairs = rmod.preference_pairs(data_config, rollouts, key, config.pairs)[0]
        if not memory:
            return pairs
        # where the training pairs' segments were cut
        num_traj, steps = rollouts.gold.shape[:2]
        return pairs, prefs.pair_starts(rmod.preference_keys(key)[0], num_traj, steps, L, config.pairs)

    def reference_logps(reference, pairs, rollouts):
        if memory:
            return pair_logps(reference["params"], reference["obs_stats"], rollouts, pairs[1])
        return (segment_logp(reference["params"], reference["obs_stats"], pairs.first),
                segment_logp(reference["params"], reference["obs_stats"], pairs.second))

    def chunk(params, opt_state, key, member):
        """eval_every Adam steps; member: loss_index, loss params, pairs, the
        reference's log-probs of them and its observation statistics (and,
        with memory, the pairs' places and the rollouts they were cut from)."""
        pairs, (ref_first, ref_second) = member["pairs"], member["ref_logps"]
        if memory:
            pairs, starts = pairs
        length = jnp.full((config.batch,), float(config.segment_len), jnp.float32)

        def step(carry, step_key):
            params, opt_state = carry
            index = jax.random.randint(step_key, (config.batch,), 0, config.pairs)
            batch = jax.tree.map(lambda x: x[index], pairs)

            def loss_fn(p):
                if memory:   # every step of the rollouts under p, then the batch's segments
                    first, second = pair_logps(p, member["obs_stats"], member["rollouts"], starts)
                    first, second = first[index], second[index]
                else:
                    first = segment_logp(p, member["obs_stats"], batch.first)
                    second = segment_logp(p, member["obs_stats"], batch.second)
                b = pl.pairs_from_label(batch.label, first, second, ref_first[index], ref_second[index], length,
                                        length)
                return jax.lax.switch(member["loss_index"], losses, b, member["loss_params"])

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimiser.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), loss = jax.lax.scan(step, (params, opt_state), jax.random.split(key, config.eval_every))
        return params, opt_state, loss.mean()

    def scores(reference, transition):
        """Per step: log pi - log pi_ref of the action taken, and the gold reward."""
        return jnp.stack([transition.info["log_prob"] - ppo.reference_log_prob(ref_agent, reference, transition),
                          gold_fn(gold_params, transition)])

    # with a recurrent reference, an env that follows log pi_ref(a_t | history)
    learner = ppo.penalised_env(ref_agent, env, env_params)
    scorer = ppo.make(dataclasses.replace(ref_config, num_envs=config.eval_episodes, num_minibatches=1),
                      learner.env, learner.env_params, reward_fn=scores)

    def evaluate(ts, reference, key):
        """`eval_episodes` fresh episodes of the policy in `ts` (its params and
        observation statistics): per episode, gold return and sum of log-ratios."""
        params = learner.params(reference)
        levels = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.eval_episodes, *jnp.shape(x))), params)
        reset_key, run_key = jax.random.split(key)
        ts = scorer.reset_envs(ts.replace(key=run_key), reset_key, levels)
        # the statistics fixed: the policy scored is exactly the trained one
        _, rollout = scorer.collect(ts, reference, params, horizon, update_obs_stats=False)
        totals = rmod.first_episode_totals(rollout)                              # [E, 2]
        return {"log_ratio": totals[:, 0], "gold": totals[:, 1]}

    return Programs(config, data, jax.jit(jax.vmap(pairs_of)), jax.jit(jax.vmap(reference_logps)),
                    jax.jit(jax.vmap(optimiser.init)), jax.jit(jax.vmap(chunk)), jax.jit(jax.vmap(evaluate)))


_PROGRAMS = {}


def make(config: PrefOptConfig) -> Programs:
    """`build`, cached per config (by value), one experiment at a time."""
    import json
    key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    if key not in _PROGRAMS:
        _PROGRAMS.clear()
        _PROGRAMS[key] = build(config)
    return _PROGRAMS[key]


def sweep(config: PrefOptConfig, log=print, restore=None, on_chunk=None, stop_at: int | None = None,
          show_progress: bool = True):
    """Every (loss, beta, seed) run, `eval_every` steps at a time with an
    evaluation between. `restore(state) -> (state, steps done)`, `on_chunk(
    state, done, new rows)` and `stop_at` (a multiple of eval_every) as in
    meta/reward_model.py's sweep. Returns {"rows", "reference_gold", "timing",
    "complete"}; a row per run and evaluation: gold, KL, d, the mean loss of
    the steps before it."""
    import time

    from src import progress
    programs = make(config)
    c = programs.config
    ref_keys, data_keys, rm_keys, _, eval_keys = rmod.stage_keys(programs.data.config)
    timing = {}
    start = time.time()
    ref_ts, _ = programs.data.reference(ref_keys)
    rollouts = programs.data.data(ref_ts, data_keys)
    rmod.check_gold_varies(rollouts.gold, c.env)
    pairs = programs.pairs(rollouts, rm_keys)
    reference = rmod.policy_of(ref_ts)
    ref_logps = programs.reference_logps(reference, pairs, rollouts)
    timing["reference_and_pairs_s"] = time.time() - start
    source = c.reference_run or f"{c.reference_steps} steps"
    log(f"reference policy ({source}) and {c.pairs} pairs per seed: "
        f"{timing['reference_and_pairs_s']:.0f} s")

    members = runs(c)
    seeds = [r["seed"] for r in members]
    member = {"loss_index": jnp.asarray([c.losses.index(r["loss"]) for r in members], jnp.int32),
              "loss_params": jax.vmap(lambda b: pl.loss_params(b, c.slic_margin, c.simpo_gamma, c.rpo_alpha,
                                                               c.noise_rate))(
                  jnp.asarray([r["beta"] for r in members], jnp.float32)),
              "pairs": rmod.take(pairs, seeds), "ref_logps": rmod.take(ref_logps, seeds),
              "obs_stats": rmod.take(ref_ts.obs_stats, seeds),
              # with memory, each step scores its pairs from their places in the rollouts
              "rollouts": rmod.take(rollouts, seeds) if c.data_config().reference_config().recurrent else None}
    ref_of_member = rmod.take(reference, seeds)
    ts = rmod.take(ref_ts, seeds)                 # the policy: the reference's params and statistics to start
    eval_key = eval_keys[np.asarray(seeds)]
    train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(rm_keys)[np.asarray(seeds)]
    state = {"params": ts.params, "opt_state": programs.opt_init(ts.params)}
    rows = []

    def record(state, done, loss):
        eps = jax.tree.map(np.asarray, programs.evaluate(ts.replace(params=state["params"]), ref_of_member,
                                                         eval_key))
        for m, r in enumerate(members):
            kl = max(float(eps["log_ratio"][m].mean()), 0.0)
            rows.append({**r, "step": done, "gold": float(eps["gold"][m].mean()), "kl": kl, "d": math.sqrt(kl),
                         "loss_value": float(loss[m]) if loss is not None else float("nan")})

    start = time.time()
    stop = c.steps if stop_at is None else stop_at
    state, first = restore(state) if restore is not None else (state, 0)
    if first == 0:
        record(state, 0, None)
    with progress.bar(c.steps, desc=f"preference optimisation, {len(members)} runs", enabled=show_progress,
                      initial=first) as bar:
        for done in range(first + c.eval_every, stop + 1, c.eval_every):
            before = len(rows)
            keys = jax.vmap(lambda k, d=done: jax.random.fold_in(k, d))(train_keys)
            params, opt_state, loss = programs.chunk(state["params"], state["opt_state"], keys, member)
            state = {"params": params, "opt_state": opt_state}
            record(state, done, np.asarray(loss))
            if on_chunk is not None:
                on_chunk(state, done, rows[before if done > c.eval_every else 0:])
            if bar is not None:
                bar.update_to(done)
    timing["optimisation_s"] = time.time() - start
    log(f"{len(members)} runs x {stop - first} steps in {timing['optimisation_s']:.0f} s")
    reference_gold = [float(np.mean([r["gold"] for r in rows if r["step"] == 0 and r["seed"] == s
                                     and r["loss"] == c.losses[0] and r["beta"] == c.beta[0]]))
                      for s in range(c.seeds)] if first == 0 else []
    return {"rows": rows, "reference_gold": reference_gold, "timing": timing, "complete": stop >= c.steps}


def summarise(config: PrefOptConfig, rows):
    """Per (loss, beta): mean ± s.e. over seeds of gold and d at every
    evaluation, where gold peaks, where it ends, and whether it turned down
    (peak minus final beyond 2 standard errors, paired by seed:
    envs.overoptimisation.turn_down)."""
    out = []
    for loss in config.losses:
        for beta in config.beta:
            mine = [r for r in rows if r["loss"] == loss and r["beta"] == beta]
            if not mine:
                continue
            steps = sorted({r["step"] for r in mine})
            gold = np.array([[r["gold"] for r in sorted((r for r in mine if r["step"] == s), key=lambda r: r["seed"])]
                             for s in steps])
            d = np.array([np.mean([r["d"] for r in mine if r["step"] == s]) for s in steps])
            mean = gold.mean(axis=1)
            se = gold.std(axis=1, ddof=1) / np.sqrt(gold.shape[1]) if gold.shape[1] > 1 else np.zeros(len(steps))
            down = oo.turn_down(gold)
            peak = down.peak
            out.append({"loss": loss, "beta": beta, "steps": steps, "d": d.tolist(), "gold_mean": mean.tolist(),
                        "gold_se": se.tolist(), "peak_gold": float(mean[peak]), "peak_d": float(d[peak]),
                        "peak_step": steps[peak], "final_gold": float(mean[-1]), "final_gold_se": float(se[-1]),
                        "final_d": float(d[-1]), "rise": down.rise, "rise_se": down.rise_se,
                        "drop": down.drop, "drop_se": down.drop_se, "turns_down": down.significant,
                        "hump": down.hump})
    return out
