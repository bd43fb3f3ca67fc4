"""Neuroevolution and quality-diversity over the flat weights of a small MLP
policy: MAP-Elites, novelty search, the deep GA and OpenES, side by side on
one budget. `run.py meta qd` (commands/qd.py) parses its flags and calls
`run_all`.

Every method is three pure functions of one seed's state, vmapped over seeds
and jitted once each:

    state = method.init(key, origin)                      # origin: the seed's initial network, flat
    genomes, state = method.ask(key, state)               # [batch, D]
    state, metrics = method.tell(state, genomes, evals, generation)

and the evaluations between ask and tell go through the population engine
(`src.population.make_evaluator`): one episode per genome, vmapped, sharded
over the devices, the same compiled program for every method. An evaluation
is `{"fitness": the episode's return, "descriptor": [2] entries of the final
observation, "reached": 1.0 if the episode ended at the goal}`.

- map-elites (Mouret & Clune 2015): the grid archive is the population; each
  generation mutates `batch` elites drawn uniformly from the filled cells
  (Gaussian, std `sigma`) and inserts the children (the best per cell wins).
  The first generation mutates the origin.
- novelty (Lehman & Stanley 2011): the deep GA below, ranked by novelty
  instead of return: the mean distance from a genome's descriptor to its
  `novelty_k` nearest neighbours among the novelty archive and the rest of
  its generation. The `novelty_add` most novel descriptors of each
  generation enter the archive, a ring buffer of `novelty_archive` slots
  (fixed shapes; the original added those above an adaptive threshold).
- ga: the deep GA (Such et al. 2017) on the return, evosax's SimpleGA through
  meta/es.py (truncation selection, Gaussian mutation, one unmutated elite).
- es: OpenES on the return, through meta/es.py.

Every method also inserts everything it evaluates into its own grid archive,
which is MAP-Elites' population and, for the others, a record only: coverage
(filled cells / cells), QD-score (the sum over filled cells of fitness -
`qd_offset`) and the best return are measured the same way for all four.

Archives are pytrees of fixed shapes, updated inside jit (optax-like
init/insert pairs: `grid_init`/`grid_insert`, `novelty_init`/`novelty_add`).
"""
import collections
import dataclasses
import functools
import math
import os
import time
from typing import Any, NamedTuple

from src.config import ConfigError

METHODS = ("map-elites", "novelty", "ga", "es")


