"""`python run.py meta prefopt --online`: online preference optimisation (SPO, P3O, DNO) against reward model + PPO.

    python run.py meta prefopt --online --config configs/spo_pendulum.yaml
    python run.py meta prefopt --online --env Pendulum-v1 --method spo,p3o,dno,rlhf --oracle intransitive --seeds 5

Every method continues from the same reference policy (meta/spo.py) and
none but `rlhf` fits a reward model: `spo` runs PPO on the win rate of each
rollout segment against the batch's other segments under the preference
oracle; `p3o` runs PPO on the pairwise, trajectory-level advantage of fresh
pairs (env 2i against env 2i+1); `dno` trains, each iteration, a preference
loss (DPO by default) on pairs of its own rollout's segments ranked by win
rate, with the rollout's policy as reference; `rlhf` runs PPO on a reward
model trained from `pairs` pairs of the reference's segments labelled by the
same oracle. The run directory gets config.yaml, curves.csv (every evaluation:
win rate against the reference, the oracle's metric, gold return, KL and d),
accuracy.json (the reward model's held-out accuracy), curves.png,
frontier.png (gold against d per method) and comparison.md.
"""
import argparse
import dataclasses

from src import experiment


def parser():
    p = argparse.ArgumentParser(prog="run.py meta prefopt --online", description=__doc__.split("\n")[0])
    p.add_argument("--online", action="store_true", help="(the flag that routes here)")
    p.add_argument("--env", default=None)
    p.add_argument("--method", default=None, help="comma list of spo, p3o, dno, rlhf (reward model + PPO)")
    p.add_argument("--oracle", default=None, help="bt (gold returns), worst (the worst step's gold: non-Markovian) "
                                                  "or intransitive (three raters on a segment's thirds)")
    p.add_argument("--pairs", type=int, default=None, help="the reward model's preference pairs (rlhf)")
    p.add_argument("--beta", type=float, default=None, help="KL-penalty weight to the reference (spo, p3o, rlhf)")
    return experiment.core_flags(p, resume=True, logger=False, stop_at=True)


def build_config(args):
    from meta import spo
    from src import config as cfg

    config = cfg.from_dict(spo.SPOConfig, cfg.load_yaml(args.config) if args.config else {})
    flags = {"env": args.env, "seeds": args.seeds, "oracle": args.oracle, "pairs": args.pairs, "beta": args.beta,
             "methods": args.method and tuple(m.strip() for m in args.method.split(",") if m.strip())}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    return cfg.override(config, args.overrides).validate()


def markdown(config, result, summary):
    import numpy as np
    ref = result["reference"]
    names = {"spo": "SPO (self-play win rate, no reward model)",
             "p3o": "P3O (pairwise trajectory advantage, no reward model)",
             "dno": f"DNO ({config.dno_loss}, beta {config.dno_beta:g}, on win-rate-ranked pairs of its own rollouts)",
             "rlhf": f"reward model ({config.pairs} pairs) + PPO"}
    lines = [f"# Online preference optimisation on {config.env} ({', '.join(config.methods)}), oracle "
             f"`{config.oracle}`", "",
             f"{config.seeds} seeds; reference {config.reference_run or f'PPO {config.reference_steps} steps'}; "
             f"segments of {config.segment_len} steps, temperature {config.temperature}, label noise "
             f"{config.label_noise}; PPO from the reference for {config.rl_steps} steps, beta {config.beta}; "
             f"{config.eval_episodes} evaluation episodes from the same start states for every policy.", "",
             f"Reference: oracle metric {np.mean(ref['oracle_metric']):.3f}, gold return {np.mean(ref['gold']):.1f}. "
             f"Reward model held-out accuracy against the oracle: "
             f"{np.mean(result['accuracy']['accuracy_gold']):.3f}.", "",
             "| method | win rate against the reference | oracle metric | gold return | d = sqrt(KL) | "
             "peak win rate (iteration) |", "|---|---|---|---|---|---|"]
    for method, s in summary.items():
        lines.append(f"| {names[method]} | {s['win_rate']:.3f} ± {s['win_rate_se']:.3f} | "
                     f"{s['oracle_metric']:.3f} ± {s['oracle_metric_se']:.3f} | {s['gold']:.1f} ± {s['gold_se']:.1f} | "
                     f"{s['d']:.2f} | {s['peak_win_rate']:.3f} ({s['peak_iteration']}) |")
    lines += ["", "Final evaluation, mean ± standard error over seeds. Win rate: the oracle's probability that the "
              "policy's segment beats the reference's segment at the same place in an episode from the same start "
              "state. Oracle metric: the mean segment score (`worst`: the segment's worst step's gold reward; "
              "`bt`: its gold return; `intransitive`: the mean of its thirds' gold returns).", "",
              "Wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in result["timing"].items()),
              ""]
    return "\n".join(lines)


