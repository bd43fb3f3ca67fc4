"""Our PPO side by side with rejax's PPO and Stable-Baselines3's PPO on CartPole-v1.

    python benchmarks/ppo_vs_peers.py [--seeds 1 8] [--repeats 3] [--skip-sb3] [--config purejaxrl|rejax]

All three use the PureJaxRL/CleanRL CartPole config (or, with --config rejax,
the sizes and lr of rejax's own CartPole config: 5 envs x 100 steps, 5 epochs
x 5 minibatches, lr 7.5e-4): 4 envs x 128 steps,
4 epochs x 4 minibatches, lr 2.5e-4 linearly annealed, gamma 0.99, GAE lambda
0.95, clip 0.2, entropy 0.01, value 0.5, max grad norm 0.5, tanh 64x64 actor and
critic. Each run is a separate subprocess timed from the outside (whole process:
interpreter start, imports, compilation, training, evaluation, exit).
Ours and rejax run --repeats times in alternating order (ours first in even
rounds, rejax first in odd ones); the tables give each side's median run and
the ratios are ratios of medians, because one run on a shared machine moves by
a second or more.

  ours   run.py train ... --out DIR, then DIR/summary.json
  rejax  benchmarks/peers/rejax_ppo.py in benchmarks/peers/.venv-rejax
  sb3    benchmarks/peers/sb3_ppo.py in benchmarks/peers/.venv-sb3 (fewer steps:
         compare env steps/s, not return)

The peer venvs are built (or left alone when up to date) by
benchmarks/peers/setup.sh. Results go to benchmarks/results/ppo_vs_peers.{json,md}.
A failing run is reported in the table and the JSON; the exit status is then 1.
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
PEERS = ROOT / "benchmarks" / "peers"
VENV_PY = {
    "rejax": PEERS / ".venv-rejax" / "bin" / "python",
    "sb3": PEERS / ".venv-sb3" / "bin" / "python",
}
sys.path.insert(0, str(PEERS))
from peer_configs import CONFIGS, OURS  # noqa: E402

CONFIG = {   # --config replaces the sizes and lr (benchmarks/peers/peer_configs.py)
    "env": "CartPole-v1",
    "num_envs": 4,
    "num_steps": 128,
    "update_epochs": 4,
    "num_minibatches": 4,
    "lr": 2.5e-4,
    "anneal_lr": True,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_eps": 0.2,
    "ent_coef": 0.01,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "network": "separate actor/critic MLP 64x64 tanh",
}


def log(msg: str) -> None:
    print(f"[ppo_vs_peers] {msg}", file=sys.stderr, flush=True)


def tail(text: str, n: int = 2000) -> str:
    return text[-n:] if text else ""


def run_timed(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run cmd from the repo root; wall time is measured around the whole process."""
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"ok": False, "process_s": time.perf_counter() - t0,
                "error": f"timed out after {timeout:.0f}s",
                "stdout_tail": tail(out), "stderr_tail": tail(err)}
    except OSError as exc:
        return {"ok": False, "process_s": time.perf_counter() - t0,
                "error": f"could not start: {exc}", "stdout_tail": "", "stderr_tail": ""}
    wall = time.perf_counter() - t0
    res = {"ok": proc.returncode == 0, "process_s": wall, "returncode": proc.returncode,
           "stdout_tail": tail(proc.stdout), "stderr_tail": tail(proc.stderr)}
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        res["error"] = f"exit {proc.returncode}" + (f": {last[-1]}" if last else "")
    res["_stdout"] = proc.stdout
    return res


def last_json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


PEER_XLA_FLAGS: str | None = None   # --peer-xla-flags
CONFIG_NAME = "purejaxrl"           # --config


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    if PEER_XLA_FLAGS is not None:
        env["XLA_FLAGS"] = PEER_XLA_FLAGS
    return env