@dataclasses.dataclass(frozen=True)
class QDConfig:
    env: str = "hard-maze"
    methods: tuple[str, ...] = METHODS
    seeds: int = 5                    # independent runs per method (vmapped)
    seed: int = 0
    generations: int = 100            # the preset budget (configs/qd_hard_maze.yaml)
    batch: int = 256                  # evaluations per generation, every method (ES: its population)
    hidden: tuple[int, ...] = (16, 16)
    episode_steps: int = 0            # 0: the environment's episode limit
    grid: tuple[int, ...] = (20, 20)  # cells per descriptor dimension
    descriptor_dims: tuple[int, ...] = (0, 1)     # entries of the final observation (hard-maze: x, y)
    descriptor_low: tuple[float, ...] = (0.0, 0.0)
    descriptor_high: tuple[float, ...] = (1.0, 1.0)
    qd_offset: float = -1.0           # QD-score counts fitness - qd_offset (below every return: hard-maze >= -0.76)
    success_return: float = math.inf  # environments without a goal: an episode "reaches" at this return
    sigma: float = 0.1                # MAP-Elites, GA and novelty: mutation std
    truncation: float = 0.2           # GA and novelty: the fraction that parents the next generation
    es_sigma: float = 0.05
    es_lr: float = 0.03
    novelty_k: int = 15
    novelty_archive: int = 2048
    novelty_add: int = 8
    checkpoint_every: int = 25
    batch_size: int = 0               # genomes per device evaluated at once (0: all)

    def validate(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown method{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown)) or '(none given)'}"
                              f"; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"a method is named twice in {', '.join(self.methods)}")
        for name in ("seeds", "generations", "batch", "checkpoint_every", "novelty_k", "novelty_archive"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch < 2:
            raise ConfigError(f"batch must be at least 2, got {self.batch}")
        if "es" in self.methods and self.batch % 2:
            raise ConfigError(f"es samples antithetic pairs: batch must be even, got {self.batch}")
        if not self.grid or any(n < 1 for n in self.grid):
            raise ConfigError(f"the descriptor grid {list(self.grid)} has zero cells: give each of its "
                              f"{len(self.descriptor_dims)} dimensions at least one cell (e.g. grid: [20, 20])")
        if not len(self.grid) == len(self.descriptor_dims) == len(self.descriptor_low) == len(self.descriptor_high):
            raise ConfigError(f"grid {list(self.grid)}, descriptor_dims {list(self.descriptor_dims)}, descriptor_low "
                              f"and descriptor_high must have one entry per descriptor dimension")
        if any(lo >= hi for lo, hi in zip(self.descriptor_low, self.descriptor_high)):
            raise ConfigError(f"descriptor_low {list(self.descriptor_low)} must be below descriptor_high "
                              f"{list(self.descriptor_high)} in every dimension")
        if not 0 <= self.novelty_add <= self.batch:
            raise ConfigError(f"novelty_add must be in 0..batch ({self.batch}), got {self.novelty_add}")
        if self.novelty_k > self.batch - 1:
            raise ConfigError(f"novelty_k ({self.novelty_k}) must be below batch ({self.batch}): the neighbours "
                              "of the first generation are its other members")
        if self.sigma <= 0 or self.es_sigma <= 0 or self.es_lr <= 0:
            raise ConfigError("sigma, es_sigma and es_lr must be positive")
        if not 0 < self.truncation <= 1:
            raise ConfigError(f"truncation must be in (0, 1], got {self.truncation}")
        if self.episode_steps < 0 or self.batch_size < 0:
            raise ConfigError("episode_steps and batch_size must be >= 0")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must list positive layer widths, got {list(self.hidden)}")
        return self

    @property
    def cells(self):
        return math.prod(self.grid)

    def ga_config(self):
        from meta.es import ESConfig
        return ESConfig("ga", self.batch, self.sigma, antithetic=False, truncation=self.truncation)

    def es_config(self):
        from meta.es import ESConfig
        return ESConfig("openes", self.batch, self.es_sigma, self.es_lr)


# ----------------------------------------------------------------------------- grid archive

class GridSpec(NamedTuple):
    """Static: the grid over descriptors (cells per dimension and their bounds)."""
    shape: tuple
    low: tuple
    high: tuple

    @property
    def cells(self):
        return math.prod(self.shape)


class GridArchive(NamedTuple):
    genomes: Any       # [cells, D]
    fitness: Any       # [cells], -inf where empty
    descriptors: Any   # [cells, dims]


def grid_init(spec: GridSpec, genome_size: int) -> GridArchive:
    import jax.numpy as jnp
    return GridArchive(jnp.zeros((spec.cells, genome_size), jnp.float32),
                       jnp.full((spec.cells,), -jnp.inf, jnp.float32),
                       jnp.zeros((spec.cells, len(spec.shape)), jnp.float32))


def grid_cell(spec: GridSpec, descriptors):
    """Flat cell index of each descriptor [..., dims] (row-major; outside the bounds: the edge cell)."""
    import jax.numpy as jnp
    low, high = jnp.asarray(spec.low, jnp.float32), jnp.asarray(spec.high, jnp.float32)
    shape = jnp.asarray(spec.shape, jnp.int32)
    unit = (descriptors - low) / (high - low)
    index = jnp.clip(jnp.floor(unit * shape).astype(jnp.int32), 0, shape - 1)
    flat = jnp.zeros(index.shape[:-1], jnp.int32)
    for d in range(len(spec.shape)):
        flat = flat * spec.shape[d] + index[..., d]
    return flat


def grid_insert(spec: GridSpec, archive: GridArchive, genomes, fitness, descriptors) -> GridArchive:
    """Insert a batch: in each cell the batch's best (the first of equals)
    replaces the elite if strictly better. NaN fitness never enters.
    The same result as inserting one by one in batch order."""
    import jax
    import jax.numpy as jnp

    fitness = jnp.where(jnp.isnan(fitness), -jnp.inf, fitness).astype(jnp.float32)
    cells = grid_cell(spec, descriptors)
    best = jax.ops.segment_max(fitness, cells, num_segments=spec.cells)
    order = jnp.arange(fitness.shape[0])
    is_best = fitness == best[cells]
    first = jax.ops.segment_min(jnp.where(is_best, order, fitness.shape[0]), cells, num_segments=spec.cells)
    wins = is_best & (first[cells] == order) & (fitness > archive.fitness[cells])
    target = jnp.where(wins, cells, spec.cells)    # losers write out of range: dropped
    return GridArchive(archive.genomes.at[target].set(genomes, mode="drop"),
                       archive.fitness.at[target].set(fitness, mode="drop"),
                       archive.descriptors.at[target].set(descriptors.astype(jnp.float32), mode="drop"))


def grid_stats(archive: GridArchive, qd_offset: float):
    import jax.numpy as jnp
    filled = jnp.isfinite(archive.fitness)
    return {"coverage": filled.mean(),
            "qd_score": jnp.sum(jnp.where(filled, archive.fitness - qd_offset, 0.0)),
            "best_fitness": jnp.max(archive.fitness)}


# ----------------------------------------------------------------------------- novelty

class NoveltyArchive(NamedTuple):
    descriptors: Any   # [capacity, dims], a ring buffer
    count: Any         # descriptors ever added (slots in use: min(count, capacity))


def novelty_init(capacity: int, dims: int) -> NoveltyArchive:
    import jax.numpy as jnp
    return NoveltyArchive(jnp.zeros((capacity, dims), jnp.float32), jnp.zeros((), jnp.int32))


def novelty(archive: NoveltyArchive, descriptors, k: int):
    """Each descriptor's mean Euclidean distance to its k nearest neighbours
    among the archive's descriptors and the batch's others (not itself).
    With fewer than k neighbours, the mean over those there are."""
    import jax
    import jax.numpy as jnp

    capacity, batch = archive.descriptors.shape[0], descriptors.shape[0]
    pool = jnp.concatenate([archive.descriptors, descriptors])
    valid = jnp.concatenate([jnp.arange(capacity) < archive.count, jnp.ones(batch, bool)])
    distance = jnp.linalg.norm(descriptors[:, None, :] - pool[None, :, :], axis=-1)
    itself = jnp.arange(capacity, capacity + batch)[:, None] == jnp.arange(capacity + batch)[None, :]
    distance = jnp.where(valid[None, :] & ~itself, distance, jnp.inf)
    nearest = -jax.lax.top_k(-distance, k)[0]
    finite = jnp.isfinite(nearest)
    return jnp.sum(jnp.where(finite, nearest, 0.0), -1) / jnp.maximum(finite.sum(-1), 1)


def novelty_add(archive: NoveltyArchive, descriptors, scores, n: int) -> NoveltyArchive:
    """Add the n most novel descriptors of the batch (ring buffer: the oldest go first)."""
    import jax
    import jax.numpy as jnp

    if n == 0:
        return archive
    capacity = archive.descriptors.shape[0]
    top = jax.lax.top_k(scores, n)[1]
    slots = (archive.count + jnp.arange(n)) % capacity
    return NoveltyArchive(archive.descriptors.at[slots].set(descriptors[top]), archive.count + n)


# ----------------------------------------------------------------------------- policy and episodes

class Task(NamedTuple):
    env: Any
    env_params: Any
    unravel: Any          # flat genome -> network params
    apply: Any            # (network params, obs) -> action
    init_network: Any     # key -> flat genome
    genome_size: int
    steps: int
    spec: GridSpec


def make_task(config: QDConfig) -> Task:
    """The environment, the policy network over a flat genome, and the grid."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import envs
    from envs import core
    from src.networks import MLP

    # the bare environment: an episode needs none of the learners' wrappers (its return is summed
    # here, the policy's actions are inside the box, observations are flattened below); they
    # cost ~15% of a hard-maze step
    env, env_params = envs.make_raw(config.env)
    obs_dim = envs.obs_size(env, env_params)
    bad = [d for d in config.descriptor_dims if not 0 <= d < obs_dim]
    if bad:
        raise ConfigError(f"descriptor_dims {bad} are outside the {obs_dim} entries of {config.env}'s observation")
    discrete = envs.is_discrete(env, env_params)
    space = env.action_space(env_params)
    network = MLP(tuple(config.hidden), envs.action_dim(env, env_params), activation="tanh", kernel_init="lecun")
    # shapes only: flax's init run eagerly costs seconds of op-by-op compiles on CPU
    shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((obs_dim,), jnp.float32))
    template = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), shapes)
    flat, unravel = ravel_pytree(template)
    # LeCun-normal scale (std 1/sqrt(fan in)) for kernels, zero biases, entry by entry in ravel order
    scale = np.concatenate([np.full(x.size, 1 / np.sqrt(x.shape[0]) if x.ndim == 2 else 0.0, np.float32)
                            for x in jax.tree.leaves(template)])

    def apply(params, obs):
        out = network.apply(params, obs)
        if discrete:
            return jnp.argmax(out)
        # tanh squashes into the action box (deterministic policy: evolution needs no sampling)
        low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
        return low + (jnp.tanh(out) + 1.0) * 0.5 * (high - low)

    def init_network(key):
        return jax.random.normal(key, scale.shape, jnp.float32) * scale

    steps = config.episode_steps or core.episode_limit(env, env_params)
    spec = GridSpec(tuple(config.grid), tuple(map(float, config.descriptor_low)),
                    tuple(map(float, config.descriptor_high)))
    return Task(env, env_params, unravel, apply, init_network, int(flat.size), int(steps), spec)


def make_episode(task: Task, config: QDConfig):
    """fitness(genome, key) -> {fitness, descriptor, reached}: the first
    episode of a deterministic policy, run for `steps` steps (a fixed-length
    scan; what comes after the episode ends is ignored)."""
    import jax
    import jax.numpy as jnp

    env, env_params, dims = task.env, task.env_params, jnp.asarray(config.descriptor_dims)

    def flat(obs):
        return jnp.ravel(obs).astype(jnp.float32)

    def episode(genome, key):
        TRACES["engine", "episode"] += 1
        params = task.unravel(genome)
        reset_key, loop_key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)
        obs = flat(obs)

        def body(carry, step_key):
            obs, state, done, total, final, reached = carry
            action = task.apply(params, obs)
            obs, state, reward, terminated, truncated, info = env.step(step_key, state, action, env_params)
            obs = flat(obs)
            live = ~done
            ends = live & (terminated | truncated)
            total = total + jnp.where(live, reward, 0.0).astype(jnp.float32)
            final = jnp.where(ends, flat(info["final_observation"]), final)
            goal = info.get("goal_reached", jnp.zeros((), bool))
            reached = reached | (ends & goal)
            return (obs, state, done | ends, total, final, reached), None

        carry = (obs, state, jnp.zeros((), bool), jnp.zeros((), jnp.float32), obs, jnp.zeros((), bool))
        (obs, _, done, total, final, reached), _ = jax.lax.scan(body, carry, jax.random.split(loop_key, task.steps))
        final = jnp.where(done, final, obs)
        reached = reached | (total >= config.success_return)
        return {"fitness": total, "descriptor": final[dims], "reached": reached.astype(jnp.float32)}

    return episode


# ----------------------------------------------------------------------------- methods

class QDState(NamedTuple):
    search: Any          # the method's own state (MAP-Elites: the origin genome; its population is `grid`)
    grid: GridArchive
    first_reached: Any   # generation whose evaluations first reached the goal; -1 before


class Method(NamedTuple):
    init: Any    # (key, origin) -> QDState
    ask: Any     # (key, state) -> (genomes [batch, D], state)
    tell: Any    # (state, genomes, evals, generation) -> (state, metrics)


def make_method(name: str, config: QDConfig, task: Task) -> Method:
    """One seed's init/ask/tell of method `name` (pure; vmap and jit them)."""
    import jax
    import jax.numpy as jnp

    from meta import es as es_lib

    spec, batch = task.spec, config.batch
    template = jnp.zeros((task.genome_size,), jnp.float32)

    def record(state, search, genomes, evals, generation):
        grid = grid_insert(spec, state.grid, genomes, evals["fitness"], evals["descriptor"])
        reached = jnp.any(evals["reached"] > 0)
        first = jnp.where((state.first_reached < 0) & reached, generation, state.first_reached)
        metrics = {**grid_stats(grid, config.qd_offset), "generation_best": jnp.max(evals["fitness"]),
                   "reached": (first >= 0).astype(jnp.float32), "first_reached": first}
        return QDState(search, grid, first), metrics

    def fresh(search):
        return QDState(search, grid_init(spec, task.genome_size), jnp.full((), -1, jnp.int32))

    if name == "map-elites":
        def init(key, origin):
            return fresh(origin)

        def ask(key, state):
            pick_key, noise_key = jax.random.split(key)
            filled = jnp.isfinite(state.grid.fitness)
            # uniform over the filled cells by inverse CDF (one uniform per pick; a Gumbel-max
            # categorical would draw cells x batch of them: 10 ms of a 75 ms generation)
            p = jnp.where(filled.any(), filled / jnp.maximum(filled.sum(), 1), 1.0 / spec.cells)
            cells = jax.random.choice(pick_key, spec.cells, (batch,), p=p)
            parents = jnp.where(filled.any(), state.grid.genomes[cells], state.search[None, :])
            noise = jax.random.normal(noise_key, parents.shape, jnp.float32)
            return parents + config.sigma * noise, state

        def tell(state, genomes, evals, generation):
            return record(state, state.search, genomes, evals, generation)

        return Method(init, ask, tell)

    if name in ("ga", "es", "novelty"):
        strategy = es_lib.make(config.es_config() if name == "es" else config.ga_config(), template)

        def init(key, origin):
            inner = strategy.init(key, origin)
            if name == "novelty":
                inner = (inner, novelty_init(config.novelty_archive, len(spec.shape)))
            return fresh(inner)

        def ask(key, state):
            inner = state.search[0] if name == "novelty" else state.search
            genomes, inner = strategy.ask(key, inner)
            return genomes, state._replace(search=(inner, state.search[1]) if name == "novelty" else inner)

        def tell(state, genomes, evals, generation):
            tell_key = jax.random.fold_in(jax.random.PRNGKey(0), generation)   # unused by GA and OpenES's tell
            if name == "novelty":
                inner, archive = state.search
                scores = novelty(archive, evals["descriptor"], config.novelty_k)
                inner, _ = strategy.tell(tell_key, genomes, scores, inner)
                search = (inner, novelty_add(archive, evals["descriptor"], scores, config.novelty_add))
            else:
                # a NaN return ranks last instead of poisoning the update
                fitness = evals["fitness"]
                finite = jnp.isfinite(fitness)
                worst = jnp.min(jnp.where(finite, fitness, jnp.inf))
                fitness = jnp.where(finite, fitness, jnp.where(jnp.isfinite(worst), worst, 0.0))
                search, _ = strategy.tell(tell_key, genomes, fitness, state.search)
            return record(state, search, genomes, evals, generation)

        return Method(init, ask, tell)

    raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- the loop

COLUMNS = ("method", "seed", "generation", "evaluations", "best_fitness", "generation_best", "coverage",
           "qd_score", "reached", "first_reached")


class Programs(NamedTuple):
    """The jitted, seed-vmapped functions of one method (one compile each);
    initial genomes come from `Built.origins`, the same for every method."""
    init: Any
    ask: Any
    tell: Any


# How often each program's Python body was traced, by (method, function):
# the generation loop must compile ask and tell once per run (tests count).
TRACES = collections.Counter()


def compile_method(name: str, method: Method):
    """Seed-vmapped programs; keys are drawn inside from (seed key, generation),
    so a generation's randomness depends on nothing but the seed and its number."""
    import jax
    import jax.numpy as jnp

    def init(keys, origins):
        TRACES[name, "init"] += 1
        return strong(jax.vmap(method.init)(jax.vmap(lambda k: jax.random.fold_in(k, 1 << 30))(keys), origins))

    def ask(keys, generation, state):
        TRACES[name, "ask"] += 1
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, generation))(keys)
        genomes, state = jax.vmap(method.ask)(step_keys, state)
        return genomes, strong(state)

    def tell(state, genomes, evals, generation):
        TRACES[name, "tell"] += 1
        state, metrics = jax.vmap(method.tell, in_axes=(0, 0, 0, None))(state, genomes, evals, generation)
        return strong(state), metrics

    def strong(state):
        # evosax leaves some counters weakly typed (init's, and a schedule's Python float in tell): one
        # more compile of ask and tell each if the types changed between calls; a checkpoint restores strong
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), state)

    return Programs(jax.jit(init), jax.jit(ask), jax.jit(tell))


