"""Neuroevolution and quality-diversity (meta/qd.py, envs/hard_maze.py, the
deep GA in meta/es.py, `run.py meta qd`)."""
import csv
import filecmp
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import hard_maze
from meta import es as es_lib
from meta import qd
from src.config import ConfigError

GOAL = np.array(hard_maze.GOAL)
# around the shelf's open end, over the divider, down into the goal's pocket
PATH = np.array([[0.15, 0.45], [0.85, 0.45], [0.85, 0.93], [0.15, 0.93], [0.15, 0.75]], np.float32)
GREEDY = np.repeat(GOAL[None].astype(np.float32), len(PATH), 0)     # straight at the goal


@pytest.fixture(scope="module")
def maze_rollouts():
    """A waypoint follower through the wrapped env (registry, wrappers), on
    the hand-written path and on the greedy one: positions, episode ends, returns."""
    env, params = envs.make("hard-maze")

    def rollout(waypoints):
        obs, state = env.reset(jax.random.PRNGKey(0), params)

        def body(carry, key):
            obs, state, i, done = carry
            pos = obs[:2]
            close = jnp.linalg.norm(waypoints[i] - pos) < 0.02
            i = jnp.minimum(i + close, len(waypoints) - 1)
            heading = waypoints[i] - pos
            action = heading / jnp.maximum(jnp.max(jnp.abs(heading)), 1e-6) * jnp.minimum(
                jnp.linalg.norm(heading) / params.max_speed, 1.0)
            obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
            out = (info["final_observation"][:2], terminated, truncated, info["goal_reached"],
                   info["episode_return"], done)
            return (obs, state, i, done | terminated | truncated), out

        keys = jax.random.split(jax.random.PRNGKey(1), params.max_steps_in_episode)
        return jax.lax.scan(body, (obs, state, 0, jnp.zeros((), bool)), keys)[1]

    out = jax.jit(jax.vmap(rollout))(jnp.stack([PATH, GREEDY]))
    return jax.tree.map(np.asarray, out), params


def first_end(out, member):
    pos, term, trunc, goal, ret, _ = out
    t = int(np.flatnonzero(term[member] | trunc[member])[0])
    return t, pos[member, t], bool(term[member, t]), bool(goal[member, t]), float(ret[member, t])


def test_hand_written_path_reaches_the_goal(maze_rollouts):
    out, params = maze_rollouts
    t, final, terminated, goal, ret = first_end(out, 0)
    assert terminated and goal
    assert np.linalg.norm(final - GOAL) < params.goal_radius
    start_distance = np.linalg.norm(np.array(hard_maze.START) - GOAL)
    # the return is the closeness gained: |start - goal| - |final - goal|
    assert ret == pytest.approx(start_distance - np.linalg.norm(final - GOAL), abs=1e-4)
    assert t < params.max_steps_in_episode - 1


def test_greedy_distance_following_ends_in_the_dead_end(maze_rollouts):
    out, params = maze_rollouts
    t, final, terminated, goal, ret = first_end(out, 1)
    assert not terminated and not goal and t == params.max_steps_in_episode - 1
    assert final[1] < 0.6 and abs(final[0] - 0.15) < 1e-3      # stuck under the shelf
    assert 0.45 < ret < 0.5


