"""Learned policy optimisation: evolution strategies over PPO's drift
function (Lu et al. 2022), the inner runs' fitness, and the comparison
against PPO-clip on seeds the ES never saw. `run.py meta lpo`
(commands/lpo.py) parses its flags and calls `meta_train`."""
import dataclasses

from src.config import ConfigError


@dataclasses.dataclass(frozen=True)
class LPOConfig:
    envs: tuple[str, ...] = ("CartPole-v1",)
    held_out: tuple[str, ...] = ()
    objective: str = "learned"         # learned | temporal (also sees n/N and log lifetime)
    init: str = "ppo_clip"             # ppo_clip (fitted drift) | random
    strategy: str = "openes"
    pop: int = 32
    sigma: float = 0.03
    lr: float = 0.01
    antithetic: bool = True
    seeds: int = 2                     # inner runs per member and generation
    fitness: str = "final"             # final (last 10% of iterations) | auc (all iterations: area under the curve)
    common_seeds: bool = True          # all members of a generation run on the same seeds
    generations: int = 50
    checkpoint_every: int = 5
    batch_size: int = 0                # members per device evaluated at once (0: all)
    seed: int = 0
    eval_seeds: int = 8                # final comparison against PPO-clip
    inner: dict = dataclasses.field(default_factory=dict)    # PPOConfig keys for every inner run
    inner_by_env: dict = dataclasses.field(default_factory=dict)  # {env: {PPOConfig keys}}

    def validate(self):
        if not self.envs:
            raise ConfigError("envs must name at least one environment")
        if self.objective not in ("learned", "temporal"):
            raise ConfigError(f"objective must be 'learned' or 'temporal', got {self.objective!r}")
        if self.init not in ("ppo_clip", "random"):
            raise ConfigError(f"init must be 'ppo_clip' or 'random', got {self.init!r}")
        if self.fitness not in ("final", "auc"):
            raise ConfigError(f"fitness must be 'final' or 'auc', got {self.fitness!r}")
        for name in ("seeds", "generations", "checkpoint_every", "eval_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0, got {self.batch_size}")
        self.es_config().validate()
        return self

    def es_config(self):
        from meta.es import ESConfig
        return ESConfig(self.strategy, self.pop, self.sigma, self.lr, self.antithetic)


def inner_config(config: LPOConfig, env: str):
    """The PPOConfig of one inner run on `env` (checked before compiling)."""
    import envs
    from agents import ppo
    from src import config as cfg

    envs.check_name(env)
    values = {**config.inner, **config.inner_by_env.get(env, {}), "env": env}
    return cfg.from_dict(ppo.PPOConfig, {k: v for k, v in values.items()}).validate()


def paired(a, b):
    """Seed-by-seed difference a - b of two objectives run on the same seeds:
    mean, standard error, and the mean relative to |mean(b)| (sign-safe for
    negative returns). Pairing removes the seed's own luck from the comparison."""
    import numpy as np

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    base = float(np.nanmean(b))
    return {"diff": float(d.mean()), "se": se, "relative": float(d.mean() / abs(base)) if base else float("nan"),
            "wins": int((d > 0).sum()), "n": int(len(d))}