def seed_keys(config: QDConfig):
    import jax
    return jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)


def make_evaluate(task: Task, config: QDConfig):
    """evaluate(genomes [seeds, batch, D], keys [seeds, 2], generation) -> numpy
    evals [seeds, batch, ...] through the population engine (one program)."""
    import jax
    import numpy as np

    from src import population

    members = config.seeds * config.batch
    evaluator = population.make_evaluator(make_episode(task, config), members, config.batch_size or None)
    eval_keys = jax.jit(lambda keys, g: jax.vmap(
        lambda k: jax.random.split(jax.random.fold_in(jax.random.fold_in(k, g), 1 << 29), config.batch))(keys))

    def evaluate(genomes, keys, generation):
        flat = np.asarray(genomes).reshape(members, -1)
        k = np.asarray(eval_keys(keys, generation)).reshape(members, 1, -1)
        out = population.gather(evaluator(flat, k))
        return {name: v.reshape(config.seeds, config.batch, *v.shape[2:]) for name, v in out.items()}

    evaluate.evaluator = evaluator
    return evaluate


class Built(NamedTuple):
    task: Task
    evaluate: Any
    origins: Any          # jitted: seed keys -> initial genomes
    programs: dict        # method -> Programs


@functools.lru_cache(maxsize=2)
def build(config: QDConfig) -> Built:
    """Everything a run compiles, kept for the process: a run stopped and
    resumed in the same process (tests, notebooks) compiles nothing again."""
    import jax

    task = make_task(config)
    evaluate = make_evaluate(task, config)
    origins = jax.jit(jax.vmap(lambda k: task.init_network(jax.random.fold_in(k, 7))))
    programs = {name: compile_method(name, make_method(name, config, task)) for name in config.methods}
    return Built(task, evaluate, origins, programs)