def test_a_wall_blocks_a_move():
    env = hard_maze.HardMaze()
    params = env.default_params
    cases = jnp.array([[0.15, 0.585, 0.0, 1.0],    # up into the shelf: refused
                       [0.15, 0.50, 0.0, 1.0],     # up, far below it: moves
                       [0.44, 0.70, 1.0, 0.0],     # right into the divider: refused
                       [0.80, 0.50, 0.0, 1.0]])    # up through the gap: moves
    move = jax.jit(jax.vmap(lambda c: env.move(c[:2], c[2:], params)))
    pos, vel = move(cases)
    np.testing.assert_allclose(pos[0], cases[0, :2])
    np.testing.assert_allclose(vel[0], 0.0)
    np.testing.assert_allclose(pos[1], cases[1, :2] + params.max_speed * cases[1, 2:], atol=1e-6)
    np.testing.assert_allclose(pos[2], cases[2, :2])
    np.testing.assert_allclose(pos[3], cases[3, :2] + params.max_speed * cases[3, 2:], atol=1e-6)
    # a long move that jumps the shelf is refused by the crossing test alone
    assert bool(hard_maze.crosses(jnp.array([0.3, 0.5]), jnp.array([0.3, 0.7]), params.walls)[4])
    assert not bool(hard_maze.crosses(jnp.array([0.9, 0.5]), jnp.array([0.9, 0.7]), params.walls).any())


# ----------------------------------------------------------------------------- archives

def python_grid_insert(spec, fitness0, genomes0, batch_genomes, batch_fitness, batch_descriptors):
    """One by one, in batch order: a candidate replaces the elite of its cell if strictly better."""
    fitness, genomes = fitness0.copy(), genomes0.copy()
    for g, f, d in zip(batch_genomes, batch_fitness, batch_descriptors):
        idx = []
        for x, lo, hi, n in zip(d, spec.low, spec.high, spec.shape):
            idx.append(min(max(int(math.floor((x - lo) / (hi - lo) * n)), 0), n - 1))
        cell = idx[0] * spec.shape[1] + idx[1]
        if not np.isnan(f) and f > fitness[cell]:
            fitness[cell], genomes[cell] = f, g
    return fitness, genomes


def test_grid_insert_matches_a_python_reference():
    spec = qd.GridSpec((3, 4), (0.0, -1.0), (1.0, 1.0))
    rng = np.random.default_rng(0)
    archive = qd.grid_init(spec, 2)
    insert = jax.jit(lambda a, g, f, d: qd.grid_insert(spec, a, g, f, d))
    reference = (np.full(12, -np.inf, np.float32), np.zeros((12, 2), np.float32))
    for round_ in range(3):
        n = 16
        descriptors = rng.uniform([-0.2, -1.2], [1.2, 1.2], (n, 2)).astype(np.float32)   # some out of bounds
        descriptors[3] = descriptors[5]                                                     # same cell ...
        fitness = rng.normal(size=n).astype(np.float32)
        fitness[3] = fitness[5] = 5.0 + round_                                              # ... tied: the first wins
        fitness[7] = np.nan
        genomes = rng.normal(size=(n, 2)).astype(np.float32)
        archive = insert(archive, genomes, fitness, descriptors)
        reference = python_grid_insert(spec, *reference, genomes, fitness, descriptors)
        np.testing.assert_array_equal(np.asarray(archive.fitness), reference[0])
        np.testing.assert_array_equal(np.asarray(archive.genomes), reference[1])
    stats = qd.grid_stats(archive, -10.0)
    filled = np.isfinite(reference[0])
    assert float(stats["coverage"]) == pytest.approx(filled.mean())
    assert float(stats["qd_score"]) == pytest.approx((reference[0][filled] + 10.0).sum(), rel=1e-5)


def test_knn_novelty_matches_brute_force():
    rng = np.random.default_rng(1)
    capacity, batch, k = 10, 6, 4
    novelty = jax.jit(lambda a, d: qd.novelty(a, d, k))
    add = jax.jit(lambda a, d, s: qd.novelty_add(a, d, s, 3))
    archive = qd.novelty_init(capacity, 2)
    stored = []
    for _ in range(5):      # the archive fills (3 per round), then wraps
        descriptors = rng.uniform(size=(batch, 2)).astype(np.float32)
        scores = np.asarray(novelty(archive, descriptors))
        for i in range(batch):
            others = np.concatenate([np.array(stored[-capacity:]).reshape(-1, 2), np.delete(descriptors, i, 0)])
            distance = np.sort(np.linalg.norm(others - descriptors[i], axis=1))[:k]
            assert scores[i] == pytest.approx(distance.mean(), rel=1e-5)
        archive = add(archive, descriptors, scores)
        stored += list(descriptors[np.argsort(-scores, kind="stable")[:3]])
    assert int(archive.count) == 15
    assert sorted(map(tuple, np.asarray(archive.descriptors))) == sorted(map(tuple, np.array(stored[-capacity:])))


