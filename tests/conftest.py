# The suite runs under the XLA:CPU setting run.py makes (set before JAX starts
# its backend). Tests that go through run.py also get its dot-free rollout
# policy; tests/test_xla_cpu.py checks that rollout loop compiles into one
# kernel, and the subprocess tests that set XLA_FLAGS themselves run without it.
from src.xla_cpu import compile_small_loops

compile_small_loops()
