"""The population engine: population x seeds, vmapped, chunked, sharded.

Device counts are fixed when JAX starts, so the multi-device and
multi-process checks run in subprocesses (tests/population_worker.py)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src import population
from src.config import ConfigError
from tests.population_worker import PARAMS_SEED, free_port, mlp_fitness, problem
from tests.xla_level import with_suite_level

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluate_equals_a_python_loop_over_members_and_seeds():
    params, keys = problem(6, 3)
    got = population.evaluate(mlp_fitness, params, keys, batch_size=2)
    assert got.shape == (6, 3)
    one = jax.jit(mlp_fitness)
    for m in range(6):
        member = jax.tree.map(lambda x: x[m], params)
        for s in range(3):
            np.testing.assert_allclose(got[m, s], one(member, keys[m, s]), rtol=1e-5, atol=1e-6)
    # every member and seed gave its own number (the test can fail)
    assert len(np.unique(got)) == got.size


def sorting_fitness(params, key):
    # a sort keeps a [256, width] intermediate per member and seed alive
    x = jax.random.normal(key, (256, 8))
    return (jnp.sort(jnp.tanh(x @ params["w1"]), axis=0)[-1] @ params["w2"]).mean()


def test_chunk_size_does_not_change_results_and_bounds_memory():
    params, keys = problem(8, 2, width=256)
    whole = population.make_evaluator(sorting_fitness, 8, None)
    chunked = population.make_evaluator(sorting_fitness, 8, 1)
    np.testing.assert_allclose(population.gather(whole(params, keys)), population.gather(chunked(params, keys)),
                               rtol=1e-5, atol=1e-6)

    def temp_bytes(evaluator):
        placed = (jax.tree.map(evaluator.place, params), evaluator.place(np.asarray(keys)))
        return evaluator.program.lower(*placed).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(chunked) < temp_bytes(whole) / 4


def test_bad_population_input_fails_clearly():
    params, keys = problem(4, 1)
    with pytest.raises(ConfigError, match="batch_size must be in 1..4"):
        population.make_evaluator(mlp_fitness, 4, 5)
    with pytest.raises(ConfigError, match="expected 4 members"):
        population.make_evaluator(mlp_fitness, 4)(params, keys[:3])


def run_worker(*args, devices=1, env=None, timeout=600):
    env = {**os.environ, **(env or {}),
           "XLA_FLAGS": with_suite_level(f"--xla_force_host_platform_device_count={devices}"),
           "PYTHONPATH": ROOT}   # level 0 as in tests/conftest.py
    return subprocess.Popen([sys.executable, "-m", "tests.population_worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sharded_over_two_host_devices_equals_unsharded():
    result = finish(run_worker("sharded", devices=2))
    assert result["devices"] == 2 and result["axis_types"] == ["Auto"]
    assert result["shards"] == 2         # the output really lives on both devices
    assert result["mlp_equal"]           # bit-identical to the one-device run
    # and the numbers are the same as in this (one-device) process
    params, keys = problem(8, 2)
    np.testing.assert_array_equal(np.array(result["mlp"], np.float32),
                                  population.evaluate(mlp_fitness, params, keys, batch_size=2))


@pytest.mark.slow
def test_sharded_ppo_runs_with_a_learned_objective_equal_unsharded():
    result = finish(run_worker("sharded", "ppo", devices=2))
    assert result["ppo_equal"] and len(set(result["ppo"])) > 1


@pytest.mark.slow   # 21 s; sharding across devices stays covered by the two-device test above
def test_two_process_distributed_run_equals_single_process():
    port = str(free_port())
    procs = [run_worker("distributed", port, str(i)) for i in range(2)]
    results = [finish(p) for p in procs]
    params, keys = problem(8, 2)
    single = population.evaluate(mlp_fitness, params, keys, batch_size=2)
    for i, r in enumerate(results):
        assert r["process_index"] == i and r["process_count"] == 2 and r["devices"] == 2
        assert r["local_rows"] == 4                   # each process computed half the population
        np.testing.assert_array_equal(np.array(r["mlp"], np.float32), single)
    assert PARAMS_SEED == 0