def test_the_deep_ga_runs_through_evosax():
    config = es_lib.ESConfig("ga", pop=16, sigma=0.1, antithetic=False, truncation=0.25)
    ga = es_lib.make(config, jnp.zeros(4))

    @jax.jit
    def generation(state, key):
        population, state = ga.ask(key, state)
        fitness = -jnp.sum((population - 1.0) ** 2, axis=1)
        state, _ = ga.tell(key, population, fitness, state)
        return state, (population, fitness)

    state = ga.init(jax.random.PRNGKey(0), jnp.zeros(4))
    history = []
    for g in range(40):
        state, (population, fitness) = generation(state, jax.random.PRNGKey(g))
        history.append((np.asarray(population), np.asarray(fitness)))
    # the first generation is the mean (the elite slot) and its mutants
    np.testing.assert_array_equal(history[0][0][0], np.zeros(4))
    # elitism: member 0 of each generation is the previous generation's best, unmutated
    for (prev_pop, prev_fit), (pop, _) in zip(history, history[1:]):
        np.testing.assert_array_equal(pop[0], prev_pop[np.argmax(prev_fit)])
    best = [f.max() for _, f in history]
    assert all(b1 >= b0 for b0, b1 in zip(best, best[1:]))       # the elite never gets lost
    assert best[-1] > -0.05 > best[0]
    assert np.asarray(ga.mean(state)).shape == (4,)
    with pytest.raises(ConfigError, match="truncation"):
        es_lib.make(es_lib.ESConfig("ga", pop=8, antithetic=False, truncation=0.0), jnp.zeros(2))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("changes, message", [
    ({"methods": ("map-elites", "cma")}, "unknown method 'cma'; choose from map-elites, novelty, ga, es"),
    ({"methods": ()}, "choose from map-elites, novelty, ga, es"),
    ({"grid": (0, 10)}, "zero cells"),
    ({"grid": ()}, "zero cells"),
    ({"grid": (4,)}, "one entry per descriptor dimension"),
    ({"descriptor_low": (1.0, 0.0)}, "below descriptor_high"),
    ({"batch": 15}, "batch must be even"),
    ({"novelty_k": 300}, "novelty_k"),
    ({"truncation": 1.5}, "truncation"),
])
def test_bad_configs_stop_with_the_valid_choices(changes, message):
    import dataclasses
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        dataclasses.replace(qd.QDConfig(), **changes).validate()


def test_bad_command_lines_stop_before_the_run_directory(tmp_path):
    from commands import qd as command
    out = tmp_path / "run"
    for argv, message in ([["--method", "map-elites,nsga"], "choose from map-elites, novelty, ga, es"],
                          [["--set", "grid=[0,5]"], "zero cells"],
                          [["--env", "hard_maze"], "Did you mean 'hard-maze'"]):
        with pytest.raises(ConfigError, match=message):
            command.main([*argv, "--out", str(out), "--no-progress"])
        assert not out.exists()
    with pytest.raises(ConfigError, match="outside the 4 entries"):
        qd.make_task(qd.QDConfig(env="CartPole-v1", methods=("ga",), descriptor_dims=(0, 7)))


# ----------------------------------------------------------------------------- the command line

