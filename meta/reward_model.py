"""Optimising a learned reward: reward models from synthetic preferences, and
how far a policy can push them before the gold reward falls (Gao et al. 2022's
overoptimisation curves, Coste et al. 2023's ensembles).

The pipeline, every stage vmapped over seeds:

1. A reference policy: PPO trained on the gold reward (the environment's) for
   `reference_steps`, partly trained on purpose (the "SFT" policy); or the
   final policies of a `run.py train` PPO run (`reference_run`).
2. Preference data: rollouts of the reference policy (through the agent's
   `collect`), cut into segment pairs and labelled by the Bradley-Terry
   oracle of the gold returns, with label noise (`envs/preferences.py`).
3. Reward models: an ensemble of `ensemble` MLPs over (s, a, s') per pair
   count, trained by Bradley-Terry cross-entropy, each member normalised to
   mean 0 and std 1 over the reference rollouts (`envs/reward_models.py`).
   Aggregated as mean, worst case (member minimum) or uncertainty-weighted
   (mean - lambda * variance); the aggregation is a traced weight vector, so
   every aggregation shares one program.
4. Optimisation against the proxy, two ways:
   - best-of-n over reference episodes ranked by the proxy, with the
     analytic KL log n - (n - 1)/n (`envs/overoptimisation.py`);
   - PPO continued from the reference policy's state on the per-step reward
     r_proxy - beta * (log pi(a|s) - log pi_ref(a|s)) (RLHF's KL penalty;
     beta is a traced leaf of the reward parameters, so a beta sweep is a
     vmap). Every `eval_every` iterations the policy is evaluated on
     `eval_episodes` whole episodes: gold return, proxy return, and
     KL(pi || pi_ref) of the episode distribution (the sum over the episode
     of log pi - log pi_ref along the policy's own actions: an unbiased
     estimate of the trajectory KL). Every evaluation of a run uses the
     same key (common random numbers: the same start states and action
     noise), so the differences along a curve are the policy's, not the
     start states' (Pendulum's returns vary by hundreds between them).

The x-axis of every curve is d = sqrt(KL(pi || pi_ref)) per episode.
"""
import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import envs
from agents import ppo
from envs import overoptimisation as oo
from envs import preferences as prefs
from envs import reward_models as rm
from envs.core import episode_limit
from envs.rewards import env_reward
from src import config as cfg
from src.config import ConfigError

# the ensemble's aggregations, and "single": its first member alone (a single
# reward model trained on the same data, for comparison)
AGGREGATIONS = (*rm.AGGREGATIONS, "single")
GOLDS = ("env", "random")


def load_reference_run(config):
    """(module, PPO config, members) of `config.reference_run`, checked
    against the experiment: a PPO run with a checkpoint, on this environment,
    with at least `seeds` members, and no ppo: settings of its own to clash."""
    import agents
    module, run_config, members = agents.load_run(config.reference_run, need_checkpoint=True)
    where = f"reference_run {config.reference_run}"
    if module is not ppo:
        raise ConfigError(f"{where} is a {run_config.__class__.__name__} run: the reference must be a PPO run "
                          "(the KL penalty and the preference losses need its log-probabilities)")
    if (run_config.env, dict(run_config.env_kwargs)) != (config.env, dict(config.env_kwargs)):
        raise ConfigError(f"{where} was trained on {run_config.env} {dict(run_config.env_kwargs) or ''}, this "
                          f"experiment is on {config.env} {dict(config.env_kwargs) or ''}: set env (and env_kwargs) "
                          f"to the run's, or train a reference on {config.env} with run.py train")
    if len(members) < config.seeds:
        raise ConfigError(f"{where} has {len(members)} members, fewer than seeds = {config.seeds}: set seeds <= "
                          f"{len(members)} or train the reference with more seeds")
    if config.ppo:
        raise ConfigError(f"{where}: its PPO settings are the run's; remove the ppo: block ({sorted(config.ppo)})")
    return module, run_config, members


@dataclasses.dataclass(frozen=True)
class PreferenceData:
    """The settings of the reference policy and its preference data, shared
    by every loop on them (this one and meta/prefopt.py): equal settings give
    equal references, rollouts and pairs."""
    env: str = "Pendulum-v1"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    # the gold reward: "env", the environment's own; "random", a frozen randomly
    # initialised wide network over (s, a, s') (as Gao et al.'s large gold model),
    # one for all seeds, unscaled (the oracle's temperature is in its units);
    # the reference policy is still trained on the environment's reward
    gold: str = "env"
    gold_width: int = 256
    seed: int = 0
    seeds: int = 5
    # the reference policy, PPO on the gold reward (any PPOConfig key under ppo:)
    reference_steps: int = 200_000
    ppo: dict = dataclasses.field(default_factory=dict)
    # or a `run.py train` PPO run directory: its first `seeds` members' final
    # states are the references (its env and PPO settings; leave ppo: empty)
    reference_run: str = ""
    # preference data from the reference policy's rollouts
    data_envs: int = 64
    data_steps: int = 400              # steps per env of the reference rollouts segments are cut from
    held_out_pairs: int = 1000         # drawn separately, for the reward models' accuracy
    segment_len: int = 25
    temperature: float = 1.0           # Bradley-Terry temperature of the oracle (0: deterministic)
    label_noise: float = 0.0
    # what the oracle compares (envs.preferences.ORACLES): "bt", the segments'
    # gold returns; "worst", their worst step's gold reward (non-Markovian)
    oracle: str = "bt"


