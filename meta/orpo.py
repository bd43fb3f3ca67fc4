"""Occupancy-measure regularisation (ORPO; Laidlaw, Singhal and Dragan,
"Correlated Proxies: A New Definition and Improved Mitigation for Reward
Hacking", ICLR 2025) against the action-distribution KL of RLHF.

The setting: a reference ("safe") policy pi_ref, here PPO partly trained on
the gold reward, and a proxy reward that agrees with gold on what pi_ref does
but can be hacked elsewhere. PPO continues from pi_ref's state on

    r_proxy(s, a, s') - beta * penalty(s, a)

with one of these per-step penalties (beta a traced leaf of the reward
parameters, so a sweep over beta, regulariser and seed is one vmapped
program):

- `action_kl`: log pi(a|s) - log pi_ref(a|s), the acting policy's log-prob
  read from `transition.info["log_prob"]` (PPO passes it). Its expectation
  along the policy's own trajectories is KL(pi || pi_ref) of the action
  distributions, summed over the visited states: RLHF's penalty.
- `chi2`: w(s, a) - 1, where w = mu_pi(s, a) / mu_ref(s, a) is the ratio of
  the two policies' state-action occupancy measures. Since
  chi2(mu_pi || mu_ref) = sum_sa mu_ref (w - 1)^2 = E_{mu_pi}[w] - 1, the
  penalty's expectation under the policy's occupancy is the chi^2 divergence;
  its functional derivative with respect to mu_pi is 2w, so with w held fixed
  between discriminator updates the policy gradient of the penalised return
  is that of -beta/2 * chi2 (the factor is absorbed in beta). This is the
  divergence the paper's theory asks for: a proxy that is correlated with the
  gold reward under mu_ref cannot be hacked without chi2(mu_pi || mu_ref)
  growing.
- `om_kl`: log w(s, a), whose expectation under mu_pi is KL(mu_pi || mu_ref)
  of the occupancy measures (the regulariser of ORPO's earlier version,
  "Preventing Reward Hacking with Occupancy Measure Regularization"). Cheap,
  as it shares the discriminator.

The estimator of w. A discriminator d(s, a) (an MLP over the observation
concatenated with the one-hot action) is trained by logistic regression,
policy samples labelled 1 and reference samples 0, with equal numbers of
each:

    L(d) = E_{mu_pi}[softplus(-d)] + E_{mu_ref}[softplus(d)].

Pointwise, the minimiser of mu_pi softplus(-d) + mu_ref softplus(d) (set
its derivative -mu_pi sigmoid(-d) + mu_ref sigmoid(d) to zero) is
d* = log(mu_pi / mu_ref), so the logit itself estimates the log occupancy
ratio and w = exp(d): no density
model of either policy is needed, only samples, which PPO's `collect` gives
(the current policy's TrainState and the reference's, each in its own
envs). Why this estimator: it is the one ORPO uses (the same loss is GAIL's),
it is consistent, and one network serves chi^2 (exp d - 1) and KL (d) alike.
Its weakness is where mu_ref has no samples: logistic loss has no finite
optimum there and d grows with training; the logit is clipped to
[-logit_clip, logit_clip] (w <= e^5 ~ 148 by default), which bounds the
per-step penalty, and the discriminator's last layer starts at zero so that
w = 1 (penalty 0) until it has seen data. The occupancy measure estimated is
that of the rollouts' steps, i.e. the undiscounted per-step state-action
distribution of fixed-length episodes (the states of `collect`'s envs, which
run episode after episode), not the discounted one.

The loop (`build(config).member`, one run; `sweep` runs every run as one
vmapped program): starting from pi_ref's TrainState and a discriminator
with d = 0 (the optimum while the policy is still the reference), `rounds`
times
  1. `ppo_per_round` PPO iterations (`agent.run`) on the penalised proxy, the
     discriminator and pi_ref frozen inside the reward parameters;
  2. `episodes` fresh episodes of the policy and of pi_ref, one `collect`
     mapped over the two TrainStates: the policy's gold and proxy return
     and its action-KL per episode (the sum of log pi - log pi_ref along its
     own actions), the reference's gold, and every step's (s, a);
  3. `disc_steps` Adam steps of the discriminator (warm-started) on those
     samples, and its chi^2 and KL estimates on the policy's samples
     (means of w - 1 and log w).
Every run (regulariser, beta, seed) is one row of the vmap; runs of one
seed share that seed's reference and random keys (common random numbers).
The regulariser is a one-hot weight vector over KINDS (zeros for the
unregularised baseline), so every regulariser shares the compiled program.

A behaviour to expect: the discriminator only sees the policy's current
occupancy, so once a penalised policy has left the hacked region (the
tomato bucket) the estimated ratio there decays towards 0 (correctly: the
policy no longer goes there), the penalty with it, and the policy can
relapse for a round or two before the penalty returns. Final-round numbers
of chi^2 runs therefore depend on where in such a cycle a run stops;
benchmarks/orpo_tomato.py also reports means over the last rounds.

Outer loops step environments only through the agent (`run`, `collect`,
`reset_envs`), as docs/architecture.md asks.
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
from envs.core import episode_limit
from envs.rewards import env_reward
from envs.tomato import tomato_proxy
from src import config as cfg
from src.config import ConfigError

KINDS = ("action_kl", "chi2", "om_kl")
PROXIES = {"tomato_proxy": tomato_proxy, "env": env_reward}


# --------------------------------------------------------------------------
# The discriminator and the occupancy-ratio estimate

def features(obs, action, num_actions: int, discrete: bool = True):
    """A state-action pair as the discriminator's input: the observation and
    the one-hot action (continuous actions as they are); works on batches."""
    action = jax.nn.one_hot(action, num_actions, dtype=jnp.float32) if discrete else action.astype(jnp.float32)
    return jnp.concatenate([obs.astype(jnp.float32), action], axis=-1)


def init_discriminator(key, in_dim: int, hidden=(64, 64)):
    """MLP parameters (a list of {"w", "b"}), LeCun-normal hidden layers and a
    zero last layer: the logit is exactly 0 (w = 1) before any training."""
    sizes = [in_dim, *hidden]
    layers = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(hidden)), zip(sizes[:-1], sizes[1:])):
        layers.append({"w": jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in), "b": jnp.zeros((n_out,))})
    layers.append({"w": jnp.zeros((sizes[-1], 1)), "b": jnp.zeros((1,))})
    return layers


def discriminator_logit(params, x):
    """d(s, a) for features x [..., in_dim]: the estimate of log(mu_pi / mu_ref)."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return (x @ params[-1]["w"] + params[-1]["b"])[..., 0]