# Two of the four methods keep the default suite's compile time down: novelty
# search runs the deep GA through meta/es.py as well; OpenES's ask and tell
# through the same adapter are tests/test_es.py's.
METHODS = ("map-elites", "novelty")
TINY = ["--env", "hard-maze", "--method", ",".join(METHODS), "--seeds", "2", "--generations", "4",
        "--batch", "16", "--set", "checkpoint_every=2", "--set", "novelty_k=3", "--set", "hidden=[8]",
        "--set", "grid=[5,5]", "--set", "episode_steps=50", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same tiny run whole, and stopped at generation 2 then resumed (one process: `qd.build` keeps its programs)."""
    from commands import qd as command
    base = tmp_path_factory.mktemp("qd")
    traces_before = dict(qd.TRACES)
    whole, cut = str(base / "whole"), str(base / "cut")
    summary = command.main([*TINY, "--out", whole])
    command.main([*TINY, "--out", cut, "--stop-at", "2"])
    rows_at_stop = list(csv.DictReader(open(os.path.join(cut, "metrics.csv"))))
    command.main(["--out", cut, "--resume", "--no-progress"])
    traces = {k: v - traces_before.get(k, 0) for k, v in qd.TRACES.items()}
    from src import config as cfg
    built = qd.build(cfg.from_dict(qd.QDConfig, cfg.load_yaml(os.path.join(cut, "config.yaml"))))
    compiles = {(m, fn): getattr(built.programs[m], fn)._cache_size() for m in METHODS for fn in ("ask", "tell")}
    compiles["engine"] = built.evaluate.evaluator.program._cache_size()
    return whole, cut, summary, rows_at_stop, (traces, compiles)


def test_tiny_cli_run_writes_its_files_and_resumes_byte_identically(tiny_runs):
    whole, cut, summary, rows_at_stop, _ = tiny_runs
    for name in ("config.yaml", "metrics.csv", "summary.json", "archive.png", "coverage.png", "comparison.md",
                 "checkpoint.json"):
        assert os.path.exists(os.path.join(whole, name)), name
    assert {int(r["generation"]) for r in rows_at_stop} == {1, 2}
    assert filecmp.cmp(os.path.join(whole, "metrics.csv"), os.path.join(cut, "metrics.csv"), shallow=False)
    assert filecmp.cmp(os.path.join(whole, "comparison.md"), os.path.join(cut, "comparison.md"), shallow=False)
    rows = list(csv.DictReader(open(os.path.join(whole, "metrics.csv"))))
    assert len(rows) == len(METHODS) * 4 * 2 and set(rows[0]) == set(qd.COLUMNS)
    assert [r["method"] for r in rows[::8]] == list(METHODS)
    for r in rows:
        assert 0 < float(r["coverage"]) <= 1 and float(r["qd_score"]) > 0
    assert set(summary["methods"]) == set(METHODS)
    with pytest.raises(ConfigError, match="already reached generation 4"):
        from commands import qd as command
        command.main(["--out", cut, "--resume", "--no-progress"])


def test_every_generation_function_compiles_once(tiny_runs):
    """Three runs in one process (whole, stopped, resumed from a checkpoint):
    each method's ask and tell and the engine's episode were traced once, and
    compiled once (a restored state must not bring another compile)."""
    *_, (traces, compiles) = tiny_runs
    for method in METHODS:
        for fn in ("init", "ask", "tell"):
            assert traces.get((method, fn)) == 1, (method, fn, traces)
    assert traces.get(("engine", "episode")) == 1
    assert set(compiles.values()) == {1}, compiles


@pytest.mark.slow
def test_hard_maze_preset_novelty_and_map_elites_find_the_goal(tmp_path):
    """The done-when claim at the preset's budget (minutes on a 2-core CPU)."""
    from commands import qd as command
    summary = command.main(["--config", "configs/qd_hard_maze.yaml", "--out", str(tmp_path / "run"), "--no-progress"])
    reached = {name: m["reached"] for name, m in summary["methods"].items()}
    assert reached["map-elites"] >= 4 and reached["novelty"] >= 4, reached
    assert reached["ga"] <= 1 and reached["es"] <= 1, reached