DATA_FIELDS = tuple(f.name for f in dataclasses.fields(PreferenceData))


@dataclasses.dataclass(frozen=True)
class RewardModelConfig(PreferenceData):
    pairs: tuple[int, ...] = (100, 1000, 10000)
    # reward models
    ensemble: int = 1
    bootstrap: bool = False            # False: members differ by seed only; True: and by a resample of the pairs
    aggregate: tuple[str, ...] = ("mean",)
    uwo_lambda: float = 1.0
    rm_hidden: tuple[int, ...] = (64, 64)
    rm_steps: int = 2000
    rm_lr: float = 1e-3
    rm_batch: int = 64
    # optimisation against the proxy
    beta: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0)
    rl_steps: int = 500_000
    eval_every: int = 10               # PPO iterations between curve points
    eval_episodes: int = 32
    bon: tuple[int, ...] = (1, 4, 16, 64, 256)
    bon_episodes: int = 512            # reference episodes best-of-n draws from (>= max n)
    # online: every `online_every` PPO iterations (0: never) each run's reward
    # model is trained further on `online_pairs` new pairs of the learner's own
    # rollouts (data_envs x data_steps, labelled by the same oracle), with
    # every pair collected online so far, for `online_rm_steps` Adam steps
    online_every: int = 0
    online_pairs: int = 200
    online_rm_steps: int = 200

    def reference_config(self) -> "ppo.PPOConfig":
        if self.reference_run:
            return load_reference_run(self)[1]
        base = {"env": self.env, "env_kwargs": self.env_kwargs, "seed": self.seed, "seeds": self.seeds,
                "total_steps": self.reference_steps}
        return cfg.inner_config(ppo.PPOConfig, base, self.ppo, "ppo")

    def rl_config(self) -> "ppo.PPOConfig":
        """The reference's PPO, continued on the proxy: no learning-rate
        schedule (the run starts from the reference's state, mid-way)."""
        ref = self.reference_config()
        return dataclasses.replace(ref, total_steps=self.rl_steps, anneal_lr=False).validate()

    def rl_iterations(self) -> int:
        """PPO iterations on the proxy: rl_steps' worth, rounded down to whole
        evaluation intervals (at least one)."""
        return max(self.rl_config().num_iterations // self.eval_every, 1) * self.eval_every

    def validate(self):
        envs.check_name(self.env)
        if self.gold not in GOLDS:
            raise ConfigError(f"unknown gold reward {self.gold!r}; choose one of {', '.join(GOLDS)}")
        try:
            prefs.check_oracle(self.oracle)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for kind in self.aggregate:
            if kind not in AGGREGATIONS:
                raise ConfigError(f"unknown aggregation {kind!r}; choose from {', '.join(AGGREGATIONS)}")
        if not self.aggregate or not self.pairs or not self.beta:
            raise ConfigError("aggregate, pairs and beta each need at least one value")
        if any(b < 0 for b in self.beta):
            raise ConfigError(f"beta must be >= 0 (a KL penalty), got {list(self.beta)}")
        if self.ensemble < 1:
            raise ConfigError(f"ensemble must be >= 1, got {self.ensemble}")
        if self.ensemble == 1 and any(k in ("wco", "uwo") for k in self.aggregate):
            raise ConfigError("wco and uwo aggregate an ensemble's members: set ensemble >= 2 (e.g. "
                              "--set ensemble=5) or aggregate=[mean]")
        for name in ("seeds", "data_envs", "data_steps", "held_out_pairs", "rm_steps", "rm_batch", "eval_every",
                     "eval_episodes", "bon_episodes", "reference_steps", "rl_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            prefs.validate(self.data_steps, self.segment_len, min(self.pairs), label_noise=self.label_noise,
                           temperature=self.temperature)
            if self.bootstrap:
                prefs.check_bootstrap(min(self.pairs), self.ensemble)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.bon and max(self.bon) > self.bon_episodes:
            raise ConfigError(f"best-of-{max(self.bon)} needs at least that many reference episodes: "
                              f"set bon_episodes >= {max(self.bon)} (now {self.bon_episodes})")
        if min(self.bon, default=1) < 1:
            raise ConfigError(f"best-of-n needs n >= 1, got {list(self.bon)}")
        self.rl_config()
        if self.online_every:
            if self.online_every < 0 or self.online_every % self.eval_every:
                raise ConfigError(f"online_every ({self.online_every}) must be 0 (offline) or a positive multiple "
                                  f"of eval_every ({self.eval_every}): the reward models change between evaluations")
            if self.online_pairs < 1 or self.online_rm_steps < 1:
                raise ConfigError(f"online_pairs and online_rm_steps must be >= 1, got {self.online_pairs} and "
                                  f"{self.online_rm_steps}")
            try:
                prefs.validate(self.data_steps, self.segment_len, self.online_pairs, label_noise=self.label_noise,
                               temperature=self.temperature)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        return self

    def online_rounds(self) -> int:
        """Reward-model updates during the PPO stage (none after its last iteration)."""
        return (self.rl_iterations() - 1) // self.online_every if self.online_every else 0


class Programs(NamedTuple):
    """One experiment's functions, each jitted and vmapped over its leading
    (member) axis once, so that sweeps of the same config share compiled
    programs (`make` is cached per config)."""
    config: RewardModelConfig
    reference: object          # keys -> (reference TrainStates, metrics)
    data: object               # (reference TrainStates, keys) -> reference rollouts as prefs.Segments [E, T]
    reward_models: dict        # num_pairs -> ((rollouts, keys) -> (normalised ensembles, accuracy dict))
    score_bon: object          # (TrainStates, scoring params, keys) -> per-episode dicts, bon_episodes each
    score_eval: object         # the same with eval_episodes each
    rlhf_chunk: object         # (TrainStates, reward params) -> TrainStates after eval_every iterations
    online_update: object      # (TrainStates, ensembles, buffer, count, reference rollouts, keys) -> the same, online
    rl_agent: object
    aggregation_weights: dict
    gold: tuple                # (reward_fn, reward_params) of the gold reward (envs.rewards.env_reward for "env")
    rl_start: object           # reference TrainStates -> the learner's first TrainStates (memory: + the env wrapper)


_PROGRAMS = {}


def make(config: RewardModelConfig) -> Programs:
    """`build`, cached per config (by value)."""
    import json
    key = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    if key not in _PROGRAMS:
        _PROGRAMS.clear()          # one experiment's programs at a time: they hold compiled code
        _PROGRAMS[key] = build(config)
    return _PROGRAMS[key]


def build(config: RewardModelConfig) -> Programs:
    config = config.validate()
    ref_config = config.reference_config()
    env, env_params = envs.make(config.env, **config.env_kwargs)
    discrete = envs.is_discrete(env, env_params)
    obs_dim = envs.obs_size(env, env_params)
    action_size = envs.action_dim(env, env_params)
    horizon = episode_limit(env, env_params)
    ref_agent = ppo.make(ref_config, env, env_params)
    ref_hparams = ppo.hparams_from(ref_config)

    # where the learner runs: with a recurrent reference, an env that follows
    # log pi_ref(a_t | history) through each episode (`ppo.penalised_env`)
    learner = ppo.penalised_env(ref_agent, env, env_params)

    def rl_params(params):
        """The environment params the learner's programs take."""
        return learner.params(params["ref"])

    def aggregated(params, transition):
        """[mean, member minimum, mean - lambda * variance, first member] of the
        ensemble's rewards (the order of AGGREGATIONS)."""
        members = rm.member_rewards(params["rm"], transition.obs, transition.action, transition.next_obs)
        mean = members.mean(axis=0)
        return jnp.stack([mean, members.min(axis=0), mean - params["uwo_lambda"] * members.var(axis=0), members[0]])

    def penalised_proxy(params, transition):
        """RLHF's per-step reward: the proxy minus beta times the log-ratio of the
        acting policy to the reference on the action taken. The proxy (mean 0,
        std 1 on the reference's rollouts) is put on the gold reward's
        per-step mean and std there: PPO continues with the reference's
        critic, fitted to gold-scale returns, and a reward of another mean
        leaves its values off by a constant, so that gamma * V(s') - V(s)
        pays for reaching the states it rates worst (-(1 - gamma) V(s') > 0
        where V < 0) until the critic catches up."""
        proxy = params["gold_mean"] + params["gold_std"] * jnp.dot(params["weights"], aggregated(params, transition))
        log_ratio = transition.info["log_prob"] - ppo.reference_log_prob(ref_agent, params["ref"], transition)
        return proxy - params["beta"] * log_ratio

    if config.gold == "random":
        gold_fn, gold_params = rm.random_gold(jax.random.PRNGKey(config.seed + 7919), obs_dim, action_size,
                                              discrete, config.gold_width)
    else:
        gold_fn, gold_params = env_reward, None

    def gold_of(transition):
        if config.gold == "env":
            return transition.reward
        return gold_fn(gold_params, transition)

    def scores(params, transition):
        """What an evaluation records per step: every aggregation, the
        log-ratio to the reference and the gold reward."""
        log_ratio = transition.info["log_prob"] - ppo.reference_log_prob(ref_agent, params["ref"], transition)
        return jnp.concatenate([aggregated(params, transition), log_ratio[None], gold_of(transition)[None]])

    rl_config = config.rl_config()
    rl_agent = ppo.make(rl_config, learner.env, learner.env_params, reward_fn=penalised_proxy)
    rl_hparams = ppo.hparams_from(rl_config)

    def scorer(episodes):
        # it only collects, never trains: one iteration's worth of total_steps keeps its config valid
        # however many episodes best-of-n ranks
        return ppo.make(dataclasses.replace(rl_config, num_envs=episodes, num_minibatches=1,
                                            total_steps=episodes * rl_config.num_steps), learner.env,
                        learner.env_params, reward_fn=scores)

    scorers = {n: scorer(n) for n in {config.eval_episodes, config.bon_episodes}}
    # its "reward" records the raw observations (the rollout keeps the policy's normalised input)
    data_agent = ppo.make(dataclasses.replace(ref_config, num_envs=config.data_envs, num_minibatches=1), env,
                          env_params, reward_fn=lambda _, tr: jnp.concatenate([tr.obs, tr.next_obs]).astype(jnp.float32))

    def reference(key):
        return ref_agent.train(key, ref_hparams)

    if config.reference_run:
        def loaded_references(keys):
            """The run's first `seeds` members' final states (the keys are unused)."""
            import agents
            module, run_config, members = load_reference_run(config)
            states = agents.restore_members(config.reference_run, module, ref_agent, run_config, members)
            return take(states, list(range(config.seeds))), None

    def fresh_envs(agent, ts, key, num, env_params=env_params):
        levels = jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), env_params)
        reset_key, run_key = jax.random.split(key)
        return agent.reset_envs(ts.replace(key=run_key), reset_key, levels)

    def data(ts, key, update_obs_stats=True):
        """The policy's rollouts (envs freshly reset) as Segments, time second:
        the reference's preference data, or a learner's online (with its
        observation statistics frozen: `update_obs_stats=False`)."""
        _, rollout = data_agent.collect(fresh_envs(data_agent, ts, key, config.data_envs), None, env_params,
                                        config.data_steps, update_obs_stats=update_obs_stats)
        raw = prefs.Segments(rollout.reward[..., :obs_dim], rollout.action, rollout.reward[..., obs_dim:],
                             rollout.env_reward, rollout.terminated)
        if config.gold == "random":
            raw = prefs.with_gold(raw, gold_fn, gold_params)
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), raw)

    def reward_models(rollouts, key, num_pairs: int):
        pairs, held, rm_key = preference_pairs(config, rollouts, key, num_pairs)
        params, losses, _ = rm.train_ensemble(rm_key, pairs, config.ensemble, config.bootstrap, config.rm_steps,
                                              config.rm_lr, config.rm_batch, action_size, tuple(config.rm_hidden))
        params = rm.normalise(params, rollouts)
        member = rm.accuracy(params, held, oracle=config.oracle)
        acc = {"accuracy_label": member.label.mean(), "accuracy_gold": member.gold.mean(),
               "train_loss": losses[:, -max(config.rm_steps // 10, 1):].mean(),
               **decided_accuracy(params, held, config.oracle)}
        for kind in config.aggregate:
            if kind == "single":
                acc["accuracy_gold_single"] = member.gold[0]
            else:
                acc[f"accuracy_gold_{kind}"] = rm.accuracy(params, held, kind, config.uwo_lambda, config.oracle).gold
        return params, acc

    def score(ts, params, key, episodes: int):
        """Per episode (the first of each of `episodes` fresh envs, run to the
        episode limit): gold return, every aggregation's proxy return and
        the episode's log-ratio to the reference (its mean is KL(pi || pi_ref))."""
        agent = scorers[episodes]
        # the policy's observation statistics frozen: it is then exactly the
        # trained policy (the reference scores KL 0 against itself)
        _, rollout = agent.collect(fresh_envs(agent, ts, key, episodes, rl_params(params)), params,
                                   rl_params(params), horizon, update_obs_stats=False)
        per_step = first_episode_totals(rollout)                                  # [E, 6]
        return {"gold": per_step[:, 5], "log_ratio": per_step[:, 4],
                **{f"proxy_{kind}": per_step[:, i] for i, kind in enumerate(AGGREGATIONS)}}

    def rlhf_chunk(ts, params):
        return rl_agent.run(ts, rl_hparams, params, None, rl_params(params), num_iterations=config.eval_every)

    def online_update(ts, ensemble, buffer, count, reference_rollouts, key):
        """One run's online step: `online_pairs` pairs of the learner's fresh
        rollouts (its observation statistics frozen) join the buffer of
        online pairs at `count`; every member continues its Bradley-Terry fit
        on minibatches drawn uniformly from the buffer's filled part, and is
        normalised again on the reference's rollouts (the proxy keeps its
        scale, which PPO's critic is fitted to). Returns the new ensemble,
        buffer and count, and the members' mean accuracy against gold on the
        new pairs before training on them (how well the reward model knew
        the learner's behaviour)."""
        collect_key, pair_key, fit_key = jax.random.split(key, 3)
        learner = data(ts, collect_key, update_obs_stats=False)
        new = prefs.make_pairs(pair_key, learner, config.segment_len, config.online_pairs, config.temperature,
                               config.label_noise, config.oracle)
        known = rm.accuracy(ensemble, new, oracle=config.oracle).gold.mean()
        buffer = jax.tree.map(lambda b, n: jax.lax.dynamic_update_slice_in_dim(b, n, count, axis=0), buffer, new)
        count = count + config.online_pairs

        def member(params, member_key):
            batches = jax.random.randint(member_key, (config.online_rm_steps, config.rm_batch), 0, count)
            return rm.fit(params, buffer, batches, config.rm_lr)

        members = jax.tree.leaves(ensemble)[0].shape[0]
        ensemble = jax.vmap(member)(ensemble, jax.random.split(fit_key, members))
        return rm.normalise(ensemble, reference_rollouts), buffer, count, known

    weights = {k: jnp.eye(len(AGGREGATIONS), dtype=jnp.float32)[i] for i, k in enumerate(AGGREGATIONS)}
    return Programs(config, loaded_references if config.reference_run else jax.jit(jax.vmap(reference)),
                    jax.jit(jax.vmap(data)),
                    {n: jax.jit(jax.vmap(functools.partial(reward_models, num_pairs=n))) for n in config.pairs},
                    jax.jit(jax.vmap(lambda t, p, k: score(t, p, k, config.bon_episodes))),
                    jax.jit(jax.vmap(lambda t, p, k: score(t, p, k, config.eval_episodes))),
                    jax.jit(jax.vmap(rlhf_chunk)), jax.jit(jax.vmap(online_update)), rl_agent, weights,
                    (gold_fn, gold_params), learner.start)


def preference_keys(key):
    """(training pairs', held-out pairs', reward models') keys of one seed's
    reward-model stage key: `preference_pairs` draws with them, and
    `envs.preferences.pair_starts(first key, ...)` finds the training pairs'
    places in the rollouts."""
    return jax.random.split(key, 3)


def preference_pairs(config, rollouts, key, num_pairs: int):
    """The training pairs, the held-out pairs and the reward models' key drawn
    from one seed's reward-model stage key: the pairs a reward-model run
    trains on are the pairs `meta/prefopt.py` optimises a policy on, for the
    same data settings and seed."""
    pair_key, held_key, rm_key = preference_keys(key)
    pairs = prefs.make_pairs(pair_key, rollouts, config.segment_len, num_pairs, config.temperature,
                             config.label_noise, config.oracle)
    held = prefs.make_pairs(held_key, rollouts, config.segment_len, config.held_out_pairs, config.temperature,
                            config.label_noise, config.oracle)
    return pairs, held, rm_key


def gold_scale(rollouts):
    """Per seed, the mean and std of the gold reward per step on the
    reference's rollouts (leading [seeds, ...]): the scale PPO's continued
    critic was fitted to, which the proxy is put on."""
    gold = jnp.reshape(rollouts.gold, (rollouts.gold.shape[0], -1)).astype(jnp.float32)
    return gold.mean(axis=1), jnp.maximum(gold.std(axis=1), 1e-6)


def first_episode_totals(rollout):
    """The sum of the rollout's reward (any trailing shape) over each env's
    first episode: [E, ...] from time-major [T, E, ...] (the rollout runs at
    least an episode limit from a fresh reset)."""
    ended_before = jnp.cumsum(rollout.episode_done, axis=0) - rollout.episode_done
    first = (ended_before == 0).astype(jnp.float32)                               # [T, E]
    return (rollout.reward * first.reshape(first.shape + (1,) * (rollout.reward.ndim - 2))).sum(axis=0)


def policy_of(ts):
    return {"params": ts.params, "obs_stats": ts.obs_stats}


def best_of_n_curve(episodes: dict, kind: str, ns):
    """Gold and proxy of best-of-n by the proxy of `kind`, for each n, at
    d = sqrt(log n - (n - 1)/n)."""
    proxy, gold = np.asarray(episodes[f"proxy_{kind}"]), np.asarray(episodes["gold"])
    rows = []
    for n in ns:
        kl = float(oo.bon_kl(n))
        rows.append({"n": int(n), "kl": kl, "d": math.sqrt(kl), "gold": float(oo.best_of_n(proxy, gold, n)),
                     "proxy": float(oo.best_of_n(proxy, proxy, n))})
    return rows


def decided_accuracy(params, pairs, oracle: str = "bt"):
    """Accuracy against gold on the pairs whose oracle scores (gold returns,
    for "bt") differ (ties, which count half in `accuracy_gold`, left out),
    mean over members; and the fraction of such pairs (sparse rewards tie
    most segments)."""
    gold_diff = 2.0 * prefs.gold_preference(prefs.segment_scores(pairs.first.gold, oracle),
                                            prefs.segment_scores(pairs.second.gold, oracle), oracle) - 1.0
    decided = (gold_diff != 0).astype(jnp.float32)
    model_diff = jax.vmap(lambda p: rm.segment_return(p, pairs.first) - rm.segment_return(p, pairs.second))(
        rm.as_ensemble(params))
    right = (jnp.sign(model_diff) == jnp.sign(gold_diff)).astype(jnp.float32) * decided
    return {"accuracy_gold_decided": (right.sum(axis=1) / jnp.maximum(decided.sum(), 1.0)).mean(),
            "decided_fraction": decided.mean()}


def check_gold_varies(gold, env: str):
    """Preferences need gold returns that differ: a constant per-step gold
    reward (CartPole pays 1 per step) makes every pair a tie."""
    gold = np.asarray(gold)
    if gold.size and np.all(gold == gold.ravel()[0]):
        raise ConfigError(f"the gold reward of {env} is the same ({gold.ravel()[0]:g}) on every step of the "
                          f"reference's rollouts, so every preference is a tie: use --set gold=random (a random "
                          f"network as the gold reward) or another environment")


def grid(config: RewardModelConfig):
    """The optimisation runs, one per (pair count, aggregation, beta, seed), in
    that nesting order: a list of dicts."""
    return [{"pairs": p, "aggregate": a, "beta": b, "seed": s}
            for p in config.pairs for a in config.aggregate for b in config.beta for s in range(config.seeds)]


def take(tree, index):
    """tree[index] on every leaf: an int or a tuple of ints (one per leading
    axis), or a list of ints (a gather along the first axis)."""
    index = np.asarray(index) if isinstance(index, list) else index
    return jax.tree.map(lambda x: x[index], tree)


def stage_keys(config: RewardModelConfig):
    """Each seed's keys for the five stages (reference, data, reward models,
    best-of-n, evaluation), each [seeds, key]: PRNGKey(seed) split per seed,
    then five ways."""
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    per_stage = jax.vmap(lambda k: jax.random.split(k, 5))(keys)             # [seeds, 5, key]
    return tuple(per_stage[:, i] for i in range(5))


def learned_rewards(programs: Programs, log=print):
    """The stages before any optimisation, deterministic in the config's
    seed: the reference policies, their rollouts, and the reward models per
    pair count. Returns (reference TrainStates, rollouts, {pairs: ensemble
    params [seeds, K, ...]}, {pairs: accuracy lists}, timing). `sweep` starts
    from it; `run.py rewards compare` rebuilds a run's reward models with it."""
    import time
    c = programs.config
    ref_keys, data_keys, rm_keys, _, _ = stage_keys(c)
    timing = {}
    start = time.time()
    ref_ts, _ = programs.reference(ref_keys)
    rollouts = programs.data(ref_ts, data_keys)
    check_gold_varies(rollouts.gold, c.env)
    timing["reference_and_data_s"] = time.time() - start
    source = f"from {c.reference_run}" if c.reference_run else f"trained ({c.reference_steps} steps x {c.seeds} seeds)"
    log(f"reference policy {source} and "
        f"{c.data_envs * c.data_steps} steps of its rollouts per seed collected: {timing['reference_and_data_s']:.0f} s")
    start = time.time()
    ensembles, accuracy = {}, {}
    for num_pairs in c.pairs:
        params, acc = programs.reward_models[num_pairs](rollouts, rm_keys)
        ensembles[num_pairs] = params
        accuracy[num_pairs] = {k: np.asarray(v).tolist() for k, v in acc.items()}
        log(f"{num_pairs} pairs: held-out accuracy against gold {np.mean(acc['accuracy_gold']):.3f} "
            f"(labels {np.mean(acc['accuracy_label']):.3f})")
    timing["reward_models_s"] = time.time() - start
    return ref_ts, rollouts, ensembles, accuracy, timing


def sweep(config: RewardModelConfig, show_progress: bool = True, log=print, restore=None, on_chunk=None,
          stop_at: int | None = None):
    """The whole experiment (see the module docstring): every stage is one
    program vmapped over seeds (reward models: one per pair count), and the
    optimisation is one program over every (pair count, aggregation, beta,
    seed), run `eval_every` iterations at a time with an evaluation between.
    Returns a dict of plain numbers: reward-model accuracy, best-of-n rows,
    RL curve rows, the reference's gold return.

    The stages before the optimisation are recomputed on every call (they are
    deterministic in the seed). `restore(state) -> (state, iterations done)`
    gives the optimisation's checkpoint, if any; `on_chunk(state, done, new
    rl rows)` is called after every chunk (to checkpoint and write rows);
    `stop_at` stops after that many PPO iterations (a multiple of
    eval_every). The state is the runs' TrainStates, and online
    (`online_every` > 0) a dict of them with each run's reward model and its
    buffer of online pairs; online rows carry `rm_accuracy_new_pairs`, the
    reward model's accuracy against gold on the learner's fresh pairs at
    each update (NaN between updates)."""
    import time

    from src import progress
    programs = make(config)
    c = programs.config
    _, _, _, bon_keys, eval_keys = stage_keys(c)
    ref_ts, rollouts, ensembles, accuracy, timing = learned_rewards(programs, log)
    ensembles = jax.tree.map(lambda *x: jnp.stack(x), *ensembles.values())    # [pair counts, seeds, K, ...]

    reference = policy_of(ref_ts)

    gold_mean, gold_std = gold_scale(rollouts)

    def scoring_params(pair_index, seed, kind, beta):
        return {"rm": take(ensembles, (pair_index, seed)), "uwo_lambda": jnp.float32(c.uwo_lambda),
                "ref": take(reference, seed), "weights": programs.aggregation_weights[kind],
                "beta": jnp.float32(beta), "gold_mean": gold_mean[seed], "gold_std": gold_std[seed]}

    def stacked(items):
        return jax.tree.map(lambda *x: jnp.stack(x), *items)

    # best-of-n: the reference's episodes, scored once per (pair count, seed)
    start = time.time()
    bon_members = [(i, s) for i in range(len(c.pairs)) for s in range(c.seeds)]
    bon_params = stacked([scoring_params(i, s, "mean", 0.0) for i, s in bon_members])
    bon_ts = take(ref_ts, [s for _, s in bon_members])
    bon_eps = programs.score_bon(bon_ts, bon_params, bon_keys[np.asarray([s for _, s in bon_members])])
    bon_eps = jax.tree.map(np.asarray, bon_eps)
    bon_rows = []
    for m, (i, s) in enumerate(bon_members):
        episodes = {k: v[m] for k, v in bon_eps.items()}
        for kind in c.aggregate:
            for row in best_of_n_curve(episodes, kind, c.bon):
                bon_rows.append({"method": "bon", "pairs": c.pairs[i], "aggregate": kind, "seed": s, **row})
    reference_gold = [float(bon_eps["gold"][m].mean()) for m, (i, s) in enumerate(bon_members) if i == 0]
    timing["best_of_n_s"] = time.time() - start

    # the optimisation: every (pair count, aggregation, beta, seed) in one program
    runs = grid(c)
    params = stacked([scoring_params(c.pairs.index(r["pairs"]), r["seed"], r["aggregate"], r["beta"]) for r in runs])
    ts = programs.rl_start(take(ref_ts, [r["seed"] for r in runs]))
    eval_key = eval_keys[np.asarray([r["seed"] for r in runs])]
    chunk, evaluate = programs.rlhf_chunk, programs.score_eval
    kinds = np.asarray([AGGREGATIONS.index(r["aggregate"]) for r in runs])
    rl_rows = []
    online = c.online_every > 0
    state = ts
    if online:
        # a fixed-size buffer per run (the pairs of every update), so the update compiles once
        capacity = max(c.online_rounds(), 1) * c.online_pairs
        # shapes only (eval_shape compiles nothing)
        template = jax.eval_shape(lambda r: prefs.make_pairs(jax.random.PRNGKey(0), r, c.segment_len, capacity,
                                                             c.temperature, c.label_noise, c.oracle), take(rollouts, 0))
        buffer = jax.tree.map(lambda x: jnp.zeros((len(runs), *x.shape), x.dtype), template)
        state = {"ts": ts, "rm": params["rm"], "buffer": buffer, "count": jnp.zeros(len(runs), jnp.int32)}
        run_rollouts = take(rollouts, [r["seed"] for r in runs])
        online_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1 << 20))(eval_keys)[
            np.asarray([r["seed"] for r in runs])]

    def record(ts, iteration, key):
        eps = jax.tree.map(np.asarray, evaluate(ts, params, key))
        proxy = np.stack([eps[f"proxy_{k}"] for k in AGGREGATIONS], axis=1)   # [runs, kinds, episodes]
        for m, r in enumerate(runs):
            kl = max(float(eps["log_ratio"][m].mean()), 0.0)
            rl_rows.append({"method": "rl", **r, "iteration": iteration,
                            "env_steps": iteration * programs.rl_agent.config.batch_size,
                            "gold": float(eps["gold"][m].mean()), "proxy": float(proxy[m, kinds[m]].mean()),
                            "kl": kl, "d": math.sqrt(kl), **({"rm_accuracy_new_pairs": math.nan} if online else {})})

    start = time.time()
    total = c.rl_iterations()
    stop = total if stop_at is None else stop_at
    state, first = restore(state) if restore is not None else (state, 0)
    if online:
        params = {**params, "rm": state["rm"]}
    if first == 0:
        record(state["ts"] if online else state, 0, eval_key)
    with progress.bar(total, desc=f"PPO on the proxy, {len(runs)} runs", enabled=show_progress,
                      initial=first) as bar:
        for done in range(first + c.eval_every, stop + 1, c.eval_every):
            before = len(rl_rows)
            ts, _ = chunk(state["ts"] if online else state, params)
            record(ts, done, eval_key)
            if online and done % c.online_every == 0 and done < total:
                keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(online_keys, done)
                ensemble, buffer, count, known = programs.online_update(ts, state["rm"], state["buffer"],
                                                                        state["count"], run_rollouts, keys)
                params = {**params, "rm": ensemble}
                for m, row in enumerate(rl_rows[len(rl_rows) - len(runs):]):
                    row["rm_accuracy_new_pairs"] = float(known[m])
                log(f"iteration {done}: reward models updated online; their accuracy on the learner's new pairs "
                    f"was {float(np.mean(known)):.3f}")
                state = {"ts": ts, "rm": ensemble, "buffer": buffer, "count": count}
            elif online:
                state = {**state, "ts": ts}
            else:
                state = ts
            if on_chunk is not None:
                on_chunk(state, done, rl_rows[before if done > c.eval_every else 0:])
            if bar is not None:
                bar.update_to(done)
    timing["rl_s"] = time.time() - start
    log(f"PPO on the proxy: {len(runs)} runs x {total * programs.rl_agent.config.batch_size} steps in {timing['rl_s']:.0f} s")
    return {"accuracy": accuracy, "bon": bon_rows, "rl": rl_rows, "reference_gold": reference_gold,
            "timing": timing, "complete": stop >= total}


