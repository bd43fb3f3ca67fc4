"""`python run.py meta reward-model`: reward models from synthetic preferences, and overoptimisation.

    python run.py meta reward-model --config configs/reward_model_pendulum.yaml
    python run.py meta reward-model --env Pendulum-v1 --pairs 100,1000,10000 --label-noise 0.25 --ensemble 5 \\
        --aggregate mean,wco,uwo --beta 0,0.01,0.1,1 --bon 1,4,16,64,256 --seeds 5

A reference PPO policy, preference pairs from its rollouts labelled by the
gold reward, reward-model ensembles per pair count, then best-of-n and PPO
with a KL penalty against each proxy (meta/reward_model.py). The run
directory gets config.yaml, accuracy.json, curves.csv (every evaluation of
every run: gold, proxy, KL, d = sqrt(KL)), fits.json (Gao et al.'s forms
fitted per curve, the peak, whether gold turned down), one PNG per
experiment (gold and proxy against d) and comparison.md.
"""
import argparse
import dataclasses
import os

from src import experiment


def parser():
    p = argparse.ArgumentParser(prog="run.py meta reward-model", description=__doc__.split("\n")[0])
    p.add_argument("--env", default=None)
    p.add_argument("--pairs", default=None, help="comma list of preference-pair counts")
    p.add_argument("--label-noise", type=float, default=None, help="probability a label is flipped")
    p.add_argument("--ensemble", type=int, default=None, help="reward models per ensemble")
    p.add_argument("--aggregate", default=None,
                   help="comma list of mean, wco, uwo, single (the first member alone)")
    p.add_argument("--beta", default=None, help="comma list of KL-penalty weights")
    p.add_argument("--bon", default=None, help="comma list of best-of-n sizes")
    return experiment.core_flags(p, resume=True, logger=False, stop_at=True)


def _list(text, kind, flag):
    return tuple(experiment.comma_list(text, kind, flag))


def build_config(args):
    from meta import reward_model as rmod
    from src import config as cfg

    config = cfg.from_dict(rmod.RewardModelConfig, cfg.load_yaml(args.config) if args.config else {})
    flags = {"env": args.env, "seeds": args.seeds, "label_noise": args.label_noise, "ensemble": args.ensemble,
             "pairs": args.pairs and _list(args.pairs, int, "--pairs"),
             "aggregate": args.aggregate and tuple(a.strip() for a in args.aggregate.split(",") if a.strip()),
             "beta": args.beta and _list(args.beta, float, "--beta"),
             "bon": args.bon and _list(args.bon, int, "--bon")}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    return cfg.override(config, args.overrides).validate()


