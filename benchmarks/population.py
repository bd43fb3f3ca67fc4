"""One ES generation's evaluation: population 32 x 4 seeds x an inner PPO run.

    python benchmarks/population.py [--iterations 8] [--rounds 5] [--out benchmarks/results/population]
    python benchmarks/population.py --num-envs 4 --num-steps 128 --devices 1 --out ...   # another inner size

Measures (compile excluded: every program is compiled and run once first):
  - vmapped through src.population (one program; all members at once, and
    lax.map chunks of --chunks members x 4 seeds) against a Python loop over
    the 32 members (each call a compiled vmap over the 4 seeds). The variants are
    timed in interleaved rounds (loop, vmapped, chunked, loop, ...) and the
    speed-up is the median of the per-round ratios, so that load changes on a
    shared machine hit both sides of a ratio alike; wall and process CPU time;
  - per-run cost against the number of runs batched into one program (1 run
    unvmapped, then --scaling-n runs vmapped; interleaved rounds, best of
    --repeats), which is what decides whether
    vmap can beat a loop on a given machine; and the same for the two pieces
    of an inner run, timed alone (--pieces): the rollout (policy, sampling,
    env step, reward) and one minibatch update (loss, gradient, clip, Adam on
    the flat parameter vector), rebuilt from the agent's parts the way
    agents/ppo.py runs them;
  - 1 against 2 forced host devices (each in its own subprocess, since the
    device count is fixed when JAX starts);
  - the temporary memory of the compiled program with all 32 members at once
    against lax.map chunks of 8 and 1 members (XLA's memory analysis).
The inner run is shrunk to fit a CPU: CartPole-v1, --num-envs envs x
--num-steps steps x --iterations iterations (4 x 32 x 8 by default), 4 epochs
x 4 minibatches, 64x64 networks, the learned drift objective.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POP, SEEDS = 32, 4


def inner_config(iterations, num_envs=4, num_steps=32):
    from agents import ppo
    return ppo.PPOConfig(total_steps=num_envs * num_steps * iterations, num_envs=num_envs, num_steps=num_steps,
                         num_minibatches=4)


def setup(iterations, num_envs=4, num_steps=32):
    import jax
    import numpy as np

    from agents import ppo
    from agents import objectives as lo

    config = inner_config(iterations, num_envs, num_steps)
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


def pieces(args, sizes, repeats):
    """us per run of the two pieces of an inner iteration, n runs per program:
    the rollout (num_steps env steps) and one minibatch update. Rebuilt from
    the agent's network, env and objective as agents/ppo.py runs them (its
    collect and minibatch update are closures inside ppo.make)."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    import envs
    from agents import ppo
    from agents import objectives as lo
    from src.networks import ActorCritic, entropy, log_prob, sample

    config = inner_config(args.iterations, args.num_envs, args.num_steps)
    agent = ppo.make(config, objective=lo.learned())
    hparams = ppo.hparams_from(config)
    net, env, env_params = agent.network, agent.env, agent.env_params
    objective = lo.learned()
    drift = lo.init_drift(jax.random.PRNGKey(0))
    E, S, K = config.num_envs, config.num_steps, 16
    rows = config.batch_size // config.num_minibatches
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    tx = optax.chain(optax.clip_by_global_norm(hparams.max_grad_norm), optax.scale_by_adam(eps=1e-5, eps_root=1e-12))
    obs_dim = envs.obs_size(env, env_params)
    unravel = ravel_pytree(net.init(jax.random.PRNGKey(0), jnp.zeros((obs_dim,))))[1]

    def rollout(ts):      # K iterations' collect (then the values of the next observations), parameters fixed
        def iteration(carry, key):
            def env_step(carry, k):
                env_state, obs = carry
                dist, value = net.apply(ts.params, obs)
                action = sample(k[0], dist, True)
                obs2, env_state, reward, term, trunc, info = step_envs(k[1:], env_state, action, env_params)
                return (env_state, obs2), (obs, action, log_prob(dist, action, True), value, reward, term,
                                           jnp.logical_or(term, trunc), info["final_observation"])
            carry, out = jax.lax.scan(env_step, carry, jax.random.split(key, S * (E + 1)).reshape(S, E + 1, -1))
            return carry, (out[4].sum(), net.apply(ts.params, out[-1], method=ActorCritic.value).sum())
        return jax.lax.scan(iteration, (ts.env_state, ts.obs), jax.random.split(ts.key, K))[1]

    def loss(flat, batch):
        obs, action, old_log_prob, old_value, advantage, target = batch
        dist, value = net.apply(unravel(flat), obs)
        ratio = jnp.exp(log_prob(dist, action, True) - old_log_prob)
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        clipped = old_value + jnp.clip(value - old_value, -hparams.clip_eps, hparams.clip_eps)
        value_loss = 0.5 * jnp.maximum((value - target) ** 2, (clipped - target) ** 2).mean()
        return (objective(drift, ratio, advantage, 0.5).mean() + hparams.vf_coef * value_loss
                - hparams.ent_coef * entropy(dist, True).mean())

    def updates(flat, opt_state, batches):   # K minibatch updates in a scan
        def update(carry, batch):
            flat, opt_state = carry
            u, opt_state = tx.update(jax.grad(loss)(flat, batch), opt_state, flat)
            return (flat - hparams.lr * u, opt_state), None
        return jax.lax.scan(update, (flat, opt_state), batches)[0]

    def batches(key):
        k = jax.random.split(key, 4)
        return (jax.random.normal(k[0], (K, rows, obs_dim)),
                jax.random.bernoulli(k[1], 0.5, (K, rows)).astype(jnp.int32),
                jnp.full((K, rows), -0.69), jnp.zeros((K, rows)), jax.random.normal(k[2], (K, rows)),
                jax.random.normal(k[3], (K, rows)))

    init = jax.jit(jax.vmap(agent.init, in_axes=(0, None)))
    programs = {}
    for n in sizes:
        keys = jax.random.split(jax.random.PRNGKey(1), n)
        ts = init(keys, hparams)
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(ts.params)
        upd_args = (flat, jax.vmap(tx.init)(flat), jax.vmap(batches)(keys))
        programs[n] = ((jax.jit(jax.vmap(rollout)), (ts,)), (jax.jit(jax.vmap(updates)), upd_args))
        for fn, a in programs[n]:
            jax.block_until_ready(fn(*a))
    times = {n: ([], []) for n in sizes}
    for _ in range(repeats):      # interleaved over n
        for n in sizes:
            for (fn, a), out in zip(programs[n], times[n]):
                out.append(timed(lambda: fn(*a))[0])
    return {"rollout_us_per_run_iteration": {str(n): min(times[n][0]) / n / K * 1e6 for n in sizes},
            "minibatch_update_us_per_run": {str(n): min(times[n][1]) / n / K * 1e6 for n in sizes}}