def run_method(name, config, built, run, stop_at, bar=None, offset=0):
    """Generations `done`..`stop_at` of one method (all seeds vmapped): a
    Python loop over the jitted ask and tell, the engine between them,
    metrics.csv rows and a checkpoint every `checkpoint_every` generations.
    Returns (final state, {"seconds", "generations_run", "compile_seconds"})."""
    import jax
    import numpy as np

    keys = seed_keys(config)
    programs, evaluate = built.programs[name], built.evaluate
    ckpt = f"checkpoint/{name}"
    state, done = run.restore(programs.init(keys, built.origins(keys)), name=ckpt)
    if done:   # orbax restores committed arrays; a fresh state is uncommitted: another compile of ask and tell
        state = jax.device_put(jax.tree.map(np.asarray, state))
    run.cut_rows("metrics.csv", lambda row: row["method"] != name or int(float(row["generation"])) <= done)
    rows, t0, first_gen_seconds = [], time.perf_counter(), None
    for generation in range(done, stop_at):
        g0 = time.perf_counter()
        genomes, state = programs.ask(keys, generation, state)
        evals = evaluate(genomes, keys, generation)
        state, metrics = programs.tell(state, genomes, evals, generation + 1)
        metrics = jax.device_get(metrics)
        if first_gen_seconds is None:
            first_gen_seconds = time.perf_counter() - g0
        for seed in range(config.seeds):
            row = {"method": name, "seed": seed, "generation": generation + 1,
                   "evaluations": (generation + 1) * config.batch}
            row.update({k: (int(v[seed]) if k == "first_reached" else float(v[seed])) for k, v in metrics.items()})
            rows.append({k: row[k] for k in COLUMNS})
        if (generation + 1) % config.checkpoint_every == 0 or generation + 1 == stop_at:
            run.append_rows("metrics.csv", rows)
            rows = []
            run.save(state, generation + 1, name=ckpt)
        if bar is not None:
            bar.update_to(offset + generation + 1)
    seconds = time.perf_counter() - t0
    return state, {"seconds": seconds, "generations_run": stop_at - done, "first_generation_seconds": first_gen_seconds,
                   "evaluations_per_second": (stop_at - done - 1) * config.batch * config.seeds
                   / max(seconds - (first_gen_seconds or 0.0), 1e-9) if stop_at - done > 1 else None}


