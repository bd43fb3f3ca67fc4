# The suite runs under the XLA:CPU setting run.py uses (set before JAX starts
# its backend), so tests exercise the rollout program that users get; the
# plain setting is covered by the subprocess tests that set XLA_FLAGS themselves.
from src.xla_cpu import compile_small_loops

compile_small_loops()
