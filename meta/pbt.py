"""Population-based training (Jaderberg et al. 2017) as one compiled program.

A population trains side by side (vmapped, its member axis sharded over the
devices); every `ready` iterations the bottom `truncation` fraction copies a
random member of the top fraction (parameters, optimiser state,
hyperparameters: the whole member), and each copy then explores: every
explored hyperparameter is multiplied by 0.8 or 1.2 (clipped to its prior's
range) or, with probability `resample_prob`, drawn again from its prior.
Rounds run inside `jax.lax.scan`, so a chunk of rounds between checkpoints is
one program.

The exploit/explore step is a few pure functions over a member-stacked pytree
(leading axis: the population), independent of what a member is:

    parents = select_parents(key, fitness, num_replaced)    # truncation selection
    members = exploit(members, parents)                      # copy whole members
    values  = explore(key, values, explorers, spec)          # perturb or resample
    members, hparams, parents = update(key, fitness, members, hparams, spec)   # all three

`make_chunk(train_ready, fitness, spec, rounds)` wraps any "train one member
for `ready` iterations" function into the scanned program; PPO and SAC go
through `make_agent_program`, the paper's toy (tests/test_pbt.py) through
`make_chunk` directly, so both run the same exploit/explore code.
`run.py meta pbt` (commands/pbt.py) parses flags and calls `meta_train`.
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from src.config import ConfigError

VARIANTS = ("pbt", "exploit_only", "explore_only", "fixed")
# variant: what happens every `ready` iterations.
#   pbt          exploit then explore (the algorithm)
#   exploit_only the bottom copies the top, hyperparameters kept as copied
#   explore_only the bottom perturbs its own hyperparameters, nothing copied
#   fixed        nothing: with hyperparameters drawn from the prior this is
#                random search with the same population and budget

BASELINES = ("none", "random-search")

# Priors of the learners' traced hyperparameters: (low, high, log scale).
# Initial values of explored hyperparameters are drawn from them, resampling
# draws from them, and perturbations are clipped to their range.
DEFAULT_PRIORS = {
    "ppo": {"lr": (3e-5, 3e-3, True), "ent_coef": (1e-4, 0.1, True), "clip_eps": (0.05, 0.5, False),
            "gamma": (0.9, 0.999, False), "gae_lambda": (0.8, 1.0, False), "vf_coef": (0.1, 1.0, True),
            "max_grad_norm": (0.1, 5.0, True)},
    "sac": {"lr": (3e-5, 3e-3, True), "gamma": (0.9, 0.999, False), "tau": (1e-3, 0.05, True),
            "init_alpha": (0.01, 1.0, True), "target_entropy_scale": (0.1, 0.9, False)},
}


# ----------------------------------------------------------------------------- the step, pure functions

class Spec(NamedTuple):
    """Everything static about one exploit/explore step (hashable: it shapes
    the program). `priors` holds (low, high, log) per explored name."""
    names: tuple
    priors: tuple
    num_replaced: int
    exploit: bool = True
    explore: bool = True
    resample_prob: float = 0.0
    factors: tuple = (0.8, 1.2)


def make_spec(variant, names, priors, population, truncation, resample_prob=0.0, factors=(0.8, 1.2)):
    """The Spec of a variant; `priors` maps each explored name to (low, high, log)."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    check_truncation(truncation, population)
    return Spec(tuple(names), tuple(tuple(priors[n]) for n in names), num_replaced(truncation, population),
                variant in ("pbt", "exploit_only"), variant in ("pbt", "explore_only"), float(resample_prob),
                tuple(float(f) for f in factors))


def num_replaced(truncation, population):
    # floor: a fraction never rounds up into more than it names
    return int(math.floor(truncation * population + 1e-9))


def check_truncation(truncation, population):
    if not 0.0 < truncation <= 0.5:
        raise ConfigError(f"truncation must be in (0, 0.5] (the bottom fraction replaced by copies of the top "
                          f"fraction; e.g. 0.2 or 0.25), got {truncation}")
    if num_replaced(truncation, population) < 1:
        raise ConfigError(f"truncation {truncation} of population {population} replaces no member: choose "
                          f"truncation >= {1 / population:.3g} or a larger population")