def sort_rows(run, methods):
    """metrics.csv in (method, generation, seed) order, however the session was cut."""
    run.cut_rows("metrics.csv", sort_key=lambda r: (methods.index(r["method"]) if r["method"] in methods else 99,
                                                    int(float(r["generation"])), int(float(r["seed"]))))


def run_all(config: QDConfig, run, stop_at=None, show_progress=True):
    """Every method of `config` in turn, into the open run directory `run`.
    Writes metrics.csv, checkpoints, archive.png, coverage.png,
    comparison.md and summary.json; returns the summary."""
    import jax

    from src import experiment, progress

    config = config.validate()
    stop = experiment.stop_point(config.generations, config.checkpoint_every, stop_at, "generations")
    progress_now = run.progress()
    if all(progress_now.get(f"checkpoint/{m}/generation", 0) >= stop for m in config.methods):
        raise ConfigError(f"the run in {run.path} has already reached generation {stop} for every method")
    built = build(config)
    task, evaluate = built.task, built.evaluate
    print(f"QD on {config.env}: {', '.join(config.methods)}; {config.seeds} seeds x {config.batch} evaluations x "
          f"{config.generations} generations; genome {task.genome_size} floats; grid {'x'.join(map(str, config.grid))}; "
          f"{evaluate.evaluator.mesh.devices.size} device(s) -> {run.path}")
    states, timings = {}, {}
    total = config.generations * len(config.methods)
    with progress.bar(total, desc="QD generations", enabled=show_progress) as bar:
        for i, name in enumerate(config.methods):
            states[name], timings[name] = run_method(name, config, built, run, stop, bar,
                                                     offset=i * config.generations)
    sort_rows(run, list(config.methods))
    rows = run.read_rows("metrics.csv")
    summary = summarise(config, rows, timings)
    summary.update({"env": config.env, "genome_size": task.genome_size, "generation": stop,
                    "complete": stop >= config.generations, "device": str(jax.devices()[0].device_kind),
                    "devices": int(evaluate.evaluator.mesh.devices.size)})
    run.write_json("summary.json", summary)
    if rows:
        plot_archives(run.file("archive.png"), config, task, states)
        plot_coverage(run.file("coverage.png"), config, rows)
        with open(run.file("comparison.md"), "w") as f:
            f.write(comparison(config, summary))
    return summary


