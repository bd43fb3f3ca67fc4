import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta import es as es_lib
from meta.es import ESConfig
from src.config import ConfigError
from tests.helpers import tree_equal

TARGET = {"a": jnp.array([0.5, -1.0, 1.5, 0.0], jnp.float32), "b": jnp.array([[-0.5, 1.0]], jnp.float32)}
TEMPLATE = jax.tree.map(jnp.zeros_like, TARGET)


def sphere_return(member):
    """A return to maximise: minus the squared distance to TARGET."""
    return -sum(jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(member), jax.tree.leaves(TARGET)))


def solve(config, generations):
    es = es_lib.make(config, TEMPLATE)

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        population, state = es.ask(ask_key, state)
        state, _ = es.tell(tell_key, population, jax.vmap(sphere_return)(population), state)
        return state, None

    state = es.init(jax.random.PRNGKey(0), TEMPLATE)
    state, _ = jax.jit(lambda s: jax.lax.scan(generation, s, jax.random.split(jax.random.PRNGKey(1), generations)))(
        state)
    return es, state


@pytest.mark.parametrize("config", [ESConfig("openes", 16, sigma=0.1, lr=0.05),
                                    ESConfig("snes", 16, sigma=0.5, lr=1.0, antithetic=False)],
                         ids=["openes", "snes"])
def test_strategy_solves_a_sphere_through_the_adapter(config):
    es, state = solve(config, 200)
    start = float(sphere_return(TEMPLATE))
    final = float(sphere_return(es.mean(state)))
    assert start < -4.0
    assert final > -1e-2, final
    assert es.mean(state)["b"].shape == (1, 2)   # the member's pytree shape comes back


@pytest.mark.parametrize("strategy", ["openes", "snes", "cma_es"])
def test_population_moves_toward_its_highest_return_member(strategy):
    config = ESConfig(strategy, 8, sigma=0.5, lr=0.1, antithetic=strategy == "openes")
    es = es_lib.make(config, TEMPLATE)
    state = es.init(jax.random.PRNGKey(0), TEMPLATE)
    population, state = es.ask(jax.random.PRNGKey(1), state)
    flat = jax.vmap(lambda m: jax.flatten_util.ravel_pytree(m)[0])(population)
    best = 3
    # return falls off with the distance to member `best`, so it has the highest return
    returns = -jnp.sum((flat - flat[best]) ** 2, axis=1)
    mean_before = jax.flatten_util.ravel_pytree(es.mean(state))[0]
    state, _ = es.tell(jax.random.PRNGKey(2), population, returns, state)
    mean_after = jax.flatten_util.ravel_pytree(es.mean(state))[0]
    assert jnp.linalg.norm(mean_after - flat[best]) < jnp.linalg.norm(mean_before - flat[best])


def concave(member):
    """A return to maximise, peaked at x = 3 (the mean starts at 0)."""
    return -(member["x"] - 3.0) ** 2


@pytest.mark.parametrize("strategy", ["openes", "snes", "cma_es"])
def test_one_step_on_a_concave_return_raises_the_mean_return(strategy):
    """ES maximises our returns (evosax minimises): a single ask/tell on a
    1-D concave return, where every member closer to the peak is better,
    must move the mean uphill. Fails if `tell` forgets to negate."""
    es = es_lib.make(ESConfig(strategy, 8, sigma=0.5, lr=0.1, antithetic=strategy == "openes"),
                     {"x": jnp.float32(0.0)})
    for seed in range(3):
        state = es.init(jax.random.PRNGKey(seed), {"x": jnp.float32(0.0)})
        population, state = es.ask(jax.random.PRNGKey(10 + seed), state)
        returns = jax.vmap(concave)(population)
        assert len(set(np.asarray(returns).tolist())) > 1
        state, _ = es.tell(jax.random.PRNGKey(20 + seed), population, returns, state)
        assert float(concave(es.mean(state))) > float(concave({"x": 0.0})), (strategy, seed, es.mean(state))


def test_evolve_raises_the_mean_return_on_a_concave_problem(tmp_path):
    """The same through the generation loop every meta-learner uses: the
    fitness it logs is the return (not its negation), and the mean climbs."""
    es = es_lib.make(ESConfig("openes", 8, sigma=0.5, lr=0.1), {"x": jnp.float32(0.0)})

    def evaluate(population, keys):
        return np.asarray(jax.vmap(concave)(population))[:, None] * np.ones(keys.shape[:2])

    state = es_lib.evolve(es, evaluate, {"x": jnp.float32(0.0)}, jax.random.PRNGKey(0), 3, str(tmp_path),
                          seeds=1, show_progress=False)
    assert 0.0 < float(es.mean(state)["x"]) < 3.0
    rows = fitness_rows(tmp_path)
    assert len(rows) == 3 and all(float(r["max"]) <= 0.0 for r in rows)     # returns of -(x-3)^2, as given
    assert float(rows[-1]["mean"]) > float(rows[0]["mean"])