def discriminator_loss(params, policy_x, reference_x):
    """Logistic loss, policy samples labelled 1 and reference samples 0 (equal
    weight per side): minimised pointwise by d = log(mu_pi / mu_ref)."""
    return (jax.nn.softplus(-discriminator_logit(params, policy_x)).mean()
            + jax.nn.softplus(discriminator_logit(params, reference_x)).mean())


def train_discriminator(params, opt_state, key, policy_x, reference_x, steps: int, batch: int, lr: float):
    """`steps` Adam steps, each on `batch` samples drawn (with replacement) from
    each side; a side with at most `batch` samples is used whole every step
    (full-batch: the loss minimised is exactly the samples' logistic loss).
    Returns (params, opt_state, loss per step)."""
    tx = discriminator_optimizer(lr)

    def draw(k, x):
        return x if x.shape[0] <= batch else x[jax.random.randint(k, (batch,), 0, x.shape[0])]

    def update(carry, k):
        params, opt_state = carry
        kp, kr = jax.random.split(k)
        px, rx = draw(kp, policy_x), draw(kr, reference_x)
        loss, grads = jax.value_and_grad(discriminator_loss)(params, px, rx)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(update, (params, opt_state), jax.random.split(key, steps))
    return params, opt_state, losses


def discriminator_optimizer(lr: float):
    return optax.adam(lr)


def log_ratio(params, x, clip: float):
    """The clipped logit: the estimate of log(mu_pi / mu_ref)."""
    return jnp.clip(discriminator_logit(params, x), -clip, clip)


def occupancy_ratio(params, x, clip: float):
    """w(s, a) = exp(d(s, a)), the estimated occupancy-measure ratio mu_pi / mu_ref."""
    return jnp.exp(log_ratio(params, x, clip))