# ----------------------------------------------------------------------------- reports

def summarise(config, rows, timings):
    import numpy as np

    out = {"methods": {}}
    for name in config.methods:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        last = max(int(r["generation"]) for r in mine)
        final = sorted((r for r in mine if int(r["generation"]) == last), key=lambda r: r["seed"])
        firsts = [int(r["first_reached"]) for r in final]
        reached = [f for f in firsts if f >= 0]
        out["methods"][name] = {
            "generation": last, "evaluations_per_seed": last * config.batch,
            "reached": len(reached), "seeds": len(final), "first_reached": firsts,
            "median_generations_to_goal": float(np.median(reached)) if reached else None,
            "best_fitness": [r["best_fitness"] for r in final],
            "coverage": [r["coverage"] for r in final], "qd_score": [r["qd_score"] for r in final],
            **{f"session_{k}": v for k, v in timings.get(name, {}).items()}}
    return out


def comparison(config, summary):
    import numpy as np

    lines = [f"# Quality-diversity on {config.env}", "",
             f"Budget per seed and method: {config.generations} generations x {config.batch} evaluations "
             f"= {config.generations * config.batch} episodes; {config.seeds} seeds; grid "
             f"{'x'.join(map(str, config.grid))} over final observation entries {list(config.descriptor_dims)}.", "",
             "| method | goal reached (seeds) | median generations to the goal | best return (mean) | "
             "coverage (mean) | QD-score (mean) |", "|---|---|---|---|---|---|"]
    for name, m in summary["methods"].items():
        median = m["median_generations_to_goal"]
        lines.append(f"| {name} | {m['reached']}/{m['seeds']} | {'-' if median is None else f'{median:.0f}'} | "
                     f"{np.mean(m['best_fitness']):.3f} | {np.mean(m['coverage']):.3f} | {np.mean(m['qd_score']):.1f} |")
    lines += ["", "Coverage and QD-score are measured on each method's own grid archive of everything it evaluated "
              f"(QD-score: sum over filled cells of return - ({config.qd_offset})).", ""]
    return "\n".join(lines)