def test_antithetic_pairs_are_mirrored_and_share_their_seeds():
    es = es_lib.make(ESConfig("openes", 6, sigma=0.1), TEMPLATE)
    mean = jax.tree.map(lambda t: t + 0.25, TEMPLATE)
    state = es.init(jax.random.PRNGKey(0), mean)
    population, _ = es.ask(jax.random.PRNGKey(1), state)
    for m, x in zip(jax.tree.leaves(mean), jax.tree.leaves(population)):
        np.testing.assert_allclose(x[:3] + x[3:], 2 * np.broadcast_to(m, x[:3].shape), atol=1e-6)
        assert not np.allclose(x[:3], x[3:])
    keys = es.member_keys(jax.random.PRNGKey(2), seeds=4)
    assert keys.shape == (6, 4, 2)
    np.testing.assert_array_equal(keys[:3], keys[3:])                 # partners share every seed
    assert len({tuple(k) for k in np.asarray(keys[:3]).reshape(-1, 2)}) == 12   # all else differ
    plain = es_lib.make(ESConfig("snes", 6, antithetic=False), TEMPLATE).member_keys(jax.random.PRNGKey(2), 4)
    assert len({tuple(k) for k in np.asarray(plain).reshape(-1, 2)}) == 24


def test_bad_configs_fail_clearly():
    with pytest.raises(ConfigError, match="even population"):
        es_lib.make(ESConfig("openes", 7), TEMPLATE)
    with pytest.raises(ConfigError, match="unknown ES strategy 'adam'.*openes, snes, cma_es"):
        es_lib.make(ESConfig("adam", 8), TEMPLATE)
    with pytest.raises(ConfigError, match="only available with openes"):
        es_lib.make(ESConfig("snes", 8, antithetic=True), TEMPLATE)


def noisy_evaluate(population, keys):
    """Return with noise drawn from each member's keys, so a resumed run that
    drew other keys would show."""
    noise = jax.vmap(jax.vmap(lambda k: jax.random.normal(k)))(keys)
    return np.asarray(jax.vmap(sphere_return)(population)[:, None] + 0.1 * noise)


def fitness_rows(out):
    with open(os.path.join(out, "fitness.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    es = es_lib.make(ESConfig("openes", 8, sigma=0.1, lr=0.05), TEMPLATE)
    key = jax.random.PRNGKey(42)
    common = dict(seeds=2, checkpoint_every=2, show_progress=False)
    whole = es_lib.evolve(es, noisy_evaluate, TEMPLATE, key, 4, str(tmp_path / "a"), **common)
    es_lib.evolve(es, noisy_evaluate, TEMPLATE, key, 4, str(tmp_path / "b"), stop_at=2, **common)
    assert len(fitness_rows(tmp_path / "b")) == 2
    resumed = es_lib.evolve(es, noisy_evaluate, TEMPLATE, key, 4, str(tmp_path / "b"), resume=True, **common)
    assert tree_equal(whole, resumed)
    assert fitness_rows(tmp_path / "a") == fitness_rows(tmp_path / "b")
    assert len(fitness_rows(tmp_path / "a")) == 4
    # a different key gives a different run (the test can fail)
    es_lib.evolve(es, noisy_evaluate, TEMPLATE, jax.random.PRNGKey(7), 4, str(tmp_path / "c"), stop_at=1, **common)
    assert fitness_rows(tmp_path / "c")[0] != fitness_rows(tmp_path / "a")[0]
    with pytest.raises(ConfigError, match="already reached generation 4"):
        es_lib.evolve(es, noisy_evaluate, TEMPLATE, key, 4, str(tmp_path / "b"), resume=True, **common)
    # a checkpoint of another population size and solution does not load
    other = es_lib.make(ESConfig("openes", 10, sigma=0.1), {"a": jnp.zeros(3)})
    with pytest.raises(ConfigError, match="does not match"):
        es_lib.evolve(other, noisy_evaluate, {"a": jnp.zeros(3)}, key, 8, str(tmp_path / "b"), resume=True,
                      **common)