def chi2_estimate(params, policy_x, clip: float):
    """chi2(mu_pi || mu_ref) = E_{mu_pi}[w] - 1, from policy samples."""
    return occupancy_ratio(params, policy_x, clip).mean() - 1.0


# --------------------------------------------------------------------------
# Per-step penalties and the penalised reward functions
#
# A penalty term is `term(reward_params, transition) -> scalar`; the reward
# parameters hold the discriminator ("disc") and the reference policy's
# parameters ("ref").

def chi2_term(num_actions: int, discrete: bool = True, clip: float = 5.0):
    """w(s, a) - 1: its mean under the policy's occupancy is chi2(mu_pi || mu_ref)."""
    def term(reward_params, transition):
        return occupancy_ratio(reward_params["disc"], features(transition.obs, transition.action, num_actions,
                                                               discrete), clip) - 1.0
    return term


def om_kl_term(num_actions: int, discrete: bool = True, clip: float = 5.0):
    """log w(s, a): its mean under the policy's occupancy is KL(mu_pi || mu_ref)."""
    def term(reward_params, transition):
        return log_ratio(reward_params["disc"], features(transition.obs, transition.action, num_actions, discrete),
                         clip)
    return term


def action_kl_term(policy_log_prob):
    """log pi(a|s) - log pi_ref(a|s) on the action taken (RLHF's KL penalty);
    `policy_log_prob(ref_params, obs, action)` is the reference's log-prob,
    or, for a reference with memory, the environment reports it given the
    history (info["reference_log_prob"], `ppo.penalised_env`)."""
    def term(reward_params, transition):
        if "reference_log_prob" in transition.info:   # static: which environment the learner runs in
            return transition.info["log_prob"] - transition.info["reference_log_prob"]
        return transition.info["log_prob"] - policy_log_prob(reward_params["ref"], transition.obs, transition.action)
    return term


def penalised_reward(proxy, terms: dict):
    """reward_fn(reward_params, transition) = proxy - beta * sum_k weights[k] * term_k,
    with reward_params {"beta": scalar, "weights": [len(terms)], "proxy": the
    proxy's own parameters (None if it takes none), and what the terms read}.
    The weights (one-hot for one regulariser, zero for none) and beta are
    traced, so every regulariser shares one compiled program."""
    names = tuple(terms)

    def reward_fn(reward_params, transition):
        penalty = jnp.stack([terms[k](reward_params, transition) for k in names])
        return (proxy(reward_params.get("proxy"), transition)
                - reward_params["beta"] * jnp.dot(reward_params["weights"], penalty))
    return reward_fn


def chi2_reward(proxy, num_actions: int, discrete: bool = True, clip: float = 5.0):
    """proxy - beta * (w - 1): ORPO's chi^2 occupancy regularisation as a reward
    function, reward_params {"beta", "disc", "weights": [1.]}."""
    return penalised_reward(proxy, {"chi2": chi2_term(num_actions, discrete, clip)})


def action_kl_reward(proxy, policy_log_prob):
    """proxy - beta * (log pi - log pi_ref), reward_params {"beta", "ref", "weights": [1.]}."""
    return penalised_reward(proxy, {"action_kl": action_kl_term(policy_log_prob)})


def weights_for(kind: str):
    """The one-hot weight vector over KINDS of a regulariser ("none": zeros)."""
    if kind == "none":
        return jnp.zeros((len(KINDS),), jnp.float32)
    return jnp.eye(len(KINDS), dtype=jnp.float32)[KINDS.index(kind)]


# --------------------------------------------------------------------------
# The experiment

