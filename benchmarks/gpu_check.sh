#!/usr/bin/env bash
# One-call check on a lent GPU (H100/H200). Run from the repo root on the device machine:
#
#   bash benchmarks/gpu_check.sh            (OUT=dir for results; default benchmarks/results/gpu)
#
# It expects the wheels the GPU image lacks in .whl/ (gymnax 1.0.1, brax 0.14.2, evosax 0.3.2,
# gymnasium, mujoco...) and rejax's closure in .whl/rejax/ (rejax 0.1.3 with gymnax 0.0.9, kept in
# a separate --target so the two gymnax versions never meet). The image's jax is 0.11.2 (CUDA),
# not our pinned 0.10.2: GPU figures are for that jax. Fetch the wheels here (x86-64, cp312) with
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform any
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64"
#   pip download $P -d .whl gymnax==1.0.1 brax==0.14.2 evosax==0.3.2 gymnasium==1.3.0 \
#       farama-notifications==0.0.4 dotmap jaxopt ml-collections trimesh tensorboardx==2.6.4 mujoco==4.0.0 \
#       mujoco-core==4.0.0 mujoco-studio==4.0.0 mujoco-mjx==3.17.0 pyopengl==3.1.10 glfw websockets
#   pip download $P -d .whl/rejax rejax==0.1.3 gymnax==0.0.9 distrax==0.1.9 \
#       tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 gast==0.7.0 decorator==5.3.1
# (about 43 MB; keep .whl/ out of git via .git/info/exclude).
#
# Steps, each under its own `timeout -k` (TERM alone did not stop a compiling jax process in time,
# 2026-11-27) so one runaway cannot eat the lease:
#   A  versions, devices, a 1e4-step PPO smoke run
#   B  PPO vs rejax on CartPole (1 and 8 seeds, whole-process time; alone on the GPU), then
#      our PPO at 256 seeds for throughput
#   C  brax/inverted_pendulum PPO preset at 16 seeds, one vmapped program
#   D  robustness benchmark on the brax victim (configs/robust_brax_inverted_pendulum.yaml)
#   E  the non-slow PPO/SAC tests on the GPU (determinism, sweep == separate runs, one trace)
#   F  robustness benchmark on a brax locomotion victim (configs/robust_brax_halfcheetah.yaml: PPO
#      and SA-PPO on halfcheetah, then the attacks; victim by victim, so a timeout still leaves
#      vanilla's table). Halfcheetah replaced hopper (session 6): our hopper presets gave a weak
#      hopper on CPU, while a CPU halfcheetah victim loses most of its return to PGD at eps 0.2
#   G  robustness benchmark on brax/inverted_double_pendulum (vanilla and SA-PPO, with the learned
#      adversary; configs/robust_brax_inverted_double_pendulum.yaml)
#   H  one ES generation, population 32 x 4 seeds x an inner PPO run: vmapped against a Python loop
#      over members (issue 5's 4x target; benchmarks/population.py, alone on the GPU, after B)
# C, D, E, F and G run concurrently (learning results; their timings are not comparisons).
# STEPS picks among B-H (default all; A always runs): e.g. `STEPS="A F G" bash benchmarks/gpu_check.sh` when the
# rejax comparison and the IP grid are already measured.
# One device call may run 600 s. Worst cases: A 120 s plus installs, B 290 s, H 240 s, C-G 330 s
# together (they run concurrently), so no two of B, H and C-G are sure to fit one call: split,
# e.g. `STEPS="A B"`, `STEPS="A H"`, `STEPS="A F G"` on the same warm machine (issue 2, 5, 7).
# Everything lands in $OUT/gpu_check.tgz plus $OUT/log.txt; a table is printed last.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
STEPS="${STEPS:-A B C D E F G H}"
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$OUT"
R=/tmp/gpu_results
mkdir -p $R
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }

package() {
    # checkpoints and per-iteration CSVs of big sweeps would push the archive past the 16 MiB
    # that comes back from the device
    tar czf "$OUT/gpu_check.tgz" --exclude='*checkpoint*' --exclude='metrics.csv' -C /tmp gpu_results 2>/dev/null
}
trap package EXIT

