"""`python run.py meta reward-alignment`: BARFI against its baselines.

    python run.py meta reward-alignment --config configs/barfi_gridworld_bad.yaml
    python run.py meta reward-alignment --env CartPole-v1 --heuristic cartpole-pid-inverse --method barfi,naive --seeds 10
    python run.py meta reward-alignment --heuristics            # list the heuristics

Each method (primary: r_p only; naive: r_p + r_aux; pbrs: potential-based
shaping; barfi: learned r_phi and gamma_phi) trains PPO on all seeds in one
vmapped program. The run directory gets config.yaml, metrics.csv (one row per
iteration, method and seed), summary.json, comparison.md (the table) and
learning_curve.png (primary return against environment steps, mean +- standard
error over seeds).
"""
import argparse
import dataclasses
import time

from src import experiment
from src.config import ConfigError

METHODS = ("primary", "naive", "pbrs", "barfi")


def parser():
    p = argparse.ArgumentParser(prog="run.py meta reward-alignment", description=__doc__.split("\n")[0])
    p.add_argument("--env", default=None, help="environment name")
    p.add_argument("--heuristic", default=None, help="designer heuristic (see --heuristics)")
    p.add_argument("--method", default=None,
                   help="comma-separated subset of primary,naive,pbrs,barfi, or 'all' (default: the preset's "
                        "method if it names one, else all)")
    p.add_argument("--estimator", default=None, help="BARFI's outer gradient: implicit, unrolled or es")
    p.add_argument("--total-steps", type=float, default=None, help="environment steps per run, outer steps included")
    p.add_argument("--heuristics", action="store_true", help="list the heuristics and exit")
    # --stop-at counts blocks (outer_every PPO iterations and an outer step), a multiple of checkpoint_every
    return experiment.core_flags(p)


def build_config(args):
    from meta import reward_alignment as ra
    from src import config as cfg

    preset = cfg.load_yaml(args.config) if args.config else {}
    # a preset's `method` may name several; each run gets one
    chosen = args.method or str(preset.pop("method", "all"))
    config = cfg.from_dict(ra.AlignmentConfig, preset)
    flags = {"env": args.env, "heuristic": args.heuristic, "estimator": args.estimator, "seeds": args.seeds,
             "total_steps": int(args.total_steps) if args.total_steps is not None else None}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    config = cfg.override(config, args.overrides)
    methods = list(METHODS) if chosen == "all" else [m.strip() for m in chosen.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method {', '.join(map(repr, unknown)) or repr(args.method)}; "
                          f"choose from {', '.join(METHODS)} (comma-separated) or 'all'")
    # every method's config is checked before anything compiles
    configs = {m: dataclasses.replace(config, method=m).validate() for m in methods}
    return config, configs


def stats(values):
    import numpy as np
    values = np.asarray(values, dtype=float)
    n = len(values)
    std = float(np.std(values, ddof=1)) if n > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "se": std / np.sqrt(n) if n > 1 else 0.0,
            "per_seed": [float(v) for v in values]}


def run_method(config, run, stop_at, show_progress):
    """Train every seed of one method, chunk by chunk, from the method's
    checkpoint in `run` if it has one; appends its rows to metrics.csv and
    checkpoints after each chunk. Returns (blocks done, compile s, run s)."""
    import jax
    import numpy as np

    from meta import reward_alignment as ra
    from src import population, progress

    name = f"checkpoint/{config.method}"
    total = config.num_blocks
    chunk = min(config.checkpoint_every or total, total)
    stop = min(stop_at or total, total)
    done = run.progress().get(f"{name}/block", 0)
    if done >= stop:
        return done, 0.0, 0.0
    aligner = ra.make(config, show_progress=show_progress)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    keys = population.distribute(keys, config.seeds)
    # every leaf has the seed axis first: pinned to the devices, so each chunk's
    # output has the sharding the next chunk's program was compiled for
    sharding = population.member_sharding(config.seeds)
    start = time.time()
    if done == 0 and chunk == total:   # one program, init included (a separate init costs a compile)
        programs = {total: jax.jit(jax.vmap(aligner.train), out_shardings=sharding).lower(keys).compile()}
        state = keys
    else:
        state = jax.jit(jax.vmap(aligner.init), out_shardings=sharding)(keys)
        state, done = run.restore(state, name)
        programs = {}
    compile_s, run_s = time.time() - start, 0.0
    watch = experiment.FiniteWatch()
    with progress.bar(total, desc=config.method, enabled=show_progress, initial=done) as bar:
        while done < stop:
            n = min(chunk, stop - done)
            if n not in programs:   # the last chunk may be shorter: its own program
                start = time.time()
                programs[n] = jax.jit(jax.vmap(lambda s, n=n: aligner.run(s, n)),
                                      out_shardings=sharding).lower(state).compile()
                compile_s += time.time() - start
            if bar is not None:
                bar.set_offset(done)
            start = time.time()
            state, metrics = programs[n](state)
            metrics = jax.tree.map(np.asarray, jax.block_until_ready(metrics))
            run_s += time.time() - start
            rows = rows_of(config.method, config, metrics, done * config.outer_every)
            run.append_rows("metrics.csv", rows)
            run.log(rows)
            watch.check(metrics, (state.ts.params, state.reward_params), done * config.outer_every)
            done += n
            run.save(state, done, name)
    return done, compile_s, run_s