def rank_order(fitness):
    """Member indices best first; NaN ranks last, ties by index (stable sort)."""
    fitness = jnp.where(jnp.isnan(fitness), -jnp.inf, fitness)
    return jnp.argsort(-fitness, stable=True)


def select_parents(key, fitness, num_replaced):
    """Truncation selection: `parents[i]` is the member that member i becomes.
    Each of the `num_replaced` worst members gets a uniformly random one of the
    `num_replaced` best; everyone else is its own parent."""
    population = fitness.shape[0]
    order = rank_order(fitness)
    top, bottom = order[:num_replaced], order[population - num_replaced:]
    pick = jax.random.randint(key, (num_replaced,), 0, num_replaced)
    return jnp.arange(population).at[bottom].set(top[pick])


def exploit(members, parents):
    """Every leaf's member axis gathered by `parents`: a copied member is its
    parent in full (parameters, optimiser state, whatever the tree holds)."""
    return jax.tree.map(lambda x: jnp.asarray(x)[parents], members)


def from_unit(u, prior):
    """Uniform [0, 1) draws mapped onto a prior (low, high, log): uniform, or
    uniform in log space."""
    low, high, log = prior
    if log:
        return jnp.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


def sample_prior(key, prior, shape):
    """Draws of one hyperparameter from its prior (low, high, log)."""
    return from_unit(jax.random.uniform(key, shape, jnp.float32), prior)


def explore(key, values, explorers, spec: Spec):
    """values: {name: [population, ...]}; the members where `explorers` is
    true get each value multiplied by one of `spec.factors` (clipped to the
    prior's range) or, with probability `spec.resample_prob`, drawn from the
    prior; the others keep theirs."""
    out = {}
    factors = jnp.asarray(spec.factors, jnp.float32)
    sizes = [values[name].size for name in spec.names]
    # one random call for every value of every name, three draws each (which
    # factor, the redraw, whether to redraw): random kernels dominate the
    # step's compile time, so there is one of them, not one per choice and name
    draws = jax.random.uniform(key, (3, sum(sizes)), jnp.float32)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    for name, prior, offset, size in zip(spec.names, spec.priors, offsets, sizes):
        x = values[name]
        u = draws[:, offset:offset + size].reshape(3, *x.shape)
        pick = jnp.minimum((u[0] * len(spec.factors)).astype(jnp.int32), len(spec.factors) - 1)
        perturbed = jnp.clip(x * factors[pick], prior[0], prior[1])
        new = jnp.where(u[2] < spec.resample_prob, from_unit(u[1], prior), perturbed)
        mask = explorers.reshape(explorers.shape + (1,) * (x.ndim - 1))
        out[name] = jnp.where(mask, new, x).astype(x.dtype)
    return out


def get_values(hparams, names):
    """The named leaves of a hyperparameter pytree (a dict or a dataclass)."""
    return {n: hparams[n] if isinstance(hparams, dict) else getattr(hparams, n) for n in names}


def set_values(hparams, values):
    return {**hparams, **values} if isinstance(hparams, dict) else hparams.replace(**values)


def update(key, fitness, members, hparams, spec: Spec):
    """One PBT step on one population: (members, hparams, parents). Exploit
    copies whole members and their hyperparameters; explore then moves the
    copies' hyperparameters (explore-only: the bottom members' own)."""
    population = fitness.shape[0]
    k_select, k_explore = jax.random.split(key)
    identity = jnp.arange(population)
    parents = select_parents(k_select, fitness, spec.num_replaced)
    explorers = parents != identity
    if spec.exploit:
        members, hparams = exploit((members, hparams), parents)
    else:
        parents = identity
    if spec.explore:
        if not spec.exploit:   # the members PBT would replace: the bottom fraction
            explorers = jnp.zeros(population, bool).at[rank_order(fitness)[population - spec.num_replaced:]].set(True)
        hparams = set_values(hparams, explore(k_explore, get_values(hparams, spec.names), explorers, spec))
    return members, hparams, parents


# ----------------------------------------------------------------------------- the scanned program

class Record(NamedTuple):
    """Per round (leading axis), run and member: what it trained with and how it did."""
    metrics: dict      # [rounds, runs, population, ready] per metric
    fitness: object    # [rounds, runs, population]
    parents: object    # [rounds, runs, population]: whom each member became after the round
    hparams: object    # [rounds, runs, population]: the hyperparameters it trained with in the round


