"""Peak memory of a PPO run against its length: it must not grow with the
number of steps (metrics are reduced per iteration inside jit; nothing is kept
per environment step).

    python benchmarks/memory.py [--steps 1e6 1e7 1e8]

Each length runs `run.py train` in its own process (CartPole-v1, 1 seed,
256 envs x 32 steps, one epoch of one minibatch, so that 1e8 steps take
minutes, not hours: this measures memory, not learning) and reads the
child's peak resident memory from the kernel (wait4's ru_maxrss).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb(cmd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    args = parser.parse_args()
    rows = []
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "run.py", "train", "--seeds", "1", "--total-steps", str(int(steps)),
                   "--set", "num_envs=256", "--set", "num_steps=32", "--set", "num_epochs=1",
                   "--set", "num_minibatches=1", "--no-progress", "--out", os.path.join(out, "run")]
            peak, wall = peak_rss_mb(cmd)
            with open(os.path.join(out, "run", "summary.json")) as f:
                summary = json.load(f)
        rows.append({"total_steps": int(steps), "peak_rss_mb": round(peak, 1), "process_s": round(wall, 1),
                     "run_s": round(summary["run_s"], 1), "final_return": summary["final_return_mean"]})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| env steps | peak RSS (MB) | process (s) | final return |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['total_steps']:.0e} | {r['peak_rss_mb']} | {r['process_s']} | {r['final_return']} |")
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"\npeak memory ratio, longest / shortest run: {growth:.2f}")


if __name__ == "__main__":
    main()
