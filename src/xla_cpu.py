"""XLA:CPU settings that must be in place before JAX starts its backend."""
import os

# XLA:CPU runs each op of a loop body as its own call, paying dispatch per op
# and per trip, unless the whole loop is small enough to become one compiled
# kernel. The default limit is small (most random-key loops qualify, a PPO
# rollout does not); 1 MB admits a rollout of up to 16 CartPole envs per
# device (with `networks.policy_without_dots`), and keeps out large batches,
# whose ops are worth XLA's multi-threaded kernels. benchmarks/RESULTS.md.
SMALL_LOOP_BYTES = 1 << 20
_FLAG = "xla_cpu_small_while_loop_byte_threshold"


def compile_small_loops(byte_threshold: int = SMALL_LOOP_BYTES):
    """Let XLA:CPU compile loops that touch under `byte_threshold` bytes into
    one kernel each. Leaves XLA_FLAGS alone when it already sets the limit."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if any(_FLAG in f for f in flags):
        return
    option = f"{_FLAG}={byte_threshold}"
    extra = [i for i, f in enumerate(flags) if f.startswith("--xla_backend_extra_options=")]
    if extra:   # one comma-separated list: a second copy of the flag would replace the first
        flags[extra[-1]] += f",{option}"
    else:
        flags.append(f"--xla_backend_extra_options={option}")
    os.environ["XLA_FLAGS"] = " ".join(flags)


def small_loop_bytes() -> int:
    """The limit XLA_FLAGS sets (0 when unset: XLA's small default applies).
    Read from the environment, so it describes this process only if XLA_FLAGS
    was not changed after JAX started its backend."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_backend_extra_options="):
            for option in flag.partition("=")[2].split(","):
                key, _, value = option.partition("=")
                if key == _FLAG and value.lstrip("-").isdigit():
                    return int(value)
    return 0
