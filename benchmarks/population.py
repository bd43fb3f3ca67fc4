"""One ES generation's evaluation: population 32 x 4 seeds x an inner PPO run.

    python benchmarks/population.py [--iterations 8] [--out benchmarks/results/population]

Measures (compile excluded, best of --repeats):
  - vmapped through src.population (one program; all members at once, and
    lax.map chunks of one member x 4 seeds) against a Python loop over the 32
    members (each call a compiled vmap over the 4 seeds);
  - 1 against 2 forced host devices (each in its own subprocess, since the
    device count is fixed when JAX starts);
  - the temporary memory of the compiled program with all 32 members at once
    against lax.map chunks of 8 and 1 members (XLA's memory analysis).
The inner run is shrunk to fit a CPU: CartPole-v1, 4 envs x 32 steps x
--iterations iterations, 64x64 networks, the learned drift objective.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POP, SEEDS = 32, 4


def setup(iterations):
    import jax
    import numpy as np

    from agents import ppo
    from meta import learned_objective as lo

    config = ppo.PPOConfig(total_steps=4 * 32 * iterations, num_envs=4, num_steps=32, num_minibatches=4)
    agent = ppo.make(config, objective=lo.learned())
    fitness = lo.inner_fitness(agent, ppo.hparams_from(config), 1)
    params = jax.vmap(lambda k: lo.init_drift(k))(jax.random.split(jax.random.PRNGKey(0), POP))
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(1), POP * SEEDS)).reshape(POP, SEEDS, 2)
    return fitness, params, keys, config


def best_time(fn, repeats):
    import jax
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def measure(args):
    """Runs inside a process whose device count XLA_FLAGS fixed."""
    import jax
    import numpy as np

    from src import population

    fitness, params, keys, config = setup(args.iterations)
    result = {"devices": len(jax.devices()), "env_steps": POP * SEEDS * config.total_steps}
    evaluator = population.make_evaluator(fitness, POP, None)
    t = time.perf_counter()
    vmapped = population.gather(evaluator(params, keys))
    result["vmapped_compile_and_first_s"] = time.perf_counter() - t
    result["vmapped_s"] = best_time(lambda: evaluator(params, keys), args.repeats)
    chunked = population.make_evaluator(fitness, POP, 1)
    chunked_out = population.gather(chunked(params, keys))
    result["chunked_1_member_s"] = best_time(lambda: chunked(params, keys), args.repeats)
    result["chunked_equals_vmapped_max_abs_diff"] = float(np.nanmax(np.abs(chunked_out - vmapped)))
    if args.loop:
        one = jax.jit(jax.vmap(fitness, in_axes=(None, 0)))
        member = lambda m: jax.tree.map(lambda x: x[m], params)  # noqa: E731
        looped = np.stack([np.asarray(one(member(m), keys[m])) for m in range(POP)])   # compiles once
        result["loop_s"] = best_time(lambda: [one(member(m), keys[m]) for m in range(POP)], args.repeats)
        result["loop_equals_vmapped_max_abs_diff"] = float(np.nanmax(np.abs(looped - vmapped)))
    if args.memory:
        memory = {}
        for batch in (None, 8, 1):
            ev = population.make_evaluator(fitness, POP, batch)
            placed = (jax.tree.map(ev.place, params), ev.place(keys))
            analysis = ev.program.lower(*placed).compile().memory_analysis()
            memory[str(batch or POP // len(ev.mesh.devices.ravel()))] = int(analysis.temp_size_in_bytes)
        result["temp_bytes_by_members_per_chunk"] = memory
    return result


def run_child(devices, extra):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, __file__, "--child", *extra], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "population"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    common = ["--iterations", str(args.iterations), "--repeats", str(args.repeats)]
    one = run_child(1, [*common, "--loop", "--memory"])
    two = run_child(2, [*common, "--memory"])
    import datetime

    import jax
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "command": "python benchmarks/population.py " + " ".join(common),
              "machine": "2-core CPU, shared with other jobs", "jax": jax.__version__,
              "population": POP, "seeds": SEEDS, "inner_iterations": args.iterations,
              "one_device": one, "two_devices": two,
              "vmap_speedup_over_loop": one["loop_s"] / one["vmapped_s"],
              "chunked_speedup_over_loop": one["loop_s"] / one["chunked_1_member_s"],
              "two_device_speedup": one["vmapped_s"] / two["vmapped_s"]}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