def make_chunk(train_ready: Callable, fitness: Callable, spec: Spec, rounds: int, rekey: Callable | None = None,
               sharding=None):
    """`chunk(members, hparams, keys) -> (members, hparams, keys, Record)`:
    `rounds` (static) PBT rounds of independent populations, as one program.

    members, hparams: leaves [runs, population, ...]; keys: [runs, 2], one
    per independent run. `train_ready(member, hparams) -> (member, metrics)`
    trains one member for `ready` iterations; `fitness(metrics, member) ->
    scalar` scores it. `rekey(member, key)` gives a copied member a key of its
    own (a copy would otherwise replay its parent's random numbers).
    `sharding` (of [runs, population] leaves) keeps the member axis where the
    devices hold it through the scan."""
    train = jax.vmap(jax.vmap(train_ready))
    score = jax.vmap(jax.vmap(fitness))

    def constrain(tree):
        if sharding is None:
            return tree
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim >= 2 else x, tree)

    def step_one_run(key, fit, members, hparams):
        k_update, k_keys = jax.random.split(key)
        new_members, new_hparams, parents = update(k_update, fit, members, hparams, spec)
        if rekey is not None and spec.exploit:
            copied = parents != jnp.arange(fit.shape[0])
            fresh = jax.vmap(rekey)(new_members, jax.random.split(k_keys, fit.shape[0]))
            new_members = jax.tree.map(
                lambda a, b: jnp.where(copied.reshape(copied.shape + (1,) * (a.ndim - 1)), a, b), fresh, new_members)
        return new_members, new_hparams, parents

    def one_round(carry, _):
        members, hparams, keys = carry
        split = jax.vmap(jax.random.split)(keys)
        keys, round_keys = split[:, 0], split[:, 1]
        members, metrics = train(constrain(members), constrain(hparams))
        fit = score(metrics, members)
        new_members, new_hparams, parents = jax.vmap(step_one_run)(round_keys, fit, members, hparams)
        record = Record(metrics, fit, parents, hparams)
        return (constrain(new_members), constrain(new_hparams), keys), record

    def chunk(members, hparams, keys):
        (members, hparams, keys), record = jax.lax.scan(one_round, (members, hparams, keys), None, length=rounds)
        return members, hparams, keys, record

    return chunk


