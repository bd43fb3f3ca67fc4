# The suite runs under the XLA:CPU setting run.py makes (set before JAX starts
# its backend). Tests that go through run.py also get its dot-free rollout
# policy; tests/test_xla_cpu.py checks that rollout loop compiles into one
# kernel, and the subprocess tests that set XLA_FLAGS themselves run without it.
from src.xla_cpu import compile_small_loops

compile_small_loops()

# The modules that take longest on 2 cores (minutes, most of it compiling),
# handed out first: with one module per worker (--dist loadfile), a long module
# started last would leave the other worker idle at the end.
SLOWEST_FIRST = ("test_env_design_cli", "test_ppo", "test_reward_model_loop", "test_env_design", "test_robust",
                 "test_reward_alignment", "test_envs", "test_sac", "test_run", "test_orpo", "test_lpo",
                 "test_reward_alignment_cli", "test_own_env", "test_xla_cpu", "test_networks", "test_attacks",
                 "test_population", "test_experiment", "test_probes")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        module = item.path.stem
        return SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST)
    items.sort(key=rank)   # stable: the order within a module is kept
