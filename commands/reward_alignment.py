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
import datetime
import os
import time

from src.config import ConfigError

METHODS = ("primary", "naive", "pbrs", "barfi")


def parser():
    p = argparse.ArgumentParser(prog="run.py meta reward-alignment", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML preset (configs/barfi_*.yaml)")
    p.add_argument("--env", default=None, help="environment name")
    p.add_argument("--heuristic", default=None, help="designer heuristic (see --heuristics)")
    p.add_argument("--method", default=None,
                   help="comma-separated subset of primary,naive,pbrs,barfi, or 'all' (default: the preset's "
                        "method if it names one, else all)")
    p.add_argument("--estimator", default=None, help="BARFI's outer gradient: implicit, unrolled or es")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (vmapped)")
    p.add_argument("--total-steps", type=float, default=None, help="environment steps per run, outer steps included")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default runs/reward-alignment-<env>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--heuristics", action="store_true", help="list the designer heuristics and exit")
    return p


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


def run_method(config, show_progress):
    import jax
    import numpy as np

    from meta import reward_alignment as ra
    from src import population, progress

    aligner = ra.make(config, show_progress=show_progress)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    keys = population.distribute(keys, config.seeds)
    start = time.time()
    train = jax.jit(jax.vmap(aligner.train)).lower(keys).compile()
    compile_s = time.time() - start
    start = time.time()
    with progress.bar(config.num_blocks, desc=config.method, enabled=show_progress):
        state, metrics = train(keys)
        metrics = jax.tree.map(np.asarray, jax.block_until_ready(metrics))
    run_s = time.time() - start
    summary = ra.summarize(metrics)
    result = {"final_return": stats(summary["final"]), "auc": stats(summary["auc"]),
              "env_steps": int(metrics["env_steps"][0, -1]), "iterations": config.num_iterations,
              "outer_steps": config.num_blocks if config.method == "barfi" else 0,
              "compile_s": round(compile_s, 2), "run_s": round(run_s, 2)}
    if config.method == "barfi":
        result["gamma_phi_final"] = stats(metrics["gamma_phi"][:, -1])
        result["phi2_mean_final"] = stats(metrics["phi2_mean"][:, -1])
    return metrics, result


def rows_of(method, config, metrics):
    import numpy as np
    rows = []
    names = sorted(k for k in metrics if k != "env_steps")
    for i in range(metrics["env_steps"].shape[1]):
        for m in range(config.seeds):
            row = {"iteration": i + 1, "env_steps": int(metrics["env_steps"][m, i]), "member": m,
                   "seed": config.seed + m, "method": method}
            row.update({k: float(np.asarray(metrics[k])[m, i]) for k in names})
            rows.append(row)
    return rows


def write_csv(path, rows):
    import csv
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


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

    from src import config as cfg
    from src import rundir

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join("runs", f"reward-alignment-{config.env.replace('/', '_')}-{config.heuristic}-{stamp}")
    os.makedirs(out, exist_ok=True)
    # with the methods run (not the dataclass's default), so that `--config RUN_DIR/config.yaml` runs them all again
    cfg.save_yaml(dataclasses.replace(config, method=",".join(configs)), os.path.join(out, "config.yaml"))

    results, curves, rows = {}, {}, []
    for method, method_config in configs.items():
        metrics, result = run_method(method_config, not args.no_progress)
        results[method], curves[method] = result, metrics
        rows += rows_of(method, method_config, metrics)
        print(f"{method}: final {result['final_return']['mean']:.3f} ± {result['final_return']['std']:.3f}, "
              f"area {result['auc']['mean']:.3f}, {result['env_steps']} env steps, {result['run_s']:.1f} s")
    write_csv(os.path.join(out, "metrics.csv"), rows)
    import jax
    rundir.write_json(out, "summary.json", {"env": config.env, "heuristic": config.heuristic,
                                           "seeds": config.seeds, "device": str(jax.devices()[0]),
                                           "methods": results})
    text = table(results, config)
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(text)
    plot(os.path.join(out, "learning_curve.png"), curves, config)
    print(text)
    print(f"run directory: {out}")
    return 0
