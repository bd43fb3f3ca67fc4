"""Adversarial cheap talk, small: an ES-trained message network appended to
the observation of a PPO CartPole victim that trains from scratch with it.

    python benchmarks/robustness_cheap_talk.py [--generations 6 --pairs 4 --steps 100000]

Each fitness evaluation is one whole victim training run (vmapped over the ES
population); the adversary minimises the victim's final deterministic return.
Reported: the victim's return when trained with the initial (random) message
network, with the ES-trained one, and with an all-zero message, over 8 seeds.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1.0)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import envs
    from agents import ppo
    from meta import adversary as adv

    config = dataclasses.replace(ppo.PPOConfig(), total_steps=args.steps)
    env, params = envs.make("CartPole-v1")
    t0 = time.perf_counter()
    history = []
    mean, history = adv.train_cheap_talk(config, env, params, jax.random.PRNGKey(0), args.generations, args.pairs,
                                         args.sigma, args.lr, callback=lambda g, r: print(f"generation {g}: mean victim return {r:.1f}", flush=True))
    es_s = time.perf_counter() - t0
    fitness, unravel, init, _ = adv.cheap_talk_fitness(config, env, params)
    keys = jax.random.split(jax.random.PRNGKey(123), 8)
    evaluate = jax.jit(jax.vmap(fitness, in_axes=(None, 0)))
    zero_net = jax.tree.map(jnp.zeros_like, unravel(init))
    results = {name: np.asarray(evaluate(flat, keys)).tolist() for name, flat in
               (("initial_message", init), ("es_message", mean),
                ("zero_weights_message", jax.flatten_util.ravel_pytree(zero_net)[0]))}
    out = {"command": "python benchmarks/robustness_cheap_talk.py " + " ".join(sys.argv[1:]), "args": vars(args),
           "es_history_mean_victim_return": history, "es_seconds": es_s,
           "victim_return_over_8_seeds": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                                          for k, v in results.items()},
           "machine": "2-core CPU shared with other jobs"}
    path = os.path.join(ROOT, "benchmarks", "results", "robustness_cheap_talk.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["victim_return_over_8_seeds"], indent=1))


if __name__ == "__main__":
    import jax.flatten_util  # noqa: F401
    main()
