"""MAP-Elites throughput: ours (meta/qd.py) against QDax 0.5.0 on the same task.

Same hard-maze dynamics (QDax's side reimplements them, checked here against
ours on the same genomes), same 14-16-16-2 tanh MLP and flat genome, same
first batch (origin + noise), same emitter (uniform elites + Gaussian noise
of std 0.1, no crossover), same 20 x 20 grid over the final position, same
batch and number of generations, one seed. Each run is its own process; the
timed part excludes compilation (one warm-up generation) and includes a
host sync per generation (ours: the metrics it logs; QDax: block_until_ready).

    python benchmarks/qd_vs_qdax.py                        # both, side by side; prints the ratio
    python benchmarks/qd_vs_qdax.py --generations 60 --batch 256 --repeats 2
    python benchmarks/qd_vs_qdax.py --ours --devices 1     # one of ours, JSON line (used by the above)

Setup: bash benchmarks/peers/setup.sh qdax   (builds benchmarks/peers/.venv-qdax)
Writes benchmarks/results/qd_vs_qdax.json and .md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PY = ROOT / "benchmarks" / "peers" / ".venv-qdax" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "qdax_map_elites.py"


def config(args):
    from meta import qd
    return qd.QDConfig(env="hard-maze", methods=("map-elites",), seeds=1, seed=args.seed, generations=args.generations,
                       batch=args.batch, hidden=(16, 16), grid=(20, 20), sigma=0.1,
                       checkpoint_every=args.generations)


def run_ours(args):
    """The generation loop of meta/qd.py's run_method without its files: ask, the engine, tell, metrics to host."""
    import jax
    import numpy as np

    from meta import qd

    cfg = config(args)
    t0 = time.perf_counter()
    built = qd.build(cfg)
    programs, evaluate = built.programs["map-elites"], built.evaluate
    keys = qd.seed_keys(cfg)
    state = programs.init(keys, built.origins(keys))

    def generation(state, g):
        genomes, state = programs.ask(keys, g, state)
        state, metrics = programs.tell(state, genomes, evaluate(genomes, keys, g), g + 1)
        return state, jax.device_get(metrics)

    state, metrics = generation(state, 0)          # compiles
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for g in range(1, cfg.generations):
        state, metrics = generation(state, g)
    seconds = time.perf_counter() - t0
    timed = cfg.generations - 1
    fitness = np.asarray(state.grid.fitness[0])
    return {"peer": "ours", "jax": jax.__version__, "devices": int(evaluate.evaluator.mesh.devices.size),
            "generations": cfg.generations, "timed_generations": timed, "batch": cfg.batch,
            "compile_seconds": compile_seconds, "seconds": seconds,
            "evaluations_per_second": timed * cfg.batch / seconds, "coverage": float(np.isfinite(fitness).mean()),
            "best_fitness": float(fitness[np.isfinite(fitness)].max()),
            "reached": bool(metrics["reached"][0] > 0)}


def check_same_task(tmp):
    """Our episodes and the peer's reimplementation on the same 64 genomes
    (origins and mutants): the same returns and final positions."""
    import jax
    import numpy as np

    from meta import qd

    cfg = qd.QDConfig(env="hard-maze", methods=("map-elites",), seeds=1, batch=64, hidden=(16, 16))
    task = qd.make_task(cfg)
    keys = jax.random.split(jax.random.PRNGKey(3), 64)
    genomes = jax.vmap(task.init_network)(keys) * np.linspace(0.5, 4.0, 64, dtype=np.float32)[:, None]
    ours = jax.jit(jax.vmap(qd.make_episode(task, cfg)))(genomes, keys)
    np.savez(tmp / "genomes.npz", genomes=np.asarray(genomes))
    subprocess.run([str(PEER_PY), str(PEER_SCRIPT), "--check", str(tmp / "genomes.npz"), str(tmp / "peer.npz")],
                   check=True, env=peer_env())
    peer = np.load(tmp / "peer.npz")
    return {"genomes": 64,
            "max_abs_fitness_difference": float(np.abs(np.asarray(ours["fitness"]) - peer["fitness"]).max()),
            "max_abs_descriptor_difference": float(np.abs(np.asarray(ours["descriptor"]) - peer["descriptor"]).max()),
            "reached_agree": bool((np.asarray(ours["reached"]) > 0).tolist() == peer["reached"].tolist()),
            "distinct_final_cells": int(len({tuple(np.floor(d * 20).astype(int)) for d in peer["descriptor"]}))}