def ensure_venvs(names: list[str]) -> str | None:
    """Run setup.sh for the venvs we need (a no-op when they are up to date)."""
    if not names:
        return None
    missing = [n for n in names if not VENV_PY[n].exists()]
    if missing:
        log(f"building peer venvs {missing} (one-off, a few minutes)")
    cmd = ["bash", str(PEERS / "setup.sh"), *names]
    proc = subprocess.run(cmd, cwd=ROOT, env=peer_env(), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        log(line)
    if proc.returncode != 0:
        return f"setup.sh failed (exit {proc.returncode}): {tail(proc.stderr, 1500)}"
    return None


def run_ours(seeds: int, total_steps: int, timeout: float) -> dict:
    rec = {"peer": "ours", "seeds": seeds, "total_steps": total_steps}
    if not (ROOT / "run.py").exists():
        rec.update(ok=False, error="run.py not found")
        return rec
    out_dir = Path(tempfile.mkdtemp(prefix="ppo_vs_peers_ours_"))
    try:
        cmd = [sys.executable, "run.py", "train", "--algo", "ppo", "--env", "CartPole-v1",
               "--seeds", str(seeds), "--total-steps", str(total_steps), "--no-progress",
               "--out", str(out_dir)]
        for key, value in CONFIGS[CONFIG_NAME].items():
            cmd += ["--set", f"{OURS[key]}={value}"]
        res = run_timed(cmd, dict(os.environ), timeout)
        res.pop("_stdout", None)
        rec.update(res)
        summary_path = out_dir / "summary.json"
        if not res["ok"]:
            return rec
        if not summary_path.exists():
            rec.update(ok=False, error=f"run.py exited 0 but wrote no {summary_path.name}")
            return rec
        try:
            summary = json.loads(summary_path.read_text())
            rec["summary"] = summary
            rec["compile_s"] = float(summary["compile_s"])
            rec["train_s"] = float(summary["run_s"])
            rec["final_return_mean"] = float(summary["final_return_mean"])
            rec["final_return_std"] = float(summary["final_return_std"])
            env_steps = float(summary["env_steps"])
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            rec.update(ok=False, error=f"bad summary.json: {exc!r}")
            return rec
        # env_steps may be per seed or summed over seeds; count all seeds' steps.
        per_seed = env_steps if env_steps < 1.5 * total_steps else env_steps / seeds
        rec["total_steps"] = int(round(per_seed))
        rec["env_steps_per_s"] = per_seed * seeds / rec["train_s"] if rec["train_s"] > 0 else None
        rec["return_kind"] = summary.get("return_kind", "as reported in run.py's summary.json")
        return rec
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def run_peer(name: str, seeds: int, total_steps: int, timeout: float,
             setup_error: str | None) -> dict:
    rec = {"peer": name, "seeds": seeds, "total_steps": total_steps}
    if setup_error:
        rec.update(ok=False, error=setup_error)
        return rec
    script = PEERS / f"{name}_ppo.py"
    cmd = [str(VENV_PY[name]), str(script), "--seeds", str(seeds),
           "--total-steps", str(total_steps), "--config", CONFIG_NAME]
    res = run_timed(cmd, peer_env(), timeout)
    stdout = res.pop("_stdout", "")
    inner = last_json_line(stdout) if res["ok"] else None
    rec.update(res)
    if res["ok"] and inner is None:
        rec.update(ok=False, error="no JSON result line on stdout")
    if inner:
        rec["inner_process_s"] = inner.pop("process_s", None)
        inner.pop("peer", None)
        rec.update(inner)
    return rec


def accelerator() -> str:
    """The GPU's name when nvidia-smi is there, else 'cpu' (our runs use jax's default device)."""
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else "cpu"


def fmt(x, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def median_run(runs: list[dict]) -> dict:
    """The run with the median process time (the upper one of an even count),
    carrying every run's times; a failed run is reported as the result."""
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["process_s"])
    median = dict(ordered[len(ordered) // 2])
    for key in ("process_s", "compile_s", "train_s"):
        median[f"{key}_all"] = [r.get(key) for r in runs]
    median["repeats"] = len(runs)
    return median


def build_tables(runs: list[dict], seed_counts: list[int]) -> tuple[str, list[dict]]:
    lines = [
        "| impl | seeds | env steps / seed | process s | process s, every run | compile s | train s "
        "| env steps/s | final return | note |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in runs:
        if r.get("ok"):
            ret = f"{r['final_return_mean']:.1f} ± {r['final_return_std']:.1f}"
            note = ""
        else:
            ret = "—"
            note = "FAILED: " + str(r.get("error", "?")).replace("|", "/").replace("\n", " ")[:160]
        lines.append(
            f"| {r['peer']} | {r['seeds']} | {r.get('total_steps', 0):,} "
            f"| {fmt(r.get('process_s'))} | {' '.join(fmt(x) for x in r.get('process_s_all', []))} "
            f"| {fmt(r.get('compile_s'))} | {fmt(r.get('train_s'))} "
            f"| {fmt(r.get('env_steps_per_s'), ',.0f')} | {ret} | {note} |"
        )

    def get(peer, seeds=None):
        for r in runs:
            if r["peer"] == peer and r.get("ok") and (seeds is None or r["seeds"] == seeds):
                return r
        return None

    sb3 = get("sb3")
    ratios = []
    rlines = [
        "| seeds | rejax / ours process time | rejax / ours train time "
        "| ours / sb3 env steps/s | rejax / sb3 env steps/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in seed_counts:
        ours, rej = get("ours", n), get("rejax", n)
        row = {
            "seeds": n,
            "rejax_over_ours_process": ratio(rej and rej["process_s"], ours and ours["process_s"]),
            "rejax_over_ours_train": ratio(rej and rej.get("train_s"), ours and ours.get("train_s")),
            "ours_over_sb3_steps_per_s": ratio(ours and ours.get("env_steps_per_s"),
                                               sb3 and sb3.get("env_steps_per_s")),
            "rejax_over_sb3_steps_per_s": ratio(rej and rej.get("env_steps_per_s"),
                                                sb3 and sb3.get("env_steps_per_s")),
        }
        ratios.append(row)
        rlines.append(
            f"| {n} | {fmt(row['rejax_over_ours_process'], '.2f')} "
            f"| {fmt(row['rejax_over_ours_train'], '.2f')} "
            f"| {fmt(row['ours_over_sb3_steps_per_s'], '.1f')} "
            f"| {fmt(row['rejax_over_sb3_steps_per_s'], '.1f')} |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(rlines) + "\n", ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 8],
                    help="seed counts to benchmark ours and rejax at (default: 1 8)")
    ap.add_argument("--total-steps", type=int, default=500_000,
                    help="env steps per seed for ours and rejax")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per side and seed count, alternating; tables report the median (default 3)")
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument("--skip-rejax", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--sb3-steps", type=int, default=50_000, help="env steps per SB3 seed")
    ap.add_argument("--sb3-seeds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--rejax-python", type=Path, default=None,
                    help="interpreter that already has rejax and gymnax 0.0.9 (skips setup.sh; "
                         "used on the lent GPU machine, which cannot build a venv)")
    ap.add_argument("--peer-xla-flags", default=None,
                    help="XLA_FLAGS for the peers' processes, e.g. the small-loop setting run.py makes for ours: "
                         "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1048576")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="purejaxrl",
                    help="CartPole sizes and lr for all three (benchmarks/peers/peer_configs.py): PureJaxRL's "
                         "defaults, or rejax's own CartPole config, under which issue 2 quotes its reference speeds")
    args = ap.parse_args()
    global PEER_XLA_FLAGS, CONFIG_NAME
    PEER_XLA_FLAGS = args.peer_xla_flags
    CONFIG_NAME = args.config
    sizes = CONFIGS[args.config]
    CONFIG.update(num_envs=sizes["NUM_ENVS"], num_steps=sizes["NUM_STEPS"], update_epochs=sizes["NUM_EPOCHS"],
                  num_minibatches=sizes["NUM_MINIBATCHES"], lr=sizes["LR"], config_name=args.config)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.rejax_python is not None:
        VENV_PY["rejax"] = args.rejax_python

    needed = [n for n, skip in (("rejax", args.skip_rejax or args.rejax_python is not None),
                                ("sb3", args.skip_sb3)) if not skip]
    setup_error = ensure_venvs(needed)
    if setup_error:
        log(setup_error)

    runs: list[dict] = []
    for n in args.seeds:
        sides = {}
        if not args.skip_ours:
            sides["ours"] = lambda n=n: run_ours(n, args.total_steps, args.timeout)
        if not args.skip_rejax:
            sides["rejax"] = lambda n=n: run_peer("rejax", n, args.total_steps, args.timeout, setup_error)
        repeats = {name: [] for name in sides}
        for r in range(args.repeats):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                repeats[name].append(sides[name]())
                last = repeats[name][-1]
                log(f"{name} x{n} round {r + 1}/{args.repeats}: "
                    + (f"{last['process_s']:.1f} s" if last.get("ok") else str(last.get("error", "?"))))
        runs.extend(median_run(rs) for rs in repeats.values())
    if not args.skip_sb3:
        runs.append(run_peer("sb3", args.sb3_seeds, args.sb3_steps, args.timeout, setup_error))
        log(f"sb3 x{args.sb3_seeds}: " + ("ok" if runs[-1].get("ok") else runs[-1].get("error", "?")))

    table, ratios = build_tables(runs, args.seeds)
    mismatches = {r["peer"]: r["mismatches"] for r in runs if r.get("mismatches")}
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "accelerator": accelerator(),
        "peer_xla_flags": args.peer_xla_flags,
    }
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    md = [
        "# PPO vs peers on CartPole-v1",
        "",
        f"{when}; {machine['accelerator']}; {machine['cpu_count']} CPUs, {machine['platform']}, Python {machine['python']}.",
        "",
        "Config (all implementations): " + ", ".join(f"{k}={v}" for k, v in CONFIG.items()) + ".",
        "",
        table,
        f"- Each row is the median of {args.repeats} alternating runs (by process time); the ratios "
        "below are ratios of those medians.",
        "- *process s*: whole subprocess wall time measured by this script (start-up, imports, "
        "compile, train, evaluation). *train s*: the training call only (after compilation). "
        "*env steps/s* = seeds x env steps per seed / train s.",
        f"- SB3 gets {args.sb3_steps:,} steps per seed (it is far slower), so compare its "
        "throughput, not its return.",
        "- Final returns: " + "; ".join(
            sorted({f"{r['peer']}: {r['return_kind']}" for r in runs if r.get("return_kind")})) + ".",
    ]
    for peer, items in mismatches.items():
        md.append(f"- {peer} differences that its config cannot remove: " + "; ".join(items) + ".")
    md_text = "\n".join(md) + "\n"

    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": when,
        "config": CONFIG,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "runs": runs,
        "ratios": ratios,
        "table_md": table,
    }
    (args.out_dir / "ppo_vs_peers.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out_dir / "ppo_vs_peers.md").write_text(md_text)

    print(md_text)
    log(f"wrote {args.out_dir / 'ppo_vs_peers.md'} and .json")
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