@dataclasses.dataclass(frozen=True)
class ORPOConfig:
    env: str = "gridworld/tomato"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    proxy: str = "tomato_proxy"          # a key of PROXIES
    seed: int = 0
    seeds: int = 5
    # the reference policy: PPO on the gold reward (any PPOConfig key under ppo:)
    reference_steps: int = 10_240
    ppo: dict = dataclasses.field(default_factory=lambda: {
        "num_envs": 16, "num_steps": 40, "num_minibatches": 4, "num_epochs": 4, "hidden": (64, 64), "lr": 1e-3})
    # beta grids per regulariser (a regulariser absent here is not run); the baseline runs beta = 0 once per seed
    betas: dict = dataclasses.field(default_factory=lambda: {
        "action_kl": (0.5, 1.0, 2.0, 5.0, 10.0, 20.0), "chi2": (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)})
    baseline: bool = True                # also run the unregularised proxy (beta = 0)
    rounds: int = 20                     # discriminator updates
    ppo_per_round: int = 5               # PPO iterations before each
    episodes: int = 32                   # fresh episodes per round, of the policy and of the reference:
    #                                      the evaluation, and the discriminator's samples
    disc_steps: int = 50
    disc_batch: int = 256
    disc_lr: float = 1e-3
    disc_hidden: tuple[int, ...] = (64, 64)
    logit_clip: float = 5.0

    def reference_config(self) -> "ppo.PPOConfig":
        base = {"env": self.env, "env_kwargs": self.env_kwargs, "seed": self.seed, "seeds": self.seeds,
                "total_steps": self.reference_steps}
        return cfg.inner_config(ppo.PPOConfig, base, dict(self.ppo), "ppo")

    def rl_config(self) -> "ppo.PPOConfig":
        """The reference's PPO continued on the penalised proxy, without a
        learning-rate schedule (it starts mid-way, from the reference's state)."""
        total = self.rounds * self.ppo_per_round * self.reference_config().batch_size
        return dataclasses.replace(self.reference_config(), total_steps=total, anneal_lr=False).validate()

    def validate(self):
        envs.check_name(self.env)
        if self.proxy not in PROXIES:
            raise ConfigError(f"unknown proxy {self.proxy!r}; choose one of {', '.join(PROXIES)}")
        for kind, grid in self.betas.items():
            if kind not in KINDS:
                raise ConfigError(f"unknown regulariser {kind!r}; choose from {', '.join(KINDS)}")
            if not grid or any(b <= 0 for b in grid):
                raise ConfigError(f"betas of {kind} must be > 0 (beta = 0 is the baseline), got {list(grid)}")
        if not self.betas and not self.baseline:
            raise ConfigError("nothing to run: give a beta grid or baseline=True")
        for name in ("seeds", "reference_steps", "rounds", "ppo_per_round", "episodes", "disc_steps", "disc_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.logit_clip <= 0:
            raise ConfigError(f"logit_clip must be > 0, got {self.logit_clip}")
        if self.reference_config().normalize_obs:
            raise ConfigError("normalize_obs must be False: the discriminator and the reference's log-prob read "
                              "raw observations")
        self.rl_config()
        return self


def members(config: ORPOConfig):
    """Every run, one dict per (regulariser, beta, seed), in that nesting order;
    the unregularised baseline ("none", beta 0) first."""
    kinds = ([("none", 0.0)] if config.baseline else []) + [(k, b) for k, grid in config.betas.items() for b in grid]
    return [{"regulariser": k, "beta": float(b), "seed": s} for k, b in kinds for s in range(config.seeds)]


class Programs(NamedTuple):
    config: ORPOConfig
    reference: object        # jit(vmap): seed keys -> reference TrainStates (PPO on gold)
    optimise: object         # jit(vmap(member))
    member: object           # (reference TrainState, key, beta, weights) -> (TrainState, history per round)
    rl_agent: object
    ref_agent: object


def build(config: ORPOConfig) -> Programs:
    config = config.validate()
    ref_config, rl_config = config.reference_config(), config.rl_config()
    env, env_params = envs.make(config.env, **config.env_kwargs)
    discrete = envs.is_discrete(env, env_params)
    num_actions = envs.action_dim(env, env_params)
    in_dim = envs.obs_size(env, env_params) + num_actions   # action_dim: the number of actions, or the action's size
    horizon = episode_limit(env, env_params)
    proxy = PROXIES[config.proxy]
    clip = config.logit_clip

    ref_agent = ppo.make(ref_config, env, env_params)              # gold: the environment's reward
    terms = {"action_kl": action_kl_term(ref_agent.log_prob), "chi2": chi2_term(num_actions, discrete, clip),
             "om_kl": om_kl_term(num_actions, discrete, clip)}
    # where the learner runs: with a recurrent reference, an env that follows
    # log pi_ref(a_t | history) through each episode (`ppo.penalised_env`)
    learner = ppo.penalised_env(ref_agent, env, env_params)
    rl_agent = ppo.make(rl_config, learner.env, learner.env_params, reward_fn=penalised_reward(proxy, terms))

    def scores(reward_params, transition):
        """What an episode records per step: the proxy and log pi - log pi_ref."""
        return jnp.stack([proxy(reward_params.get("proxy"), transition), terms["action_kl"](reward_params, transition)])

    scorer = ppo.make(dataclasses.replace(rl_config, num_envs=config.episodes, num_minibatches=1), learner.env,
                      learner.env_params, reward_fn=scores)
    levels = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.episodes, *jnp.shape(x))), learner.env_params)
    ref_hparams, rl_hparams = ppo.hparams_from(ref_config), ppo.hparams_from(rl_config)
    tx = discriminator_optimizer(config.disc_lr)

    def reference(key):
        return ref_agent.train(key, ref_hparams)[0]

    def episodes(ts, reward_params, key, env_params):
        """`episodes` fresh episodes of ts's policy (envs reset, run for the
        episode limit): per-episode sums of gold, proxy and the log-ratio to
        the reference over each env's first episode, and every step's
        (s, a) features (samples of the policy's occupancy measure)."""
        reset_key, run_key = jax.random.split(key)
        fresh = scorer.reset_envs(ts.replace(key=run_key), reset_key, levels)
        _, rollout = scorer.collect(fresh, reward_params, env_params, horizon)
        first = ((jnp.cumsum(rollout.episode_done, axis=0) - rollout.episode_done) == 0).astype(jnp.float32)
        per_episode = (rollout.reward * first[..., None]).sum(axis=0)                 # [E, 2]
        sums = {"gold": (rollout.env_reward * first).sum(axis=0), "proxy": per_episode[:, 0],
                "action_kl": per_episode[:, 1]}
        return sums, features(rollout.obs, rollout.action, num_actions, discrete).reshape(-1, in_dim)

    def member(ref_ts, key, beta, weights):
        """One run: pi_ref's state continued on the penalised proxy. Each round:
        `ppo_per_round` PPO iterations with the discriminator frozen, then fresh
        episodes of the policy and of the reference (one vmapped collect),
        scored, and the discriminator trained on their (s, a). The
        discriminator starts at d = 0 (w = 1), the optimum while the policy
        is still the reference. Returns (final TrainState, a dict of per-round
        arrays)."""
        disc_key, run_key, loop_key = jax.random.split(key, 3)
        disc = init_discriminator(disc_key, in_dim, tuple(config.disc_hidden))
        params = {"beta": beta, "weights": weights, "ref": ref_ts.params, "disc": disc, "proxy": None}
        learner_env = learner.params({"params": ref_ts.params, "obs_stats": ref_ts.obs_stats})
        ref_ts = learner.start(ref_ts)   # the reference's state in the learner's environment

        def round_(carry, k):
            ts, disc, opt_state = carry
            episode_key, disc_key = jax.random.split(k)
            p = {**params, "disc": disc}
            ts, metrics = rl_agent.run(ts, rl_hparams, p, None, learner_env, num_iterations=config.ppo_per_round)
            both = jax.tree.map(lambda a, b: jnp.stack([a, b]), ts, ref_ts)
            # one collect program for both policies (lax.map compiles its body once; a vmap would batch it)
            sums, x = jax.lax.map(lambda a: episodes(a[0], p, a[1], learner_env),
                                  (both, jax.random.split(episode_key, 2)))
            disc, opt_state, losses = train_discriminator(disc, opt_state, disc_key, x[0], x[1], config.disc_steps,
                                                          config.disc_batch, config.disc_lr)
            logit_pi, logit_ref = discriminator_logit(disc, x[0]), discriminator_logit(disc, x[1])
            out = {name: v[0].mean() for name, v in sums.items()}
            out.update(
                reference_gold=sums["gold"][1].mean(),
                chi2=jnp.exp(jnp.clip(logit_pi, -clip, clip)).mean() - 1.0,   # E_pi[w] - 1, after the update
                om_kl=jnp.clip(logit_pi, -clip, clip).mean(),                  # E_pi[log w]
                disc_loss=losses[-max(config.disc_steps // 10, 1):].mean(),
                disc_accuracy=0.5 * ((logit_pi > 0).mean() + (logit_ref < 0).mean()),
                train_gold=jnp.nanmean(metrics["finished_return"]))
            return (ts, disc, opt_state), out

        ts = ref_ts.replace(key=run_key)
        (ts, _, _), history = jax.lax.scan(round_, (ts, disc, tx.init(disc)), jax.random.split(loop_key, config.rounds))
        return ts, history

    return Programs(config, jax.jit(jax.vmap(reference)), jax.jit(jax.vmap(member)), member, rl_agent, ref_agent)


def take(tree, index):
    """tree[index] on every leaf (a list of ints: a gather along the first axis)."""
    index = np.asarray(index) if isinstance(index, list) else index
    return jax.tree.map(lambda x: x[index], tree)


def sweep(config: ORPOConfig, log=print, programs: Programs | None = None):
    """The whole experiment: the references (one per seed, one program), then
    every member (regulariser, beta, seed) in one program, compiled ahead and
    timed apart from running. Returns plain numbers: per member the
    per-round history (see `build`), and timings."""
    import time
    programs = programs or build(config)
    c = programs.config
    seed_keys = jax.random.split(jax.random.PRNGKey(c.seed), c.seeds)
    ref_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys)
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)
    timing = {}
    start = time.time()
    ref_ts = programs.reference(ref_keys)
    jax.block_until_ready(ref_ts)
    timing["reference_s"] = time.time() - start
    log(f"reference policies: {c.seeds} seeds x {c.reference_steps} PPO steps on gold in {timing['reference_s']:.0f} s "
        "(compiling included)")

    runs = members(c)
    seeds = [r["seed"] for r in runs]
    args = (take(ref_ts, seeds), run_keys[np.asarray(seeds)], jnp.asarray([r["beta"] for r in runs], jnp.float32),
            jnp.stack([weights_for(r["regulariser"]) for r in runs]))
    start = time.time()
    compiled = programs.optimise.lower(*args).compile()
    timing["optimise_compile_s"] = time.time() - start
    start = time.time()
    _, history = compiled(*args)
    history = jax.tree.map(np.asarray, history)
    timing["optimise_run_s"] = time.time() - start
    steps = c.rounds * c.ppo_per_round * programs.rl_agent.config.batch_size
    log(f"{len(runs)} runs x {steps} PPO steps on the penalised proxy: compiled in {timing['optimise_compile_s']:.0f} s, "
        f"ran in {timing['optimise_run_s']:.0f} s")
    rows = [{**r, "history": {k: v[m].tolist() for k, v in history.items()}} for m, r in enumerate(runs)]
    return {"runs": rows, "timing": timing, "env_steps_per_run": steps}


