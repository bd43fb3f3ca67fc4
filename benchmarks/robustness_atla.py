"""Alternating adversarial training (ATLA-style) of a PPO CartPole victim
against a learned observation adversary, saved as a run directory that
`run.py robust` can attack like any other.

    python benchmarks/robustness_atla.py [--eps 0.1 --rounds 8 --seeds 5 --out runs/robust_cartpole_atla]
    python run.py robust runs/robust_cartpole_atla --attacks random,fgsm,pgd,critic,mad,learned

The victim uses configs/ppo_cartpole.yaml's settings (5e5 steps); each round it
runs 1/rounds of its iterations against the frozen adversary, then the
adversary as many of its own iterations against the frozen victim.
"""
import argparse
import dataclasses
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/ppo_cartpole.yaml")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="runs/robust_cartpole_atla")
    args = p.parse_args()
    os.chdir(ROOT)

    import jax
    import numpy as np

    from agents import ppo
    from meta import adversary as adv
    from src import checkpoint, rundir
    from src import config as cfg

    config = dataclasses.replace(cfg.from_dict(ppo.PPOConfig, cfg.load_yaml(args.config)), seeds=args.seeds).validate()
    init, one_round, _ = adv.adversarial_training(config, args.eps, args.rounds)
    keys = jax.vmap(jax.random.PRNGKey)(np.arange(args.seeds, dtype=np.uint32))
    init = jax.jit(jax.vmap(init))
    one_round = jax.jit(jax.vmap(one_round))
    t0 = time.perf_counter()
    victim, adversary = init(keys)
    for r in range(args.rounds):
        victim, adversary, metrics = one_round(victim, adversary)
        print(f"round {r + 1}/{args.rounds}: victim return {np.asarray(metrics['victim_return']).round(1)}, "
              f"adversary return {np.asarray(metrics['adversary_return']).round(1)} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    cfg.save_yaml(config, os.path.join(args.out, "config.yaml"))
    rundir.write_members(args.out, [{"seed": s, "hparams": {}} for s in range(args.seeds)])
    checkpoint.save(os.path.join(args.out, "checkpoint"), victim)
    rundir.write_json(args.out, "atla.json", {"eps": args.eps, "rounds": args.rounds, "seconds": time.perf_counter() - t0,
                                              "command": "python benchmarks/robustness_atla.py " + " ".join(sys.argv[1:])})
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