def member_sharding(population, num_devices=None):
    """NamedSharding of [runs, population, ...] leaves: the population axis over
    the population engine's mesh of all devices (`src.population`), which the
    population must split over evenly (`check_devices`)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from src.population import population_mesh

    devices = jax.devices()[:num_devices or len(jax.devices())]
    check_devices(population, len(devices))
    return NamedSharding(population_mesh(population, devices), PartitionSpec(None, "members"))


def check_devices(population, num_devices):
    if population % num_devices:
        valid = ", ".join(str(num_devices * i) for i in range(1, 5))
        raise ConfigError(f"population {population} does not split over the {num_devices} devices: choose a "
                          f"multiple of {num_devices} ({valid}, ...)")


# ----------------------------------------------------------------------------- config and the agents' program

@dataclasses.dataclass(frozen=True)
class PBTConfig:
    algo: str = "ppo"                  # the inner learner: ppo | sac
    population: int = 16
    ready: int = 10                    # inner iterations between exploit/explore steps
    truncation: float = 0.25           # bottom fraction replaced by copies of the top fraction
    explore: tuple[str, ...] = ("lr", "ent_coef", "clip_eps")   # traced hyperparameters PBT moves
    resample_prob: float = 0.0         # 0: multiply by 0.8 or 1.2; 1: draw from the prior; between: per value
    priors: dict = dataclasses.field(default_factory=dict)   # {name: [low, high, log]}: overrides DEFAULT_PRIORS
    variant: str = "pbt"               # pbt | exploit_only | explore_only | fixed
    baseline: str = "none"             # none | random-search: also train the population with its prior draws fixed
    runs: int = 1                      # independent PBT runs, vmapped in one program
    checkpoint_every: int = 0          # rounds between checkpoints (0: only at the end)
    eval_episodes: int = 10            # deterministic episodes per member at the end
    seed: int = 0
    inner: dict = dataclasses.field(default_factory=dict)    # the learner's config keys (total_steps: per member)

    def validate(self, num_devices=None):
        """Every check that needs no compiling; `num_devices` (default: JAX's)."""
        from agents import algorithms
        modules = algorithms()
        if self.algo not in modules:
            raise ConfigError(f"algo must be one of {', '.join(modules)}, got {self.algo!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        for name in ("population", "ready", "runs", "eval_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.population < 2:
            raise ConfigError(f"population must be >= 2 (PBT copies between members), got {self.population}")
        check_truncation(self.truncation, self.population)
        names = modules[self.algo].HPARAM_NAMES
        if not self.explore:
            raise ConfigError(f"explore must name at least one traced hyperparameter of {self.algo}: "
                              f"{', '.join(names)}")
        for name in self.explore:
            if name not in names:
                raise ConfigError(f"cannot explore {name!r}: not a traced hyperparameter of {self.algo}; "
                                  f"choose from {', '.join(names)}")
        if len(set(self.explore)) != len(self.explore):
            raise ConfigError(f"explore names a hyperparameter twice: {', '.join(self.explore)}")
        for name, prior in self.priors.items():
            if name not in names:
                raise ConfigError(f"priors: {name!r} is not a traced hyperparameter of {self.algo}; "
                                  f"choose from {', '.join(names)}")
            if (not isinstance(prior, (list, tuple)) or len(prior) != 3 or not prior[0] < prior[1]
                    or (prior[2] and prior[0] <= 0)):
                raise ConfigError(f"priors: {name} needs [low, high, log] with low < high (low > 0 on a log "
                                  f"scale), got {prior}")
        if not 0.0 <= self.resample_prob <= 1.0:
            raise ConfigError(f"resample_prob must be in [0, 1], got {self.resample_prob}")
        inner = self.inner_config()
        if inner.num_iterations % self.ready:
            raise ConfigError(f"ready ({self.ready}) must divide the inner run's {inner.num_iterations} iterations "
                              f"(total_steps {inner.total_steps} / {inner.batch_size} steps per iteration)")
        warm_up = getattr(inner, "learning_starts", 0)
        if self.ready * inner.batch_size <= warm_up:
            raise ConfigError(f"the first round ({self.ready} iterations = {self.ready * inner.batch_size} env steps) "
                              f"ends before learning starts ({warm_up} steps of random actions): PBT would select on "
                              f"random-action returns; raise ready above {warm_up // inner.batch_size} or lower "
                              "learning_starts")
        rounds = self.rounds
        if self.checkpoint_every < 0 or (self.checkpoint_every and rounds % self.checkpoint_every):
            raise ConfigError(f"checkpoint_every ({self.checkpoint_every}) must divide the {rounds} rounds")
        check_devices(self.population, num_devices or len(jax.devices()))
        return self

    def inner_config(self):
        from agents import algorithms
        from src import config as cfg
        module = algorithms()[self.algo]
        return cfg.from_dict(module.CONFIG, {**self.inner, "algo": self.algo}).validate()

    @property
    def rounds(self):
        return self.inner_config().num_iterations // self.ready

    @property
    def chunk_rounds(self):
        return self.checkpoint_every or self.rounds

    def prior(self, name):
        value = self.priors.get(name) or DEFAULT_PRIORS[self.algo].get(name)
        if value is None:
            raise ConfigError(f"no prior for {name!r}: give one under priors ({name}: [low, high, log])")
        return (float(value[0]), float(value[1]), bool(value[2]))

    def spec(self, variant=None):
        return make_spec(variant or self.variant, self.explore, {n: self.prior(n) for n in self.explore},
                         self.population, self.truncation, self.resample_prob)


def window_fitness(metrics, member=None, metric="episode_return"):
    """A member's fitness after a round: its mean return over the round's
    iterations (NaN before any episode ended, which ranks last)."""
    return jnp.nanmean(metrics[metric])


def initial_hparams(key, config: PBTConfig, module, inner, sample=True):
    """[runs, population] hyperparameters: the inner config's, with the explored
    ones drawn from their priors (sample=False keeps the config's values)."""
    base = module.hparams_from(inner)
    shape = (config.runs, config.population)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, shape + jnp.shape(x)), base)
    if not sample:
        return stacked
    keys = jax.random.split(key, len(config.explore))
    return set_values(stacked, {n: sample_prior(k, config.prior(n), shape) for n, k in zip(config.explore, keys)})