def plot_archives(path, config, task, states):
    """Each method's grid archive (seed 0), cells coloured by the best return; walls drawn for hard-maze."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(states)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    lo, hi = config.descriptor_low, config.descriptor_high
    for ax, name in zip(axes[0], names):
        fitness = np.asarray(states[name].grid.fitness)[0]
        if len(config.grid) == 2:
            image = np.where(np.isfinite(fitness), fitness, np.nan).reshape(config.grid).T
            im = ax.imshow(image, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap="viridis", aspect="auto")
            fig.colorbar(im, ax=ax, fraction=0.046)
        else:
            ax.bar(np.arange(fitness.size), np.where(np.isfinite(fitness), fitness, 0.0))
        walls = getattr(task.env_params, "walls", None)
        if walls is not None and len(config.grid) == 2:
            for x0, y0, x1, y1 in np.asarray(walls):
                ax.plot([x0, x1], [y0, y1], "-", color="0.3", lw=2)
            start, goal = np.asarray(task.env_params.start), np.asarray(task.env_params.goal)
            ax.plot(*start, "s", color="0.3", ms=6)
            ax.plot(*goal, "r*", ms=12)
        filled = np.isfinite(fitness).mean()
        ax.set_title(f"{name} (seed 0): {100 * filled:.0f}% filled", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coverage(path, config, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in config.methods:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        gens = sorted({int(r["generation"]) for r in mine})
        for ax, key in zip(axes, ("coverage", "best_fitness")):
            values = np.array([[r[key] for r in mine if int(r["generation"]) == g] for g in gens])
            line, = ax.plot(gens, values.mean(1), label=name)
            ax.fill_between(gens, values.min(1), values.max(1), color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("coverage (filled cells)")
    axes[1].set_ylabel("best return so far")
    for ax in axes:
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{config.env}: mean and range over {config.seeds} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
