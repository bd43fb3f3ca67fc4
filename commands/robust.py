"""`run.py robust RUN_DIR`: attack or certify the trained policies of a run.

    python run.py robust RUN_DIR --attacks random,fgsm,pgd,critic,mad,learned --eps 0,0.02,0.05,0.1,0.2 --episodes 50
    python run.py robust RUN_DIR --certify --sigma 0.2 --budget 0,0.5,1 --episodes 200
    python run.py robust RUN_DIR --shift length=0.5,1,2        # physical-parameter shift (distribution shift)
    python run.py robust RUN_DIR --action-objective clipped    # PGD/MAD on the clipped action the env receives

Attacks: one compiled program per attack, vmapped over the run's members,
the eps values and the episodes. Writes RUN_DIR/robust/ (or --out):
robust.json, robust.md (return per attack and eps, and the minimum over
attacks) and robust.png (return vs eps). With --certify: certificate.json/.md
with the policy-smoothing lower bound per budget next to the return of the
smoothed policy under a PGD attack with that total L2 budget.
"""
import argparse
import os

from src import experiment

# Known return ranges (what the certificate integrates over); others need --return-range.
RETURN_RANGES = {"CartPole-v1": (0.0, 500.0), "Acrobot-v1": (-500.0, 0.0), "MountainCar-v0": (-200.0, 0.0),
                 "Pendulum-v1": (-16.2736044 * 200, 0.0), "brax/inverted_pendulum": (0.0, 1000.0)}


ACTION_OBJECTIVES = ("gaussian", "clipped")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="run.py robust", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--attacks", default="random,fgsm,pgd,critic,mad",
                   help="comma list of random, fgsm, pgd, critic, mad, learned")
    p.add_argument("--eps", default="0,0.02,0.05,0.1,0.2", help="comma list of radii (>= 0)")
    p.add_argument("--episodes", type=int, default=50, help="episodes per member and eps")
    p.add_argument("--norm", default="linf", help="linf or l2")
    p.add_argument("--units", default="normalised", help="normalised (policy input) or raw observation")
    p.add_argument("--budget-type", default="step",
                   help="step: eps per step; episode: eps is a total L2 budget over the episode")
    p.add_argument("--target", default="observation", help="observation or action (continuous)")
    p.add_argument("--pgd-steps", type=int, default=10, help="steps of PGD, critic and MAD attacks")
    p.add_argument("--pgd-step-scale", type=float, default=2.5,
                   help="PGD step = scale * eps / steps (1: K steps of eps/K)")
    p.add_argument("--action-objective", default="gaussian", choices=ACTION_OBJECTIVES,
                   help="what FGSM/PGD and MAD measure for a continuous policy: the network's Gaussian "
                        "(default), or the distribution of the clipped action the environment receives "
                        "(a Gaussian policy whose action the environment clips, e.g. PPO on brax)")
    p.add_argument("--adversary-steps", type=float, default=200_000,
                   help="env steps to train each learned adversary (one per member and eps, vmapped)")
    p.add_argument("--certify", action="store_true", help="policy-smoothing certificates instead of attacks")
    p.add_argument("--sigma", type=float, default=0.2, help="smoothing noise std (threat-model units)")
    p.add_argument("--budget", default="0,0.5,1", help="certified total L2 budgets over an episode")
    p.add_argument("--alpha", type=float, default=0.05, help="certificate failure probability")
    p.add_argument("--thresholds", type=int, default=100, help="return thresholds of the certificate")
    p.add_argument("--return-range", default=None, metavar="LO,HI",
                   help="range of episode returns (known for " + ", ".join(RETURN_RANGES) + ")")
    p.add_argument("--shift", default=None, metavar="PARAM=F1,F2,...",
                   help="instead of attacks: return of the clean policy with env parameter PARAM scaled by each factor")
    p.add_argument("--seed", type=int, default=0)
    experiment.core_flags(p, seeds=False, resume=False, logger=False, stop_at=False,
                          out_help="output directory (default RUN_DIR/robust)")
    p.epilog = "--config FILE and --set KEY=VALUE set any flag above (YAML keys are the flags' names)"
    return experiment.parse_with_presets(p, argv)


def floats(text, flag):
    return experiment.comma_list(text, float, flag)


def check_args(args):
    """Everything that can be checked before loading or compiling."""
    from robustness import attacks, certificates
    from src.config import ConfigError

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for name in names:
        if name not in attacks.ATTACKS:
            raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(attacks.ATTACKS)}")
    if not names:
        raise ConfigError(f"--attacks: none given; choose from {', '.join(attacks.ATTACKS)}")
    eps = floats(args.eps, "--eps")
    attacks.check_eps(eps)
    threat = attacks.ThreatModel(args.norm, args.units, args.budget_type, args.target).validate()
    if args.pgd_steps < 1 or args.adversary_steps < 1:
        raise ConfigError("--pgd-steps and --adversary-steps must be >= 1")
    if not args.pgd_step_scale > 0:
        raise ConfigError(f"--pgd-step-scale must be > 0, got {args.pgd_step_scale}")
    budgets = floats(args.budget, "--budget")
    if args.certify:
        certificates.check(args.sigma, budgets, args.thresholds, args.alpha)
    return names, eps, threat, budgets


def action_bounds(args, agent):
    """(low, high) for make_attack's clipped objectives, or None (see --action-objective).
    make_attack itself refuses a victim whose agent maps its actions."""
    import jax.numpy as jnp

    from envs.core import Box
    from src.config import ConfigError

    if args.action_objective == "gaussian":
        return None
    space = agent.env.action_space(agent.env_params)
    if not isinstance(space, Box):
        raise ConfigError("--action-objective clipped needs a Gaussian policy whose action the environment clips; "
                          "this victim's actions are discrete")
    return jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)