def make_agent_program(config: PBTConfig, variants=None, reward_fn=None, reward_params=None):
    """(agent, init, chunks, evaluate) for the inner learner. `init(key) ->
    (members, hparams, keys)`, leaves [runs, population, ...] placed with the
    member axis over the devices; `chunks[variant]` is `make_chunk` jitted
    over `config.chunk_rounds` rounds (one program per variant, reused by
    every chunk); `evaluate(members, key) -> [runs, population]` mean
    deterministic return over `eval_episodes` episodes.

    `reward_fn(reward_params, transition)` with `reward_params` (leaves
    [runs, population, ...]) trains each member on its own reward: a member
    is then the pair (train state, reward parameters), so exploit copies the
    reward with the policy (explore leaves it alone)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from agents import algorithms
    from envs.rewards import env_reward
    from src import population

    module = algorithms()[config.algo]
    inner = config.inner_config()
    agent = module.make(inner, reward_fn=reward_fn or env_reward)
    sharding = member_sharding(config.population)
    ready = config.ready

    with_reward = reward_params is not None

    def train_ready(member, hp):
        if with_reward:
            ts, rp = member
            ts, metrics = agent.run(ts, hp, rp, None, agent.env_params, num_iterations=ready)
            return (ts, rp), metrics
        return agent.run(member, hp, None, None, agent.env_params, num_iterations=ready)

    def rekey(member, key):
        return (member[0].replace(key=key), member[1]) if with_reward else member.replace(key=key)

    # Fixed input and output shardings: a chunk's outputs are the next chunk's
    # inputs, so every chunk after the first hits the same compiled program
    # (left to propagation, the outputs' shardings could differ from the
    # placed inputs' and cost a second compile)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    per_round = NamedSharding(sharding.mesh, PartitionSpec(None, None, "members"))
    chunks = {v: jax.jit(make_chunk(train_ready, window_fitness, config.spec(v), config.chunk_rounds, rekey=rekey,
                                    sharding=sharding),
                         in_shardings=(sharding, sharding, replicated),
                         out_shardings=(sharding, sharding, replicated, per_round))
              for v in (variants or (config.variant,))}

    @jax.jit
    def init_members(keys, hparams):
        return jax.vmap(jax.vmap(agent.init))(keys, hparams)

    def init(key):
        k_members, k_hparams, k_runs = jax.random.split(key, 3)
        hparams = initial_hparams(k_hparams, config, module, inner, sample=True)
        member_keys = jax.random.split(k_members, config.runs * config.population)
        members = init_members(member_keys.reshape(config.runs, config.population, *member_keys.shape[1:]), hparams)
        if with_reward:
            members = (members, reward_params)
        # (population.place: with several processes each keeps its own share)
        return (population.place(members, sharding), population.place(hparams, sharding),
                population.place(jax.random.split(k_runs, config.runs), replicated))

    @jax.jit
    def evaluate(members, key):
        keys = jax.random.split(key, config.runs * config.population)
        keys = keys.reshape(config.runs, config.population, *keys.shape[1:])
        states = members[0] if with_reward else members
        returns, _ = jax.vmap(jax.vmap(lambda ts, k: agent.evaluate(ts, k, config.eval_episodes)))(states, keys)
        return returns.mean(-1)

    return agent, init, chunks, evaluate


# ----------------------------------------------------------------------------- the run directory

def methods_of(config: PBTConfig):
    """{method: variant} this run trains: PBT, and the random search of the
    same population and budget when `baseline` asks for it."""
    methods = {"pbt": config.variant}
    if config.baseline == "random-search":
        methods["random_search"] = "fixed"
    return methods


def hparam_columns(hparams, index):
    """{name: value} of one member's hyperparameters; a vector-valued one
    (the toy's h) as name_0, name_1, ..."""
    out = {}
    for name, v in hparams.items():
        x = v[index]
        if x.ndim == 0:
            out[name] = float(x)
        else:
            out.update({f"{name}_{j}": float(e) for j, e in enumerate(x.reshape(-1))})
    return out


def metric_rows(method, record: Record, first_round, ready, batch_size, names):
    """One row per (run, member, iteration) of a chunk, with the explored
    hyperparameters that member trained with in that round."""
    import numpy as np

    metrics = {k: np.asarray(v) for k, v in record.metrics.items() if k != "env_steps"}
    hparams = {n: np.asarray(v) for n, v in get_values(record.hparams, names).items()}
    rounds, runs, population = np.shape(record.fitness)
    rows = []
    for r in range(rounds):
        for i in range(ready):
            iteration = (first_round + r) * ready + i + 1
            for run in range(runs):
                for m in range(population):
                    row = {"method": method, "round": first_round + r + 1, "iteration": iteration,
                           "env_steps": iteration * batch_size, "run": run, "member": m}
                    row.update(hparam_columns(hparams, (r, run, m)))
                    row.update({k: float(v[r, run, m, i]) for k, v in sorted(metrics.items())})
                    rows.append(row)
    return rows


def lineage_rows(method, record: Record, first_round, names):
    """One row per (run, round, member): the hyperparameters it trained with
    in the round, its fitness, and the member it became after (`parent`:
    itself when kept, the copied member when replaced)."""
    import numpy as np

    fitness, parents = np.asarray(record.fitness), np.asarray(record.parents)
    hparams = {n: np.asarray(v) for n, v in get_values(record.hparams, names).items()}
    rows = []
    for r in range(fitness.shape[0]):
        for run in range(fitness.shape[1]):
            for m in range(fitness.shape[2]):
                row = {"method": method, "round": first_round + r + 1, "run": run, "member": m,
                       "parent": int(parents[r, run, m]), "fitness": float(fitness[r, run, m])}
                row.update(hparam_columns(hparams, (r, run, m)))
                rows.append(row)
    return rows


def train_chunks(run, chunks, state, rounds, chunk_rounds, ready, names, batch_size=1, stop_at=None,
                 params_of=None, show_progress=False):
    """The chunk loop of any PBT program: `chunks[method](members, hparams,
    keys)` runs `chunk_rounds` rounds; after each chunk the rows go to
    metrics.csv and lineage.csv and `state` ({method: {"members", "hparams",
    "keys"}}) to the checkpoint. A resumed `run` continues from its checkpoint
    (CSVs cut back to it), bit-identically: all randomness is in the state.
    `params_of(members)` gives the learned parameters for the divergence
    watch (None: no watch). Returns (state, rounds done, seconds)."""
    import time

    import numpy as np

    from src import experiment, population

    stop = experiment.stop_point(rounds, chunk_rounds, stop_at, "rounds")
    state, done = run.continue_from(state, rounds, csvs=("metrics.csv", "lineage.csv"))
    # one watch per method: a watch remembers which metrics were finite for each member
    watches = {m: experiment.FiniteWatch() for m in chunks} if params_of is not None else None
    seconds = {"compile_and_first_chunk": None, "train": 0.0}
    while done < stop:
        t0 = time.perf_counter()
        for method, chunk in chunks.items():
            s = state[method]
            members, hparams, keys, record = chunk(s["members"], s["hparams"], s["keys"])
            record = population.gather(record)
            state[method] = {"members": members, "hparams": hparams, "keys": keys}
            if watches is not None:
                # [rounds, runs, population, ready] -> [runs * population, rounds * ready]
                flat = {k: np.moveaxis(np.asarray(v), 0, 2).reshape(-1, chunk_rounds * ready)
                        for k, v in record.metrics.items()}
                params = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), population.gather(params_of(members)))
                watches[method].check(flat, params, done * ready)
            run.append_rows("metrics.csv", metric_rows(method, record, done, ready, batch_size, names))
            run.append_rows("lineage.csv", lineage_rows(method, record, done, names))
        elapsed = time.perf_counter() - t0
        if seconds["compile_and_first_chunk"] is None:
            seconds["compile_and_first_chunk"] = elapsed
        else:
            seconds["train"] += elapsed
        done += chunk_rounds
        run.save(state, done)
        if show_progress:
            print(f"round {done}/{rounds} ({elapsed:.1f} s)")
    return state, done, seconds


