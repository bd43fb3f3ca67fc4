"""Command line: train, evaluate and plot vectorised runs.

    python run.py                                   # PPO on CartPole-v1, 8 seeds, published defaults
    python run.py train --env Acrobot-v1 --seeds 4 --sweep lr=1e-4,3e-4
    python run.py eval RUN_DIR --episodes 50
    python run.py plot RUN_DIR
    python run.py envs
    python run.py meta reward-alignment|lpo|ued|reward-model|prefopt ...  # meta-learning loops (see commands/)
    python run.py robust RUN_DIR ...                 # attacks and certificates on a trained run

Parses, builds, runs and writes the run directory; no algorithm logic here.
"""
import argparse
import dataclasses
import datetime
import itertools
import json
import os
import sys
import time

from src import distributed, experiment
from src.population import use_all_cpu_cores
from src.xla_cpu import compile_small_loops

use_all_cpu_cores()   # before JAX starts: populations are sharded over the cores
compile_small_loops()   # and small rollout loops become single kernels

COMMANDS = ("train", "eval", "plot", "envs", "meta", "robust", "rewards")

# `meta NAME` and `robust` hand their remaining arguments to one module each
# (a fixed table: nothing the user types is imported or evaluated). Each
# module has `main(argv)` with its own argparse parser and imports JAX lazily.
META_LOOPS = {
    "reward-alignment": ("commands.reward_alignment", "bi-level reward alignment (BARFI) and its baselines"),
    "lpo": ("commands.lpo", "ES-discovered policy objectives (learned policy optimisation)"),
    "ued": ("commands.ued", "adversarial environment design: DR, PLR, robust PLR, ACCEL, PAIRED"),
    "reward-model": ("commands.reward_model", "reward models from preferences: ensembles, best-of-n, PPO with a "
                                              "KL penalty, overoptimisation curves"),
    "prefopt": ("commands.prefopt", "direct preference optimisation of a policy (DPO, IPO, SLiC, SimPO, RPO, CoPG, "
                                    "...) on the reward-model loop's pairs; the gold-KL frontier"),
    "pbt": ("commands.pbt", "population-based training of PPO or SAC: exploit and explore inside one program"),
    "qd": ("commands.qd", "neuroevolution and quality-diversity: MAP-Elites, novelty search, deep GA, ES"),
}
ROBUST_MODULE = "commands.robust"
REWARDS_MODULE = "commands.rewards"

from agents import algorithms, load_run, member_keys, stacked_hparams  # noqa: E402  (after the CPU settings)


