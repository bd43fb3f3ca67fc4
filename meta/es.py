"""Evolution strategies: a thin adapter over evosax 0.3 (OpenES, SNES, CMA-ES,
and SimpleGA as the deep GA) and the generation loop every ES-driven
meta-learner shares.

Our convention is that fitness is a return to MAXIMISE. evosax minimises; the
one place that converts is `tell` below (`-returns`). Nothing else in the
project negates a fitness.

    es = make(ESConfig(strategy="openes", pop=32, sigma=0.05, lr=0.01), template)
    state = es.init(key, mean)
    population, state = es.ask(key, state)          # pytree, leading axis pop
    state, metrics = es.tell(key, population, returns, state)
    grad = antithetic_gradient(fitness, size, noise_key, pair_key, pairs, sigma)   # the raw estimate, no step

Sampling and shaping:
- OpenES samples antithetic pairs (member i and member i + pop/2 are mean +- sigma z)
  and shapes fitness by centred ranks in [-0.5, 0.5].
- SNES and CMA-ES keep their own rank-based utility weights (also invariant to
  any monotone change of the returns); centred ranks fed to them as-is would
  reverse their update, since they treat larger shaped values as better.
- The deep GA ("ga": evosax's SimpleGA, Such et al. 2017) keeps a population,
  not a distribution: truncation selection (the top `truncation` fraction
  parent the next generation, chosen uniformly), Gaussian mutation of std
  `sigma`, no crossover. SimpleGA mutates every child, so the adapter adds
  the elitism: member 0 of each generation is the previous generation's best,
  unmutated (re-evaluated, as in the paper). `init(key, mean)` starts from
  `pop` copies of `mean` ranked last, so the first generation is `mean` and
  its mutants; `mean(state)` is the last generation's best.
- `member_keys` gives both members of an antithetic pair the same evaluation
  keys (same task, same seeds), so their difference measures the
  perturbation, not the luck of the draw.
"""
import csv
import dataclasses
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from src.config import ConfigError

STRATEGIES = ("openes", "snes", "cma_es", "ga")


