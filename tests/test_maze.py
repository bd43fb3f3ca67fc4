"""The maze environment and the level spaces of envs/levels.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import levels, maze
from src.config import ConfigError

H = W = 7


def level_from(rows):
    return maze.parse_level("\n".join(rows), len(rows), len(rows[0]))


ROOM = ["S.#....",
        "..#....",
        "..#.#..",
        "....#..",
        "###.#..",
        "....#.G",
        "......."]


@pytest.fixture(scope="module")
def random_levels():
    keys = jax.random.split(jax.random.key(0), 200)
    return jax.jit(jax.vmap(lambda k: maze.generate(k, H, W, 20)))(keys)


def test_generator_respects_the_wall_budget_and_is_valid(random_levels):
    walls = np.asarray(random_levels.walls).reshape(200, -1).sum(1)
    assert walls.max() <= 20 and walls.min() >= 0 and len(set(walls.tolist())) > 5
    assert bool(jax.vmap(maze.is_valid)(random_levels).all())


def test_flood_fill_matches_breadth_first_search(random_levels):
    fast = np.asarray(jax.jit(jax.vmap(maze.solvable))(random_levels))
    slow = np.array([maze.shortest_path(levels.index(random_levels, i)) >= 0 for i in range(200)])
    assert (fast == slow).all()
    assert 0 < slow.sum() < 200   # both outcomes occur, so the comparison means something


def test_mutation_keeps_levels_valid_and_edits_few_cells(random_levels):
    keys = jax.random.split(jax.random.key(1), 200)
    children = jax.jit(jax.vmap(lambda k, lv: maze.mutate(k, lv, 5)))(keys, random_levels)
    assert bool(jax.vmap(maze.is_valid)(children).all())
    changed = np.asarray(children.walls != random_levels.walls).reshape(200, -1).sum(1)
    assert changed.max() <= 5 and changed.sum() > 0
    assert (np.asarray(children.start) == np.asarray(random_levels.start)).all()
    moved = (np.asarray(children.goal) != np.asarray(random_levels.goal)).any(1)
    assert 0 < moved.sum() < 200


def reference_view(level, pos, view=5):
    r = view // 2
    walls = np.pad(np.asarray(level.walls), r, constant_values=True).astype(np.float32)
    goal = np.zeros(np.asarray(level.walls).shape, np.float32)
    goal[tuple(np.asarray(level.goal))] = 1
    goal = np.pad(goal, r)
    return np.stack([walls, goal], -1)[pos[0]:pos[0] + view, pos[1]:pos[1] + view].reshape(-1)


def test_dynamics_observation_reward_and_reset():
    level = level_from(ROOM)
    env = maze.Maze(H, W, 5, max_steps=20)
    obs, state = env.reset(jax.random.key(0), level)
    np.testing.assert_array_equal(obs, reference_view(level, (0, 0)))
    step = jax.jit(env.step)
    # right: free; right again: wall at (0, 2), stays
    path = [(1, (0, 1)), (1, (0, 1)), (2, (1, 1)), (2, (2, 1)), (2, (3, 1)), (1, (3, 2)), (1, (3, 3)),
            (0, (2, 3)), (0, (1, 3)), (0, (0, 3)), (0, (0, 3)), (1, (0, 4)), (1, (0, 5)), (2, (1, 5)),
            (2, (2, 5)), (2, (3, 5)), (2, (4, 5)), (2, (5, 5))]
    for t, (action, pos) in enumerate(path):
        obs, state, reward, terminated, truncated, info = step(jax.random.key(t), state, action, level)
        assert tuple(np.asarray(state.pos)) == pos and not terminated and reward == 0
        np.testing.assert_array_equal(obs, reference_view(level, pos))
    obs, state, reward, terminated, truncated, info = step(jax.random.key(99), state, 1, level)
    assert bool(terminated) and not bool(truncated)
    np.testing.assert_allclose(reward, 1 - 0.9 * 19 / 20, rtol=1e-6)
    np.testing.assert_array_equal(info["final_observation"], reference_view(level, (5, 6)))
    assert tuple(np.asarray(state.pos)) == (0, 0) and int(state.time) == 0   # auto-reset to the start


def test_truncation_at_the_step_limit():
    level = level_from(ROOM)
    env = maze.Maze(H, W, 5, max_steps=3)
    _, state = env.reset(jax.random.key(0), level)
    for t in range(3):
        _, state, reward, terminated, truncated, _ = env.step(jax.random.key(t), state, 3, level)
    assert bool(truncated) and not bool(terminated) and reward == 0 and int(state.time) == 0


def test_held_out_levels_load_and_are_solvable():
    names, held = maze.load_held_out(9, 9)
    assert {"corridor", "rooms", "labyrinth"} <= set(names)
    assert held.walls.shape == (len(names), 9, 9)
    assert bool(jax.vmap(maze.solvable)(held).all())
    # a larger environment pads them with walls
    _, big = maze.load_held_out(13, 13, maze.DATA_DIR)
    assert big.walls.shape == (len(names), 13, 13) and bool(big.walls[:, 9:, :].all())
    assert bool(jax.vmap(maze.solvable)(big).all())


def test_the_papers_thirteen_by_thirteen_mazes_join_ours_on_a_13x13_grid():
    names, held = maze.load_held_out(13, 13)
    papers = {"SixteenRooms", "SixteenRooms2", "Labyrinth", "LabyrinthFlipped", "Labyrinth2", "StandardMaze",
              "StandardMaze2", "StandardMaze3"}
    assert papers <= set(names) and len(names) == len(papers) + len(maze.held_out_names())
    assert bool(jax.vmap(maze.solvable)(held).all())
    i = names.index("Labyrinth")   # '>' at the bottom-left: start facing right
    assert tuple(np.asarray(held.start[i])) == (12, 0) and int(held.start_dir[i]) == 1
    with open(os.path.join(maze.DATA_DIR, "13x13", "Labyrinth.txt")) as f:
        hashes = f.read().split("\n", 1)[1].count("#")   # after the comment line
    assert tuple(np.asarray(held.goal[i])) == (6, 6) and int(held.walls[i].sum()) == hashes == 72
    with pytest.raises(ConfigError, match="larger than the environment's 9x9.*space_kwargs"):
        maze.load_held_out(9, 9, os.path.join(maze.DATA_DIR, "13x13"))


def reference_forward_view(level, pos, direction, view=5):
    """The window ahead by rotating the padded grid so the agent faces up."""
    walls = np.pad(np.asarray(level.walls), view, constant_values=True).astype(np.float32)
    goal = np.zeros(np.asarray(level.walls).shape, np.float32)
    goal[tuple(np.asarray(level.goal))] = 1
    grid = np.stack([walls, np.pad(goal, view)], -1)
    r, c = pos[0] + view, pos[1] + view
    # rotate (counter-clockwise k times) so that `direction` points up; track the agent's cell
    k = direction   # up 0, right 1 (one ccw turn brings right to up), down 2, left 3
    for _ in range(k):
        h, w = grid.shape[:2]
        grid = np.rot90(grid, 1)
        r, c = w - 1 - c, r
    window = grid[r - view + 1:r + 1, c - view // 2:c + view // 2 + 1]
    return np.concatenate([window.reshape(-1), np.eye(4)[direction]])


def test_forward_view_turns_and_moves_as_minigrid():
    level = level_from(["^.#....",
                        "..#....",
                        "..#.#..",
                        "....#..",
                        "###.#..",
                        "....#.G",
                        "......."])
    env = maze.Maze(H, W, 5, max_steps=30, view_mode="forward")
    assert env.observation_space(level).shape == (54,) and env.action_space(level).n == 3
    obs, state = env.reset(jax.random.key(0), level)
    np.testing.assert_array_equal(obs, reference_forward_view(level, (0, 0), 0))
    step = jax.jit(env.step)
    L, R, F = maze.TURN_LEFT, maze.TURN_RIGHT, maze.FORWARD
    # facing up at the top edge: forward stays; turn right, forward, forward (wall at (0, 2)) ...
    path = [(F, (0, 0), 0), (R, (0, 0), 1), (F, (0, 1), 1), (F, (0, 1), 1), (R, (0, 1), 2), (F, (1, 1), 2),
            (F, (2, 1), 2), (F, (3, 1), 2), (L, (3, 1), 1), (F, (3, 2), 1), (F, (3, 3), 1), (R, (3, 3), 2),
            (F, (4, 3), 2), (F, (5, 3), 2), (F, (6, 3), 2), (L, (6, 3), 1), (F, (6, 4), 1), (F, (6, 5), 1),
            (L, (6, 5), 0), (L, (6, 5), 3), (L, (6, 5), 2), (L, (6, 5), 1), (F, (6, 6), 1), (L, (6, 6), 0)]
    for t, (action, pos, direction) in enumerate(path):
        obs, state, reward, terminated, truncated, info = step(jax.random.key(t), state, action, level)
        assert (tuple(np.asarray(state.pos)), int(state.dir)) == (pos, direction) and not terminated
        np.testing.assert_array_equal(obs, reference_forward_view(level, pos, direction))
    obs, state, reward, terminated, *_ = step(jax.random.key(99), state, F, level)   # onto the goal
    assert bool(terminated) and abs(float(reward) - (1 - 0.9 * 25 / 30)) < 1e-6
    np.testing.assert_array_equal(obs, reference_forward_view(level, (0, 0), 0))   # reset facing up


@pytest.mark.parametrize("text, message", [
    ("S.x\n..G", "unknown cell 'x'"),
    ("S..\n.G", "row has 2 cells"),
    ("...\n..G", "exactly one 'S' and one 'G'"),
    ("S#.\n##G", "cannot be reached"),
    ("; only a comment", "no maze rows"),
])
def test_bad_level_files_fail_clearly(tmp_path, text, message):
    path = os.path.join(tmp_path, "bad.txt")
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(ConfigError, match=message) as err:
        maze.load_level(path, 9, 9)
    assert "bad.txt" in str(err.value)


def test_a_level_larger_than_the_environment_is_refused():
    with pytest.raises(ConfigError, match="larger than"):
        maze.parse_level("S...G", 3, 3)


def test_unreachable_goal_in_a_held_out_directory_fails(tmp_path):
    with open(os.path.join(tmp_path, "walled.txt"), "w") as f:
        f.write("S.#\n..#\n##G\n")
    with pytest.raises(ConfigError, match="walled.txt.*cannot be reached"):
        levels.make("maze", height=5, width=5, max_walls=5, data_dir=str(tmp_path))


@pytest.mark.parametrize("name", ["cartpole-levels", "pendulum-levels"])
def test_physics_levels_ranges_mutation_and_held_out_extremes(name):
    space = levels.make(name)
    spec = levels.CARTPOLE if name == "cartpole-levels" else levels.PENDULUM
    lo, hi = np.array(spec.low), np.array(spec.high)
    samples = jax.vmap(space.sample)(jax.random.split(jax.random.key(0), 100))
    values = np.stack([np.asarray(getattr(samples, f)) for f in spec.fields], 1)
    assert (values >= lo - 1e-6).all() and (values <= hi + 1e-6).all()
    children = jax.vmap(space.mutate)(jax.random.split(jax.random.key(1), 100), samples)
    child_values = np.stack([np.asarray(getattr(children, f)) for f in spec.fields], 1)
    assert (child_values >= lo - 1e-6).all() and (child_values <= hi + 1e-6).all()
    assert 0 < np.abs(child_values - values).max() < 0.6 * (hi - lo).max()
    assert bool(jax.vmap(space.is_valid)(children).all())
    held = np.stack([np.asarray(getattr(space.held_out, f)) for f in spec.fields], 1)
    # every held-out level sits at or beyond an end of the training range
    assert ((held <= lo + 1e-6) | (held >= hi - 1e-6)).any(1).all()
    if name == "cartpole-levels":
        np.testing.assert_allclose(samples.polemass_length, samples.masspole * samples.length, rtol=1e-6)
        np.testing.assert_allclose(samples.total_mass, samples.masscart + samples.masspole, rtol=1e-6)


def test_level_in_state_gives_each_env_its_own_level():
    """Two CartPole levels stepped under one vmap with a shared (ignored)
    env_params behave as gymnax does with each level's own params."""
    import gymnax
    space = levels.make("cartpole-levels")
    lvls = levels.stack([space.template.replace(length=jnp.float32(0.3), polemass_length=jnp.float32(0.03)),
                         space.template.replace(length=jnp.float32(1.0), polemass_length=jnp.float32(0.1))])
    keys = jax.random.split(jax.random.key(0), 2)
    obs, state = jax.vmap(space.env.reset)(keys, lvls)
    raw, _ = gymnax.make("CartPole-v1")
    for t in range(5):
        obs, state, *_ = jax.vmap(space.env.step, in_axes=(0, 0, 0, None))(keys, state, jnp.array([1, 1]),
                                                                           space.template)
    for i in range(2):
        ref_obs, ref_state = raw.reset(keys[i], levels.index(lvls, i))
        for t in range(5):
            ref_obs, ref_state, *_ = raw.step(keys[i], ref_state, 1, levels.index(lvls, i))
        np.testing.assert_allclose(obs[i], ref_obs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(obs[0], obs[1])