def profile(args, rounds=15):
    """Where a generation of ours goes, against the peer's episode code, in
    one process and interleaved (so a busy spell of a shared box hits every
    piece alike): our episodes alone (the env through its wrappers, jit(vmap)),
    the peer's reimplemented episodes alone (same genomes), and our loop's
    pieces: ask, the engine (host transfer, sharding, episodes, gather), tell,
    the metrics' fetch. Minimum and median milliseconds over `rounds`."""
    import importlib.util

    import jax
    import numpy as np

    from meta import qd

    spec = importlib.util.spec_from_file_location("qdax_peer", PEER_SCRIPT)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)       # the maze and policy only need jax (qdax is imported in its main)
    cfg = config(args)
    built = qd.build(cfg)
    programs, evaluate = built.programs["map-elites"], built.evaluate
    keys = qd.seed_keys(cfg)
    state = programs.init(keys, built.origins(keys))
    episode_keys = jax.random.split(jax.random.PRNGKey(0), cfg.batch)
    ours_episodes = jax.jit(jax.vmap(qd.make_episode(built.task, cfg)))
    peer_episodes = jax.jit(jax.vmap(peer.episode))
    times = {k: [] for k in ("ours: episodes only", "peer: episodes only", "ours: ask", "ours: engine", "ours: tell",
                             "ours: metrics to host", "ours: whole generation")}

    def timed(name, fn, *a):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*a))
        times[name].append(time.perf_counter() - t0)
        return out

    for g in range(rounds + 3):
        t0 = time.perf_counter()
        genomes, state = timed("ours: ask", programs.ask, keys, g, state)
        evals = timed("ours: engine", evaluate, genomes, keys, g)
        state, metrics = timed("ours: tell", programs.tell, state, genomes, evals, g + 1)
        timed("ours: metrics to host", jax.device_get, metrics)
        times["ours: whole generation"].append(time.perf_counter() - t0)
        timed("ours: episodes only", ours_episodes, genomes[0], episode_keys)
        timed("peer: episodes only", peer_episodes, genomes[0])
        if g == 2:                      # the first rounds compile
            times = {k: [] for k in times}
    return {"devices": int(evaluate.evaluator.mesh.devices.size), "batch": cfg.batch, "rounds": rounds,
            "milliseconds": {k: {"min": 1e3 * min(v), "median": 1e3 * float(np.median(v))} for k, v in times.items()}}