def plot(path, rows, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, method in enumerate(config.methods):
        mine = [r for r in rows if r["method"] == method]
        steps = sorted({r["env_steps"] for r in mine})
        for ax, name in zip(axes, ("win_rate", "oracle_metric", "gold")):
            values = np.array([[r[name] for r in mine if r["env_steps"] == x] for x in steps])
            mean, se = values.mean(axis=1), values.std(axis=1, ddof=1) / np.sqrt(values.shape[1]) \
                if values.shape[1] > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, marker=".", color=plt.cm.tab10(i), label=method)
            ax.fill_between(steps, mean - se, mean + se, color=plt.cm.tab10(i), alpha=0.2)
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("PPO env steps from the reference")
    axes[0].axhline(0.5, color="grey", linewidth=0.8)
    axes[0].legend()
    fig.suptitle(f"{config.env}, oracle {config.oracle}: mean ± s.e. over {config.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(path, rows, config):
    """Gold return against d = sqrt(KL(pi || pi_ref)), one curve per method
    through its evaluations (mean over seeds, ± s.e. of gold)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(config.methods):
        mine = [r for r in rows if r["method"] == method]
        iterations = sorted({r["iteration"] for r in mine})
        gold = np.array([[r["gold"] for r in mine if r["iteration"] == t] for t in iterations])
        d = np.array([np.mean([r["d"] for r in mine if r["iteration"] == t]) for t in iterations])
        se = gold.std(axis=1, ddof=1) / np.sqrt(gold.shape[1]) if gold.shape[1] > 1 else np.zeros(len(d))
        ax.errorbar(d, gold.mean(axis=1), yerr=se, marker=".", color=plt.cm.tab10(i), label=method, capsize=2)
    ax.set_xlabel("d = sqrt(KL(pi || pi_ref))")
    ax.set_ylabel(f"gold return (mean ± s.e. over {config.seeds} seeds)")
    ax.set_title(f"{config.env}, oracle {config.oracle}: gold-KL frontier of the online methods")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    args = parser().parse_args(argv)
    from meta import spo

    config = build_config(args)
    given = any([args.config, args.env, args.method, args.oracle, args.pairs, args.beta is not None, args.seeds,
                 args.overrides])
    run = experiment.start(args.out, f"spo-{config.env}", config, spo.SPOConfig, resume=args.resume, given=given,
                           unit="iteration")
    config = run.config.validate()
    total = config.rm_config().rl_iterations()
    stop, on_chunk = run.rows_by_chunk("curves.csv", total, config.eval_every, args.stop_at, "PPO iteration")
    result = spo.run(config, show_progress=not args.no_progress, restore=run.restore, on_chunk=on_chunk,
                     stop_at=stop)
    if run.stopped(result, stop, total, "PPO iteration"):
        return 0
    rows = run.read_rows("curves.csv")
    for r in rows:
        r.update(seed=int(r["seed"]), iteration=int(r["iteration"]), env_steps=int(r["env_steps"]))
    summary = spo.summarise(config, rows)
    run.write_json("accuracy.json", {k: list(v) if hasattr(v, "__len__") else v
                                     for k, v in result["accuracy"].items()})
    run.write_json("summary.json", {"env": config.env, "oracle": config.oracle, "reference": result["reference"],
                                    "methods": summary, "timing_s": result["timing"], "complete": True})
    text = markdown(config, result, summary)
    with open(run.file("comparison.md"), "w") as f:
        f.write(text)
    plot(run.file("curves.png"), rows, config)
    plot_frontier(run.file("frontier.png"), rows, config)
    print(text)
    print(f"run directory: {run.path}")
    return 0
