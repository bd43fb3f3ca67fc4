"""Record the golden outputs (tests/helpers.py `check_golden`) on this machine:

    GOLDEN_RECORD=1 python -m tests.record_goldens

Do it before a refactor that must not change any number, then run the tests
after it. The tests that run a command in this process are run twice: with
run.py's CPU settings (every core a device, imported before JAX starts) and
with JAX started first (one device, XLA's defaults), since which one a test
gets depends on the module that came first in its pytest worker.
"""
import os
import subprocess
import sys

TESTS = ["tests/test_run.py::test_resume_equals_uninterrupted_run",
         "tests/test_run.py::test_sac_train_command_keeps_its_numbers",
         "tests/test_lpo.py::test_cli_run_stops_resumes_and_ends_as_the_uninterrupted_run",
         "tests/test_env_design_cli.py::test_cli_plr_run_end_to_end_replays_when_the_coin_says",
         "tests/test_robust.py::test_robust_cli_writes_table_plot_and_json_and_certificates",
         "tests/test_reward_alignment_cli.py::test_barfi_run_from_the_gridworld_preset_leaves_a_consistent_run_directory"]

FIRST = {"run.py's settings": "import run", "one device": "import jax; jax.devices()"}


def main():
    if not os.environ.get("GOLDEN_RECORD"):
        sys.exit("set GOLDEN_RECORD=1 to record")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for label, first in FIRST.items():
        print(f"recording with {label}", flush=True)
        code = f"{first}; import pytest, sys; sys.exit(pytest.main(['-q', '-n', '0', *{TESTS!r}]))"
        # the suite's XLA setting (tests/conftest.py) in place before the
        # one-device mode starts JAX, which is before conftest runs
        from tests.xla_level import with_suite_level
        env = {**os.environ, "XLA_FLAGS": with_suite_level(os.environ.get("XLA_FLAGS", ""))}
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env=env)


if __name__ == "__main__":
    main()
