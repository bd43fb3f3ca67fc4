"""`python run.py meta prefopt`: direct preference optimisation of a policy (no reward model).

    python run.py meta prefopt --config configs/prefopt_pendulum.yaml
    python run.py meta prefopt --env Pendulum-v1 --loss dpo,ipo,slic --beta 0.01,0.1,1 --pairs 2000 --seeds 8
    python run.py meta prefopt --config configs/prefopt_pendulum.yaml --rlhf runs/reward-model-RUN

Offline: the reward-model loop's reference policy and preference pairs
(meta/prefopt.py), then every (loss, beta, seed) trained from the reference
on those pairs in one program. The run directory gets config.yaml,
curves.csv (gold, KL, d = sqrt(KL) at every evaluation), fits.json (per
loss and beta: peak, end, whether gold turned down), frontier.png (gold
against d) and comparison.md. With --rlhf RUN_DIR, a `run.py meta
reward-model` run on the same data settings (its pair counts must include
--pairs) is drawn on the same frontier and compared at matched KL.
"""
import argparse
import dataclasses
import os

from src import experiment


def parser():
    p = argparse.ArgumentParser(prog="run.py meta prefopt", description=__doc__.split("\n")[0])
    p.add_argument("--env", default=None)
    p.add_argument("--loss", default=None, help="comma list of dpo, ipo, slic, cdpo, robust_dpo, simpo, rpo, copg "
                                                "(dpo: Direct Preference Optimisation)")
    p.add_argument("--beta", default=None, help="comma list of beta (> 0)")
    p.add_argument("--pairs", type=int, default=None, help="preference pairs per seed")
    p.add_argument("--label-noise", type=float, default=None, help="probability a label is flipped")
    p.add_argument("--rlhf", default=None, metavar="RUN_DIR",
                   help="a run.py meta reward-model run on the same data, drawn on the same frontier")
    p.add_argument("--online", action="store_true",
                   help="online methods instead: SPO against reward model + PPO (run.py meta prefopt --online -h)")
    return experiment.core_flags(p, resume=True, logger=False, stop_at=True)


def build_config(args):
    from meta import prefopt as po
    from src import config as cfg

    config = cfg.from_dict(po.PrefOptConfig, cfg.load_yaml(args.config) if args.config else {})
    flags = {"env": args.env, "seeds": args.seeds, "label_noise": args.label_noise, "pairs": args.pairs,
             "losses": args.loss and tuple(x.strip() for x in args.loss.split(",") if x.strip()),
             "beta": args.beta and tuple(experiment.comma_list(args.beta, float, "--beta"))}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    return cfg.override(config, args.overrides).validate()


def rlhf_rows(path, config):
    """The PPO-with-KL-penalty rows of a reward-model run whose data settings
    are this run's (same reference, rollouts and pairs): one curve per beta,
    its reward model the one trained on `config.pairs` pairs."""
    import csv

    from meta import prefopt as po
    from meta import reward_model as rmod
    from src import config as cfg
    from src.config import ConfigError

    if not os.path.exists(os.path.join(path, "config.yaml")) or not os.path.exists(os.path.join(path, "curves.csv")):
        raise ConfigError(f"--rlhf {path}: not a finished run.py meta reward-model run directory (config.yaml and "
                          f"curves.csv expected)")
    try:
        theirs = cfg.from_dict(rmod.RewardModelConfig, cfg.load_yaml(os.path.join(path, "config.yaml")))
    except ConfigError as e:
        raise ConfigError(f"--rlhf {path}: not a reward-model run ({e})") from None
    differ = [k for k in po.DATA_FIELDS if getattr(theirs, k) != getattr(config, k)]
    if differ:
        raise ConfigError(f"--rlhf {path}: its data settings differ from this run's ({', '.join(differ)}), so its "
                          f"pairs are not these: set them equal (e.g. --config {path}/config.yaml's values)")
    if config.pairs not in theirs.pairs:
        raise ConfigError(f"--rlhf {path}: it trained reward models on {list(theirs.pairs)} pairs, not "
                          f"{config.pairs}: set --pairs to one of them")
    with open(os.path.join(path, "curves.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "rl" and int(r["pairs"]) == config.pairs]
    aggregate = "single" if any(r["aggregate"] == "single" for r in rows) else theirs.aggregate[0]
    return [{"beta": float(r["beta"]), "seed": int(r["seed"]), "step": int(r["iteration"]), "gold": float(r["gold"]),
             "d": float(r["d"]), "kl": float(r["kl"])} for r in rows if r["aggregate"] == aggregate], aggregate


def curve_points(rows, key):
    """Per (key..., step): mean gold, its standard error and mean d over seeds."""
    import numpy as np
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key) + (r["step"],), []).append(r)
    out = []
    for k, rs in groups.items():
        gold = np.array([r["gold"] for r in rs])
        out.append({**dict(zip(key + ("step",), k)), "gold": float(gold.mean()), "d": float(np.mean([r["d"] for r in rs])),
                    "se": float(gold.std(ddof=1) / np.sqrt(len(gold))) if len(gold) > 1 else 0.0})
    return out


