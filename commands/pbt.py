"""`run.py meta pbt`: population-based training of PPO (or SAC) in one program.

    python run.py meta pbt --config configs/pbt_ppo_cartpole.yaml --population 16 --ready 10 \\
        --explore lr,ent_coef,clip_eps
    python run.py meta pbt --config configs/pbt_ppo_cartpole.yaml --baseline random-search --runs 5
    python run.py meta pbt --out runs/pbt --resume          # continue, bit-identical

Every `ready` iterations the bottom `--truncation` fraction of the population
copies a random top member (parameters, optimiser state, hyperparameters) and
perturbs the copied hyperparameters by 0.8/1.2 or redraws them from their
priors (`resample_prob`). `--baseline random-search` also trains the same
population (same initial members and prior draws) with its hyperparameters
kept fixed: random search of equal population and budget. Writes config.yaml,
metrics.csv (per iteration, member, run and method), lineage.csv (per round:
each member's hyperparameters, fitness and parent), checkpoint/, summary.json,
comparison.md, schedules.png and return.png. `--set KEY=VALUE` sets PBT keys;
`--set inner.KEY=VALUE` the learner's.
"""
import argparse

from meta.pbt import PBTConfig, meta_train
from src import distributed, experiment


def parser():
    p = argparse.ArgumentParser(prog="run.py meta pbt", description=__doc__.split("\n")[0])
    p.add_argument("--population", type=int, help="members per PBT run (a multiple of the device count)")
    p.add_argument("--ready", type=int, help="inner iterations between exploit/explore steps")
    p.add_argument("--explore", help="comma list of the learner's traced hyperparameters PBT moves")
    p.add_argument("--truncation", type=float, help="bottom fraction replaced by copies of the top, in (0, 0.5]")
    p.add_argument("--variant", help="pbt, exploit_only, explore_only or fixed")
    p.add_argument("--baseline", help="none or random-search (same population and budget, never exploits)")
    p.add_argument("--runs", type=int, help="independent PBT runs, vmapped in one program")
    p.add_argument("--env", help="the learner's environment (inner.env)")
    # --set takes PBT keys and inner.KEY=VALUE; --stop-at counts rounds
    experiment.core_flags(p, seeds=False, logger=False)
    distributed.add_flags(p)
    return p


def build_config(args) -> PBTConfig:
    from src import config as cfg

    values = cfg.load_yaml(args.config) if args.config else {}
    for name in ("population", "ready", "truncation", "variant", "baseline", "runs"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.explore is not None:
        values["explore"] = experiment.comma_list(args.explore, str, "--explore")
    if args.env:
        values["inner"] = {**values.get("inner", {}), "env": args.env}
    # --set inner.KEY=VALUE sets one key of the learner's mapping, typed as in a YAML preset
    return cfg.override(cfg.from_dict(PBTConfig, values), args.overrides)


def main(argv):
    args = parser().parse_args(argv)
    distributed.initialize(args)   # before any JAX computation (validate counts the devices)
    config = build_config(args)
    given = any([args.config, args.population, args.ready, args.explore, args.truncation, args.variant,
                 args.baseline, args.runs, args.env, args.overrides])
    if not args.resume:
        config.validate()          # every check before the run directory and before compiling
        experiment.stop_point(config.rounds, config.chunk_rounds, args.stop_at, "rounds")
    run = distributed.start(args.out, f"pbt-{config.inner_config().env if not args.resume else 'run'}", config,
                            PBTConfig, resume=args.resume, given=given, unit="round")
    config = run.config.validate()
    experiment.stop_point(config.rounds, config.chunk_rounds, args.stop_at, "rounds")
    return meta_train(config, run, stop_at=args.stop_at, show_progress=not args.no_progress)
