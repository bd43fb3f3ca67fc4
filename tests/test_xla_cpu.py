"""The XLA:CPU small-loop setting: flag handling, and the PPO rollout loop
compiling into one kernel under it (a dot or a library call put back into
the loop body, or a policy form that reintroduces them, fails here)."""
import json
import os
import subprocess
import sys

import pytest

from src import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("before, after", [
    ("", "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1048576"),
    ("--xla_force_host_platform_device_count=2",
     "--xla_force_host_platform_device_count=2 --xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=1048576"),
    # one comma-separated list: a second copy of the flag would replace the first
    ("--xla_backend_extra_options=foo=1", "--xla_backend_extra_options=foo=1,xla_cpu_small_while_loop_byte_threshold=1048576"),
    # the user's own limit stays
    ("--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=5",
     "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=5"),
])
def test_compile_small_loops_composes_with_other_flags(monkeypatch, before, after):
    monkeypatch.setenv("XLA_FLAGS", before)
    xla_cpu.compile_small_loops()
    assert os.environ["XLA_FLAGS"] == after
    assert xla_cpu.small_loop_bytes() == int(after.rpartition("=")[2])


def test_small_loop_bytes_is_zero_when_unset(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_cpu.small_loop_bytes() == 0


CHILD = """
import json, sys
from src.xla_cpu import compile_small_loops
if sys.argv[1] == "on":
    compile_small_loops()
import jax
import agents.ppo as ppo
config = ppo.PPOConfig(env="CartPole-v1", num_envs=4, num_steps=16, total_steps=4 * 16 * 2)
agent = ppo.make(config, runs_per_device=int(sys.argv[2]))
hp = ppo.hparams_from(config)
text = jax.jit(agent.train).lower(jax.random.key(0), hp).compile().as_text()
# the rollout loop stacks (num_steps, num_envs, obs_dim) observations
kernels = [line for line in text.splitlines() if 'xla_cpu_small_call="true"' in line]
print(json.dumps({"rollout_is_one_kernel": any("f32[16,4,4]" in line for line in kernels)}))
"""


@pytest.mark.parametrize("setting, runs_per_device, expected", [
    ("on", 1, True), ("off", 1, False),
    # 8 x 4 envs x 64 x 64 is past the dot-free limit: the policy keeps its dots
    pytest.param("on", 8, False, marks=pytest.mark.slow),
])
def test_ppo_rollout_loop_compiles_into_one_kernel_with_the_setting(setting, runs_per_device, expected):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)     # compile here: the kernels are read from the compiled text
    out = subprocess.run([sys.executable, "-c", CHILD, setting, str(runs_per_device)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["rollout_is_one_kernel"] is expected
