"""The XLA:CPU optimisation level the test suite compiles at (set by
tests/conftest.py before JAX starts; run.py and the benchmarks keep XLA's
default). Level 0 halves the compile time that dominates the suite on CPU;
runtime-bound tests may drop it for a subprocess. No JAX import here:
conftest uses this before JAX's backend starts."""
FLAG = "--xla_backend_optimization_level=0"


def with_suite_level(flags: str) -> str:
    """XLA_FLAGS with the suite's level added, unless a level is already set."""
    if "xla_backend_optimization_level" in flags:
        return flags
    return f"{flags} {FLAG}".strip()


def without_suite_level(flags: str) -> str:
    """XLA_FLAGS with the suite's level taken out (XLA's default applies)."""
    return " ".join(f for f in flags.split() if f != FLAG)
