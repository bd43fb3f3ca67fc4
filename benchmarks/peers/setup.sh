#!/usr/bin/env bash
# Create the isolated virtual environments used by benchmarks/ppo_vs_peers.py (rejax, sb3)
# and by benchmarks/peers/imitation_prefs.py (imitation):
#
#   benchmarks/peers/.venv-rejax  <- requirements-rejax.txt  (rejax 0.1.3, gymnax 0.0.9, jax 0.10.2)
#   benchmarks/peers/.venv-sb3    <- requirements-sb3.txt    (stable-baselines3 2.9.2, torch 2.13.0 CPU)
#   benchmarks/peers/.venv-imitation <- requirements-imitation.txt (imitation 1.0.1, stable-baselines3 2.2.1,
#                                    gymnasium 0.29.1, torch 2.13.0 CPU); built only when asked for by name
#   benchmarks/peers/.venv-qdax   <- requirements-qdax.txt   (qdax 0.5.0, brax 0.14.2, jax 0.10.2) for
#                                    benchmarks/qd_vs_qdax.py; built only when asked for by name
#   benchmarks/peers/.venv-jaxued <- requirements-jaxued.txt (jaxued 0.0.1, gymnax 1.0.1, jax 0.10.2) for
#                                    benchmarks/ued_vs_jaxued.py; built only when asked for by name
#   benchmarks/peers/.venv-evorl  <- requirements-evorl.txt  (evorl-jax 0.1.1, gymnax 1.0.1, jax 0.10.2) for
#                                    benchmarks/pbt_vs_evorl.py; built only when asked for by name
#
# Each requirements file pins the complete dependency closure and is installed
# with --no-deps, so what lands in the venv is exactly what the file says.
# Idempotent: a venv whose stamp matches the sha256 of its requirements file is
# left alone; otherwise it is rebuilt from scratch.
#
# Usage: bash benchmarks/peers/setup.sh [rejax] [sb3] [imitation] [qdax] [jaxued] [evorl]   (default: rejax and sb3)
# Env:   PYTHON=python3.11 to choose the base interpreter (default: python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

want=("$@")
if [ ${#want[@]} -eq 0 ]; then
    want=(rejax sb3)
fi

build_venv() {
    local name="$1"
    local venv="$HERE/.venv-$name"
    local req="$HERE/requirements-$name.txt"
    local stamp="$venv/.peers-stamp"
    local digest
    digest="$(sha256sum "$req" | cut -d' ' -f1)"

    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
        echo "[setup] $name: up to date ($venv)"
        return 0
    fi

    echo "[setup] $name: building $venv"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$req"
    "$venv/bin/python" -m pip check --disable-pip-version-check
    verify "$name"
    echo "$digest" > "$stamp"
}

verify() {
    local name="$1"
    local venv="$HERE/.venv-$name"
    case "$name" in
        rejax)
            "$venv/bin/python" - <<'EOF'
import jax, gymnax, rejax  # noqa: F401
from importlib.metadata import version
print("[setup] rejax venv:", {p: version(p) for p in ("rejax", "gymnax", "jax", "jaxlib", "flax", "optax", "distrax")})
EOF
            ;;
        sb3)
            "$venv/bin/python" - <<'EOF'
import sys
import torch, gymnasium, stable_baselines3
if torch.version.cuda is not None:
    sys.exit(f"[setup] sb3 venv got a CUDA torch build ({torch.__version__}); expected the CPU wheel")
print("[setup] sb3 venv:", {"stable_baselines3": stable_baselines3.__version__,
                            "torch": torch.__version__, "gymnasium": gymnasium.__version__})
EOF
            ;;
        imitation)
            "$venv/bin/python" - <<'EOF'
import sys
import torch, gymnasium, stable_baselines3, imitation
import imitation.algorithms.preference_comparisons  # noqa: F401
if torch.version.cuda is not None:
    sys.exit(f"[setup] imitation venv got a CUDA torch build ({torch.__version__}); expected the CPU wheel")
gymnasium.make("Pendulum-v1").reset(seed=0)
print("[setup] imitation venv:", {"imitation": imitation.__version__,
                                  "stable_baselines3": stable_baselines3.__version__,
                                  "torch": torch.__version__, "gymnasium": gymnasium.__version__})
EOF
            ;;
        qdax)
            "$venv/bin/python" - <<'EOF'
import jax, qdax
from qdax.core.map_elites import MAPElites  # noqa: F401
from qdax.core.emitters.standard_emitters import MixingEmitter  # noqa: F401
from importlib.metadata import version
print("[setup] qdax venv:", {p: version(p) for p in ("qdax", "jax", "jaxlib", "flax", "brax", "chex")})
EOF
            ;;
        jaxued)
            "$venv/bin/python" - <<'EOF'
import jax
jax.tree_map = jax.tree.map   # jaxued 0.0.1 calls the removed name; the peer script patches it the same way
from jaxued.environments import Maze  # noqa: F401
from jaxued.level_sampler import LevelSampler  # noqa: F401
from importlib.metadata import version
print("[setup] jaxued venv:", {p: version(p) for p in ("jaxued", "gymnax", "jax", "jaxlib", "flax", "chex")})
EOF
            ;;
        evorl)
            "$venv/bin/python" - <<'EOF'
import jax
from evorl.algorithms.meta.pbt_workflow import PBTWorkflowTemplate  # noqa: F401
from evorl.algorithms.meta.pbt_ppo.param_ppo import ParamPPOWorkflow  # noqa: F401
from importlib.metadata import version
print("[setup] evorl venv:", {p: version(p) for p in ("evorl-jax", "gymnax", "jax", "jaxlib", "flax", "optax")})
EOF
            ;;
    esac
}

for name in "${want[@]}"; do
    case "$name" in
        rejax|sb3|imitation|qdax|jaxued|evorl) build_venv "$name" ;;
        *) echo "[setup] unknown venv '$name' (expected rejax, sb3, imitation, qdax, jaxued or evorl)" >&2; exit 2 ;;
    esac
done