def measure(args):
    """Runs inside a process whose device count XLA_FLAGS fixed."""
    import statistics

    import jax
    import numpy as np

    from src import population

    fitness, params, keys, config = setup(args.iterations, args.num_envs, args.num_steps)
    result = {"devices": len(jax.devices()), "env_steps": POP * SEEDS * config.total_steps}
    variants = {}
    evaluator = population.make_evaluator(fitness, POP, None)
    t = time.perf_counter()
    vmapped = population.gather(evaluator(params, keys))
    result["vmapped_compile_and_first_s"] = time.perf_counter() - t
    variants["vmapped"] = lambda: evaluator(params, keys)
    per_device = POP // len(evaluator.mesh.devices.ravel())
    for chunk in [c for c in args.chunks if c <= per_device]:
        chunked = population.make_evaluator(fitness, POP, chunk)
        chunked_out = population.gather(chunked(params, keys))
        name = f"chunked_{chunk}_member" + ("s" if chunk > 1 else "")
        variants[name] = lambda chunked=chunked: chunked(params, keys)
        result[f"{name}_equals_vmapped_max_abs_diff"] = float(np.nanmax(np.abs(chunked_out - vmapped)))
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
        for name in [v for v in variants if v != "loop"]:
            per_round = [lw / vw for (lw, _), (vw, _) in zip(rounds["loop"], rounds[name])]
            result[f"{name}_speedup_per_round"] = [round(r, 3) for r in per_round]
            result[f"{name}_speedup_median"] = statistics.median(per_round)
            result[f"{name}_speedup_cpu_median"] = statistics.median(
                [lc / vc for (_, lc), (_, vc) in zip(rounds["loop"], rounds[name])])
    if args.scaling:
        # the cost of one inner run when n runs share one program (n = 1: no vmap)
        # every program compiled first, then timed in interleaved rounds (best round per n)
        member = jax.tree.map(lambda x: x[0], params)
        flat = keys.reshape(-1, keys.shape[-1])
        single = jax.jit(fitness)
        batched = jax.jit(jax.vmap(fitness, in_axes=(None, 0)))
        programs = {"1 unvmapped": (lambda: single(member, flat[0]), 1)}
        for n in args.scaling_n:
            programs[f"{n} vmapped"] = (lambda n=n: batched(member, flat[:n]), n)
        for fn, _ in programs.values():
            jax.block_until_ready(fn())
        times = {name: [] for name in programs}
        for _ in range(args.repeats):
            for name, (fn, _) in programs.items():
                times[name].append(timed(fn)[0])
        result["ms_per_run_by_runs_per_program"] = {name: min(times[name]) * 1000 / n
                                                    for name, (_, n) in programs.items()}
    if args.pieces:
        result["pieces"] = pieces(args, args.scaling_n, max(args.repeats, 5))
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
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--chunks", default="1,4", help="members per lax.map chunk, comma-separated")
    p.add_argument("--devices", default="1,2", help="forced host device counts to run, comma-separated")
    p.add_argument("--scaling-n", default="1,4,8,16,32,128", help="runs per program in the scaling sweep")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling sweep and the pieces")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "population"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scaling", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pieces", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.chunks = [int(c) for c in args.chunks.split(",") if c]
        args.scaling_n = [int(n) for n in args.scaling_n.split(",") if n]
        print(json.dumps(measure(args)))
        return
    common = ["--iterations", str(args.iterations), "--repeats", str(args.repeats), "--rounds", str(args.rounds),
              "--num-envs", str(args.num_envs), "--num-steps", str(args.num_steps), "--chunks", args.chunks,
              "--scaling-n", args.scaling_n]
    devices = [int(d) for d in args.devices.split(",")]
    one = run_child(1, [*common, "--loop", "--memory", *([] if args.no_scaling else ["--scaling", "--pieces"])])
    two = run_child(2, [*common, "--memory"]) if 2 in devices else None
    import datetime

    import jax
    command = " ".join(a for a in sys.argv[1:] if not a.startswith("--out") and a != args.out)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "command": ("python benchmarks/population.py " + command).strip(), "full_options": common,
              "machine": f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs", "jax": jax.__version__,
              "population": POP, "seeds": SEEDS, "inner_iterations": args.iterations,
              "inner_num_envs": args.num_envs, "inner_num_steps": args.num_steps,
              "one_device": one, "two_devices": two,
              "vmap_speedup_over_loop": one["vmapped_speedup_median"],
              "vmap_speedup_over_loop_best_rounds": one["loop_s"] / one["vmapped_s"]}
    for name in one:
        if name.startswith("chunked_") and name.endswith("_speedup_median"):
            result[name.replace("_speedup_median", "_speedup_over_loop")] = one[name]
    if two is not None:
        result["two_device_vmapped_speedup_over_one_device_loop"] = one["loop_s"] / two["vmapped_s"]
        for name in two:
            if name.startswith("chunked_") and name.endswith("_member_s") or name.endswith("_members_s"):
                result[f"two_device_{name[:-2]}_speedup_over_one_device_loop"] = one["loop_s"] / two[name]
        result["two_device_speedup"] = one["vmapped_s"] / two["vmapped_s"]
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