def meta_train(config: PBTConfig, run, stop_at=None, show_progress=True):
    """Train the population(s) chunk by chunk (checkpointing between chunks),
    then evaluate every member and write summary.json, comparison.md and the
    plots. `run` is an open `src.experiment.Run` (unit "round")."""
    from src import population

    inner = config.inner_config()
    methods = methods_of(config)
    agent, init, chunks, evaluate = make_agent_program(config, tuple(methods.values()))
    key = jax.random.PRNGKey(config.seed)
    init_key, eval_key = jax.random.split(key)
    # every method starts from the same members and hyperparameter draws:
    # the comparison is paired, the methods differ only in what PBT does
    members, hparams, keys = init(init_key)
    state = {m: {"members": members, "hparams": hparams, "keys": keys} for m in methods}
    devices = len(jax.devices())
    print(f"PBT ({config.variant}) of {config.algo} on {inner.env}: {config.runs} run(s) x population "
          f"{config.population}, {config.rounds} rounds of {config.ready} iterations, explore "
          f"{', '.join(config.explore)}{', with random search' if 'random_search' in methods else ''}, "
          f"{devices} device(s) -> {run.path}")
    state, done, seconds = train_chunks(run, {m: chunks[v] for m, v in methods.items()}, state, config.rounds,
                                        config.chunk_rounds, config.ready, config.explore, inner.batch_size,
                                        stop_at, params_of=lambda m: m.params, show_progress=show_progress)
    if done < config.rounds:
        print(f"stopped at round {done} of {config.rounds}; continue with --out {run.path} --resume")
        return {"round": done, "complete": False}
    returns = {m: population.gather(evaluate(state[m]["members"], eval_key)) for m in methods}
    summary = summarise(config, inner, run, returns, state)
    summary.update({"seconds_this_session": seconds, "device": str(jax.devices()[0].device_kind),
                    "devices": devices})
    run.write_json("summary.json", summary)
    write_comparison(run.file("comparison.md"), config, summary)
    lineage = run.read_rows("lineage.csv")
    plot_schedules(run.file("schedules.png"), lineage, config)
    plot_returns(run.file("return.png"), lineage, config, inner)
    for method, s in summary["methods"].items():
        print(f"{method}: best member's evaluation return {s['best_eval']['mean']:.1f} ± {s['best_eval']['std']:.1f} "
              f"over {config.runs} run(s), population mean {s['population_eval']['mean']:.1f}")
    return summary