def markdown(table, eps, title):
    head = "| attack | " + " | ".join(f"eps={e:g}" for e in eps) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(eps) + 1)]
    for name, row in table.items():
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(row["mean"], row["std_over_members"])]
        label = "**min over attacks**" if name == "min_over_attacks" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table, eps, path, title):
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in table.items():
        m, s = np.array(row["mean"]), np.array(row["std_over_members"])
        style = dict(color="k", lw=2.5, ls="--") if name == "min_over_attacks" else {}
        ax.plot(eps, m, marker="o", label=name, **style)
        ax.fill_between(eps, m - s, m + s, alpha=0.15, **({"color": "k"} if style else {}))
    ax.set_xlabel("eps")
    ax.set_ylabel("return (mean over members)")
    # long titles (env, members, threat model) would run off the figure
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def certificate_markdown(cert, title):
    lines = [f"### {title}", "", f"sigma {cert['sigma']}, {cert['episodes']} noisy episodes per member, "
             f"alpha {cert['alpha']}, {cert['thresholds']} thresholds over {cert['return_range']}; "
             f"smoothed clean return {sum(cert['smoothed_return']) / len(cert['smoothed_return']):.1f}", "",
             "| L2 budget B | certified lower bound | return under PGD (total L2 <= B) |", "|---|---|---|"]
    for i, b in enumerate(cert["budgets"]):
        lines.append(f"| {b:g} | {cert['certified_mean'][i]:.1f} | {cert['pgd_attacked_mean'][i]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    import dataclasses

    args = parse_args(argv)
    names, eps, threat, budgets = check_args(args)
    from agents import load_run, restore_members
    module, config, members = load_run(args.run_dir, need_checkpoint=True)

    import jax

    from meta import robust_eval
    from src import rundir
    from src.config import ConfigError

    agent = module.make(config)
    state = restore_members(args.run_dir, module, agent, config, members)
    out = args.out or os.path.join(args.run_dir, "robust")
    os.makedirs(out, exist_ok=True)
    title = f"{config.algo} on {config.env}, {len(members)} members, {args.episodes} episodes, " \
            f"{threat.norm} {threat.units} {threat.budget} {threat.target}"
    if args.shift:
        if "=" not in args.shift:
            raise ConfigError(f"--shift expects PARAM=F1,F2,..., got {args.shift!r}")
        name, values = args.shift.split("=", 1)
        shifted = robust_eval.shift_table(agent, state, name.strip(), floats(values, "--shift"),
                                          episodes=args.episodes, seed=args.seed)
        rundir.write_json(out, "shift.json", shifted)
        text = (f"### {title}: {shifted['param']} scaled\n\n| factor | " + " | ".join(f"{f:g}" for f in shifted["factors"])
                + " |\n|" + "---|" * (len(shifted["factors"]) + 1) + "\n| return | "
                + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(shifted["mean"], shifted["std_over_members"]))
                + " |\n")
        with open(os.path.join(out, "shift.md"), "w") as f:
            f.write(text)
        print(text)
        return shifted
    if args.certify:
        if args.return_range:
            return_range = floats(args.return_range, "--return-range")[:2]
        elif config.env in RETURN_RANGES:
            return_range = RETURN_RANGES[config.env]
        else:
            raise ConfigError(f"the certificate needs the range of returns of {config.env}: pass --return-range "
                              f"LO,HI (known: {', '.join(RETURN_RANGES)})")
        cert = robust_eval.certify(agent, state, budgets, threat, sigma=args.sigma, thresholds=args.thresholds,
                                   alpha=args.alpha, return_range=return_range, episodes=args.episodes,
                                   seed=args.seed, pgd_steps=args.pgd_steps, pgd_step_scale=args.pgd_step_scale,
                                   action_bounds=action_bounds(args, agent))
        rundir.write_json(out, "certificate.json", cert)
        text = certificate_markdown(cert, title)
        with open(os.path.join(out, "certificate.md"), "w") as f:
            f.write(text)
        print(text)
        return cert
    results, timings = robust_eval.attack_table(
        agent, state, names, eps, threat, episodes=args.episodes, seed=args.seed, pgd_steps=args.pgd_steps,
        pgd_step_scale=args.pgd_step_scale, action_bounds=action_bounds(args, agent),
        adversary_steps=args.adversary_steps, show_progress=not args.no_progress)
    table = robust_eval.summarise(results, eps)
    result = {"run_dir": args.run_dir, "eps": eps, "episodes": args.episodes, "members": len(members),
              "threat_model": dataclasses.asdict(threat),
              "pgd_steps": args.pgd_steps, "pgd_step_scale": args.pgd_step_scale,
              "action_objective": args.action_objective, "table": table, "seconds_per_attack": timings,
              "device": str(jax.devices()[0].device_kind)}
    if "learned" in names:
        result["adversary_steps"] = int(args.adversary_steps)
    rundir.write_json(out, "robust.json", result)
    title += f", {args.pgd_steps} PGD steps of {args.pgd_step_scale:g} eps/K on the {result['action_objective']} action"
    text = markdown(table, eps, title)
    with open(os.path.join(out, "robust.md"), "w") as f:
        f.write(text)
    plot(table, eps, os.path.join(out, "robust.png"), title)
    print(text)
    print("seconds per attack (compile + run): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"-> {out}")
    return result