def summarise(result: dict, key: str = "gold", last: int = 1):
    """Per (regulariser, beta): mean and standard error over seeds of each
    quantity at the end (the mean of its last `last` rounds per run, then
    over seeds), and the reference's gold (its episodes over every round);
    per regulariser the beta with the highest mean final `key`."""
    groups = {}
    for row in result["runs"]:
        groups.setdefault((row["regulariser"], row["beta"]), []).append(row)
    table = []
    for (kind, beta), rows in groups.items():
        entry = {"regulariser": kind, "beta": beta, "seeds": len(rows)}
        for name in ("gold", "proxy", "action_kl", "chi2", "om_kl", "reference_gold"):
            final = np.array([np.mean(r["history"][name][-last:]) for r in rows])
            if name == "reference_gold":
                final = np.array([np.mean(r["history"][name]) for r in rows])
            entry[f"{name}_mean"] = float(final.mean())
            entry[f"{name}_se"] = float(final.std(ddof=1) / np.sqrt(len(final))) if len(final) > 1 else 0.0
        table.append(entry)
    best = {}
    for kind in sorted({e["regulariser"] for e in table if e["regulariser"] != "none"}):
        best[kind] = max((e for e in table if e["regulariser"] == kind), key=lambda e: e[f"{key}_mean"])
    return table, best
