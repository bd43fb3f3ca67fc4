"""Small shared pieces for the tests."""
import jax
import jax.numpy as jnp


def tree_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y, equal_nan=True)), a, b)))


class TraceCounter:
    """Wraps a function and counts how often JAX traces it."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fn(*args, **kwargs)


def run_cli_steps(steps, tmp_path, timeout=600):
    """`run.py` calls (argv lists; ["copy", SRC, DST] copies a run directory)
    in turn, in one fresh process (tests/population_worker.py `cli`) that
    shares compiled programs through a JAX compilation cache, so a resumed run
    compiles nothing again yet carries over only what is on disk. Returns the
    finished process; fails the test if it did not exit 0."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run([sys.executable, "-m", "tests.population_worker", "cli", json.dumps(steps)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ----------------------------------------------------------------------------- golden outputs
# A command's numbers on a small config with a fixed seed, recorded before a
# refactor that must not change them (tests/golden/NAME.json). Bit for bit on
# the machine they were recorded on; XLA's CPU code differs between CPU models
# and JAX versions, so elsewhere the check is skipped rather than loosened
# (a loosened check would pass changed random streams).
# Record:  GOLDEN_RECORD=1 python benchmarks/record_goldens.py

GOLDEN_DIR = __import__("os").path.join(__import__("os").path.dirname(__file__), "golden")


def machine_fingerprint():
    import os
    import platform
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:   # all of them: XLA compiles for the host's features
                    flags = __import__("hashlib").sha256(" ".join(sorted(line.split(":", 1)[1].split())).encode()
                                                         ).hexdigest()[:16]
    except OSError:
        pass
    # the LLVM optimisation level changes XLA:CPU's numbers bit for bit (the suite runs at 0: tests/conftest.py)
    level = next((f.partition("=")[2] for f in os.environ.get("XLA_FLAGS", "").split()
                  if f.startswith("--xla_backend_optimization_level=")), "default")
    return {"jax": jax.__version__, "machine": platform.machine(), "cpu": model, "cpu_flags": flags,
            "cores": os.cpu_count(), "backend": jax.default_backend(), "xla_backend_optimization_level": level}


def csv_numbers(path, drop=()):
    """A CSV file's rows, numbers parsed, columns in `drop` left out."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def parse(v):
        try:
            return float(v)
        except ValueError:
            return v
    return [{k: parse(v) for k, v in row.items() if k not in drop} for row in rows]


def check_golden(name, data, where=None):
    """`data` (JSON-able: numbers, strings, lists, dicts) equals the recorded
    tests/golden/NAME.json exactly (NaN equals NaN). `where`: "subprocess"
    for numbers a fresh `run.py` process made (it shards over every core);
    by default the number of JAX devices this process has, which changes the
    compiled programs (run.py sets it when imported before JAX starts, so it
    depends on which test module came first). Each is recorded on its own;
    one not recorded here is skipped."""
    import json
    import math
    import os

    import pytest

    where = where or f"{len(jax.devices())} devices"
    path = os.path.join(GOLDEN_DIR, f"{name}.json")
    data = json.loads(json.dumps(data))     # the same normal form as the file's (tuples -> lists, float keys -> str)
    stored = None
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
    if os.environ.get("GOLDEN_RECORD"):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        recorded = stored["data"] if stored and stored["machine"] == machine_fingerprint() else {}
        with open(path, "w") as f:
            json.dump({"machine": machine_fingerprint(), "data": {**recorded, where: data}}, f, indent=0,
                      sort_keys=True)
        return
    if stored is None:
        raise AssertionError(f"no golden output {path}: record it with GOLDEN_RECORD=1")
    if stored["machine"] != machine_fingerprint():
        pytest.skip(f"golden {name} was recorded on {stored['machine']}, not this machine")
    if where not in stored["data"]:
        pytest.skip(f"golden {name} has no record for {where} (recorded: {', '.join(stored['data'])})")

    def same(a, b, where):
        if isinstance(a, dict):
            assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        elif isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), f"{where}: {b} != nan"
        else:
            assert a == b, f"{where}: {b!r} != recorded {a!r}"
    same(stored["data"][where], data, f"{name} ({where})")
