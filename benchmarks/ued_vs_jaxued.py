"""Our UED step against jaxued 0.0.1's, side by side on one setting: trained
env steps per second (and env steps in all, scoring rollouts included).

    bash benchmarks/peers/setup.sh jaxued      # once: benchmarks/peers/.venv-jaxued
    python benchmarks/ued_vs_jaxued.py [--method accel|robust_plr] [--num-envs 32 --num-steps 256]
        [--chunk 10 --warmup-chunks 2 --timed-chunks 2] [--rounds 1] [--out benchmarks/results]

The setting, the same on both sides: 13x13 mazes with up to 25 walls (ours:
a uniform count in [0, 25]; jaxued's generator: 25 draws with replacement),
the forward-facing 5x5 view with turn/forward actions, 250-step episodes,
`--num-envs` x `--num-steps` per update, a Dense(64, tanh) -> LSTM(64) ->
linear heads network, 4 epochs of 2 minibatches over envs (backpropagation
through time), a `--capacity`-level buffer with replay probability 0.8, rank
prioritisation at temperature 0.3, staleness 0.3, MaxMC scores, ACCEL's 5
edits. One seed each (jaxued's example runs one seed per process).

What one update is differs by design, and the count is what matters:
ours trains once per iteration (robust PLR: score a fresh batch, train on a
replayed one and rescore it; ACCEL: train on a replayed batch, rescore it,
score its edits or fresh levels), jaxued's example trains only on its replay
updates (new-level and edit updates roll out and score without training).
So the comparison is trained env steps per second of wall time, after the
compile and a warm-up that fills the peer's buffer past its replay
threshold; `--rounds` > 1 alternates the order and keeps each side's best.
Ours runs under run.py's XLA:CPU setting (src/xla_cpu.py); the peer runs
with XLA's defaults and with that setting, and its faster run is the one
compared.
Ours runs twice: scoring replayed levels with a fresh rollout after the
update (our default), and from the rollout trained on
(`score_trained_rollout: true`, what jaxued's example does).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from src.xla_cpu import SMALL_LOOP_BYTES, compile_small_loops  # noqa: E402

compile_small_loops()   # ours as run.py runs it; the peer runs both with XLA's defaults and with this setting
SMALL_LOOPS = f"--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold={SMALL_LOOP_BYTES}"
PEER_PY = os.path.join(ROOT, "benchmarks", "peers", ".venv-jaxued", "bin", "python")
PEER = os.path.join(ROOT, "benchmarks", "peers", "jaxued_maze.py")


def ours(args, score_trained_rollout=False):
    import jax
    import numpy as np

    from commands import ued as cli
    from meta import env_design as ed
    from src import config as cfg

    values = cfg.load_yaml(os.path.join(ROOT, "configs", "ued_maze13_cpu.yaml"))
    values.update(method=args.method, seeds=1, num_envs=args.num_envs, num_steps=args.num_steps, num_epochs=4,
                  num_minibatches=2, hidden=[64], capacity=args.capacity, replay_prob=0.8, temperature=0.3,
                  staleness_coef=0.3, score="maxmc", lr=3e-4, gamma=0.995, gae_lambda=0.98, ent_coef=0.01,
                  ppo={"memory": "lstm", "memory_size": 64}, score_trained_rollout=score_trained_rollout,
                  space_kwargs={"height": 13, "width": 13, "max_walls": 25, "max_steps": 250, "num_edits": 5,
                                "view_mode": "forward"},
                  num_iterations=args.chunk * (args.warmup_chunks + args.timed_chunks), eval_every=args.chunk)
    config = cfg.from_dict(ed.UEDConfig, values).validate()
    ued = ed.make(config)
    _, keys, coin_keys = cli.run_keys(config, config.num_iterations)
    chunk = jax.jit(lambda s, coins: jax.lax.scan(
        lambda s, c: jax.vmap(ued.iteration, in_axes=(0, None))(s, c), s, coins)[0])
    t0 = time.perf_counter()
    state = jax.jit(jax.vmap(ued.init))(keys)
    state = jax.block_until_ready(chunk(state, coin_keys[:args.chunk]))
    compile_s = time.perf_counter() - t0
    done = args.chunk
    for _ in range(args.warmup_chunks - 1):
        state = jax.block_until_ready(chunk(state, coin_keys[done:done + args.chunk]))
        done += args.chunk
    t0 = time.perf_counter()
    for _ in range(args.timed_chunks):
        state = chunk(state, coin_keys[done:done + args.chunk])
        done += args.chunk
    state = jax.block_until_ready(state)
    wall = time.perf_counter() - t0
    updates = args.chunk * args.timed_chunks
    steps = config.env_steps_per_iteration(ued.space.max_steps)
    return {"side": "ours (scored from the trained rollout)" if score_trained_rollout else "ours",
            "method": args.method, "updates": updates, "trained_env_steps": updates * steps["trained"],
            "env_steps": updates * steps["total"], "wall_s": wall, "first_chunk_s_incl_compile": compile_s,
            "buffer_size": int(np.asarray(state.buffer.filled).sum()),
            "trained_steps_per_s": updates * steps["trained"] / wall, "env_steps_per_s": updates * steps["total"] / wall}


def peer(args, xla_flags=None):
    if not os.path.exists(PEER_PY):
        sys.exit(f"no jaxued venv at {PEER_PY}: run bash benchmarks/peers/setup.sh jaxued")
    updates = args.chunk * args.timed_chunks
    cmd = [PEER_PY, PEER, "--method", args.method, "--num-envs", str(args.num_envs), "--num-steps",
           str(args.num_steps), "--chunk", str(args.chunk), "--warmup-chunks", str(args.warmup_chunks),
           "--updates", str(updates), "--capacity", str(args.capacity)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        sys.exit(f"the jaxued peer failed:\n{proc.stderr[-3000:]}")
    return {"side": "jaxued", "xla_flags": xla_flags or "", **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=("accel", "robust_plr"), default="accel")
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=256)
    p.add_argument("--capacity", type=int, default=1000, help="level buffer size (jaxued replays once half full)")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--warmup-chunks", type=int, default=2)
    p.add_argument("--timed-chunks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = p.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = []
    ours_rescored = lambda a: ours(a, False)  # noqa: E731
    ours_trained = lambda a: ours(a, True)  # noqa: E731
    for r in range(args.rounds):   # alternate the order so that neither side always runs last
        peer_default = lambda a: peer(a)  # noqa: E731
        peer_small_loops = lambda a: peer(a, SMALL_LOOPS)  # noqa: E731
        sides = (ours_rescored, ours_trained, peer_default, peer_small_loops)
        sides = sides if r % 2 == 0 else sides[::-1]
        for side in sides:
            runs.append(side(args))
            print(json.dumps(runs[-1]), flush=True)
    names = ("ours", "ours (scored from the trained rollout)", "jaxued")
    best = {s: max((x for x in runs if x["side"] == s), key=lambda x: x["trained_steps_per_s"]) for s in names}
    ratios = {s: {"trained": best[s]["trained_steps_per_s"] / max(best["jaxued"]["trained_steps_per_s"], 1e-9),
                  "all": best[s]["env_steps_per_s"] / max(best["jaxued"]["env_steps_per_s"], 1e-9)}
              for s in names[:2]}
    result = {"command": "python benchmarks/ued_vs_jaxued.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": stamp, "machine": f"2-core CPU ({platform.machine()}), shared with other jobs",
              "setting": {"grid": "13x13", "max_walls": 25, "view": "forward 5x5", "max_steps": 250,
                          "num_envs": args.num_envs, "num_steps": args.num_steps, "network": "Dense64-LSTM64",
                          "capacity": args.capacity,
                          "method": args.method},
              "runs": runs, "ratios_to_jaxued": ratios}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"ued_vs_jaxued_{args.method}.json"), "w") as f:
        json.dump(result, f, indent=1)
    j = best["jaxued"]
    for s in names[:2]:
        o = best[s]
        print(f"| {args.method}, 13x13 forward view, {args.num_envs}x{args.num_steps}, LSTM 64 | "
              f"{s} {o['trained_steps_per_s']:,.0f} trained env steps/s ({o['env_steps_per_s']:,.0f} in all) | "
              f"jaxued {j['trained_steps_per_s']:,.0f} ({j['env_steps_per_s']:,.0f} in all) | "
              f"{ratios[s]['trained']:.2f}x trained ({ratios[s]['all']:.2f}x in all) |")
    return result


if __name__ == "__main__":
    main()
