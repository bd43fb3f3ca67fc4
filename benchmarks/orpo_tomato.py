"""Occupancy-measure (chi^2, ORPO) against action-distribution KL
regularisation on the tomato gridworld (issue 19's ORPO criterion).

    nice -n 10 .venv/bin/python benchmarks/orpo_tomato.py [--seeds 5] [--rounds 20] [--out benchmarks/results/orpo_tomato]

1. A reference policy per seed: PPO on the gold reward for `reference_steps`
   (partly trained: it waters tomatoes, and almost never enters the bucket).
2. From each seed's reference, PPO on the proxy `tomato_proxy` (which pays 2
   per step in the bucket) minus beta times a per-step penalty, for every
   beta of each regulariser's grid and the unregularised baseline (beta = 0):
   - action_kl: log pi(a|s) - log pi_ref(a|s)  (RLHF's KL penalty);
   - chi2: w(s, a) - 1, w the discriminator's estimate of the occupancy
     ratio mu_pi / mu_ref (meta/orpo.py).
   Every run (regulariser x beta x seed) is one vmapped program.
3. Final gold and proxy return (the last round's `episodes` fresh episodes)
   as mean +- standard error over seeds per (regulariser, beta); the best beta
   of each regulariser by mean final gold; the difference of the two best in
   standard errors of the difference (sqrt(se_a^2 + se_b^2)), and paired by
   seed (the runs of one seed share its reference and random keys).

Caveat, written into the JSON: each regulariser's best beta is picked on the
same runs that score it (a maximum over a grid of noisy means is biased up,
for both regularisers alike).

Writes <out>.json and <out>.png (gold and proxy against beta, one column per
regulariser).
"""
import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.xla_cpu import compile_small_loops  # noqa: E402

compile_small_loops()

import numpy as np  # noqa: E402

from meta import orpo  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COMPARED = ("action_kl", "chi2")


def compare(result, table, best, last: int):
    """The two regularisers at their best beta: difference of mean final gold,
    its standard error (independent samples), and the paired version."""
    a, b = best["chi2"], best["action_kl"]
    diff = a["gold_mean"] - b["gold_mean"]
    se = float(np.hypot(a["gold_se"], b["gold_se"]))

    def finals(kind, beta):
        rows = sorted((r for r in result["runs"] if r["regulariser"] == kind and r["beta"] == beta),
                      key=lambda r: r["seed"])
        return np.array([np.mean(r["history"]["gold"][-last:]) for r in rows])

    paired = finals("chi2", a["beta"]) - finals("action_kl", b["beta"])
    paired_se = float(paired.std(ddof=1) / np.sqrt(len(paired)))
    return {"chi2_beta": a["beta"], "action_kl_beta": b["beta"], "gold_chi2": a["gold_mean"],
            "gold_action_kl": b["gold_mean"], "difference": diff, "se": se,
            "difference_in_se": diff / se if se > 0 else float("inf"),
            "paired_se": paired_se, "difference_in_paired_se": diff / paired_se if paired_se > 0 else float("inf"),
            "criterion_met": bool(diff > 2 * se)}