def method_curves(rows, method, config):
    """{metric: [seeds, iterations]} (float32, as computed) of one method, read back from metrics.csv."""
    import numpy as np
    mine = [r for r in rows if r["method"] == method]
    iterations = int(max(r["iteration"] for r in mine))
    # (another method's columns are empty in this method's rows)
    names = [k for k in mine[0] if k not in ("iteration", "member", "seed", "method") and mine[0][k] != ""]
    curves = {k: np.full((config.seeds, iterations), np.nan, np.float32) for k in names}
    for r in mine:
        for k in names:
            curves[k][int(r["member"]), int(r["iteration"]) - 1] = r[k]
    return curves


def result_of(config, metrics, compile_s, run_s):
    from meta import reward_alignment as ra
    summary = ra.summarize(metrics)
    result = {"final_return": stats(summary["final"]), "auc": stats(summary["auc"]),
              "env_steps": int(metrics["env_steps"][0, -1]), "iterations": config.num_iterations,
              "outer_steps": config.num_blocks if config.method == "barfi" else 0,
              "compile_s": round(compile_s, 2), "run_s": round(run_s, 2)}
    if config.method == "barfi":
        result["gamma_phi_final"] = stats(metrics["gamma_phi"][:, -1])
        result["phi2_mean_final"] = stats(metrics["phi2_mean"][:, -1])
    return result


def rows_of(method, config, metrics, first_iteration=0):
    import numpy as np
    rows = []
    names = sorted(k for k in metrics if k != "env_steps")
    for i in range(metrics["env_steps"].shape[1]):
        for m in range(config.seeds):
            row = {"iteration": first_iteration + i + 1, "env_steps": int(metrics["env_steps"][m, i]), "member": m,
                   "seed": config.seed + m, "method": method}
            row.update({k: float(np.asarray(metrics[k])[m, i]) for k in names})
            rows.append(row)
    return rows


def table(results, config):
    lines = [f"Primary return on {config.env} with heuristic {config.heuristic} "
             f"({config.seeds} seeds, mean ± std, [standard error])", "",
             "| method | final return | area under curve | env steps | outer steps | run s (compile s) |",
             "|---|---|---|---|---|---|"]
    for method, r in results.items():
        f, a = r["final_return"], r["auc"]
        lines.append(f"| {method} | {f['mean']:.3f} ± {f['std']:.3f} [{f['se']:.3f}] | "
                     f"{a['mean']:.3f} ± {a['std']:.3f} [{a['se']:.3f}] | {r['env_steps']} | {r['outer_steps']} | "
                     f"{r['run_s']:.1f} ({r['compile_s']:.1f}) |")
    return "\n".join(lines) + "\n"