# --- A ----------------------------------------------------------------------
stamp "A: install"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rejax_site .whl/rejax/*.whl
fi
printf '#!/bin/sh\nPYTHONPATH=/tmp/rejax_site:/tmp/site exec python3 "$@"\n' > /tmp/rejax_py && chmod +x /tmp/rejax_py
nvidia-smi -L
python3 - <<'EOF' 2>&1 | tee $R/versions.txt
import importlib.metadata as md, jax
print({p: md.version(p) for p in ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "gymnax", "brax", "evosax")})
print("devices:", jax.devices())
EOF
/tmp/rejax_py -c "import rejax, gymnax, jax; print('rejax', rejax.__version__ if hasattr(rejax,'__version__') else '?', 'gymnax', gymnax.__version__, jax.devices())" 2>&1 | tail -2
timeout -k 10 120 python3 run.py train --env CartPole-v1 --seeds 2 --total-steps 10000 --no-progress --out /tmp/smoke 2>&1 | tail -3
stamp "A done"

# --- B ----------------------------------------------------------------------
if want B; then
stamp "B: PPO vs rejax (1, 8 seeds)"
timeout -k 10 200 python3 benchmarks/ppo_vs_peers.py --seeds 1 8 --skip-sb3 --rejax-python /tmp/rejax_py \
    --timeout 90 --out-dir $R 2>&1 | tail -25
stamp "B: ours at 256 seeds"
timeout -k 10 90 python3 run.py train --env CartPole-v1 --seeds 256 --total-steps 500000 --no-progress --out $R/ppo_cartpole_256 2>&1 | tail -3
stamp "B done"
fi

# --- H ----------------------------------------------------------------------
if want H; then
stamp "H: population 32 x 4 seeds, vmapped vs loop"
timeout -k 10 240 python3 benchmarks/population.py --iterations 8 --rounds 3 --devices 1 --no-scaling \
    --out $R/population > $R/H.log 2>&1; echo "H exit $?" >> $R/H.log
grep -E "speedup|_s\"|exit" $R/H.log | tail -20
stamp "H done"
fi

# --- C, D, E, F concurrently ------------------------------------------------------
stamp "steps $STEPS: C brax IP grid; D brax IP robustness; E tests; F brax halfcheetah robustness; G brax IDP robustness"
want C && ( timeout -k 10 280 python3 run.py train --config configs/ppo_brax_inverted_pendulum.yaml --seeds 16 \
      --no-progress --out $R/brax_ip_grid \
      > $R/C.log 2>&1; echo "C exit $?" >> $R/C.log ) &
want D && ( timeout -k 10 300 python3 benchmarks/robustness.py --config configs/robust_brax_inverted_pendulum.yaml \
      --cert-episodes 50 --results $R > $R/D.log 2>&1; echo "D exit $?" >> $R/D.log ) &
want E && ( timeout -k 10 280 python3 -m pytest -q -x -p no:cacheprovider tests/test_ppo.py tests/test_sac.py -m "not slow" \
      > $R/E.log 2>&1; echo "E exit $?" >> $R/E.log ) &
want F && ( timeout -k 10 330 python3 benchmarks/robustness.py --config configs/robust_brax_halfcheetah.yaml \
      --results $R > $R/F.log 2>&1; echo "F exit $?" >> $R/F.log ) &
want G && ( timeout -k 10 330 python3 benchmarks/robustness.py --config configs/robust_brax_inverted_double_pendulum.yaml \
      --results $R > $R/G.log 2>&1; echo "G exit $?" >> $R/G.log ) &
wait
cp -r runs/robustness_brax_inverted_pendulum_* runs/robustness_brax_halfcheetah_* \
    runs/robustness_brax_inverted_double_pendulum_* $R/ 2>/dev/null
stamp "C-G done"

# --- table ----------------------------------------------------------------------
python3 - "$R" <<'EOF'
import csv, json, os, sys
R = sys.argv[1]
print("\n==== GPU check summary ====")
print(open(os.path.join(R, "versions.txt")).read().strip())
p = os.path.join(R, "ppo_vs_peers.json")
if os.path.exists(p):
    d = json.load(open(p))
    for r in d["runs"]:
        print(f"B {r['peer']:6s} x{r['seeds']}: ok={r.get('ok')} process_s={r.get('process_s')} "
              f"train_s={r.get('train_s')} return={r.get('final_return_mean')}")
    print("B ratios:", json.dumps(d.get("ratios")))
p = os.path.join(R, "ppo_cartpole_256", "summary.json")
if os.path.exists(p):
    s = json.load(open(p)); print("B ours x256:", {k: s.get(k) for k in ("final_return_mean", "compile_s", "run_s", "env_steps")})
p = os.path.join(R, "brax_ip_grid", "metrics.csv")
if os.path.exists(p):
    rows = list(csv.DictReader(open(p)))
    last = max(int(r["iteration"]) for r in rows)
    final = {}
    for r in rows:
        if int(r["iteration"]) == last:
            key = tuple((k, r[k]) for k in ("lr", "gamma") if k in r)
            final.setdefault(key, []).append(float(r["episode_return"]))
    for key, v in sorted(final.items()):
        print("C", dict(key), "final per seed:", [round(x) for x in v], "mean", round(sum(v) / len(v), 1))
p = os.path.join(R, "population.json")
if os.path.exists(p):
    d = json.load(open(p))
    print("H vmapped / loop speed-up (median of rounds):", d.get("vmap_speedup_over_loop"),
          "chunks of 4 members:", d.get("chunked_4_members_speedup_over_loop"))
for step in "CDEFGH":
    p = os.path.join(R, f"{step}.log")
    if os.path.exists(p):
        print(f"--- {step} tail ---"); print("".join(open(p).readlines()[-12:]).rstrip())
EOF
stamp "end"