def summarise(config, inner, run, returns, state):
    """Per method and run: the best member's deterministic evaluation return
    (max over the final population), the population's mean, and the
    hyperparameters of the member with the best last-round fitness."""
    import numpy as np

    lineage = run.read_rows("lineage.csv")
    out = {"round": config.rounds, "complete": True, "env_steps_per_member": inner.num_iterations * inner.batch_size,
           "env_steps_per_method": inner.num_iterations * inner.batch_size * config.population * config.runs,
           "methods": {}}
    for method, ret in returns.items():
        ret = np.asarray(ret, np.float64)
        last = [r for r in lineage if r["method"] == method and r["round"] == config.rounds]
        best_hp = []
        for run_index in range(config.runs):
            rows = [r for r in last if r["run"] == run_index]
            best = max(rows, key=lambda r: r["fitness"] if np.isfinite(r["fitness"]) else -np.inf)
            best_hp.append({n: best[n] for n in config.explore} | {"member": int(best["member"]),
                                                                  "fitness": best["fitness"]})
        best_eval = ret.max(axis=1)
        # the member one would deploy without evaluating them all: the best by last-round training return
        selected = np.array([ret[i, h["member"]] for i, h in enumerate(best_hp)])
        best_training = np.array([h["fitness"] for h in best_hp])
        out["methods"][method] = {
            "best_eval": {"mean": float(best_eval.mean()), "std": float(best_eval.std()),
                          "per_run": best_eval.tolist()},
            "selected_eval": {"mean": float(selected.mean()), "std": float(selected.std()),
                              "per_run": selected.tolist()},
            "best_training_return": {"mean": float(best_training.mean()), "std": float(best_training.std()),
                                     "per_run": best_training.tolist()},
            "population_eval": {"mean": float(ret.mean()), "std": float(ret.mean(axis=1).std()),
                                "per_run": ret.mean(axis=1).tolist()},
            "eval_returns": ret.tolist(),
            "best_by_fitness": best_hp,
        }
    if "random_search" in out["methods"]:
        p = np.array(out["methods"]["pbt"]["best_eval"]["per_run"])
        b = np.array(out["methods"]["random_search"]["best_eval"]["per_run"])
        ps = np.array(out["methods"]["pbt"]["selected_eval"]["per_run"])
        bs = np.array(out["methods"]["random_search"]["selected_eval"]["per_run"])
        out["pbt_vs_random_search"] = {"runs_at_or_above": int((p >= b).sum()), "runs": int(len(p)),
                                       "mean_difference": float((p - b).mean()),
                                       "pbt_mean_at_or_above": bool(p.mean() >= b.mean()),
                                       "selected_runs_at_or_above": int((ps >= bs).sum()),
                                       "selected_mean_difference": float((ps - bs).mean())}
    return out


