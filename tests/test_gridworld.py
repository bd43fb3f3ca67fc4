"""The BARFI-style gridworld: moves, walls, goal, time-out, slips."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.gridworld import GridWorld
from src.config import ConfigError


def walk(env, params, actions, key=jax.random.PRNGKey(0)):
    obs, state = env.reset(key, params)
    step = jax.jit(env.step)
    out = []
    for i, a in enumerate(actions):
        obs, state, reward, term, trunc, info = step(jax.random.fold_in(key, i), state, jnp.int32(a), params)
        out.append((obs, state, float(reward), bool(term), bool(trunc), info))
    return out


def test_moves_walls_and_goal_without_slips():
    env, params = envs.make("gridworld/barfi")
    grid = env.unwrapped
    params = params.replace(slip=0.0)
    n = grid.size
    # left and down from the start bump into walls; then straight to the goal
    steps = walk(env, params, [2, 3] + [0] * (n - 1) + [1] * (n - 1))
    for _, _, reward, term, _, info in steps[:2]:
        np.testing.assert_array_equal(grid.position(info["final_observation"]), [0, 0])
        assert reward == 0.0 and not term
    np.testing.assert_array_equal(grid.position(steps[2 + n - 2][5]["final_observation"]), [n - 1, 0])
    obs, state, reward, term, trunc, info = steps[-1]
    assert reward == 1.0 and term and not trunc
    np.testing.assert_array_equal(grid.position(info["final_observation"]), [n - 1, n - 1])
    # auto-reset to the start, and the episode's statistics are the primary return
    np.testing.assert_array_equal(grid.position(obs), [0, 0])
    assert bool(info["episode_done"]) and float(info["episode_return"]) == 1.0
    assert obs.shape == (n * n,) and float(obs.sum()) == 1.0


def test_time_out_truncates_and_slips_happen_at_their_rate():
    env, params = envs.make("gridworld/barfi")
    params = params.replace(slip=0.0)
    steps = walk(env, params, [2] * params.max_steps_in_episode)
    assert [s[4] for s in steps] == [False] * (params.max_steps_in_episode - 1) + [True]
    assert not any(s[3] for s in steps)

    slippy = params.replace(slip=0.5)
    raw = env.unwrapped
    _, state = raw.reset(jax.random.PRNGKey(0), slippy)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    # always "right" from the start: a slip (prob 0.5) picks a random move, which is "right" 1/4 of the time
    moved = jax.jit(jax.vmap(lambda k: raw.step(k, state, jnp.int32(0), slippy)[1].pos[0] == 1))(keys)
    assert abs(float(moved.mean()) - (0.5 + 0.5 * 0.25)) < 0.03


def test_staying_on_the_distractor_is_possible():
    env, params = envs.make("gridworld/barfi")
    grid = env.unwrapped
    params = params.replace(slip=0.0)
    steps = walk(env, params, [0] * (grid.size + 5))
    for _, _, _, _, _, info in steps[grid.size - 1:]:
        np.testing.assert_array_equal(grid.position(info["final_observation"]), np.asarray(grid.distractor))


def test_jit_vmap_and_bad_size():
    env, params = envs.make("gridworld/barfi", size=4)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    obs, states, reward, term, trunc, info = step(keys, states, jnp.zeros(8, jnp.int32), params)
    assert obs.shape == (8, 16) and reward.dtype == jnp.float32
    with pytest.raises(ConfigError, match="size must be >= 3"):
        GridWorld(size=2)