@dataclasses.dataclass(frozen=True)
class ESConfig:
    strategy: str = "openes"
    pop: int = 32
    sigma: float = 0.05        # initial (OpenES: constant) search std
    lr: float = 0.01           # OpenES: Adam step size; SNES: SGD step on its natural gradient (1.0 is standard)
    antithetic: bool = True    # OpenES only
    optimizer: str = "adam"    # OpenES: "adam", or "sgd" (mean += lr * the centred-rank gradient estimate)
    truncation: float = 0.5    # GA: the fraction of the population that parents the next generation

    def validate(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown ES strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.pop < 2:
            raise ConfigError(f"population must be at least 2, got {self.pop}")
        if self.antithetic and self.strategy != "openes":
            raise ConfigError(f"antithetic sampling is only available with openes, not {self.strategy!r} "
                              "(set antithetic=false)")
        if self.strategy == "openes" and self.pop % 2:
            raise ConfigError(f"OpenES needs an even population (antithetic pairs, and evosax's Open_ES requires "
                              f"it), got {self.pop}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.strategy == "ga" and not 0 < self.truncation <= 1:
            raise ConfigError(f"truncation must be in (0, 1], got {self.truncation}")
        if self.sigma <= 0 or self.lr <= 0:
            raise ConfigError(f"sigma and lr must be positive, got sigma={self.sigma}, lr={self.lr}")
        return self


class ES(NamedTuple):
    config: ESConfig
    strategy: object
    params: object
    init: Callable
    ask: Callable
    tell: Callable
    mean: Callable
    member_keys: Callable


def _build(config: ESConfig, template):
    from evosax.algorithms import CMA_ES, SNES, Open_ES, SimpleGA

    if config.strategy == "ga":
        strategy = SimpleGA(config.pop, solution=template, std_schedule=optax.constant_schedule(config.sigma))
        strategy.elite_ratio = config.truncation   # read when ask is traced (num_elites); evosax fixes 0.5
        return strategy, strategy.default_params
    if config.strategy == "openes":
        strategy = Open_ES(config.pop, solution=template, use_antithetic_sampling=config.antithetic,
                           optimizer=getattr(optax, config.optimizer)(config.lr),
                           std_schedule=optax.constant_schedule(config.sigma))
        return strategy, strategy.default_params
    if config.strategy == "snes":
        strategy = SNES(config.pop, solution=template, optimizer=optax.sgd(config.lr))
        return strategy, strategy.default_params.replace(std_init=jnp.float32(config.sigma))
    strategy = CMA_ES(config.pop, solution=template)
    return strategy, strategy.default_params.replace(std_init=jnp.float32(config.sigma))


def make(config: ESConfig, template) -> ES:
    """`template` is a pytree shaped like one member (the solution)."""
    config = config.validate()
    strategy, params = _build(config, template)
    pop = config.pop

    ga = config.strategy == "ga"

    def init(key, mean):
        if ga:   # a population: pop copies of mean, unevaluated (evosax minimises: +inf ranks last)
            copies = jax.tree.map(lambda x: jnp.broadcast_to(x, (pop, *jnp.shape(x))), mean)
            return strategy.init(key, copies, jnp.full((pop,), jnp.inf, jnp.float32), params)
        return strategy.init(key, mean, params)

    def ask(key, state):
        population, new_state = strategy.ask(key, state, params)
        if ga:   # elitism: the previous generation's best goes on unmutated as member 0
            elite = strategy.get_best_solution(state)
            population = jax.tree.map(lambda p, e: p.at[0].set(e), population, elite)
        return population, new_state

    def tell(key, population, returns, state):
        """`returns`: [pop] values to maximise."""
        return strategy.tell(key, population, -jnp.asarray(returns, jnp.float32), state, params)

    def mean(state):
        return strategy.get_best_solution(state) if ga else strategy.get_mean(state)

    def member_keys(key, seeds: int, common: bool = False):
        """Raw evaluation keys [pop, seeds, 2]; antithetic partners share theirs.
        `common`: every member gets the same seeds (common random numbers), so
        members are ranked on the same tasks."""
        if common:
            return jnp.broadcast_to(jax.random.split(key, seeds), (pop, seeds, 2))
        if config.antithetic:
            half = jax.random.split(key, pop // 2 * seeds).reshape(pop // 2, seeds, -1)
            return jnp.concatenate([half, half])
        return jax.random.split(key, pop * seeds).reshape(pop, seeds, -1)

    return ES(config, strategy, params, init, ask, tell, mean, member_keys)


def antithetic_gradient(fitness: Callable, size: int, noise_key, pair_key, pairs: int, sigma: float):
    """The raw antithetic ES estimate of d/dx E[fitness(x + delta, key)] at
    delta = 0, for a caller that takes the step with its own optimiser (BARFI's
    outer gradient, inside its jitted block): x a flat vector of `size`,
    `pairs` pairs delta = +-sigma*eps, eps ~ N(0, I), both members of a pair
    given the same key from `pair_key` (common random numbers: whatever the key
    alone decides cancels within the pair). No rank shaping: the estimate is
    of the gradient itself. fitness(delta, key) -> scalar, vmapped over pairs."""
    eps = jax.random.normal(noise_key, (pairs, size), jnp.float32)
    pair_keys = jax.random.split(pair_key, pairs)
    members = jax.vmap(fitness)
    plus = members(sigma * eps, pair_keys)
    minus = members(-sigma * eps, pair_keys)
    return ((plus - minus)[:, None] * eps).sum(0) / (2.0 * sigma * pairs)


# ----------------------------------------------------------------------------- the generation loop

FITNESS_COLUMNS = ("generation", "mean", "std", "max", "min", "best_so_far", "seconds")


def read_fitness(out):
    """The rows of OUT/fitness.csv ([] where there is none: a process other
    than 0 of a resumed multi-process run keeps only this session's rows)."""
    path = os.path.join(out, "fitness.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_fitness(out, title="", baseline=None, baseline_label="baseline"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_fitness(out)
    g = np.array([r["generation"] for r in rows])
    mean, std = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(g, mean, label="population mean")
    ax.fill_between(g, mean - std, mean + std, alpha=0.2)
    ax.plot(g, [r["max"] for r in rows], ":", label="population best")
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label=baseline_label)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "fitness.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evolve(es: ES, evaluate: Callable, mean, key, generations: int, out: str, seeds: int = 1,
           checkpoint_every: int = 1, resume: bool = False, stop_at: int | None = None,
           show_progress: bool = True, desc: str = "ES", common_seeds: bool = False, run=None):
    """The outer loop: a Python loop over jitted generations.

    `evaluate(population, keys[pop, seeds, 2]) -> returns [pop, seeds]` (numpy,
    to maximise); `common_seeds` gives all members the same seeds. Generation g draws everything from fold_in(key, g), so a run
    resumed from the checkpoint of generation g continues exactly as the
    uninterrupted run would (the checkpoint holds the whole ES state).
    Writes OUT/fitness.csv (one row per generation), OUT/checkpoint/ (orbax)
    and OUT/checkpoint.json ({"generation": g}) every `checkpoint_every`
    generations and at the end; into `run` (an open `src.experiment.Run`,
    for a command on several processes) instead of OUT when given. Returns
    the final ES state.
    """
    from src import experiment, progress

    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    stop_at = generations if stop_at is None else stop_at
    if not 0 < stop_at <= generations:
        raise ConfigError(f"stop_at must be in 1..{generations}, got {stop_at}")
    if run is None:
        os.makedirs(out, exist_ok=True)
        run = experiment.Run(out, None, None, resume, unit="generation")
    out = run.path
    init_key, loop_key = jax.random.split(key)
    state, done = run.restore(es.init(init_key, mean)) if resume else (es.init(init_key, mean), 0)
    if done >= stop_at:
        raise ConfigError(f"the run in {out} has already reached generation {done}")
    run.cut_rows("fitness.csv", lambda row: int(float(row["generation"])) <= done)

    best = -np.inf
    if done:
        best = max([r["max"] for r in read_fitness(out)] or [-np.inf])

    with progress.bar(generations, desc=desc, enabled=show_progress, initial=done) as bar:
        for generation in range(done, stop_at):
            t0 = time.perf_counter()
            ask_key, eval_key, tell_key = jax.random.split(jax.random.fold_in(loop_key, generation), 3)
            population, state = es.ask(ask_key, state)
            returns = np.asarray(evaluate(population, es.member_keys(eval_key, seeds, common_seeds)), np.float32)
            fitness = returns.reshape(es.config.pop, -1).mean(axis=1)
            # a failed (NaN) inner run ranks last instead of poisoning the update
            fitness = np.where(np.isfinite(fitness), fitness, np.nanmin(fitness) if np.isfinite(fitness).any()
                               else 0.0).astype(np.float32)
            state, _ = es.tell(tell_key, population, fitness, state)
            jax.block_until_ready(state)
            best = max(best, float(fitness.max()))
            row = {"generation": generation + 1, "mean": float(fitness.mean()), "std": float(fitness.std()),
                   "max": float(fitness.max()), "min": float(fitness.min()), "best_so_far": best,
                   "seconds": time.perf_counter() - t0}
            run.append_rows("fitness.csv", [{k: row[k] for k in FITNESS_COLUMNS}])
            if (generation + 1) % checkpoint_every == 0 or generation + 1 == stop_at:
                run.save(state, generation + 1)
            if bar is not None:
                bar.update_to(generation + 1)
                bar._bar.set_postfix(mean=f"{row['mean']:.3g}", max=f"{row['max']:.3g}")
    return state