def write_comparison(path, config, summary):
    inner = config.inner_config()
    lines = [f"# PBT of {config.algo} on {inner.env}", "",
             f"Population {config.population}, {config.runs} independent run(s), {config.rounds} rounds of "
             f"{config.ready} iterations ({summary['env_steps_per_member']:,} env steps per member, "
             f"{summary['env_steps_per_method']:,} per method), truncation {config.truncation}, explore "
             f"{', '.join(config.explore)} (resample_prob {config.resample_prob}). Returns are deterministic "
             f"evaluations ({config.eval_episodes} episodes per member) of the final population.", "",
             "| method | best member (mean ± std over runs) | per run | member with the best training return "
             "(its evaluation) | per run | population mean | best last-round training return |",
             "|---|---|---|---|---|---|---|"]
    for method, s in summary["methods"].items():
        per_run = ", ".join(f"{x:.1f}" for x in s["best_eval"]["per_run"])
        selected = ", ".join(f"{x:.1f}" for x in s["selected_eval"]["per_run"])
        lines.append(f"| {method} | {s['best_eval']['mean']:.1f} ± {s['best_eval']['std']:.1f} | {per_run} | "
                     f"{s['selected_eval']['mean']:.1f} ± {s['selected_eval']['std']:.1f} | {selected} | "
                     f"{s['population_eval']['mean']:.1f} | {s['best_training_return']['mean']:.1f} |")
    if "pbt_vs_random_search" in summary:
        c = summary["pbt_vs_random_search"]
        lines += ["", f"PBT's best member at or above random search's best member in {c['runs_at_or_above']} of "
                      f"{c['runs']} runs (same initial members and hyperparameter draws per run); mean difference "
                      f"{c['mean_difference']:+.1f}. The member with the best training return: PBT's at or above "
                      f"random search's in {c['selected_runs_at_or_above']} of {c['runs']} runs, mean difference "
                      f"{c['selected_mean_difference']:+.1f}."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_schedules(path, lineage, config, run_index=0):
    """Each explored hyperparameter of every member of one PBT run over the
    rounds: the schedules PBT found (copies jump to their parent's value)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in lineage if r["method"] == "pbt" and r["run"] == run_index]
    fig, axes = plt.subplots(len(config.explore), 1, figsize=(7, 2.4 * len(config.explore)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], config.explore):
        for m in range(config.population):
            mine = sorted((r for r in rows if r["member"] == m), key=lambda r: r["round"])
            ax.step([r["round"] for r in mine], [r[name] for r in mine], where="post", lw=0.9, alpha=0.7)
        if config.prior(name)[2]:
            ax.set_yscale("log")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(f"round ({config.ready} iterations each)")
    axes[0, 0].set_title(f"PBT hyperparameter schedules (run {run_index}, {config.population} members)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_returns(path, lineage, config, inner):
    """The population's best and mean training return (each member's mean over
    a round) per round, mean over runs, for PBT and any baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps_per_round = config.ready * inner.batch_size
    for method in dict.fromkeys(r["method"] for r in lineage):
        fit = np.full((config.rounds, config.runs, config.population), np.nan)
        for r in lineage:
            if r["method"] == method:
                fit[int(r["round"]) - 1, int(r["run"]), int(r["member"])] = r["fitness"]
        x = np.arange(1, config.rounds + 1) * steps_per_round
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            best, mean = np.nanmax(fit, axis=2).mean(1), np.nanmean(fit, axis=2).mean(1)
        line, = ax.plot(x, best, label=f"{method}: population best")
        ax.plot(x, mean, ":", color=line.get_color(), label=f"{method}: population mean")
    ax.set_xlabel("environment steps per member")
    ax.set_ylabel(f"training return (mean over {config.runs} run(s))")
    ax.set_title(f"PBT of {config.algo} on {inner.env}, population {config.population}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
