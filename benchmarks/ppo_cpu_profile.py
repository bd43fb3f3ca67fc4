"""Where one CartPole PPO run spends its time on a CPU (issue 2's speed target).

    python benchmarks/ppo_cpu_profile.py [--rounds 3] [--variants default,epochs1,...] [--micro] [--bound]

Times the compiled 1-seed training program (the PureJaxRL CartPole config,
5e5 steps; compile excluded, best of --rounds calls with different seeds) under
variants that each remove or change one part of an iteration:

  default          the published config, with XLA's default settings (as a
                   script that imports agents.ppo itself runs it)
  small_loops      the same, with the XLA:CPU setting `run.py` makes
                   (src/xla_cpu.py: loops under 1 MB become one kernel, and
                   the rollout's policy is evaluated without dots to qualify)
  small_loops_epochs1_mb1  that setting, with the update nearly gone
  epochs1          1 epoch instead of 4 (the update costs a quarter)
  epochs1_mb1      1 epoch of 1 minibatch (the update nearly gone)
  unroll_rollout8  the 128-step rollout and GAE scans unrolled 8 times
  unroll_update4   the epoch and minibatch scans unrolled 4 times
  threefry_unrolled  jax's CPU lowering of the threefry hash replaced by the
                   unrolled lowering jax uses on GPU, here inlined at each call
                   site: the same bits, no 5-step while loop per random draw
                   (private jax API; this benchmark only)
  small_while_64k  (session 7, before the rollout's policy went without dots)
                   XLA:CPU compiles while loops that touch under this many bytes
                   into one kernel (no per-op dispatch inside); the default limit
                   is small (most threefry loops qualify, the rollout loop does not).
                   Raised through the public flag
                   XLA_FLAGS=--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=N
  small_while_1e9  the same with no practical limit

`--bound` times the update alone (one minibatch update like PPO's, and one
128x64x64 product) and prints the env steps/s it allows before any rollout:
a ceiling for this config on this machine.

Each variant runs in a fresh process (a lowering rule or a patched scan must
not leak into the next one). It also times the pieces of one rollout step in
isolation (`--micro`): 4 CartPole envs stepped with random actions, the
actor-critic forward with a categorical sample, and the random draws alone,
with either threefry lowering. Results go to --out (default
benchmarks/results/ppo_cpu_profile.json; give another name for a subset of
variants or a pinned run, e.g. under `taskset -c 0`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["default", "small_loops", "small_loops_epochs1_mb1", "epochs1", "epochs1_mb1", "unroll_rollout8",
            "unroll_update4", "threefry_unrolled", "small_while_64k", "small_while_1e9"]
SMALL_WHILE = {"small_while_64k": 65536, "small_while_1e9": 10**9}
STEPS = 500_000


def use_unrolled_threefry():
    # Same hash, the lowering jax uses on GPU: straight-line code instead of a
    # while loop of 5 rounds, which on CPU costs a few microseconds per draw
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as threefry
    mlir.register_lowering(threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule, platform="cpu")


def unroll_scans(unroll, min_length, max_length):
    import jax
    scan = jax.lax.scan

    def patched(f, init, xs=None, length=None, reverse=False, **kwargs):
        n = length if length is not None else jax.tree.leaves(xs)[0].shape[0]
        kwargs.pop("unroll", None)
        return scan(f, init, xs, length=length, reverse=reverse,
                    unroll=unroll if min_length <= n <= max_length else 1, **kwargs)

    jax.lax.scan = patched


def one_variant(variant, rounds):
    if variant == "threefry_unrolled":
        use_unrolled_threefry()
    elif variant == "unroll_rollout8":
        unroll_scans(8, 128, 128)     # rollout, reward and GAE scans (length num_steps)
    elif variant == "unroll_update4":
        unroll_scans(4, 2, 4)         # epoch and minibatch scans
    sys.path.insert(0, str(ROOT))
    if variant.startswith("small_loops") or variant in SMALL_WHILE:
        from src.xla_cpu import SMALL_LOOP_BYTES, compile_small_loops
        compile_small_loops(SMALL_WHILE.get(variant, SMALL_LOOP_BYTES))    # before JAX starts, as run.py does
    import jax
    import agents.ppo as ppo
    sizes = {"epochs1": {"num_epochs": 1}, "epochs1_mb1": {"num_epochs": 1, "num_minibatches": 1}}
    size = next((v for k, v in sizes.items() if variant.endswith(k)), {})
    config = ppo.PPOConfig(env="CartPole-v1", total_steps=STEPS, **size)
    agent = ppo.make(config, runs_per_device=1)   # one run, as run.py makes it for --seeds 1
    hparams = ppo.hparams_from(config)
    start = time.perf_counter()
    train = jax.jit(agent.train).lower(jax.random.key(0), hparams).compile()
    compile_s = time.perf_counter() - start
    times, returns = [], []
    for seed in range(rounds):
        start = time.perf_counter()
        _, metrics = jax.block_until_ready(train(jax.random.key(seed), hparams))
        times.append(time.perf_counter() - start)
        returns.append(float(metrics["episode_return"][-1]))
    return {"variant": variant, "compile_s": compile_s, "run_s": times, "best_s": min(times),
            "steps_per_s": STEPS / min(times), "final_return": returns}


def micro(unrolled, rounds):
    if unrolled:
        use_unrolled_threefry()
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    import envs
    from src.networks import ActorCritic, sample
    num_envs, length = 4, 128 * 976
    env, env_params = envs.make("CartPole-v1")
    network = ActorCritic(2, True, (64, 64), "tanh")
    params = network.init(jax.random.key(0), jnp.zeros(4))
    obs0, state0 = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), num_envs), env_params)
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def envs_only(key):
        def body(state, keys):
            action = jax.random.randint(keys[0], (num_envs,), 0, 2)
            _, state, reward, *_ = step_envs(keys[1:], state, action, env_params)
            return state, reward.sum()
        return jax.lax.scan(body, state0, jax.random.split(key, (length, num_envs + 1)))[1].sum()

    def network_only(key):
        def body(obs, k):
            dist, value = network.apply(params, obs)
            action = sample(k, dist, True)
            return obs + 1e-3 * action[:, None], value.sum()
        return jax.lax.scan(body, obs0, jax.random.split(key, length))[1].sum()

    def draws_only(key):
        def body(total, keys):
            draws = jax.vmap(lambda k: jax.random.uniform(k, (4,)))(keys).sum()
            return total + draws, total
        return jax.lax.scan(body, 0.0, jax.random.split(key, (length, num_envs)))[1].sum()

    out = {}
    for name, fn in [("4 envs, random actions", envs_only), ("actor-critic forward + sample", network_only),
                     ("4 vmapped uniform draws", draws_only)]:
        compiled = jax.jit(fn).lower(jax.random.key(0)).compile()
        best = float("inf")
        for seed in range(rounds):
            start = time.perf_counter()
            jax.block_until_ready(compiled(jax.random.key(seed)))
            best = min(best, time.perf_counter() - start)
        out[name] = best / length * 1e6
    return out


def update_flops_per_env_step(obs_dim=4, hidden=(64, 64), action_dim=2, epochs=4):
    """Multiply-adds x 2 of the update's matrix products per env step: each
    sample goes forward and backward through actor and critic once per epoch
    (backward: a weight gradient per layer, an input gradient per layer but
    the first)."""
    flops = 0
    for out in (action_dim, 1):
        sizes = [obs_dim, *hidden, out]
        layers = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
        flops += 2 * (sum(layers) + sum(layers) + sum(layers[1:]))
    return epochs * flops


def bound(rounds):
    """What the update alone costs on this machine: one 128x64x64 product,
    and one minibatch update like PPO's (forward and backward of actor and
    critic on 128 samples, PPO-clip loss, global-norm clip, Adam on the flat
    parameter vector), each repeated in a scan and timed per call."""
    sys.path.insert(0, str(ROOT))
    from src.xla_cpu import compile_small_loops
    compile_small_loops()
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree
    from src.networks import ActorCritic, entropy, log_prob
    n, rows = 2000, 128
    keys = jax.random.split(jax.random.key(0), 4)
    network = ActorCritic(2, True, (64, 64), "tanh")
    flat, unravel = ravel_pytree(network.init(keys[0], jnp.zeros(4)))
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.scale_by_adam(eps=1e-5, eps_root=1e-12))
    obs = jax.random.normal(keys[1], (n, rows, 4))
    action = jax.random.bernoulli(keys[2], 0.5, (n, rows)).astype(jnp.int32)
    advantage = jax.random.normal(keys[3], (n, rows))

    def loss(p, batch):
        o, a, adv = batch
        dist, value = network.apply(unravel(p), o)
        ratio = jnp.exp(log_prob(dist, a, True) + 0.7)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv).mean()
        return policy_loss + 0.25 * ((value - adv) ** 2).mean() - 0.01 * entropy(dist, True).mean()

    def updates(p, opt):
        def body(carry, batch):
            p, opt = carry
            u, opt = tx.update(jax.grad(loss)(p, batch), opt, p)
            return (p - 1e-4 * u, opt), None
        return jax.lax.scan(body, (p, opt), (obs, action, advantage))[0]

    kernel = jax.random.normal(keys[0], (64, 64))

    def products(x):
        return jax.lax.scan(lambda c, a: (c + (a @ kernel).sum(), None), 0.0, x)[0]

    xs = jax.random.normal(keys[1], (n * 10, rows, 64))
    out = {}
    for name, fn, args, calls in [("128x64x64 product", products, (xs,), n * 10),
                                  ("minibatch update", updates, (flat, tx.init(flat)), n)]:
        compiled = jax.jit(fn).lower(*args).compile()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            best = min(best, time.perf_counter() - start)
        out[name + " us"] = best / calls * 1e6
    out["128x64x64 product GFLOP/s"] = 2 * rows * 64 * 64 / out["128x64x64 product us"] / 1e3
    batch, minibatches = 4 * 128, 4 * 4
    out["update FLOP per env step"] = update_flops_per_env_step()
    out["update-only ceiling, env steps/s"] = batch / (minibatches * out["minibatch update us"] * 1e-6)
    out["flop-rate ceiling, env steps/s"] = out["128x64x64 product GFLOP/s"] * 1e9 / out["update FLOP per env step"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--micro", action="store_true", help="also time the pieces of one rollout step")
    parser.add_argument("--bound", action="store_true",
                        help="also time one minibatch update and a 128x64x64 product: what the update alone allows")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_cpu_profile.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:   # one measurement, in its own process
        kind, _, name = args.child.partition(":")
        result = (one_variant(name, args.rounds) if kind == "variant" else bound(args.rounds) if kind == "bound"
                  else micro(name == "unrolled", args.rounds))
        print("RESULT " + json.dumps(result))
        return

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    jobs = ([f"variant:{v}" for v in variants] + (["micro:rolled", "micro:unrolled"] if args.micro else [])
            + (["bound:"] if args.bound else []))
    results = {}
    for job in jobs:
        proc = subprocess.run([sys.executable, __file__, "--child", job, "--rounds", str(args.rounds)],
                              capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{job} failed:\n{proc.stderr[-2000:]}")
        results[job] = json.loads(line[-1][len("RESULT "):])
        r = results[job]
        if job.startswith("variant:"):
            print(f"{r['variant']:18s} compile {r['compile_s']:5.1f} s  run {r['best_s']:5.2f} s "
                  f"(all {', '.join(f'{t:.2f}' for t in r['run_s'])})  {r['steps_per_s'] / 1e3:5.0f} k steps/s  "
                  f"return {', '.join(f'{x:.0f}' for x in r['final_return'])}", flush=True)
        elif job.startswith("bound:"):
            print("update alone: " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()), flush=True)
        else:
            print(f"micro, threefry {job.split(':')[1]}: " + ", ".join(f"{k} {v:.2f} us" for k, v in r.items()),
                  flush=True)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{len(os.sched_getaffinity(0))} usable by this process",
              "jax": version("jax"), "command": " ".join(sys.argv),
              "rounds": args.rounds, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
