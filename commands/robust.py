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
import time

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
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/robust)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def floats(text, flag):
    from src.config import ConfigError
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag}: no values given")
    return values


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


def train_adversaries(agent, victim, vparams, eps, steps, seed):
    """One learned adversary per (member, eps), all in one vmapped training program."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from agents import ppo
    from meta import adversary as adv

    one = jax.tree.map(lambda x: x[0], vparams)
    config = dataclasses.replace(adv.ADVERSARY_CONFIG,
                                 total_steps=max(int(steps), adv.ADVERSARY_CONFIG.batch_size))
    attack = adv.optimal_attack(agent.env, agent.env_params, victim, one, config)
    hp = ppo.hparams_from(attack.agent.config)
    members = jax.tree.leaves(vparams)[0].shape[0]

    def train(key, vp, e):
        ts, metrics = attack.agent.train(key, hp, env_params=adv.AdversaryParams(agent.env_params, vp, e))
        return adv.adversary_params(ts), metrics["episode_return"][-1]

    keys = jax.random.split(jax.random.PRNGKey(seed + 7), members * len(eps)).reshape(members, len(eps), -1)
    per_eps = jax.vmap(train, in_axes=(0, None, 0))
    params, final = jax.jit(jax.vmap(per_eps, in_axes=(0, 0, None)))(keys, vparams, jnp.asarray(eps, jnp.float32))
    return attack.act, params, final


def attack_table(args, names, eps, threat, module, config, members, agent, state):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from envs.core import episode_limit
    from meta import adversary as adv
    from robustness import attacks
    from src import progress

    victim, to_vparams = adv.victim_of(agent)
    bounds = action_bounds(args, agent)
    options = dict(step_scale=args.pgd_step_scale, action_bounds=bounds)
    for name in names:   # every refusal (e.g. critic without a critic) before any compiling
        attacks.make_attack(name, threat, victim, args.pgd_steps, adversary=(lambda p, o: o), **options)
    vparams = jax.vmap(to_vparams)(state)
    max_steps = episode_limit(agent.env, agent.env_params)
    eps_arr = jnp.asarray(eps, jnp.float32)
    key = jax.random.PRNGKey(args.seed)
    results, timings = {}, {}
    with progress.bar(len(names), desc="attacks", enabled=not args.no_progress) as bar:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            adv_params, adversary_fn = None, None
            if name == "learned":
                adversary_fn, adv_params, _ = train_adversaries(agent, victim, vparams, eps, args.adversary_steps,
                                                                args.seed)
                jax.block_until_ready(adv_params)
            attack = attacks.make_attack(name, threat, victim, args.pgd_steps, adversary=adversary_fn, **options)

            def evaluate(vp, e, ap):
                return attacks.evaluate(agent.env, agent.env_params, victim, vp, attack, threat, key, e,
                                        args.episodes, max_steps, adv_params=ap)[0]

            # members x eps x episodes in one program (the learned adversary has one per member and eps)
            ap_axes = None if adv_params is None else 0
            over_eps = jax.vmap(evaluate, in_axes=(None, 0, ap_axes))
            returns = jax.jit(jax.vmap(over_eps, in_axes=(0, None, ap_axes)))(vparams, eps_arr, adv_params)
            returns = np.asarray(jax.block_until_ready(returns))
            timings[name] = time.perf_counter() - t0
            results[name] = returns   # [members, eps, episodes]
            if bar is not None:
                bar.update_to(i + 1)
    return results, timings


def summarise(results, eps):
    import numpy as np

    table = {}
    for name, r in results.items():
        per_member = r.mean(axis=2)                       # [members, eps]
        table[name] = {"mean": per_member.mean(0).tolist(), "std_over_members": per_member.std(0).tolist(),
                       "per_member": per_member.tolist()}
    stacked = np.stack([np.asarray(results[n]).mean(axis=2) for n in results])   # [attacks, members, eps]
    worst = stacked.min(axis=0)     # the strongest attack per member and eps
    table["min_over_attacks"] = {"mean": worst.mean(0).tolist(), "std_over_members": worst.std(0).tolist(),
                                 "per_member": worst.tolist(),
                                 "argmin": [list(results)[int(j)] for j in stacked.mean(1).argmin(0)]}
    return table


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


def certify(args, budgets, threat, module, config, members, agent, state):
    """Noisy episodes -> certified lower bound per budget; and the smoothed
    policy's return under a PGD attack with the same total L2 budget."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from envs.core import episode_limit
    from meta import adversary as adv
    from robustness import attacks, certificates
    from src.config import ConfigError

    if args.return_range:
        lo, hi = floats(args.return_range, "--return-range")[:2]
    elif config.env in RETURN_RANGES:
        lo, hi = RETURN_RANGES[config.env]
    else:
        raise ConfigError(f"the certificate needs the range of returns of {config.env}: pass --return-range LO,HI "
                          f"(known: {', '.join(RETURN_RANGES)})")
    certificates.check(args.sigma, budgets, args.thresholds, args.alpha, lo, hi)
    victim, to_vparams = adv.victim_of(agent)
    vparams = jax.vmap(to_vparams)(state)
    max_steps = episode_limit(agent.env, agent.env_params)
    key = jax.random.PRNGKey(args.seed)
    clean = attacks.make_attack("random", threat, victim)
    budget_threat = dataclasses.replace(threat, norm="l2", budget="episode")
    pgd = attacks.make_attack("pgd", budget_threat, victim, args.pgd_steps, step_scale=args.pgd_step_scale,
                              action_bounds=action_bounds(args, agent))
    sigma = jnp.float32(args.sigma)

    def noisy(vp):
        return attacks.evaluate(agent.env, agent.env_params, victim, vp, clean, threat, key, 0.0,
                                args.episodes, max_steps, noise_sigma=sigma)[0]

    def attacked(vp, b):
        return attacks.evaluate(agent.env, agent.env_params, victim, vp, pgd, budget_threat,
                                jax.random.fold_in(key, 1), b, args.episodes, max_steps, noise_sigma=sigma)[0]

    b_arr = jnp.asarray(budgets, jnp.float32)
    t0 = time.perf_counter()
    noisy_returns = jax.jit(jax.vmap(noisy))(vparams)                                   # [members, episodes]
    bounds = jax.jit(jax.vmap(jax.vmap(
        lambda r, b: certificates.certified_return(r, sigma, b, lo, hi, args.thresholds, args.alpha),
        in_axes=(None, 0)), in_axes=(0, None)))(noisy_returns, b_arr)                  # [members, budgets]
    under_attack = jax.jit(jax.vmap(jax.vmap(attacked, in_axes=(None, 0)), in_axes=(0, None)))(vparams, b_arr)
    bounds, under_attack = np.asarray(bounds), np.asarray(under_attack).mean(-1)
    noisy_returns = np.asarray(noisy_returns)
    seconds = time.perf_counter() - t0
    return {"sigma": args.sigma, "budgets": budgets, "alpha": args.alpha, "thresholds": args.thresholds,
            "return_range": [lo, hi], "episodes": args.episodes, "units": threat.units,
            "smoothed_return": noisy_returns.mean(1).tolist(),
            "certified": bounds.tolist(), "pgd_attacked": under_attack.tolist(),
            "certified_mean": bounds.mean(0).tolist(), "pgd_attacked_mean": under_attack.mean(0).tolist(),
            "bound_below_attacked": bool((bounds <= under_attack + 1e-6).all()), "seconds": seconds}


