"""`run.py meta qd`: neuroevolution and quality-diversity over policy weights.

    python run.py meta qd --env hard-maze --method map-elites,novelty,ga,es --seeds 5
    python run.py meta qd --config configs/qd_hard_maze.yaml --out runs/qd
    python run.py meta qd --out runs/qd --resume          # continue, bit-identical
    python run.py meta qd --env CartPole-v1 --method ga,es --generations 50

Each method evolves the flat weights of a small MLP policy (meta/qd.py):
MAP-Elites over a grid of behaviour descriptors, novelty search, the deep GA
and OpenES on the return, every seed vmapped, every episode through the
population engine. Writes config.yaml, metrics.csv (one row per method,
generation and seed: best return, coverage, QD-score, goal reached),
archive.png, coverage.png, comparison.md, summary.json and checkpoint/.
"""
import argparse

from meta.qd import METHODS, QDConfig, run_all
from src import distributed, experiment
from src.config import ConfigError


def parser():
    p = argparse.ArgumentParser(prog="run.py meta qd", description=__doc__.split("\n")[0])
    p.add_argument("--env", help="environment (default hard-maze)")
    p.add_argument("--method", help=f"comma list of methods: {', '.join(METHODS)}")
    p.add_argument("--generations", type=int)
    p.add_argument("--batch", type=int, help="evaluations per generation and seed")
    # --seeds: independent runs per method (vmapped); --stop-at counts generations
    experiment.core_flags(p, logger=False)
    distributed.add_flags(p)
    return p


def build_config(args) -> QDConfig:
    from src import config as cfg

    values = cfg.load_yaml(args.config) if args.config else {}
    if args.env is not None:
        values["env"] = args.env
    if args.method is not None:
        values["methods"] = experiment.comma_list(args.method, str, "--method")
    for name in ("generations", "batch", "seeds"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return cfg.override(cfg.from_dict(QDConfig, values), args.overrides).validate()


def main(argv):
    import envs

    args = parser().parse_args(argv)
    distributed.initialize(args)   # before any JAX computation
    config = build_config(args)
    envs.check_name(config.env)   # before the run directory and any compile
    given = any(v is not None for v in (args.config, args.env, args.method, args.generations, args.batch,
                                        args.seeds)) or bool(args.overrides)
    # with several processes (--coordinator ...) process 0 writes the run directory
    run = distributed.start(args.out, f"qd-{config.env}", config, QDConfig, resume=args.resume, given=given,
                            unit="generation")
    config = run.config.validate()
    if args.stop_at is not None and not 0 < args.stop_at <= config.generations:
        raise ConfigError(f"--stop-at must be in 1..{config.generations}")
    summary = run_all(config, run, stop_at=args.stop_at, show_progress=not args.no_progress)
    for name, m in summary["methods"].items():
        print(f"{name}: goal reached in {m['reached']}/{m['seeds']} seeds by generation {m['generation']}; "
              f"coverage {sum(m['coverage']) / len(m['coverage']):.3f}")
    return summary
