"""Our SAC side by side with rejax's SAC on Pendulum-v1, same config and seeds.

    python benchmarks/sac_vs_rejax.py [--seeds 4] [--total-steps 20000] [--curve-every 2000] [--repeats 3]

The config is configs/sac_pendulum.yaml (1 env, one gradient step per env step,
buffer 1e4, batch 256, 1000 random steps first, lr 1e-3, tau 0.02, relu 64x64,
normalised observations), mapped onto rejax's names in
benchmarks/peers/rejax_sac.py, which runs in benchmarks/peers/.venv-rejax
(rejax 0.1.3 with gymnax 0.0.9; build it with benchmarks/peers/setup.sh rejax).

Two measurements, each for both libraries:
  timing   one whole process per library (interpreter start to exit), seeds
           vmapped, no evaluation inside training, --repeats times in turn;
           each side's median run is reported. Ours runs `run.py train` twice
           per round: as a user runs it (the seeds sharded over every core,
           run.py's default) and on one device (XLA_FLAGS device count 1, as
           rejax, which has no sharding), so the two ratios separate the
           libraries from the sharding.
  curve    every --curve-every env steps each seed's policy is evaluated with a
           sampled policy over 20 episodes (rejax's protocol), giving learning
           curves and the final return on the same footing.

Writes benchmarks/results/sac_vs_rejax.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REJAX_PY = ROOT / "benchmarks" / "peers" / ".venv-rejax" / "bin" / "python"
PRESET = ROOT / "configs" / "sac_pendulum.yaml"
RESULTS = ROOT / "benchmarks" / "results"
EVAL_EPISODES = 20


def log(msg):
    print(f"[sac_vs_rejax] {msg}", file=sys.stderr, flush=True)


def one_device_env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONPATH"] = ""
    return env


def default_env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)   # run.py then exposes every core as a device
    env["PYTHONPATH"] = ""
    return env


def last_json(stdout):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in output:\n" + stdout[-2000:])


def timed(cmd, env):
    log("$ " + " ".join(map(str, cmd)))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[1]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def time_ours(seeds, total_steps, env):
    out = Path(tempfile.mkdtemp(prefix="sac_vs_rejax_"))
    try:
        stdout, wall = timed([sys.executable, "run.py", "train", "--config", str(PRESET), "--seeds", str(seeds),
                              "--total-steps", str(total_steps), "--no-progress", "--out", str(out)], env)
        summary = json.loads((out / "summary.json").read_text())
        devices = next((line.split(" device(s)")[0].rsplit(" ", 1)[-1] for line in stdout.splitlines()
                        if " device(s)" in line), "?")
        return {"process_s": wall, "compile_s": summary["compile_s"], "train_s": summary["run_s"],
                "env_steps_per_s": seeds * total_steps / summary["run_s"], "devices": devices,
                "final_return_mean": summary["final_return_mean"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def time_rejax(seeds, total_steps):
    stdout, wall = timed([REJAX_PY, "benchmarks/peers/rejax_sac.py", "--seeds", str(seeds),
                          "--total-steps", str(total_steps), "--eval-episodes", str(EVAL_EPISODES)],
                         one_device_env())
    result = last_json(stdout)
    result["process_s"] = wall
    return result


def median_run(runs):
    """The run with the median process time, carrying every run's process time."""
    ordered = sorted(runs, key=lambda r: r["process_s"])
    return {**ordered[len(ordered) // 2], "process_s_all": [round(r["process_s"], 1) for r in runs]}


def curve_rejax(seeds, total_steps, every):
    stdout, _ = timed([REJAX_PY, "benchmarks/peers/rejax_sac.py", "--seeds", str(seeds), "--total-steps",
                       str(total_steps), "--curve-every", str(every), "--eval-episodes", str(EVAL_EPISODES)],
                      one_device_env())
    result = last_json(stdout)
    return {"steps": result["curve_steps"], "mean": result["curve_mean"], "std": result["curve_std"],
            "final_per_seed": result["final_return_per_seed"]}


def curve_ours(seeds, total_steps, every):
    """Chunks of `every` env steps through agent.run, a sampled evaluation between."""
    import jax
    import numpy as np
    from agents import sac
    from src.config import from_dict, load_yaml

    config = from_dict(sac.SACConfig, {**load_yaml(PRESET), "total_steps": total_steps, "seeds": seeds,
                                        "eval_episodes": EVAL_EPISODES})
    agent = sac.make(config)
    hparams = sac.hparams_from(config)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), seeds)
    chunk = every // config.batch_size
    init = jax.jit(jax.vmap(agent.init, in_axes=(0, None)))
    run = jax.jit(jax.vmap(lambda ts: agent.run(ts, hparams, num_iterations=chunk)))
    evaluate = jax.jit(jax.vmap(lambda ts, key: agent.evaluate(ts, key, EVAL_EPISODES, deterministic=False)[0].mean()))
    ts = init(keys, hparams)
    steps, means, stds, per_seed = [], [], [], None
    for i in range(total_steps // every):
        ts, _ = run(ts)
        per_seed = np.asarray(evaluate(ts, jax.random.split(jax.random.PRNGKey(10_000 + i), seeds)))
        steps.append(every * (i + 1))
        means.append(float(per_seed.mean()))
        stds.append(float(per_seed.std()))
        log(f"ours {steps[-1]} steps: {means[-1]:.1f} +- {stds[-1]:.1f}")
    return {"steps": steps, "mean": means, "std": stds, "final_per_seed": per_seed.tolist()}


def plot(curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        m, s = np.array(c["mean"]), np.array(c["std"])
        ax.plot(c["steps"], m, label=name)
        ax.fill_between(c["steps"], m - s, m + s, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"return (sampled policy, {EVAL_EPISODES} episodes)")
    ax.set_title("SAC on Pendulum-v1, mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--total-steps", type=int, default=20_000)
    ap.add_argument("--curve-every", type=int, default=2_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed processes per side, in turn (median reported)")
    args = ap.parse_args()
    if args.repeats < 1:
        sys.exit(f"--repeats must be at least 1, got {args.repeats}")
    if not REJAX_PY.exists():
        sys.exit(f"{REJAX_PY} missing: run `bash benchmarks/peers/setup.sh rejax` first")
    if args.total_steps % args.curve_every:
        sys.exit("--total-steps must be a multiple of --curve-every")

    sides = {"ours": lambda: time_ours(args.seeds, args.total_steps, default_env()),
             "ours_1_device": lambda: time_ours(args.seeds, args.total_steps, one_device_env()),
             "rejax": lambda: time_rejax(args.seeds, args.total_steps)}
    runs = {name: [] for name in sides}
    for r in range(args.repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            runs[name].append(sides[name]())
            log(f"{name} round {r + 1}/{args.repeats}: {runs[name][-1]['process_s']:.1f} s")
    timing = {name: median_run(rs) for name, rs in runs.items()}
    curves = {"ours": curve_ours(args.seeds, args.total_steps, args.curve_every),
              "rejax": curve_rejax(args.seeds, args.total_steps, args.curve_every)}

    import numpy as np
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seeds": args.seeds,
              "total_steps": args.total_steps, "timing": timing, "curves": curves,
              "mismatches": timing["rejax"].get("mismatches", [])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sac_vs_rejax.json").write_text(json.dumps(result, indent=1))
    plot(curves, RESULTS / "sac_vs_rejax.png")

    ours, one, rej = timing["ours"], timing["ours_1_device"], timing["rejax"]
    rows = [f"| | ours ({ours['devices']} devices, run.py's default) | ours (1 device) | rejax "
            "| rejax / ours | rejax / ours (1 device) |", "|---|---|---|---|---|---|"]
    for key, label in (("process_s", f"whole process (s), median of {args.repeats}"), ("compile_s", "compile (s)"),
                       ("train_s", "train (s)")):
        rows.append(f"| {label} | {ours[key]:.1f} | {one[key]:.1f} | {rej[key]:.1f} | {rej[key] / ours[key]:.2f} "
                    f"| {rej[key] / one[key]:.2f} |")
    rows.append("| whole process, every run (s) | " + " | ".join(
        " ".join(f"{x:.1f}" for x in t["process_s_all"]) for t in (ours, one, rej)) + " | | |")
    rows.append(f"| env steps/s (train) | {ours['env_steps_per_s']:.0f} | {one['env_steps_per_s']:.0f} | "
                f"{rej['env_steps_per_s']:.0f} | {ours['env_steps_per_s'] / rej['env_steps_per_s']:.2f} (ours/rejax) "
                f"| {one['env_steps_per_s'] / rej['env_steps_per_s']:.2f} (ours/rejax) |")
    rows.append(f"| final return of the timed run (ours: run.py's summary) | {ours['final_return_mean']:.1f} "
                f"| {one['final_return_mean']:.1f} | | | |")
    for name in ("ours", "rejax"):
        f = np.array(curves[name]["final_per_seed"])
        rows.append(f"| final return {name} (curve protocol) | {f.mean():.1f} ± {f.std():.1f} | | | "
                    f"per seed {np.round(f, 1).tolist()} | |")
    auc = {n: float(np.mean(c["mean"])) for n, c in curves.items()}
    rows.append(f"| mean of the curve (AUC / steps) | {auc['ours']:.1f} | | {auc['rejax']:.1f} | | |")
    table = "\n".join(rows)
    (RESULTS / "sac_vs_rejax.md").write_text(
        f"# SAC vs rejax SAC, Pendulum-v1 ({args.seeds} seeds, {args.total_steps} steps)\n\n"
        f"{result['date']}, {result['machine']}. Command: `python benchmarks/sac_vs_rejax.py "
        f"--seeds {args.seeds} --total-steps {args.total_steps} --curve-every {args.curve_every} "
        f"--repeats {args.repeats}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