def shift_table(args, agent, state, members):
    """Clean deterministic return with one physical parameter scaled: members x factors x episodes in one program."""
    import jax
    import numpy as np

    from envs import perturbations
    from envs.core import episode_limit
    from src.config import ConfigError
    from src.evaluate import evaluate as run_evaluation

    if "=" not in args.shift:
        raise ConfigError(f"--shift expects PARAM=F1,F2,..., got {args.shift!r}")
    name, values = args.shift.split("=", 1)
    factors = floats(values, "--shift")
    levels = perturbations.shifted_levels(agent.env_params, name.strip(), factors)
    key = jax.random.PRNGKey(args.seed)
    max_steps = episode_limit(agent.env, agent.env_params)   # static: the levels' own copy is traced

    def evaluate(ts, level):
        policy = lambda obs, k: agent.act(ts.params, obs, k, True, ts.obs_stats)  # noqa: E731
        return run_evaluation(agent.env, level, policy, key, args.episodes, max_steps)[0]

    returns = np.asarray(jax.jit(jax.vmap(jax.vmap(evaluate, in_axes=(None, 0)), in_axes=(0, None)))(state, levels))
    per_member = returns.mean(-1)
    return {"param": name.strip(), "factors": factors, "episodes": args.episodes,
            "mean": per_member.mean(0).tolist(), "std_over_members": per_member.std(0).tolist(),
            "per_member": per_member.tolist()}


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

    from src import rundir

    agent = module.make(config)
    state = restore_members(args.run_dir, module, agent, config, members)
    out = args.out or os.path.join(args.run_dir, "robust")
    os.makedirs(out, exist_ok=True)
    title = f"{config.algo} on {config.env}, {len(members)} members, {args.episodes} episodes, " \
            f"{threat.norm} {threat.units} {threat.budget} {threat.target}"
    if args.shift:
        shifted = shift_table(args, agent, state, members)
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
        cert = certify(args, budgets, threat, module, config, members, agent, state)
        rundir.write_json(out, "certificate.json", cert)
        text = certificate_markdown(cert, title)
        with open(os.path.join(out, "certificate.md"), "w") as f:
            f.write(text)
        print(text)
        return cert
    results, timings = attack_table(args, names, eps, threat, module, config, members, agent, state)
    table = summarise(results, eps)
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
