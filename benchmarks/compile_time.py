"""Where a 1-seed PPO run's start-up goes: tracing, lowering and XLA compilation
of the whole `train` program (init included), and the compilation of the
network's initialiser alone, for three ways of initialising the actor-critic's
kernels.

    python benchmarks/compile_time.py                      # all three, 3 alternating rounds
    python benchmarks/compile_time.py --rounds 5 --kernels stacked per-layer --out results.json

stacked    what `src.networks.ActorCritic` does: one draw, one batched Gram-Schmidt
per-layer  flax's usual way: each Dense layer draws and orthogonalises its own kernel
zeros      no random initialisation at all (a lower bound, does not learn)

Each measurement runs in a fresh process, so nothing is cached between them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("stacked", "per-layer", "zeros")


def measure(variant, env_name):
    t_start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from src.population import use_all_cpu_cores
    use_all_cpu_cores()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import envs
    from agents import ppo
    from src import networks

    if variant != "stacked":
        class PerLayer(networks.ActorCritic):
            """The actor-critic with flax's usual per-layer initialisation."""
            def setup(self):
                zeros = variant == "zeros"
                self.actor = networks.MLP(self.hidden, self.action_dim, self.activation, self.ACTOR_OUT_SCALE,
                                          zero_kernels=zeros)
                self.critic = networks.MLP(self.hidden, 1, self.activation, self.CRITIC_OUT_SCALE,
                                           zero_kernels=zeros)
                if not self.discrete:
                    self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

            @nn.nowrap
            def init_with_output(self, rngs, *args, **kwargs):
                return nn.Module.init_with_output(self, rngs, *args, **kwargs)
        ppo.ActorCritic = PerLayer

    config = ppo.CONFIG(env=env_name, seeds=1)
    agent = ppo.make(config)
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    hparams = jax.tree.map(lambda x: jnp.asarray(x)[None], ppo.hparams_from(config))
    obs = jnp.zeros((envs.obs_size(agent.env, agent.env_params),), jnp.float32)
    init_only = jax.jit(jax.vmap(lambda k: agent.network.init(k, obs))).lower(keys)
    t = time.perf_counter()
    init_only.compile()
    init_compile_s = time.perf_counter() - t
    program = jax.jit(jax.vmap(lambda k, h: agent.train(k, h)))
    t0 = time.perf_counter()
    traced = program.trace(keys, hparams)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"variant": variant, "imports_s": t0 - t_start, "trace_s": t1 - t0, "lower_s": t2 - t1,
            "compile_s": t3 - t2, "init_only_compile_s": init_compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--out", default=None, help="also write the rounds and medians to this JSON file")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.env)))
        return
    runs = {v: [] for v in args.kernels}
    for r in range(args.rounds):
        for variant in args.kernels:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--env", args.env],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            rec = runs[variant][-1]
            print(f"round {r + 1}: {variant:9s} trace {rec['trace_s']:.2f} s, lower {rec['lower_s']:.2f} s, "
                  f"compile {rec['compile_s']:.2f} s", flush=True)
    fields = ("trace_s", "lower_s", "compile_s", "init_only_compile_s")
    medians = {v: {k: statistics.median(r[k] for r in recs) for k in fields} for v, recs in runs.items()}
    print("\n| kernels | trace s | lower s | XLA compile s, whole run (every round) | XLA compile s, init alone |"
          "\n|---|---:|---:|---|---:|")
    for variant, recs in runs.items():
        med = medians[variant]
        every = " ".join(f"{r['compile_s']:.2f}" for r in recs)
        print(f"| {variant} | {med['trace_s']:.2f} | {med['lower_s']:.2f} | **{med['compile_s']:.2f}** ({every}) "
              f"| {med['init_only_compile_s']:.2f} |")
    if args.out:
        import datetime
        import platform
        record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                  "command": "python benchmarks/compile_time.py " + " ".join(sys.argv[1:]),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                  "env": args.env, "rounds": args.rounds, "medians": medians, "runs": runs}
        Path(args.out).write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