def plot(table, path, title, table_last5=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = next((e for e in table if e["regulariser"] == "none"), None)
    ref = np.mean([e["reference_gold_mean"] for e in table])
    fig, axes = plt.subplots(2, len(COMPARED), figsize=(5 * len(COMPARED), 6.5), sharey="row", squeeze=False)
    labels = {"action_kl": "action-distribution KL  (log pi - log pi_ref)",
              "chi2": "chi^2 occupancy  (w - 1, discriminator)"}
    for col, kind in enumerate(COMPARED):
        rows = sorted((e for e in table if e["regulariser"] == kind), key=lambda e: e["beta"])
        beta = np.array([e["beta"] for e in rows])
        for row, (name, color) in enumerate((("gold", "tab:green"), ("proxy", "tab:red"))):
            ax = axes[row, col]
            mean = np.array([e[f"{name}_mean"] for e in rows])
            se = np.array([e[f"{name}_se"] for e in rows])
            ax.errorbar(beta, mean, yerr=se, marker="o", color=color, capsize=3, label=f"final {name} (mean +- s.e.)")
            if table_last5 is not None:
                late = sorted((e for e in table_last5 if e["regulariser"] == kind), key=lambda e: e["beta"])
                ax.errorbar(beta * 1.04, [e[f"{name}_mean"] for e in late], yerr=[e[f"{name}_se"] for e in late],
                            marker="o", mfc="none", ls="--", color=color, alpha=0.5, capsize=2,
                            label=f"{name}, mean of the last 5 rounds")
            if base is not None:
                ax.axhline(base[f"{name}_mean"], color="grey", ls=":", label=f"beta = 0: {base[f'{name}_mean']:.1f}")
            if name == "gold":
                ax.axhline(ref, color="black", ls="--", label=f"reference policy: {ref:.1f}")
                ax.set_title(labels[kind], fontsize=10)
            ax.set_xscale("log")
            ax.set_xlabel("beta")
            ax.set_ylabel(f"{name} return per episode")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(RESULTS, "orpo_tomato"))
    args = parser.parse_args(argv)
    config = dataclasses.replace(orpo.ORPOConfig(), seeds=args.seeds, rounds=args.rounds)
    start = time.time()
    result = orpo.sweep(config)
    wall = time.time() - start
    table, best = orpo.summarise(result)
    table_last5, best_last5 = orpo.summarise(result, last=5)
    comparison = compare(result, table, best, last=1)
    comparison_last5 = compare(result, table_last5, best_last5, last=5)

    print(f"\n{'regulariser':>11} {'beta':>6} | {'final gold':>13} | {'final proxy':>13} | {'action KL/ep':>12} | "
          f"{'chi2 est.':>9}")
    for e in table:
        print(f"{e['regulariser']:>11} {e['beta']:>6g} | {e['gold_mean']:6.2f} +- {e['gold_se']:4.2f} | "
              f"{e['proxy_mean']:6.2f} +- {e['proxy_se']:4.2f} | {e['action_kl_mean']:12.2f} | {e['chi2_mean']:9.2f}")
    ref = np.mean([e["reference_gold_mean"] for e in table])
    print(f"reference policy gold: {ref:.2f}")
    for kind, e in best.items():
        print(f"best beta for {kind}: {e['beta']:g} (final gold {e['gold_mean']:.2f} +- {e['gold_se']:.2f})")
    c = comparison
    print(f"chi2 - action KL at the best beta of each: {c['difference']:+.2f} gold = {c['difference_in_se']:+.1f} s.e. "
          f"(s.e. of the difference {c['se']:.2f}; paired by seed {c['difference_in_paired_se']:+.1f} s.e.)")
    c5 = comparison_last5
    print(f"the same on each run's mean gold over its last 5 rounds: {c5['difference']:+.2f} = "
          f"{c5['difference_in_se']:+.1f} s.e. (betas {c5['chi2_beta']:g} / {c5['action_kl_beta']:g})")
    print(f"wall time {wall:.0f} s")

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    summary = {
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=list)),
        "command": "nice -n 10 .venv/bin/python benchmarks/orpo_tomato.py " + " ".join(argv or sys.argv[1:]),
        "table": table, "best": best, "comparison": comparison,
        "table_last5_rounds": table_last5, "comparison_last5_rounds": comparison_last5,
        "reference_gold": ref, "timing": {**result["timing"], "wall_s": wall},
        "env_steps_per_run": result["env_steps_per_run"],
        "caveat": "each regulariser's best beta is chosen on the same runs that score it (upward bias for both)",
        "runs": result["runs"]}
    with open(args.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    plot(table, args.out + ".png",
         f"tomato gridworld: PPO on the proxy from a partly trained reference, {config.seeds} seeds, "
         f"{result['env_steps_per_run']} steps per run", table_last5)
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