def compare(config, ppo_config, objective, named_params, key, population):
    """Returns of PPO-clip and of `objective` with each of `named_params`
    ({name: drift params}) on the same `eval_seeds` seeds, through the
    population engine (one compiled program for all the learned variants).
    Each gets the final return (`mean`, `std`, `median`, `returns`) and the
    area under the curve (`auc`: mean return over all iterations); each
    learned variant also gets seed-paired differences against PPO-clip (and
    `learned` against `initial`)."""
    import jax
    import numpy as np

    from agents import ppo
    from agents import objectives as lo

    windows = {"final": lo.final_window(ppo_config.num_iterations), "auc": ppo_config.num_iterations}
    n = config.eval_seeds
    keys = np.asarray(jax.random.split(key, n)).reshape(n, 1, -1)
    hp = ppo.hparams_from(ppo_config)

    def both(agent):
        def fitness(objective_params, k):
            _, metrics = agent.train(k, hp, None, objective_params)
            return {name: lo.final_return(metrics, w) for name, w in windows.items()}
        return fitness

    def stats(out):
        final, auc = out["final"], out["auc"]
        return {"mean": float(np.nanmean(final)), "std": float(np.nanstd(final)),
                "median": float(np.nanmedian(final)), "returns": final.tolist(),
                "auc": {"mean": float(np.nanmean(auc)), "std": float(np.nanstd(auc)), "values": auc.tolist()}}

    clip_agent = ppo.make(ppo_config, objective=lo.ppo_clip)
    clip = population.evaluate(both(clip_agent), np.full((n,), ppo_config.clip_eps, np.float32), keys)
    clip = jax.tree.map(lambda x: x[:, 0], clip)
    results = {"ppo_clip": stats(clip)}
    if named_params:
        names = list(named_params)
        stacked = jax.tree.map(lambda *xs: np.concatenate([np.broadcast_to(np.asarray(x), (n, *np.shape(x)))
                                                           for x in xs]), *named_params.values())
        agent = ppo.make(ppo_config, objective=objective)
        out = population.evaluate(both(agent), stacked, np.concatenate([keys] * len(names)))
        per_name = {name: jax.tree.map(lambda x: x[i * n:(i + 1) * n, 0], out) for i, name in enumerate(names)}
        for name in names:
            r = stats(per_name[name])
            # relative to PPO-clip, sign-safe for negative returns (Acrobot, Pendulum)
            r["relative_to_ppo_clip"] = (r["mean"] - results["ppo_clip"]["mean"]) / abs(results["ppo_clip"]["mean"])
            r["paired_vs_ppo_clip"] = {m: paired(per_name[name][m], clip[m]) for m in windows}
            if name != "initial" and "initial" in per_name:
                r["paired_vs_initial"] = {m: paired(per_name[name][m], per_name["initial"][m]) for m in windows}
            results[name] = r
    return results


def initial_drift(config: LPOConfig, clip_eps):
    """The ES's starting mean: the drift fitted to PPO-clip, or a random one."""
    import jax

    from agents import objectives as lo

    init_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)[0]
    temporal = config.objective == "temporal"
    if config.init == "ppo_clip":
        return lo.fit_to_ppo_clip(init_key, temporal, clip_eps=clip_eps)[0]
    return lo.init_drift(init_key, temporal)


