"""Compare `run.py train --objective ppo` and `--objective dpo` run directories.

    python benchmarks/dpo_vs_clip.py NAME RUN_DIR_PPO RUN_DIR_DPO [--out benchmarks/results]

Per seed: the final return (last iteration's `episode_return`) and the mean
return over the whole run (area under the learning curve / steps). Reports
mean ± std over seeds and Welch's t-test p-value for each, and draws both
learning curves (mean ± std over seeds) into OUT/lpo_dpo_NAME.png.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src import plots, rundir  # noqa: E402


def per_seed(rows):
    by_member = {}
    for r in rows:
        by_member.setdefault(r["member"], []).append((r["iteration"], r["episode_return"]))
    final, mean = [], []
    for m in sorted(by_member):
        values = np.array([v for _, v in sorted(by_member[m])], dtype=float)
        final.append(values[-1])
        mean.append(np.nanmean(values))
    return np.array(final), np.array(mean)


def main():
    from scipy import stats
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("ppo_dir")
    p.add_argument("dpo_dir")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = {k: rundir.read_metrics(d) for k, d in (("PPO-clip", args.ppo_dir), ("DPO", args.dpo_dir))}
    result = {"name": args.name, "runs": {"PPO-clip": args.ppo_dir, "DPO": args.dpo_dir}}
    seeds = {}
    for k, r in rows.items():
        final, mean = per_seed(r)
        seeds[k] = (final, mean)
        summary = json.load(open(os.path.join(result["runs"][k], "summary.json")))
        result[k] = {"seeds": len(final), "env_steps": summary["env_steps"],
                     "final_mean": float(final.mean()), "final_std": float(final.std()),
                     "run_mean_mean": float(mean.mean()), "run_mean_std": float(mean.std())}
    for i, metric in enumerate(("final", "run_mean")):
        a, b = seeds["PPO-clip"][i], seeds["DPO"][i]
        result[f"{metric}_welch_p"] = None if np.allclose(a, b) and a.std() == 0 else \
            float(stats.ttest_ind(a, b, equal_var=False).pvalue)

    plots.band_plot(os.path.join(args.out, f"lpo_dpo_{args.name}.png"),
                    {k: plots.curve(r) for k, r in rows.items()}, "environment steps",
                    "episode return (mean ± std over seeds)", f"PPO-clip vs DPO drift: {args.name}",
                    legend_fontsize=None)
    with open(os.path.join(args.out, f"lpo_dpo_{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