def frontier(points, d_grid):
    """The best mean gold among points with d <= each d of the grid (NaN
    where none): the gold-KL frontier at matched KL."""
    import numpy as np
    best = []
    for d in d_grid:
        inside = [p for p in points if p["d"] <= d]
        best.append(max(inside, key=lambda p: p["gold"]) if inside else None)
    return [(np.nan, np.nan, None) if p is None else (p["gold"], p["se"], p) for p in best]


def markdown(config, result, summaries, methods, d_grid):
    import numpy as np
    lines = [f"# Direct preference optimisation on {config.env}", "",
             f"{config.seeds} seeds; reference {config.reference_run or f'PPO {config.reference_steps} steps'} (gold "
             f"{np.mean(result['reference_gold']):.2f}); {config.pairs} pairs of {config.segment_len}-step segments, "
             f"temperature {config.temperature}, label noise {config.label_noise}; {config.steps} Adam steps "
             f"(lr {config.lr}, batch {config.batch}).", "",
             "## Gold return against d = sqrt(KL(pi || pi_ref)), per loss and beta (mean over seeds; se: standard "
             "error)", "",
             "| loss | beta | peak gold (step, d) | final gold ± se (d) | gold turns down |", "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['loss']} | {s['beta']:g} | {s['peak_gold']:.2f} ({s['peak_step']}, {s['peak_d']:.2f}) | "
                     f"{s['final_gold']:.2f} ± {s['final_gold_se']:.2f} ({s['final_d']:.2f}) | "
                     f"{'yes' if s['turns_down'] else 'no'} |")
    lines += ["", "## The frontier at matched KL: best mean gold (± se) among evaluations with d <= each value "
              "(every beta and step of a method)", "",
              "| method | " + " | ".join(f"d <= {d:.2g}" for d in d_grid) + " |",
              "|---|" + "---|" * len(d_grid)]
    for name, points in methods.items():
        cells = [("-" if np.isnan(g) else f"{g:.2f} ± {se:.2f}") for g, se, _ in frontier(points, d_grid)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in result["timing"].items()),
              ""]
    return "\n".join(lines)


def plot(path, config, methods):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (name, points) in enumerate(methods.items()):
        curves = {}
        for p in points:
            curves.setdefault(p.get("beta"), []).append(p)
        for j, (beta, ps) in enumerate(sorted(curves.items(), key=lambda kv: kv[0])):
            ps = sorted(ps, key=lambda p: p["step"])
            ax.plot([p["d"] for p in ps], [p["gold"] for p in ps], marker=".", color=plt.cm.tab10(i % 10),
                    alpha=0.35 + 0.65 * (j + 1) / len(curves), label=f"{name}, beta {beta:g}")
    ax.set_xlabel("d = sqrt(KL(pi || pi_ref))")
    ax.set_ylabel(f"gold return (mean over {config.seeds} seeds)")
    ax.set_title(f"{config.env}: gold-KL frontier, {config.pairs} pairs")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv):
    if "--online" in argv:      # online methods (SPO against reward model + PPO) have their own front end
        from commands import spo
        return spo.main(argv)
    args = parser().parse_args(argv)
    import numpy as np

    from meta import prefopt as po

    config = build_config(args)
    rlhf = rlhf_rows(args.rlhf, config) if args.rlhf else None      # bad input fails before anything compiles
    given = any([args.config, args.env, args.loss, args.beta, args.pairs, args.label_noise is not None, args.seeds,
                 args.overrides])
    run = experiment.start(args.out, f"prefopt-{config.env}", config, po.PrefOptConfig, resume=args.resume,
                           given=given, unit="step")
    config = run.config.validate()
    stop, on_chunk = run.rows_by_chunk("curves.csv", config.steps, config.eval_every, args.stop_at, "step")
    result = po.sweep(config, show_progress=not args.no_progress, restore=run.restore, on_chunk=on_chunk,
                      stop_at=stop)
    if run.stopped(result, stop, config.steps, "step"):
        return 0
    rows = run.read_rows("curves.csv")
    for r in rows:
        r.update(seed=int(r["seed"]), step=int(r["step"]))
    if not result["reference_gold"]:
        result["reference_gold"] = [r["gold"] for r in rows if r["step"] == 0 and r["loss"] == config.losses[0]
                                    and r["beta"] == config.beta[0]]
    summaries = po.summarise(config, rows)
    methods = {loss: curve_points([r for r in rows if r["loss"] == loss], ("beta",)) for loss in config.losses}
    if rlhf is not None:
        rlhf, aggregate = rlhf
        methods[f"reward model ({aggregate}) + PPO"] = curve_points(rlhf, ("beta",))
    all_d = sorted(p["d"] for points in methods.values() for p in points)
    d_grid = sorted({float(f"{q:.2g}") for q in np.quantile(all_d, [0.2, 0.4, 0.6, 0.8, 1.0]) if q > 0})
    run.write_json("fits.json", summaries)
    run.write_json("summary.json", {"env": config.env, "reference_gold": result["reference_gold"],
                                    "timing_s": result["timing"], "rlhf": args.rlhf, "complete": True})
    text = markdown(config, result, summaries, methods, d_grid)
    with open(run.file("comparison.md"), "w") as f:
        f.write(text)
    plot(run.file("frontier.png"), config, methods)
    print(text)
    print(f"run directory: {run.path}")
    return 0
