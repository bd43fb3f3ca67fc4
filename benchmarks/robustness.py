"""Robustness reproduction: a vanilla PPO victim and an SA-PPO victim under
observation attacks, a learned adversary, and policy-smoothing certificates.

    python benchmarks/robustness.py                       # CartPole-v1, 5 seeds each (CPU, ~30-60 min shared)
    python benchmarks/robustness.py --vanilla RUN --sappo RUN   # reuse trained run directories
    python benchmarks/robustness.py --config configs/robust_brax_inverted_pendulum.yaml   # GPU config
    python benchmarks/robustness.py --config configs/robust_brax_inverted_double_pendulum.yaml --victims vanilla
    python benchmarks/robustness.py --config configs/robust_brax_hopper.yaml              # GPU, not yet run

Steps (each one `run.py` command, printed as it runs), victim by victim
(vanilla, then SA-PPO; --victims picks), the JSON rewritten after each:
  1. train the victim (configs/ppo_cartpole.yaml or configs/ppo_cartpole_sappo.yaml), 5 seeds;
  2. `run.py robust` on it: random, FGSM, PGD, critic, MAD and the learned
     (optimal) adversary at eps 0..0.2, 50 episodes, one compiled program per
     attack vmapped over seeds x eps x episodes (times recorded);
  3. `run.py robust --certify` on it: sigma 0.2, budgets 0, 0.5, 1 (--no-certify skips).
Writes benchmarks/results/robustness.md/.json/.png (--results, --name).
Flags given on the command line override the --config preset's keys.
"""
import argparse
import datetime
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML with the keys below (a robust_*.yaml preset)")
    p.add_argument("--vanilla", default=None, help="existing vanilla run directory")
    p.add_argument("--sappo", default=None, help="existing SA-PPO run directory")
    p.add_argument("--vanilla-config", default="configs/ppo_cartpole.yaml")
    p.add_argument("--sappo-config", default="configs/ppo_cartpole_sappo.yaml")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--attacks", default="random,fgsm,pgd,critic,mad,learned")
    p.add_argument("--eps", default="0,0.02,0.05,0.1,0.2")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--adversary-steps", type=float, default=200_000)
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--budget", default="0,0.5,1")
    p.add_argument("--cert-episodes", type=int, default=200)
    p.add_argument("--victims", default="vanilla,sappo", help="which victims to train and attack, in order")
    p.add_argument("--no-certify", dest="certify", action="store_false",
                   help="skip the policy-smoothing certificates (YAML: certify: false)")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--pgd-step-scale", type=float, default=2.5)
    p.add_argument("--action-objective", default="gaussian", help="gaussian | clipped (run.py robust -h)")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--name", default="robustness")
    args = p.parse_args()
    if args.config:   # the preset's keys become defaults: flags given on the command line win
        from src import config as cfg     # the presets' loader: `base:` inheritance, safe_load
        preset = cfg.load_yaml(args.config)
        for key in preset:
            if not hasattr(args, key.replace("-", "_")):
                raise SystemExit(f"error: unknown key {key!r} in {args.config}")
        p.set_defaults(**{key.replace("-", "_"): value for key, value in preset.items()})
        args = p.parse_args()
    return args


def step(argv):
    import run
    print("$ python run.py " + " ".join(argv), flush=True)
    t = time.perf_counter()
    out = run.main(argv)
    return out, time.perf_counter() - t


