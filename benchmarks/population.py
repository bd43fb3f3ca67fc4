"""One ES generation's evaluation: population 32 x 4 seeds x an inner PPO run.

    python benchmarks/population.py [--iterations 8] [--rounds 5] [--out benchmarks/results/population]

Measures (compile excluded: every program is compiled and run once first):
  - vmapped through src.population (one program; all members at once, and
    lax.map chunks of one member x 4 seeds) against a Python loop over the 32
    members (each call a compiled vmap over the 4 seeds). The variants are
    timed in interleaved rounds (loop, vmapped, chunked, loop, ...) and the
    speed-up is the median of the per-round ratios, so that load changes on a
    shared machine hit both sides of a ratio alike; wall and process CPU time;
  - per-run cost against the number of runs batched into one program (1 run
    unvmapped, then 4, 16 and 128 runs vmapped), which is what decides whether
    vmap can beat a loop on a given machine;
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


def timed(fn):
    """(wall seconds, process CPU seconds) of one blocking call."""
    import jax
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


def best_time(fn, repeats):
    return min(timed(fn)[0] for _ in range(repeats))


def measure(args):
    """Runs inside a process whose device count XLA_FLAGS fixed."""
    import statistics

    import jax
    import numpy as np

    from src import population

    fitness, params, keys, config = setup(args.iterations)
    result = {"devices": len(jax.devices()), "env_steps": POP * SEEDS * config.total_steps}
    variants = {}
    evaluator = population.make_evaluator(fitness, POP, None)
    t = time.perf_counter()
    vmapped = population.gather(evaluator(params, keys))
    result["vmapped_compile_and_first_s"] = time.perf_counter() - t
    variants["vmapped"] = lambda: evaluator(params, keys)
    chunked = population.make_evaluator(fitness, POP, 1)
    chunked_out = population.gather(chunked(params, keys))
    variants["chunked_1_member"] = lambda: chunked(params, keys)
    result["chunked_equals_vmapped_max_abs_diff"] = float(np.nanmax(np.abs(chunked_out - vmapped)))
    if args.loop:
        one = jax.jit(jax.vmap(fitness, in_axes=(None, 0)))
        members = [jax.tree.map(lambda x: x[m], params) for m in range(POP)]   # sliced once, outside the timing
        member_keys = [keys[m] for m in range(POP)]
        looped = np.stack([np.asarray(one(members[m], member_keys[m])) for m in range(POP)])   # compiles once
        variants["loop"] = lambda: [one(members[m], member_keys[m]) for m in range(POP)]
        result["loop_equals_vmapped_max_abs_diff"] = float(np.nanmax(np.abs(looped - vmapped)))
    rounds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            rounds[name].append(timed(fn))
    for name, times in rounds.items():
        result[f"{name}_wall_s"] = [round(w, 4) for w, _ in times]
        result[f"{name}_cpu_s"] = [round(c, 4) for _, c in times]
        result[f"{name}_s"] = min(w for w, _ in times)            # best round
    if args.loop:
        for name in ("vmapped", "chunked_1_member"):
            per_round = [lw / vw for (lw, _), (vw, _) in zip(rounds["loop"], rounds[name])]
            result[f"{name}_speedup_per_round"] = [round(r, 3) for r in per_round]
            result[f"{name}_speedup_median"] = statistics.median(per_round)
            result[f"{name}_speedup_cpu_median"] = statistics.median(
                [lc / vc for (_, lc), (_, vc) in zip(rounds["loop"], rounds[name])])
    if args.scaling:
        # the cost of one inner run when n runs share one program (n = 1: no vmap)
        member = jax.tree.map(lambda x: x[0], params)
        flat = keys.reshape(-1, keys.shape[-1])
        scaling = {}
        single = jax.jit(fitness)
        jax.block_until_ready(single(member, flat[0]))
        scaling["1"] = best_time(lambda: single(member, flat[0]), args.repeats) * 1000
        batched = jax.jit(jax.vmap(fitness, in_axes=(None, 0)))
        for n in (4, 16, POP * SEEDS):
            jax.block_until_ready(batched(member, flat[:n]))
            scaling[str(n)] = best_time(lambda: batched(member, flat[:n]), args.repeats) * 1000 / n
        result["ms_per_run_by_runs_per_program"] = scaling
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
    p.add_argument("--repeats", type=int, default=3, help="best-of for the scaling sweep")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of the variants")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "population"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scaling", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    common = ["--iterations", str(args.iterations), "--repeats", str(args.repeats), "--rounds", str(args.rounds)]
    one = run_child(1, [*common, "--loop", "--memory", "--scaling"])
    two = run_child(2, [*common, "--memory"])
    import datetime

    import jax
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "command": "python benchmarks/population.py " + " ".join(common),
              "machine": "2-core CPU, shared with other jobs", "jax": jax.__version__,
              "population": POP, "seeds": SEEDS, "inner_iterations": args.iterations,
              "one_device": one, "two_devices": two,
              "vmap_speedup_over_loop": one["vmapped_speedup_median"],
              "chunked_speedup_over_loop": one["chunked_1_member_speedup_median"],
              "vmap_speedup_over_loop_best_rounds": one["loop_s"] / one["vmapped_s"],
              "two_device_vmapped_speedup_over_one_device_loop": one["loop_s"] / two["vmapped_s"],
              "two_device_chunked_speedup_over_one_device_loop": one["loop_s"] / two["chunked_1_member_s"],
              "two_device_speedup": one["vmapped_s"] / two["vmapped_s"]}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