def markdown(config, result, summaries):
    import numpy as np
    lines = [f"# Reward-model overoptimisation on {config.env}", "",
             f"{config.seeds} seeds; reference {config.reference_run or f'PPO {config.reference_steps} steps'} (gold return "
             f"{np.mean(result['reference_gold']):.2f}); pairs of {config.segment_len}-step segments, "
             f"temperature {config.temperature}, label noise {config.label_noise}; ensembles of {config.ensemble} "
             f"({'bootstrap' if config.bootstrap else 'seeds only'}); PPO on the proxy {config.rl_steps} steps.", "",
             "## Reward models (held-out pairs)", "",
             "| pairs | accuracy vs gold (ties count half) | on pairs gold decides (share of pairs) | vs labels |",
             "|---|---|---|---|"]
    for pairs, acc in result["accuracy"].items():
        lines.append(f"| {pairs} | {np.mean(acc['accuracy_gold']):.3f} ± {np.std(acc['accuracy_gold']):.3f} | "
                     f"{np.mean(acc['accuracy_gold_decided']):.3f} ({np.mean(acc['decided_fraction']):.2f}) | "
                     f"{np.mean(acc['accuracy_label']):.3f} |")
    lines += ["", "## Gold return against d = sqrt(KL), per curve (mean over seeds; se: standard error)", "",
              "| method | pairs | aggregate | beta | gold at start | peak gold (at d) | final gold ± se (at d) | "
              "gold turns down | fit alpha, beta (R^2) | fitted peak d |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        f = s["fit"]
        beta = "-" if s["beta"] is None else f"{s['beta']:g}"
        lines.append(f"| {'best-of-n' if s['method'] == 'bon' else 'PPO'} | {s['pairs']} | {s['aggregate']} | {beta} | "
                     f"{s['gold_mean'][0]:.2f} | {s['peak_gold']:.2f} ({s['peak_d']:.2f}) | "
                     f"{s['final_gold']:.2f} ± {s['final_gold_se']:.2f} ({s['final_d']:.2f}) | "
                     f"{'yes' if s['hump'] else 'no'} | {f['alpha']:.3g}, {f['beta']:.3g} ({f['r2']:.2f}) | "
                     f"{f['d_peak']:.3g} |")
    timing = result["timing"]
    lines += ["", "Wall time (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timing.items()), ""]
    return "\n".join(lines)


def plot(path, summaries, method, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = [s for s in summaries if s["method"] == method]
    if not mine:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    # one colour per reward model (pair count, aggregation), one line style per beta
    models = sorted({(s["pairs"], s["aggregate"]) for s in mine}, key=str)
    betas = sorted({s["beta"] for s in mine if s["beta"] is not None})
    styles = ["-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))]
    for s in mine:
        label = f"{s['pairs']} pairs, {s['aggregate']}" + ("" if s["beta"] is None else f", beta {s['beta']:g}")
        colour = plt.cm.tab10(models.index((s["pairs"], s["aggregate"])) % 10)
        style = styles[betas.index(s["beta"]) % len(styles)] if s["beta"] is not None else "-"
        d, gold, se = np.asarray(s["d"]), np.asarray(s["gold_mean"]), np.asarray(s["gold_se"])
        axes[0].plot(d, gold, marker=".", color=colour, linestyle=style, label=label)
        axes[0].fill_between(d, gold - se, gold + se, color=colour, alpha=0.15)
        axes[1].plot(d, s["proxy_mean"], marker=".", color=colour, linestyle=style, label=label)
    axes[0].set_ylabel(f"gold return (mean ± s.e., {config.seeds} seeds)")
    axes[1].set_ylabel("proxy return (normalised reward model)")
    for ax in axes:
        ax.set_xlabel("d = sqrt(KL(pi || pi_ref))")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{config.env}: {'best-of-n' if method == 'bon' else 'PPO with a KL penalty'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv):
    args = parser().parse_args(argv)
    from meta import reward_model as rmod

    config = build_config(args)
    given = any([args.config, args.env, args.pairs, args.label_noise is not None, args.ensemble, args.aggregate,
                 args.beta, args.bon, args.seeds, args.overrides])
    run = experiment.start(args.out, f"reward-model-{config.env}", config, rmod.RewardModelConfig,
                           resume=args.resume, given=given, unit="iteration")
    config = run.config.validate()
    stop, on_chunk = run.rows_by_chunk("curves.csv", config.rl_iterations(), config.eval_every, args.stop_at,
                                       "PPO iteration", lambda r, done: r["method"] != "rl" or int(r["iteration"]) <= done)
    result = rmod.sweep(config, show_progress=not args.no_progress, restore=run.restore, on_chunk=on_chunk,
                        stop_at=stop)
    if run.stopped(result, stop, config.rl_iterations(), "PPO iteration"):
        return 0
    rl_rows = [r for r in run.read_rows("curves.csv") if r["method"] == "rl"]
    for r in rl_rows:          # read back as numbers; the grid's own types
        r.update(pairs=int(r["pairs"]), seed=int(r["seed"]), iteration=int(r["iteration"]))
    result["rl"] = rl_rows
    if os.path.exists(run.file("curves_bon.csv")):     # a complete run resumed again writes it anew
        os.remove(run.file("curves_bon.csv"))
    run.append_rows("curves_bon.csv", result["bon"])
    summaries = rmod.summarise(config, result)
    run.write_json("accuracy.json", result["accuracy"])
    run.write_json("fits.json", summaries)
    run.write_json("summary.json", {"env": config.env, "reference_gold": result["reference_gold"],
                                    "timing_s": result["timing"], "complete": True})
    text = markdown(config, result, summaries)
    with open(run.file("comparison.md"), "w") as f:
        f.write(text)
    for method in ("bon", "rl"):
        plot(run.file(f"{'best_of_n' if method == 'bon' else 'ppo_kl'}.png"), summaries, method, config)
    print(text)
    print(f"run directory: {run.path}")
    return 0
