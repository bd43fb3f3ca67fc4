"""`run.py meta lpo`: evolve PPO's drift function (learned policy optimisation).

    python run.py meta lpo --env CartPole-v1 --pop 32 --generations 50
    python run.py meta lpo --config configs/lpo_cartpole.yaml --out runs/lpo
    python run.py meta lpo --out runs/lpo --resume          # continue, bit-identical
    python run.py train --env Acrobot-v1 --objective learned:runs/lpo

Each ES member is a drift network; its fitness is the final return of whole
inner PPO runs (`seeds` per member, vmapped, chunked, sharded over devices).
Writes config.yaml, fitness.csv, fitness.png, checkpoint/, objective/ (the
final ES mean) and summary.json with the PPO-clip baseline and held-out envs.
"""
import argparse
import os

from meta.lpo import LPOConfig, compare, initial_drift, inner_config, meta_train, paired  # noqa: F401  (tests use them here)
from src import distributed, experiment
from src.config import ConfigError


def parser():
    p = argparse.ArgumentParser(prog="run.py meta lpo", description=__doc__.split("\n")[0])
    p.add_argument("--env", action="append", default=None, help="meta-training env (repeatable)")
    p.add_argument("--held-out", action="append", default=None, help="env to evaluate the result on (repeatable)")
    p.add_argument("--pop", type=int, help="ES population")
    p.add_argument("--generations", type=int)
    p.add_argument("--strategy", help="openes, snes or cma_es")
    # --set takes inner PPO keys as inner.KEY=VALUE; --seeds is inner runs per member; --stop-at counts generations
    experiment.core_flags(p, logger=False)
    p.add_argument("--reevaluate", metavar="ENV",
                   help="evaluate the finished run in --out again on ENV (fresh seeds; writes reeval_ENV_N_KEY.json)")
    p.add_argument("--reeval-seeds", type=int, default=64, help="seeds for --reevaluate")
    p.add_argument("--reeval-key", type=int, default=2026, help="PRNG seed for --reevaluate's seeds")
    distributed.add_flags(p)
    return p


def build_config(args) -> LPOConfig:
    from src import config as cfg

    values = cfg.load_yaml(args.config) if args.config else {}
    for name in ("pop", "generations", "seeds", "strategy"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.env:
        values["envs"] = args.env
    if args.held_out:
        values["held_out"] = args.held_out
    # --set inner.KEY=VALUE sets one key of the inner PPO's mapping, typed as in a YAML preset
    return cfg.override(cfg.from_dict(LPOConfig, values), args.overrides).validate()


def main(argv):
    args = parser().parse_args(argv)
    if args.reevaluate:
        if distributed.check(args.coordinator, args.num_processes, args.process_id):
            raise ConfigError("--reevaluate runs on one process: drop --coordinator/--num-processes/--process-id")
        return reevaluate(args.out, args.reevaluate, args.reeval_seeds, args.reeval_key)
    distributed.initialize(args)   # before any JAX computation
    config = build_config(args)
    inner = {env: inner_config(config, env) for env in config.envs + config.held_out}   # checked before the run dir
    given = any([args.config, args.env, args.held_out, args.pop, args.generations, args.seeds,
                 args.strategy, args.overrides])
    # with several processes (--coordinator ...) process 0 writes the run directory
    run = distributed.start(args.out, f"lpo-{config.envs[0]}", config, LPOConfig, resume=args.resume, given=given,
                            unit="generation")
    config = run.config.validate()
    inner = {env: inner_config(config, env) for env in config.envs + config.held_out}
    if args.stop_at is not None and not 0 < args.stop_at <= config.generations:
        raise ConfigError(f"--stop-at must be in 1..{config.generations}")
    return meta_train(config, inner, run.path, resume=args.resume, stop_at=args.stop_at,
                      show_progress=not args.no_progress, run=run)


def reevaluate(out, env, seeds, key_seed):
    """The finished run in `out` against PPO-clip and its initial drift on
    `seeds` fresh seeds of `env` (`compare`, keyed by `key_seed`), written to
    OUT/reeval_ENV_SEEDS_KEY.json. More seeds for a held-out check, never a
    selection: nothing here feeds back into the meta-training."""
    import dataclasses

    import jax

    from agents import objectives as lo
    from src import config as cfg
    from src import population, rundir

    if not out or not os.path.exists(os.path.join(out, "config.yaml")):
        raise ConfigError("--reevaluate needs --out RUN_DIR of a finished `meta lpo` run (with config.yaml)")
    if seeds < 1:
        raise ConfigError(f"--reeval-seeds must be >= 1, got {seeds}")
    config = cfg.from_dict(LPOConfig, cfg.load_yaml(os.path.join(out, "config.yaml"))).validate()
    config = dataclasses.replace(config, eval_seeds=seeds)
    pc = inner_config(config, env)
    _, learned = lo.load(out)
    initial = initial_drift(config, inner_config(config, config.envs[0]).clip_eps)
    obj = lo.make(config.objective, pc.num_iterations)
    res = compare(config, pc, obj.fn, {"initial": initial, "learned": learned}, jax.random.PRNGKey(key_seed),
                  population)
    name = f"reeval_{env.replace('/', '_')}_{seeds}_{key_seed}.json"
    rundir.write_json(out, name, res)
    for m in ("final", "auc"):
        pc_, pi_ = res["learned"]["paired_vs_ppo_clip"][m], res["learned"]["paired_vs_initial"][m]
        print(f"{env} ({seeds} seeds) {m}: learned - PPO-clip {pc_['diff']:+.1f} ± {pc_['se']:.1f} "
              f"({100 * pc_['relative']:+.1f}%), learned - initial {pi_['diff']:+.1f} ± {pi_['se']:.1f} -> {name}")
    return res