def peer_env(devices=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def last_json(text):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in:\n{text[-2000:]}")


def spawn(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    out = last_json(proc.stdout)
    out["process_seconds"] = time.perf_counter() - t0
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generations", type=int, default=60)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ours", action="store_true", help="run ours only (in this process) and print a JSON line")
    p.add_argument("--profile", action="store_true",
                   help="ours per piece against the peer's episodes, in one process, interleaved (JSON line)")
    p.add_argument("--devices", type=int, default=None, help="with --ours/--profile: CPU devices (default: every core)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qd_vs_qdax"))
    args = p.parse_args()

    if args.ours or args.profile:
        sys.path.insert(0, str(ROOT))
        from src.population import use_all_cpu_cores
        if args.devices:
            os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
        use_all_cpu_cores()
        print(json.dumps(run_ours(args) if args.ours else profile(args)))
        return 0

    if not PEER_PY.exists():
        sys.exit(f"no QDax venv at {PEER_PY}: run `bash benchmarks/peers/setup.sh qdax` first")
    sys.path.insert(0, str(ROOT))
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="qd_vs_qdax-"))
    same = check_same_task(tmp)
    print("same task:", same, flush=True)
    common = ["--generations", str(args.generations), "--batch", str(args.batch), "--seed", str(args.seed)]
    cases = {"ours (2 devices)": ([sys.executable, __file__, "--ours", "--devices", "2", *common], peer_env(2)),
             "ours (1 device)": ([sys.executable, __file__, "--ours", "--devices", "1", *common], peer_env(1)),
             "qdax (jit per generation)": ([str(PEER_PY), str(PEER_SCRIPT), *common], peer_env()),
             "qdax (lax.scan, 10 per call)": ([str(PEER_PY), str(PEER_SCRIPT), *common, "--scan", "10"], peer_env())}
    runs = {name: [] for name in cases}
    for r in range(args.repeats):          # interleaved, so a busy spell of a shared box hits every case
        for name, (cmd, env) in cases.items():
            out = spawn(cmd, env)
            runs[name].append(out)
            print(f"[{r}] {name}: {out['evaluations_per_second']:.0f} evaluations/s (compile {out['compile_seconds']:.1f} s, "
                  f"coverage {out['coverage']:.2f}, best {out['best_fitness']:.3f})", flush=True)
    profiles = {f"{d} device{'s' * (d > 1)}": spawn([sys.executable, __file__, "--profile", "--devices", str(d), *common],
                                                     peer_env(d)) for d in (1, 2)}
    for name, prof in profiles.items():
        print(f"profile, ours on {name}:", json.dumps(prof["milliseconds"]), flush=True)
    best = {name: max(o["evaluations_per_second"] for o in outs) for name, outs in runs.items()}
    median = {name: float(sorted(o["evaluations_per_second"] for o in outs)[len(outs) // 2]) for name, outs in runs.items()}
    qdax_best = max(v for k, v in best.items() if k.startswith("qdax"))
    ratios = {name: best[name] / qdax_best for name in best if name.startswith("ours")}
    load = os.getloadavg()
    result = {"task": "hard-maze, 14-16-16-2 MLP (546 weights), 200-step episodes, 20x20 grid, Gaussian sigma 0.1",
              "generations": args.generations, "batch": args.batch, "repeats": args.repeats,
              "cpu_cores": os.cpu_count(), "loadavg_at_end": load, "same_task_check": same,
              "best_evaluations_per_second": best, "median_evaluations_per_second": median,
              "ratio_to_best_qdax": ratios, "profiles": profiles, "runs": runs}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    lines = ["# MAP-Elites: ours against QDax 0.5.0 (hard maze)", "",
             f"{args.generations} generations x {args.batch} episodes of 200 steps, one seed; best of {args.repeats} "
             f"interleaved runs per case; {os.cpu_count()}-core CPU, load average at the end {load[0]:.1f}.", "",
             "| case | evaluations/s (best) | (median) | compile s | coverage | best return |", "|---|---|---|---|---|---|"]
    for name, outs in runs.items():
        o = max(outs, key=lambda o: o["evaluations_per_second"])
        lines.append(f"| {name} | {o['evaluations_per_second']:.0f} | {median[name]:.0f} | {o['compile_seconds']:.1f} | "
                     f"{o['coverage']:.3f} | {o['best_fitness']:.3f} |")
    lines += ["", "Ratio to the faster QDax case: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()), "",
              f"Same task: on {same['genomes']} genomes the two implementations' returns differ by at most "
              f"{same['max_abs_fitness_difference']:.2g} and final positions by {same['max_abs_descriptor_difference']:.2g}.", "",
              f"Profile (one process, interleaved, milliseconds per generation of {args.batch}: min / median):", "",
              "| piece | " + " | ".join(f"ours on {n}" for n in profiles) + " |", "|---|" + "---|" * len(profiles)]
    for piece in next(iter(profiles.values()))["milliseconds"]:
        lines.append(f"| {piece} | " + " | ".join(f"{p['milliseconds'][piece]['min']:.1f} / {p['milliseconds'][piece]['median']:.1f}"
                                                 for p in profiles.values()) + " |")
    lines.append("")
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