def meta_train(config: LPOConfig, inner, out, resume=False, stop_at=None, show_progress=True, run=None):
    """Evolve the drift into `out` (or into the open `run`, as `run.py meta
    lpo` passes on one process or several), then compare the result with
    PPO-clip on held-out seeds and envs: summary.json, fitness.png."""
    import time

    import jax
    import numpy as np

    from agents import ppo
    from meta import es as es_lib
    from agents import objectives as lo
    from src import population, rundir

    out = run.path if run is not None else out
    key = jax.random.PRNGKey(config.seed)
    _, es_key, base_key, eval_key = jax.random.split(key, 4)   # the first is initial_drift's
    mean = initial_drift(config, inner[config.envs[0]].clip_eps)
    es = es_lib.make(config.es_config(), mean)

    fitnesses = []
    for env in config.envs:
        pc = inner[env]
        obj = lo.make(config.objective, pc.num_iterations)
        agent = ppo.make(pc, objective=obj.fn)
        fitnesses.append(lo.inner_fitness(agent, ppo.hparams_from(pc),
                                          lo.fitness_window(config.fitness, pc.num_iterations)))
    baselines = [1.0] * len(config.envs)
    if len(config.envs) > 1:
        # PPO-clip's return per env, to normalise each env's share of the fitness
        baselines = []
        for env in config.envs:
            pc = inner[env]
            clip = compare(config, pc, None, {}, base_key, population)["ppo_clip"]
            baselines.append(clip["auc"]["mean"] if config.fitness == "auc" else clip["mean"])
        print("PPO-clip baselines: " + ", ".join(f"{e} {b:.1f}" for e, b in zip(config.envs, baselines)))
    fitness = lo.multi_env_fitness(fitnesses, baselines)
    evaluator = population.make_evaluator(fitness, config.pop, config.batch_size or None)
    print(f"LPO ({config.objective} drift, {config.strategy}) on {', '.join(config.envs)}: pop {config.pop} x "
          f"{config.seeds} seeds, {config.generations} generations, {evaluator.mesh.devices.size} device(s) -> {out}")

    def evaluate(members, keys):
        return population.gather(evaluator(members, keys))

    t0 = time.perf_counter()
    state = es_lib.evolve(es, evaluate, mean, es_key, config.generations, out, seeds=config.seeds,
                          checkpoint_every=config.checkpoint_every, resume=resume, stop_at=stop_at,
                          show_progress=show_progress, desc="LPO generations", common_seeds=config.common_seeds,
                          run=run)
    elapsed = time.perf_counter() - t0
    final = es.mean(state)
    lo.save(out, config.objective, final)
    rows = es_lib.read_fitness(out)
    generation = int(rows[-1]["generation"]) if rows else 0
    summary = {"envs": list(config.envs), "generation": generation,
               "complete": generation >= config.generations, "seconds_this_session": elapsed,
               "fitness_first_generation_mean": rows[0]["mean"] if rows else None,
               "fitness_last_generation_mean": rows[-1]["mean"] if rows else None,
               "device": str(jax.devices()[0].device_kind), "devices": evaluator.mesh.devices.size}
    if generation >= config.generations:
        # the initial mean (fitted PPO-clip drift) and the final mean, against
        # PPO-clip itself, on seeds the ES never saw
        for group, names in (("train_envs", config.envs), ("held_out", config.held_out)):
            summary[group] = {}
            for env in names:
                pc = inner[env]
                obj = lo.make(config.objective, pc.num_iterations)
                res = compare(config, pc, obj.fn, {"initial": mean, "learned": final}, eval_key, population)
                summary[group][env] = res
                print(f"{group} {env} ({config.eval_seeds} seeds): learned {res['learned']['mean']:.1f} ± "
                      f"{res['learned']['std']:.1f} ({100 * res['learned']['relative_to_ppo_clip']:+.1f}% vs "
                      f"PPO-clip), initial (fitted PPO-clip drift) {res['initial']['mean']:.1f} ± "
                      f"{res['initial']['std']:.1f}, PPO-clip {res['ppo_clip']['mean']:.1f} ± "
                      f"{res['ppo_clip']['std']:.1f}")
                for m in ("final", "auc"):
                    pc_, pi_ = res["learned"]["paired_vs_ppo_clip"][m], res["learned"]["paired_vs_initial"][m]
                    print(f"  {m}: learned - PPO-clip {pc_['diff']:+.1f} ± {pc_['se']:.1f} (s.e., paired; "
                          f"{100 * pc_['relative']:+.1f}%), learned - initial {pi_['diff']:+.1f} ± {pi_['se']:.1f}")
    rundir.write_json(out, "summary.json", summary)
    baseline = None
    if len(config.envs) == 1 and "train_envs" in summary:
        clip = summary["train_envs"][config.envs[0]]["ppo_clip"]
        baseline = clip["auc"]["mean"] if config.fitness == "auc" else clip["mean"]
    es_lib.plot_fitness(out, f"LPO ({config.objective} drift) on {', '.join(config.envs)}", baseline,
                        f"PPO-clip ({config.eval_seeds} held-out seeds)")
    print(f"fitness: generation 1 mean {summary['fitness_first_generation_mean']:.2f}, "
          f"generation {generation} mean {summary['fitness_last_generation_mean']:.2f} -> {out}")
    return summary
