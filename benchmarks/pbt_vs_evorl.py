"""PBT of PPO on CartPole-v1: ours (run.py meta pbt) against evorl's PBT, side by side.

Same task and sizes: gymnax CartPole-v1, population 16, 12 rounds of 4 PPO
iterations of 4 envs x 128 steps (24,576 env steps per member), bottom quarter
replaced by the top quarter, exploring lr / ent_coef / clip_eps from the same
priors. Ours is configs/pbt_ppo_cartpole_anneal.yaml with --runs 1; the peer is
benchmarks/peers/evorl_pbt.py in benchmarks/peers/.venv-evorl. Each runs in its
own process, one after the other (never both at once on the shared cores).

Throughput is training env steps per second after the compiled program exists:
ours times the chunks after the first (its summary.json
seconds_this_session.train, 8 of 12 rounds with checkpoint_every 4), the peer
times rounds 2..12 (its first round carries the compile). The peer's timed
rounds include the per-member evaluation episodes evorl's PBT uses as fitness;
those env steps are not counted in the headline figure (see the mismatches the
peer lists); the peer also reports them and a rate that counts them.
Final score: each side's best member over 20 deterministic evaluation episodes.

    python benchmarks/pbt_vs_evorl.py              # both once; writes benchmarks/results/pbt_vs_evorl.json
    python benchmarks/pbt_vs_evorl.py --repeats 3  # alternate three times, medians (the box is shared)
Setup: bash benchmarks/peers/setup.sh evorl
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_PY = ROOT / "benchmarks" / "peers" / ".venv-evorl" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "evorl_pbt.py"
PRESET = ROOT / "configs" / "pbt_ppo_cartpole_anneal.yaml"


def run_ours(seed):
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(ROOT / "run.py"), "meta", "pbt", "--config", str(PRESET), "--runs", "1",
               "--set", f"seed={seed}", "--out", os.path.join(out, "run"), "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "run", "summary.json")) as f:
            summary = json.load(f)
    sec = summary["seconds_this_session"]
    rounds = summary["round"]
    with open(PRESET) as f:
        import yaml
        chunk = yaml.safe_load(f).get("checkpoint_every") or rounds
    steps = summary["env_steps_per_method"]
    timed_steps = steps * (rounds - chunk) / rounds
    pbt = summary["methods"]["pbt"]
    return {
        "env_steps_per_member": summary["env_steps_per_member"],
        "env_steps_total": steps,
        "seconds": {"compile_and_first_chunk": sec["compile_and_first_chunk"], "train_after_first_chunk": sec["train"],
                    "process_wall": wall},
        "env_steps_per_s_excl_compile": timed_steps / sec["train"],
        "best_eval_return": pbt["best_eval"]["per_run"][0],
        "population_eval_mean": pbt["population_eval"]["mean"],
        "best_by_fitness": pbt.get("best_by_fitness"),
        "devices": summary.get("devices"),
    }


def run_peer(seed):
    if not PEER_PY.exists():
        sys.exit(f"{PEER_PY} missing: run `bash benchmarks/peers/setup.sh evorl` first")
    t0 = time.perf_counter()
    proc = subprocess.run([str(PEER_PY), str(PEER_SCRIPT), "--seed", str(seed)], cwd=ROOT, check=True,
                          stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"]["process_wall"] = wall
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate ours/peer this many times (same seed) and report medians: the box is shared")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pbt_vs_evorl.json"))
    args = p.parse_args()

    ours_runs, peer_runs = [], []
    for _ in range(args.repeats):
        ours_runs.append(run_ours(args.seed))
        peer_runs.append(run_peer(args.seed))
    rate = "env_steps_per_s_excl_compile"
    ours_rates = [r[rate] for r in ours_runs]
    peer_rates = [r[rate] for r in peer_runs]
    ours, peer = ours_runs[-1], peer_runs[-1]
    ratio = statistics.median(ours_rates) / statistics.median(peer_rates)
    result = {
        "task": "PPO on gymnax CartPole-v1, PBT population 16, 24,576 env steps per member, ready 4 iterations",
        "command": "python benchmarks/pbt_vs_evorl.py" + (f" --repeats {args.repeats}" if args.repeats > 1 else ""),
        "machine": f"{platform.machine()} {os.cpu_count()} cores (shared)",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seed": args.seed,
        "repeats": args.repeats,
        "ours_env_steps_per_s_each": ours_rates,
        "evorl_env_steps_per_s_each": peer_rates,
        "evorl_env_steps_per_s_incl_fitness_eval_each": [r["env_steps_per_s_excl_compile_incl_fitness_eval"]
                                                         for r in peer_runs],
        "ours": ours,            # the last repeat in full
        "evorl": peer,
        "throughput_ratio_ours_over_evorl": ratio,   # of the medians
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"ours : median {statistics.median(ours_rates):,.0f} env steps/s (excl. compile; each "
          f"{', '.join(f'{x:,.0f}' for x in ours_rates)}), best member {ours['best_eval_return']:.1f}")
    print(f"evorl: median {statistics.median(peer_rates):,.0f} env steps/s (excl. compile; each "
          f"{', '.join(f'{x:,.0f}' for x in peer_rates)}), best member {peer['best_eval_return']:.1f}; "
          f"{peer['env_steps_per_s_excl_compile_incl_fitness_eval']:,.0f} env steps/s counting its "
          f"{peer['fitness_eval_env_steps_in_timed_rounds']:,.0f} fitness-evaluation steps (last repeat)")
    print(f"throughput ratio ours/evorl (medians): {ratio:.2f}x -> {args.out}")


if __name__ == "__main__":
    main()
