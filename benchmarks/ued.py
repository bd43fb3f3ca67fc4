"""Held-out solve rates of DR, PLR, robust PLR and ACCEL side by side, at equal
student env steps (one `run.py meta ued` run per method, seeds vmapped).

    python benchmarks/ued.py --config configs/ued_maze_cpu.yaml --seeds 5 \
        [--methods dr,plr,robust_plr,accel] [--set KEY=VALUE ...] [--out benchmarks/results]

Writes OUT/ued.json (every run's summary), OUT/ued.png (held-out solve rate over
training, mean and min-max over seeds, one line per method) and prints a
Markdown table for OUT/ued.md.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from commands import ued  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/ued_maze_cpu.yaml")
    p.add_argument("--methods", default="dr,plr,robust_plr,accel")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--runs", default="runs/ued-benchmark", help="where the run directories go")
    args = p.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summaries = {}
    for method in args.methods.split(","):
        run_dir = os.path.join(args.runs, method)
        cli = ["--config", args.config, "--method", method, "--seeds", str(args.seeds), "--out", run_dir,
               "--no-progress"]
        for o in args.overrides:
            cli += ["--set", o]
        summaries[method] = ued.main(cli)
        summaries[method]["run_dir"] = run_dir
        with open(os.path.join(run_dir, "held_out.csv")) as f:
            summaries[method]["curve"] = curve(list(csv.DictReader(f)))
    os.makedirs(args.out, exist_ok=True)
    meta = {"command": "python benchmarks/ued.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": stamp, "machine": f"2-core CPU ({platform.machine()}), shared with other jobs",
            "runs": summaries}
    with open(os.path.join(args.out, "ued.json"), "w") as f:
        json.dump(meta, f, indent=1)
    plot(summaries, os.path.join(args.out, "ued.png"))
    print(table(summaries))


def curve(rows):
    """{env_steps: [solve rate per seed (mean over levels)]}"""
    by = {}
    for r in rows:
        by.setdefault(int(r["env_steps"]), {}).setdefault(r["seed"], []).append(float(r["solve_rate"]))
    return {k: [sum(v) / len(v) for v in seeds.values()] for k, seeds in sorted(by.items())}


def table(summaries):
    first = next(iter(summaries.values()))
    levels = list(first["held_out_solve_rate_per_level"])
    head = "| method | solve rate (mean ± std over seeds) | return | " + " | ".join(levels) + \
           " | training distribution solve rate | trained env steps | env steps in all | wall s |"
    lines = [head, "|" + "---|" * (7 + len(levels))]
    for m, s in summaries.items():
        per = " | ".join(f"{s['held_out_solve_rate_per_level'][n]:.2f}" for n in levels)
        lines.append(f"| {m} | {s['held_out_solve_rate_mean']:.3f} ± {s['held_out_solve_rate_std']:.3f} | "
                     f"{s['held_out_return_mean']:.3f} ± {s['held_out_return_std']:.3f} | {per} | "
                     f"{s.get('train_distribution_solve_rate_mean', float('nan')):.3f} | "
                     f"{s['env_steps_trained']:,} | {s['env_steps_total']:,} | {s['wall_s']:.0f} |")
    return "\n".join(lines) + "\n\n" + ordering(summaries)


def ordering(summaries, baseline="dr"):
    """Each curriculum method against DR: the difference of held-out solve
    rates (means over seeds) and its standard error, sqrt(se_a^2 + se_b^2)
    with se = sample std / sqrt(seeds)."""
    import numpy as np
    if baseline not in summaries:
        return ""
    base = np.array(summaries[baseline]["held_out_solve_rate_per_seed"])
    lines = []
    for m, s in summaries.items():
        if m == baseline:
            continue
        x = np.array(s["held_out_solve_rate_per_seed"])
        se = np.sqrt(x.var(ddof=1) / len(x) + base.var(ddof=1) / len(base)) if min(len(x), len(base)) > 1 else np.nan
        diff = x.mean() - base.mean()
        verdict = "beats DR by >= 2 s.e." if diff >= 2 * se else "does not beat DR by 2 s.e."
        lines.append(f"{m} - {baseline}: {diff:+.3f} ± {se:.3f} (s.e., {len(x)} and {len(base)} seeds): {verdict}")
    return "\n".join(lines)


def plot(summaries, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, s in summaries.items():
        x = np.array(list(s["curve"]), float)
        y = np.array(list(s["curve"].values()))
        ax.plot(x, y.mean(1), label=m)
        ax.fill_between(x, y.min(1), y.max(1), alpha=0.15)
    ax.set_xlabel("student env steps (per seed)")
    ax.set_ylabel("held-out solve rate")
    ax.legend()
    ax.set_title("held-out mazes: mean and min-max over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