def plot(path, curves, config):
    import numpy as np
    from src import plots

    labels = {"primary": "r_p only", "naive": "naive r_p + r_aux", "pbrs": "potential-based shaping",
              "barfi": "BARFI"}
    bands = {}
    for method, metrics in curves.items():
        returns = np.asarray(metrics["episode_return"], dtype=float)
        with np.errstate(all="ignore"):
            mean = np.nanmean(returns, axis=0)
            se = np.nanstd(returns, axis=0, ddof=1) / np.sqrt(np.maximum(np.isfinite(returns).sum(0), 1))
        bands[labels[method]] = (metrics["env_steps"][0], mean, se, returns.shape[0])
    return plots.band_plot(path, bands, "environment steps (every sample the method used)",
                           "primary return (mean ± s.e. over seeds)",
                           f"{config.env}, heuristic {config.heuristic}")


def main(argv):
    args = parser().parse_args(argv)
    if args.heuristics:
        from envs import heuristics
        for name, h in heuristics.HEURISTICS.items():
            print(f"{name:28s} {h.env:18s} {'good' if h.good else 'misleading':10s} {h.description}")
        return 0
    config, configs = build_config(args)
    given = any([args.config, args.env, args.heuristic, args.method, args.estimator, args.seeds,
                 args.total_steps, args.overrides])
    from meta import reward_alignment as ra
    # with the methods run (not the dataclass's default), so that `--config RUN_DIR/config.yaml` runs them all again
    run = experiment.start(args.out, f"reward-alignment-{config.env}-{config.heuristic}", config,
                           ra.AlignmentConfig, resume=args.resume, given=given, unit="block",
                           saved_config=dataclasses.replace(config, method=",".join(configs)))
    if run.resumed:
        stored = run.config
        configs = {m: dataclasses.replace(stored, method=m).validate() for m in stored.method.split(",")}
        config = dataclasses.replace(stored, method=next(iter(configs)))
        for method, c in configs.items():   # rows past a method's checkpoint are computed again
            done = run.progress().get(f"checkpoint/{method}/block", 0) * c.outer_every
            run.cut_rows("metrics.csv", lambda r, m=method, d=done: r["method"] != m or int(r["iteration"]) <= d)
        print(f"resuming {run.path}: " + ", ".join(
            f"{m} at block {run.progress().get(f'checkpoint/{m}/block', 0)}" for m in configs))
    for c in configs.values() if args.stop_at is not None else ():
        chunk = c.checkpoint_every or c.num_blocks
        if args.stop_at < 1 or (args.stop_at % chunk and args.stop_at < c.num_blocks):
            raise ConfigError(f"--stop-at counts blocks here: a multiple of checkpoint_every ({chunk}), "
                              f"got {args.stop_at}")
    run.open_logger(args.logger, config.seeds)

    timing, complete = {}, True
    for method, method_config in configs.items():
        done, compile_s, run_s = run_method(method_config, run, args.stop_at, not args.no_progress)
        timing[method] = (compile_s, run_s)
        complete &= done >= method_config.num_blocks
    run.close()
    # method by method, then iteration and seed: a resumed run's file reads as the uninterrupted one's
    order = list(configs)
    run.cut_rows("metrics.csv", sort_key=lambda r: (order.index(r["method"]), int(r["iteration"]), int(r["member"])))
    rows = run.read_rows("metrics.csv")
    if not complete:
        run.write_json("summary.json", {"env": config.env, "heuristic": config.heuristic, "complete": False,
                                        "blocks": {m: run.progress().get(f"checkpoint/{m}/block", 0)
                                                   for m in configs}})
        print(f"stopped at block {args.stop_at}; continue with --out {run.path} --resume")
        return 0

    results, curves = {}, {}
    for method, method_config in configs.items():
        curves[method] = method_curves(rows, method, method_config)
        results[method] = result = result_of(method_config, curves[method], *timing[method])
        print(f"{method}: final {result['final_return']['mean']:.3f} ± {result['final_return']['std']:.3f}, "
              f"area {result['auc']['mean']:.3f}, {result['env_steps']} env steps, {result['run_s']:.1f} s")
    import jax
    run.write_json("summary.json", {"env": config.env, "heuristic": config.heuristic, "complete": True,
                                    "seeds": config.seeds, "device": str(jax.devices()[0]), "methods": results})
    text = table(results, config)
    with open(run.file("comparison.md"), "w") as f:
        f.write(text)
    plot(run.file("learning_curve.png"), curves, config)
    print(text)
    print(f"run directory: {run.path}")
    return 0
