# The suite runs under the XLA:CPU setting run.py makes (set before JAX starts
# its backend). Tests that go through run.py also get its dot-free rollout
# policy; tests/test_xla_cpu.py checks that rollout loop compiles into one
# kernel, and the subprocess tests that set XLA_FLAGS themselves run without it.
import atexit
import os
import shutil
import tempfile

from src.xla_cpu import compile_small_loops
from tests.xla_level import with_suite_level

compile_small_loops()

# Tests compile with LLVM's optimisation level 0 for XLA:CPU: compiling is
# most of the suite's time on 2 cores and this halves it (tests/test_prefopt.py:
# 57 -> 29 CPU-s), while what the tests check (values against references,
# traces, shapes, learning thresholds) does not depend on how well the kernels
# are optimised. run.py and the benchmarks keep XLA's default. The golden
# numbers are recorded per level (tests/helpers.py machine_fingerprint).
# Set XLA_FLAGS=--xla_backend_optimization_level=N yourself to test another.
os.environ["XLA_FLAGS"] = with_suite_level(os.environ.get("XLA_FLAGS", ""))

# One on-disk compilation cache for the whole run: the xdist workers and every
# subprocess a test starts (run.py's command-line tests) inherit it, so a
# program that one test compiles is loaded, not compiled again, by the next one
# that builds the same program (compiling is most of the suite's time on CPU).
# A fresh directory per run (set by the first process, inherited by the
# workers): nothing carries over between runs, as in CI's clean checkout. The
# in-memory jit caches, and the tests that count traces and compiles, are
# unaffected. Set JAX_COMPILATION_CACHE_DIR yourself to keep one across runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-tests-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# The modules that take longest on 2 cores (minutes, most of it compiling),
# handed out first: with one module per worker (--dist loadfile), a long module
# started last would leave the other worker idle at the end.
SLOWEST_FIRST = ("test_reward_model_loop", "test_env_design_cli", "test_ppo", "test_reward_alignment", "test_robust",
                 "test_envs", "test_sac", "test_run", "test_env_design", "test_prefopt", "test_recurrent", "test_qd", "test_pbt",
                 "test_spo", "test_orpo", "test_lpo",
                 "test_reward_alignment_cli", "test_own_env", "test_xla_cpu", "test_networks", "test_attacks",
                 "test_population", "test_experiment", "test_probes")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        module = item.path.stem
        return SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST)
    items.sort(key=rank)   # stable: the order within a module is kept
