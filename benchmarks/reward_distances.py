"""Which reward distance tracks regret: EPIC, STARC or a naive L2, on random finite MDPs.

    .venv/bin/python benchmarks/reward_distances.py [--mdps 200] [--seeds 5] [--out ...]

For each experiment seed and each of two kinds of dynamics, draws `--mdps`
random MDPs and on each a pair (true reward, proxy reward):

    proxy = c * ((1 - alpha) * R_true + alpha * noise) + gamma Phi(s') - Phi(s)

alpha ~ U(0, 1) sets how different the proxy really is; the positive factor
c ~ logU(0.1, 10) and the potential Phi ~ N(0, sigma^2), sigma ~ U(0, 5), change
no policy's ranking, so a distance that predicts regret must ignore them. The
yardstick is the normalised regret under R_true of the policy optimal for the
proxy (envs.reward_distances.normalised_regret, uniform start states). Reports
the Pearson and Spearman correlation of each distance with that regret over
the MDPs, as mean +- std over seeds.

Dynamics: "dense" draws each P(. | s, a) from Dirichlet(0.5) over all states;
"sparse" lets each (s, a) reach only `--successors` random states, so most
(s, a, s') never happen and rewards there cannot matter. A control setting
draws dense MDPs with proxies neither rescaled nor shaped (c = 1, Phi = 0).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DISTANCES = ("naive", "epic", "starc")
# name: (sparse dynamics, proxy rescaled and shaped); the last is the control
# that shows what the naive baseline loses to shaping and scale alone
SETTINGS = {"dense": (False, True), "sparse": (True, True), "dense, no shaping or scaling": (False, False)}


def random_dynamics(rng, n, states, actions, successors):
    """n transition tensors P[s, a, s']: Dirichlet(0.5) weights on all states
    (successors = 0) or on `successors` random ones per (s, a)."""
    import numpy as np
    weights = rng.dirichlet(np.full(states, 0.5), size=(n, states, actions))
    if successors:
        # the `successors` smallest of uniform scores pick a random support per (s, a)
        scores = rng.random((n, states, actions, states))
        kth = np.sort(scores, axis=-1)[..., successors - 1:successors]
        weights = np.where(scores <= kth, weights + 1e-3, 0.0)
    return weights / weights.sum(-1, keepdims=True)


def reward_pairs(rng, n, states, actions, gamma, nuisance=True):
    """n (true, proxy) pairs: proxy = c ((1 - alpha) true + alpha noise) + shaping
    (c = 1 and no shaping without `nuisance`)."""
    import numpy as np
    shape = (n, states, actions, states)
    true, noise = rng.normal(size=shape), rng.normal(size=shape)
    alpha = rng.uniform(0.0, 1.0, (n, 1, 1, 1))
    scale = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (n, 1, 1, 1)))
    phi = rng.uniform(0.0, 5.0, (n, 1)) * rng.normal(size=(n, states))
    shaping = gamma * phi[:, None, None, :] - phi[:, :, None, None]
    if not nuisance:
        scale, shaping = 1.0, 0.0
    return true, scale * ((1.0 - alpha) * true + alpha * noise) + shaping


def measure(P, true, proxy, gamma, iters):
    """The three distances and the regret for one MDP (vmapped over MDPs by the caller)."""
    from envs import reward_distances as rd
    return {"naive": rd.naive_distance(true, proxy),
            "epic": rd.epic_distance(true, proxy, gamma),
            "starc": rd.starc_distance(P, true, proxy, gamma),
            "regret": rd.normalised_regret(P, proxy, true, gamma, iters=iters)}


def correlations(values):
    from scipy import stats
    return {name: {"pearson": float(stats.pearsonr(values[name], values["regret"])[0]),
                   "spearman": float(stats.spearmanr(values[name], values["regret"])[0])}
            for name in DISTANCES}


def mean_std(xs):
    import numpy as np
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs))}


def markdown_table(summary, args):
    lines = [f"{args.mdps} random MDPs per seed ({args.states} states, {args.actions} actions, gamma {args.gamma}), "
             f"{args.seeds} seeds; correlation with normalised regret, mean ± std over seeds",
             "", "| dynamics | distance | Pearson | Spearman |", "|---|---|---|---|"]
    for dynamics, by_distance in summary.items():
        for name in DISTANCES:
            stats_of = by_distance[name]
            cell = lambda stat: f"{stats_of[stat]['mean']:.3f} ± {stats_of[stat]['std']:.3f}"  # noqa: E731
            lines.append(f"| {dynamics} | {name} | {cell('pearson')} | {cell('spearman')} |")
    lines += ["", "STARC minus EPIC, paired by seed (seeds where STARC is higher):", "",
              "| dynamics | Pearson | Spearman |", "|---|---|---|"]
    for dynamics, by_distance in summary.items():
        gap = by_distance["starc_minus_epic"]
        cell = lambda stat: (f"{gap[stat]['mean']:+.3f} ± {gap[stat]['std']:.3f} "  # noqa: E731
                             f"({gap[stat]['seeds_starc_higher']}/{args.seeds})")
        lines.append(f"| {dynamics} | {cell('pearson')} | {cell('spearman')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--states", type=int, default=16)
    p.add_argument("--actions", type=int, default=4)
    p.add_argument("--successors", type=int, default=2, help="reachable states per (s, a) in the sparse MDPs")
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--iters", type=int, default=500, help="value-iteration sweeps (0.9^500 ~ 1e-23)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "reward_distances.json"))
    args = p.parse_args(argv)

    start = time.perf_counter()
    import jax
    import numpy as np

    # MDPs come from numpy (jax.random.dirichlet alone takes seconds to compile);
    # one compiled program measures every batch, all having the same shapes
    batch = jax.jit(jax.vmap(lambda P, true, proxy: measure(P, true, proxy, args.gamma, args.iters)))
    per_seed = {dynamics: [] for dynamics in SETTINGS}
    for dynamics, (sparse, nuisance) in SETTINGS.items():
        successors = args.successors if sparse else 0
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, successors, nuisance])
            P = random_dynamics(rng, args.mdps, args.states, args.actions, successors)
            true, proxy = reward_pairs(rng, args.mdps, args.states, args.actions, args.gamma, nuisance)
            values = jax.tree.map(np.asarray, batch(*(np.float32(x) for x in (P, true, proxy))))
            per_seed[dynamics].append({**correlations(values), "mean_regret": float(values["regret"].mean())})
    summary = {dynamics: {name: {stat: mean_std([run[name][stat] for run in runs])
                                 for stat in ("pearson", "spearman")} for name in DISTANCES}
               for dynamics, runs in per_seed.items()}
    for dynamics, runs in per_seed.items():
        # paired over seeds (same MDPs for both), which the two marginal spreads overstate
        summary[dynamics]["starc_minus_epic"] = {
            stat: {**mean_std([run["starc"][stat] - run["epic"][stat] for run in runs]),
                   "seeds_starc_higher": sum(run["starc"][stat] > run["epic"][stat] for run in runs)}
            for stat in ("pearson", "spearman")}
    wall = time.perf_counter() - start
    table = markdown_table(summary, args)
    command = [".venv/bin/python benchmarks/reward_distances.py", *(sys.argv[1:] if argv is None else argv)]
    result = {"command": " ".join(command),
              "config": vars(args) | {"out": os.path.relpath(args.out)},
              "proxy": "c * ((1 - alpha) R_true + alpha noise) + gamma Phi(s') - Phi(s); alpha ~ U(0,1), "
                       "c ~ logU(0.1, 10), Phi ~ N(0, sigma^2), sigma ~ U(0, 5)",
              "regret": "normalised_regret(P, proxy, R_true): (V* - V^pi_proxy) / (V* - V_worst) under R_true, "
                        "uniform start states",
              "distances": {"naive": "0.5 |R1/|R1| - R2/|R2||_2 on raw rewards",
                            "epic": "Pearson distance of EPIC-canonicalised rewards, uniform D_S, D_A, D",
                            "starc": "value-adjusted levelling (uniform policy), L2 norm, 0.5 L2 metric"},
              "summary": summary, "per_seed": per_seed, "wall_s": round(wall, 2),
              "device": str(jax.devices()[0])}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(table)
    print(f"\nwall {wall:.1f} s; wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
