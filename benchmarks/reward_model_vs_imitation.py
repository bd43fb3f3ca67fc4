"""Preference-based RL on Pendulum-v1: ours (run.py meta reward-model) against
imitation 1.0.1's preference comparisons, side by side in one invocation.

The same work on both sides: 1000 pairs of 25-step segments, Bradley-Terry
labels at temperature 1 with 25% flipped, one (64, 64) reward model over
(s, a, s'), PPO on it without a KL penalty, gold return of the final policy.
Ours is configs/reward_model_pendulum_peer.yaml (its seeds vmapped in one
process: a 131k-step reference PPO, its pairs, the reward model, 131k PPO
steps on it); the peer is benchmarks/peers/imitation_prefs.py in
benchmarks/peers/.venv-imitation, one process per seed (its pairs come
online from its own agent; about 123k PPO steps). Each command runs alone,
one after the other, alternating sides when repeated, so both see the same
machine. The headline is CPU seconds per seed (user + system of the child
processes), less sensitive than wall time to other work on a shared box;
wall times are kept too.

    python benchmarks/reward_model_vs_imitation.py                # 3 seeds each, once
    python benchmarks/reward_model_vs_imitation.py --repeats 2    # alternate twice, medians
    python benchmarks/reward_model_vs_imitation.py --online       # ours online too: 100 pairs of the
        reference's, then 300 of the learner's after each of 3 PPO stretches (1000 in all, as imitation's
        100 before any RL and 900 over its rounds)
Setup: bash benchmarks/peers/setup.sh imitation
Writes benchmarks/results/reward_model_vs_imitation.json.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PY = ROOT / "benchmarks" / "peers" / ".venv-imitation" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "imitation_prefs.py"
PRESET = ROOT / "configs" / "reward_model_pendulum_peer.yaml"
PEER_ARGS = ["--pairs", "1000", "--segment-len", "25", "--label-noise", "0.25", "--temperature", "1",
             "--total-timesteps", "100000"]


def timed(cmd):
    """Run `cmd` to completion; (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


ONLINE = ["--set", "pairs=[100]", "--set", "online_every=8", "--set", "online_pairs=300",
          "--set", "online_rm_steps=500"]


def run_ours(seeds, online=False):
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = timed([sys.executable, str(ROOT / "run.py"), "meta", "reward-model", "--config", str(PRESET),
                           "--seeds", str(seeds), "--out", os.path.join(out, "run"), "--no-progress",
                           *(ONLINE if online else [])])
        with open(os.path.join(out, "run", "curves.csv")) as f:
            import csv
            rows = [r for r in csv.DictReader(f) if r["method"] == "rl"]
    last = max(int(r["iteration"]) for r in rows)
    gold = [float(r["gold"]) for r in rows if int(r["iteration"]) == last]
    return {"wall_s": wall, "cpu_s": cpu, "cpu_s_per_seed": cpu / seeds, "gold": gold}


def run_peer(seeds):
    walls, cpus, gold = [], [], []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as out:
            path = os.path.join(out, "peer.json")
            wall, cpu = timed([str(PEER_PY), str(PEER_SCRIPT), *PEER_ARGS, "--seed", str(seed), "--out", path])
            with open(path) as f:
                result = json.load(f)
        walls.append(wall)
        cpus.append(cpu)
        gold.append(float(result["gold_return"]["mean"] if isinstance(result["gold_return"], dict)
                          else result["gold_return"]))
    return {"wall_s": sum(walls), "cpu_s": sum(cpus), "cpu_s_per_seed": sum(cpus) / seeds, "gold": gold,
            "wall_s_per_seed": walls}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--online", action="store_true", help="ours with online pairs (see above)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/reward_model_vs_imitation[_online].json")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "results" /
                               f"reward_model_vs_imitation{'_online' if args.online else ''}.json")
    if not PEER_PY.exists():
        sys.exit(f"no peer venv at {PEER_PY}: run `bash benchmarks/peers/setup.sh imitation` first")
    runs = []
    for repeat in range(args.repeats):
        order = [("ours", lambda seeds: run_ours(seeds, args.online)), ("imitation", run_peer)]
        for name, fn in (order if repeat % 2 == 0 else order[::-1]):
            print(f"repeat {repeat + 1}: {name} ...", flush=True)
            result = fn(args.seeds)
            runs.append({"side": name, "repeat": repeat, **result})
            print(f"  {name}: {result['cpu_s_per_seed']:.1f} CPU-s per seed, {result['wall_s']:.0f} s wall, gold "
                  f"{statistics.mean(result['gold']):.1f}", flush=True)
    median = {side: statistics.median(r["cpu_s_per_seed"] for r in runs if r["side"] == side)
              for side in ("ours", "imitation")}
    summary = {"cpu_s_per_seed_median": median, "ratio_imitation_over_ours": median["imitation"] / median["ours"],
               "seeds": args.seeds, "repeats": args.repeats, "online": args.online, "runs": runs,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
               "date": time.strftime("%Y-%m-%d")}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"CPU-s per seed (median): ours {median['ours']:.1f}, imitation {median['imitation']:.1f}; imitation / "
          f"ours = {summary['ratio_imitation_over_ours']:.2f}x -> {args.out}")


if __name__ == "__main__":
    main()
