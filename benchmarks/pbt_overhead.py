"""PBT's overhead over the same vmapped population without PBT.

    python benchmarks/pbt_overhead.py                       # CartPole PPO, population 16, ready 10
    python benchmarks/pbt_overhead.py --population 32 --ready 5 --repeats 7

Both programs come from meta/pbt.py's `make_agent_program`: the same chunk of
rounds (training, fitness, records), once with the exploit/explore step
(variant "pbt") and once without it (variant "fixed": the population trains
with its hyperparameters untouched). Compiling is excluded (each program runs
once before timing); the two are timed alternately, `--repeats` times, and the
medians compared (and the fastest runs, less exposed to a shared machine's
load); the exploit/explore step is also timed alone on the same members.
Target: PBT adds less than 10% to the run time. Writes
benchmarks/results/pbt_overhead/result.json (or --out).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.population import use_all_cpu_cores  # noqa: E402
from src.xla_cpu import compile_small_loops  # noqa: E402

use_all_cpu_cores()
compile_small_loops()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--ready", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="rounds per timed chunk")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "pbt_overhead", "result.json"))
    args = p.parse_args(argv)

    import jax

    from meta import pbt

    inner = {"env": args.env, "total_steps": 4 * 128 * args.ready * args.rounds, "num_envs": 4, "num_steps": 128,
             "hidden": [64, 64], "anneal_lr": False}
    config = pbt.PBTConfig(population=args.population, ready=args.ready, runs=1, inner=inner,
                           resample_prob=0.25).validate()
    _, init, chunks, _ = pbt.make_agent_program(config, ("pbt", "fixed"))
    state = init(jax.random.PRNGKey(0))

    def once(variant):
        t0 = time.perf_counter()
        out = chunks[variant](*state)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    compile_s = {v: once(v) for v in ("pbt", "fixed")}     # compile + first run, not timed below
    times = {"pbt": [], "fixed": []}
    for i in range(args.repeats):
        for v in (("pbt", "fixed") if i % 2 == 0 else ("fixed", "pbt")):   # alternate who goes first
            times[v].append(once(v))
    med = {v: statistics.median(t) for v, t in times.items()}

    # The exploit/explore step alone, on the same members (a shared machine's
    # load swings the whole-chunk timings by more than the step costs): one
    # round's update of every run, as the chunk runs it, timed over many calls
    members, hparams, keys = state
    spec = config.spec("pbt")
    fitness = jax.random.normal(jax.random.PRNGKey(1), (1, args.population))
    step = jax.jit(jax.vmap(lambda k, f, m, h: pbt.update(k, f, m, h, spec)))
    jax.block_until_ready(step(keys, fitness, members, hparams))
    calls = 50
    t0 = time.perf_counter()
    for _ in range(calls):
        out = step(keys, fitness, members, hparams)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / calls
    env_steps = args.population * config.inner_config().total_steps
    result = {"population": args.population, "ready": args.ready, "rounds_per_chunk": args.rounds,
              "env": args.env, "env_steps_per_chunk": env_steps, "devices": len(jax.devices()),
              "device": str(jax.devices()[0].device_kind), "compile_and_first_run_s": compile_s,
              "seconds": times, "median_s": med, "min_s": {v: min(t) for v, t in times.items()},
              "overhead": med["pbt"] / med["fixed"] - 1.0,
              "overhead_of_min": min(times["pbt"]) / min(times["fixed"]) - 1.0,
              "step_alone_s": step_s, "step_share_of_chunk": args.rounds * step_s / med["fixed"],
              "env_steps_per_s": {v: env_steps / m for v, m in med.items()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"population {args.population}, ready {args.ready}, {args.rounds} rounds per chunk "
          f"({env_steps:,} env steps), {len(jax.devices())} device(s): with PBT {med['pbt']:.2f} s, without "
          f"{med['fixed']:.2f} s (medians of {args.repeats}): overhead {100 * result['overhead']:+.1f}% "
          f"(fastest runs: {100 * result['overhead_of_min']:+.1f}%; target < 10%); the exploit/explore step alone "
          f"{1e3 * step_s:.2f} ms per round, {100 * result['step_share_of_chunk']:.2f}% of the chunk -> {args.out}")
    return result


if __name__ == "__main__":
    main()