def main():
    args = parse()
    os.chdir(ROOT)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    labels = [v.strip() for v in str(args.victims).split(",") if v.strip()]
    if not labels or set(labels) - {"vanilla", "sappo"}:
        raise SystemExit(f"error: --victims takes vanilla and/or sappo, got {args.victims!r}")
    # jax is first started by run.py (which exposes each CPU core as a device)
    results = {"date": stamp, "machine": None, "runs": {}, "commands": [], "timings_s": {}}
    timings, commands = results["timings_s"], results["commands"]
    os.makedirs(args.results, exist_ok=True)
    from src import rundir
    # victim by victim (train, attack, certify), writing what is done after
    # each, so a run stopped by a time limit still leaves the first victim's table
    for label in labels:
        given, config = (args.vanilla, args.vanilla_config) if label == "vanilla" else (args.sappo, args.sappo_config)
        if given:   # reused: record how it was trained (its stored config)
            path = given
            commands.append(f"python run.py train --config {os.path.join(given, 'config.yaml')} --out {given}")
        else:
            path = os.path.join("runs", f"{args.name}_{label}")
            if os.path.exists(path):
                shutil.rmtree(path)
            argv = ["train", "--config", config, "--seeds", str(args.seeds), "--out", path, "--no-progress"]
            commands.append("python run.py " + " ".join(argv))
            _, timings[f"train_{label}_s"] = step(argv)
        results["runs"][label] = path
        objective = ["--pgd-steps", str(args.pgd_steps), "--pgd-step-scale", str(args.pgd_step_scale),
                     "--action-objective", args.action_objective]
        argv = ["robust", path, "--attacks", args.attacks, "--eps", str(args.eps), "--episodes", str(args.episodes),
                "--adversary-steps", str(int(args.adversary_steps)), *objective, "--no-progress"]
        commands.append("python run.py " + " ".join(argv))
        results[label], timings[f"attacks_{label}_s"] = step(argv)
        import jax
        results["machine"] = f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores visible)"
        if args.certify:
            argv = ["robust", path, "--certify", "--sigma", str(args.sigma), "--budget", str(args.budget),
                    "--episodes", str(args.cert_episodes), *objective, "--no-progress"]
            commands.append("python run.py " + " ".join(argv))
            results[f"{label}_certificate"], timings[f"certify_{label}_s"] = step(argv)
        rundir.write_json(args.results, f"{args.name}.json", results)
    plot_both(results, os.path.join(args.results, f"{args.name}.png"))
    with open(os.path.join(args.results, f"{args.name}.md"), "w") as f:
        f.write(report(results, args))
    print(report(results, args))


def plot_both(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [label for label in ("vanilla", "sappo") if label in results]
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, label in zip(axes, labels):
        eps = results[label]["eps"]
        for name, row in results[label]["table"].items():
            m, s = np.array(row["mean"]), np.array(row["std_over_members"])
            style = dict(color="k", lw=2.5, ls="--") if name == "min_over_attacks" else {}
            ax.plot(eps, m, marker="o", label=name, **style)
            ax.fill_between(eps, m - s, m + s, alpha=0.12, **({"color": "k"} if style else {}))
        ax.set_title(f"{label} PPO ({results[label]['members']} seeds)")
        ax.set_xlabel("eps (L-inf, per step)")
    axes[0].set_ylabel("return (mean over seeds)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results, args):
    from commands.robust import certificate_markdown, markdown
    lines = [f"# Robustness reproduction ({results['date']})", "",
             f"Machine: {results['machine']}; shared with other jobs (timings are inflated).", "",
             "Commands:", "", "```", "python benchmarks/robustness.py " + " ".join(sys.argv[1:]),
             *results["commands"], "```", ""]
    for label in ("vanilla", "sappo"):
        if label not in results:
            continue
        r = results[label]
        lines.append(markdown(r["table"], r["eps"], f"{label}: return per attack and eps "
                                                    f"(mean ± std over {r['members']} seeds, {r['episodes']} episodes each; "
                                                    f"PGD/MAD: {r.get('pgd_steps', 10)} steps of "
                                                    f"{r.get('pgd_step_scale', 2.5):g} eps/K on the "
                                                    f"{r.get('action_objective', 'gaussian')} action)"))
        lines.append("Seconds per attack (compile + run, seeds x eps x episodes in one program): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds_per_attack"].items()) + "\n")
        if f"{label}_certificate" not in results:
            continue
        lines.append(certificate_markdown(results[f"{label}_certificate"], f"{label}: policy-smoothing certificate"))
        lines.append(f"certified bound <= return under PGD at every budget and seed: "
                     f"{results[label + '_certificate']['bound_below_attacked']}\n")
    lines.append("Timings (s): " + json.dumps({k: round(v, 1) for k, v in results["timings_s"].items()}))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