def parse_args(argv):
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train", *argv]
    if argv[0] == "robust":   # everything after it, options first included, is commands/robust.py's
        return argparse.Namespace(command="robust", rest=argv[1:])
    if argv[0] == "rewards":   # likewise commands/rewards.py's (`rewards compare ...`)
        return argparse.Namespace(command="rewards", rest=argv[1:])
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a population of runs (seeds x sweep) in one compiled program")
    train.add_argument("--algo", default=None, help="ppo (default) or sac")
    train.add_argument("--env", default=None, help="environment name (see `run.py envs`)")
    train.add_argument("--total-steps", type=float, default=None, help="environment steps per run")
    train.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="sweep a hyperparameter; several --sweep flags form a grid")
    experiment.core_flags(train)
    train.add_argument("--objective", default="ppo", metavar="ppo|dpo|learned:RUN_DIR",
                       help="PPO's policy objective: PPO-clip, the DPO closed form, or one learned by `meta lpo`")
    distributed.add_flags(train)

    evaluate = sub.add_parser("eval", help="deterministic evaluation of a run's final policies")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--episodes", type=int, default=50)
    evaluate.add_argument("--seed", type=int, default=12345)

    plot = sub.add_parser("plot", help="redraw a run's learning curves")
    plot.add_argument("run_dir")

    sub.add_parser("envs", help="list the environments")

    meta = sub.add_parser("meta", help="meta-learning loops: " + ", ".join(META_LOOPS))
    meta.add_argument("loop", choices=list(META_LOOPS), help="; ".join(f"{k}: {v[1]}" for k, v in META_LOOPS.items()))
    meta.add_argument("rest", nargs=argparse.REMAINDER, help="the loop's own arguments (run.py meta LOOP -h)")

    robust = sub.add_parser("robust", help="attack or certify a trained run (run.py robust -h)", add_help=False)
    robust.add_argument("rest", nargs=argparse.REMAINDER)

    rewards = sub.add_parser("rewards", help="distances between reward functions: EPIC, STARC, a naive baseline "
                                             "(run.py rewards compare -h)", add_help=False)
    rewards.add_argument("rest", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def run_module(module_name, argv):
    import importlib
    return importlib.import_module(module_name).main(argv)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- config

def build_config(args):
    from src import config as cfg

    algos = algorithms()
    preset = cfg.load_yaml(args.config) if args.config else {}
    algo = args.algo or preset.get("algo", "ppo")
    if algo not in algos:
        raise cfg.ConfigError(f"unknown algorithm {algo!r}; choose one of {', '.join(algos)}")
    module = algos[algo]
    config = cfg.from_dict(module.CONFIG, {**preset, "algo": algo})
    flags = {"env": args.env, "seeds": args.seeds,
             "total_steps": int(args.total_steps) if args.total_steps is not None else None}
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    config = cfg.override(config, args.overrides)
    import envs
    envs.check_name(config.env)
    return module, config.validate()


def parse_sweep(module, config, sweeps):
    from src.config import ConfigError

    grid = {}
    for item in sweeps:
        if "=" not in item:
            raise ConfigError(f"--sweep expects key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        if key not in module.HPARAM_NAMES:
            raise ConfigError(f"cannot sweep {key!r}: only traced hyperparameters can be vmapped over. "
                              f"Sweepable: {', '.join(module.HPARAM_NAMES)} (sizes are static: run them separately)")
        try:
            grid[key] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--sweep {key}: values must be numbers, got {values!r}") from None
        if not grid[key]:
            raise ConfigError(f"--sweep {key}: no values given")
        dataclasses.replace(config, **{key: v for v in grid[key][:1]}).validate()
        for v in grid[key]:
            dataclasses.replace(config, **{key: v}).validate()
    return grid


def make_members(config, grid):
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    return [{"seed": config.seed + s, "hparams": combo} for combo in combos for s in range(config.seeds)]


# ----------------------------------------------------------------------------- train

def chunk_length(config):
    return config.checkpoint_every or config.num_iterations


def summarise(rows_final, members, grid, config):
    import numpy as np

    finals = np.array([r["episode_return"] for r in rows_final], dtype=float)
    summary = {
        "algo": config.algo, "env": config.env, "members": len(members),
        "final_return_mean": float(np.nanmean(finals)) if np.isfinite(finals).any() else None,
        "final_return_std": float(np.nanstd(finals)) if np.isfinite(finals).any() else None,
        "final_returns": finals.tolist(),
    }
    if grid:
        settings = {}
        for row in rows_final:
            label = ",".join(f"{k}={row[k]:g}" for k in grid)
            settings.setdefault(label, []).append(row["episode_return"])
        summary["by_setting"] = {k: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}
                                 for k, v in settings.items()}
    return summary


def import_in_background(*modules):
    """Import what the end of a run needs on a spare core while it trains.

    orbax and matplotlib take about half a second to import, and a run of a
    few seeds on CPU keeps only one core busy; a thread imports them there
    while the main thread waits on the compiled program (Python's import locks
    make a later import of the same module wait for this one)."""
    import importlib
    import threading

    def load():
        for name in modules:
            module = importlib.import_module(name)
            if hasattr(module, "warm_up"):
                module.warm_up()

    thread = threading.Thread(target=load, name="import-in-background", daemon=True)
    thread.start()
    return thread


def train(args):
    import jax
    import numpy as np

    from src import population, progress, rundir
    from src.config import ConfigError

    module, config = build_config(args)
    grid = parse_sweep(module, config, args.sweep)
    if not args.resume:   # a resumed run is checked against its stored config below
        experiment.stop_point(config.num_iterations, chunk_length(config), args.stop_at)
    if hasattr(module, "preflight"):   # e.g. a replay buffer's memory, checked before compiling
        print(module.preflight(config, len(make_members(config, grid))))
    if args.objective != "ppo":   # a bad --objective fails before the run directory exists
        if config.algo != "ppo":
            raise ConfigError(f"--objective applies to ppo only, not {config.algo}")
        from agents import objectives as learned_objective
        learned_objective.from_spec(args.objective, config.num_iterations)
    given = any([args.config, args.env, args.seeds, args.total_steps, args.overrides, args.sweep, args.algo])
    # with several processes (--coordinator ...) process 0 writes the run directory
    run = distributed.start(args.out, f"{config.env}-{config.algo}", config, module.CONFIG, resume=args.resume,
                            given=given, members=make_members(config, grid))
    config, members = run.config.validate(), run.members
    chunk = chunk_length(config)
    total_iterations = config.num_iterations
    stop_at = experiment.stop_point(total_iterations, chunk, args.stop_at)
    out = run.path

    make_kwargs = {}
    if args.objective != "ppo":
        chosen = learned_objective.from_spec(args.objective, config.num_iterations)
        make_kwargs["objective"] = chosen.fn
    # every leaf of the state and metrics has the member axis first: pin it to
    # the devices so each chunk's output has the sharding the program expects
    sharding = population.member_sharding(len(members))
    if config.algo == "ppo":   # a small rollout per device can compile into one kernel
        make_kwargs["runs_per_device"] = len(members) // sharding.mesh.devices.size
    agent = module.make(config, show_progress=not args.no_progress, **make_kwargs)
    objective_params = chosen.params if args.objective != "ppo" else None
    keys, hparams = population.distribute(
        (member_keys(members), stacked_hparams(module, config, members)), len(members))
    init = jax.jit(jax.vmap(agent.init, in_axes=(0, 0)), out_shardings=sharding)
    run_chunk = jax.jit(jax.vmap(lambda ts, hp: agent.run(ts, hp, None, objective_params, num_iterations=chunk)),
                        out_shardings=sharding)

    devices = sharding.mesh.devices.size
    print(f"{config.algo} on {config.env}: {len(members)} runs ({config.seeds} seeds"
          f"{' x ' + ' x '.join(f'{len(v)} {k}' for k, v in grid.items()) if grid else ''}), "
          f"{config.total_steps:,} steps each, {total_iterations} iterations, {devices} device(s)"
          f"{f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''} -> {out}")
    done = run.progress().get("iteration", 0)
    if done >= total_iterations:
        raise ConfigError(f"the run in {out} is already complete ({done} iterations)")

    t0 = time.perf_counter()
    if not args.resume and chunk == total_iterations:
        # a fresh run in one chunk is one program, init included: a separate
        # init program costs a compile and a dispatch (about a second on CPU)
        whole = jax.jit(jax.vmap(lambda key, hp: agent.train(key, hp, None, objective_params)),
                        out_shardings=sharding)
        compiled, state = whole.lower(keys, hparams).compile(), keys
    else:
        state = init(keys, hparams)
        compiled = run_chunk.lower(state, hparams).compile()
    compile_s = time.perf_counter() - t0
    imports = import_in_background("src.checkpoint", "src.plots")
    if args.resume:
        state, done = run.restore(state)
        run.cut_rows("metrics.csv", lambda row: int(row["iteration"]) <= done)
        print(f"resuming from iteration {done}")
    first = done
    run.open_logger(args.logger, len(members))
    watch = experiment.FiniteWatch()

    run_s = 0.0
    last_rows = []
    with progress.bar(total_iterations, desc=f"{config.algo} {config.env}", enabled=not args.no_progress,
                      initial=done) as bar:
        while done < stop_at:
            if bar is not None:
                bar.set_offset(done)   # the program counts iterations from 0 in each chunk
            t = time.perf_counter()
            state, metrics = compiled(state, hparams)
            jax.block_until_ready(metrics)
            run_s += time.perf_counter() - t
            metrics = population.gather(metrics)   # every member's, from every process
            rows = rundir.metric_rows(metrics, members, done)
            run.append_rows("metrics.csv", rows)
            run.log(rows)
            watch.check(metrics, population.gather(state.params), done)
            done += chunk
            imports.join()
            run.save(state, done)
            last_rows = rows[-len(members):]
    run.close()

    all_rows = rundir.read_metrics(out)
    final_rows = [r for r in all_rows if r["iteration"] == done]
    summary = summarise(final_rows or last_rows, members, grid, config)
    summary.update(objective=args.objective, env_steps=done * config.batch_size, iterations=done,
                   complete=done >= total_iterations,
                   compile_s=compile_s, run_s=run_s,
                   env_steps_per_s=len(members) * (done - first) * config.batch_size / run_s if run_s else None,
                   device=str(jax.devices()[0].device_kind), jax=jax.__version__)
    rundir.write_json(out, "summary.json", summary)
    from src import plots
    plots.plot_run(out, all_rows, list(grid), f"{config.algo} on {config.env}")

    mean, std = summary["final_return_mean"], summary["final_return_std"]
    print(f"final return {mean:.1f} ± {std:.1f} over {len(members)} runs" if mean is not None
          else "no episode finished")
    for label, stats in summary.get("by_setting", {}).items():
        print(f"  {label}: {stats['mean']:.1f} ± {stats['std']:.1f}")
    print(f"compile {compile_s:.1f} s, run {run_s:.1f} s, {np.round(summary['env_steps_per_s'] or 0):,.0f} env steps/s"
          f" -> {out}")
    return summary


# ----------------------------------------------------------------------------- eval / plot / envs

def evaluate(args):
    import jax
    import numpy as np

    from src import checkpoint, population, rundir
    from src.config import ConfigError

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    module, config, members = load_run(args.run_dir)
    agent = module.make(config)
    keys, hparams = population.distribute((member_keys(members), stacked_hparams(module, config, members)),
                                          len(members))
    like = jax.jit(jax.vmap(agent.init), out_shardings=population.member_sharding(len(members)))(keys, hparams)
    state = checkpoint.restore(os.path.join(args.run_dir, "checkpoint"), like)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), len(members))
    returns, lengths = jax.jit(jax.vmap(lambda ts, k: agent.evaluate(ts, k, args.episodes)))(state, keys)
    returns = np.asarray(returns)
    per_member = [{"member": m, "seed": members[m]["seed"], **members[m]["hparams"],
                   "return_mean": float(returns[m].mean()), "return_std": float(returns[m].std())}
                  for m in range(len(members))]
    result = {"episodes": args.episodes, "deterministic": True,
              "return_mean": float(returns.mean()), "return_std_over_members": float(returns.mean(1).std()),
              "members": per_member}
    rundir.write_json(args.run_dir, "eval.json", result)
    for row in per_member:
        print(f"member {row['member']} (seed {row['seed']}): {row['return_mean']:.1f} ± {row['return_std']:.1f}")
    print(f"deterministic return over {args.episodes} episodes: {result['return_mean']:.1f} "
          f"(± {result['return_std_over_members']:.1f} across members)")
    return result


def plot(args):
    from src import plots, rundir

    module, config, members = load_run(args.run_dir)
    keys = sorted({k for m in members for k in m["hparams"]})
    for path in plots.plot_run(args.run_dir, rundir.read_metrics(args.run_dir), keys,
                               f"{config.algo} on {config.env}"):
        print(path)


def list_envs(args):
    import envs
    for name in envs.names():
        print(name)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from src.config import ConfigError
    try:
        if args.command == "meta":
            return run_module(META_LOOPS[args.loop][0], args.rest)
        if args.command == "robust":
            return run_module(ROBUST_MODULE, args.rest)
        if args.command == "rewards":
            return run_module(REWARDS_MODULE, args.rest)
        if args.command == "train":
            distributed.initialize(args)   # before any JAX computation; nothing without --coordinator
        return {"train": train, "eval": evaluate, "plot": plot, "envs": list_envs}[args.command](args)
    except (ConfigError, FileNotFoundError, experiment.Diverged) as error:
        fail(str(error))


if __name__ == "__main__":
    main()