def summarise(config: RewardModelConfig, result: dict):
    """Per curve (method, pair count, aggregation, and beta for RL): the mean
    over seeds at each point, the fitted functional form on gold relative to
    the reference's (Gao et al.), where gold peaks and where it ends."""
    summaries = []
    groups = {}
    for row in result["bon"] + result["rl"]:
        key = (row["method"], row["pairs"], row["aggregate"], row.get("beta"))
        groups.setdefault(key, []).append(row)
    for (method, pairs, kind, beta), rows in groups.items():
        x_name = "n" if method == "bon" else "iteration"
        xs = sorted({r[x_name] for r in rows})
        by_x = {x: [r for r in rows if r[x_name] == x] for x in xs}
        gold = np.array([[r["gold"] for r in sorted(by_x[x], key=lambda r: r["seed"])] for x in xs])   # [points, seeds]
        proxy = np.array([[r["proxy"] for r in sorted(by_x[x], key=lambda r: r["seed"])] for x in xs])
        d = np.array([np.mean([r["d"] for r in by_x[x]]) for x in xs])
        base = gold[0]           # the reference's (n = 1, iteration 0), per seed
        rel = gold - base
        fit = (oo.fit_bon if method == "bon" else oo.fit_rl)(np.repeat(d, gold.shape[1]), rel.ravel())
        mean_gold = gold.mean(axis=1)
        down = oo.turn_down(gold)
        peak = down.peak
        se = gold.std(axis=1, ddof=1) / np.sqrt(gold.shape[1]) if gold.shape[1] > 1 else np.zeros(len(xs))
        summaries.append({
            "method": method, "pairs": pairs, "aggregate": kind, "beta": beta, "points": len(xs),
            "seeds": int(gold.shape[1]), "x": xs, "d": d.tolist(), "gold_mean": mean_gold.tolist(),
            "gold_se": se.tolist(), "proxy_mean": proxy.mean(axis=1).tolist(),
            "peak_d": float(d[peak]), "peak_gold": float(mean_gold[peak]), "final_gold": float(mean_gold[-1]),
            "final_gold_se": float(se[-1]), "final_d": float(d[-1]),
            "rise": down.rise, "rise_se": down.rise_se, "drop": down.drop, "drop_se": down.drop_se,
            # a hump: gold rises to its peak and falls from it, each by more than 2 standard errors
            # (paired by seed), while the proxy still rises
            "hump": bool(down.hump and proxy.mean(axis=1)[-1] > proxy.mean(axis=1)[peak]),
            "fit": fit._asdict()})
    return summaries
