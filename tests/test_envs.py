import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from src.config import ConfigError

NEEDS_DOWNLOAD = {"MNISTBandit-bsuite"}   # gymnax fetches MNIST at construction; CI has no network
GYMNAX_AND_PROBES = [n for n in envs.names() if not n.startswith("brax/") and n not in NEEDS_DOWNLOAD]
BRAX = [n for n in envs.names() if n.startswith("brax/")]


def check_conformance(name, steps=3, abstract=False, **kwargs):
    env, params = envs.make(name, **kwargs)
    obs_space, action_space = env.observation_space(params), env.action_space(params)
    key = jax.random.PRNGKey(0)
    # `abstract` traces the whole API (shapes, dtypes, pytree structure) without
    # compiling or running: brax physics takes 5-25 s per env to compile on 2
    # cores, and a brax reset run eagerly (op by op) up to 12 s.
    reset = jax.eval_shape if abstract else (lambda f, *a: f(*a))
    obs, state = reset(env.reset, key, params)
    assert obs.dtype == jnp.float32 and obs.shape == obs_space.shape == (envs.obs_size(env, params),)

    def body(carry, key):
        obs, state = carry
        action = action_space.sample(key)
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return (obs, state), (obs, reward, terminated, truncated, info)

    def rollout(k):
        first = env.reset(key, params) if abstract else (obs, state)
        return jax.lax.scan(body, first, jax.random.split(k, steps))[1]

    if abstract:
        obs, reward, terminated, truncated, info = jax.eval_shape(rollout, key)
    else:
        obs, reward, terminated, truncated, info = jax.jit(rollout)(key)
    assert obs.shape == (steps, *obs_space.shape) and obs.dtype == jnp.float32
    assert reward.shape == (steps,) and reward.dtype == jnp.float32
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    assert info["final_observation"].shape == obs.shape
    assert {"episode_done", "episode_return", "episode_length"} <= set(info)
    if not abstract:
        assert np.isfinite(np.asarray(obs)).all() and np.isfinite(np.asarray(reward)).all()
    if isinstance(action_space, envs.Discrete):
        assert envs.is_discrete(env, params) and envs.action_dim(env, params) == action_space.n
    else:
        assert envs.action_dim(env, params) == int(np.prod(action_space.shape))


@pytest.mark.parametrize("name", GYMNAX_AND_PROBES)
def test_api_conformance(name):
    check_conformance(name)


@pytest.mark.parametrize("name", BRAX)
def test_brax_api_conformance(name):
    # inverted_pendulum and ant also run for real in the tests below
    check_conformance(name, steps=2, abstract=True, episode_length=10)


def test_all_26_gymnax_and_12_brax_envs_are_registered():
    names = envs.names()
    assert len([n for n in names if n.startswith("brax/")]) == 12
    assert len([n for n in names if n in envs.registry.GYMNAX_ENVS]) == 26
    ours = [n for n in names if n.startswith(("probe/", "gridworld/")) or n in ("maze", "hard-maze")]
    assert len(names) == 26 + 12 + len(ours), "a name that is neither gymnax, brax nor ours"


def test_unknown_env_names_the_closest_match():
    with pytest.raises(ConfigError, match="Did you mean 'CartPole-v1'"):
        envs.make("cartpole-v1")
    with pytest.raises(ConfigError, match="brax/ant"):
        envs.make("brax/antt")


def test_bad_brax_options_fail_clearly():
    with pytest.raises(ConfigError, match="backend"):
        envs.make("brax/ant", backend="nope")
    with pytest.raises(ConfigError, match="episode_length"):
        envs.make("brax/ant", episode_length=0)


def run_steps(env, params, action, num_steps, key=0):
    obs, state = env.reset(jax.random.PRNGKey(key), params)

    def body(carry, key):
        obs, state = carry
        nobs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return (nobs, state), (obs, nobs, reward, terminated, truncated, info["final_observation"])

    return jax.jit(lambda k: jax.lax.scan(body, (obs, state), jax.random.split(k, num_steps))[1])(
        jax.random.PRNGKey(key + 1))


def test_brax_truncation_is_not_termination():
    env, params = envs.make("brax/inverted_pendulum", episode_length=5)
    obs, nobs, reward, terminated, truncated, final = map(np.asarray, run_steps(env, params, jnp.zeros(1), 12))
    assert not terminated.any()
    np.testing.assert_array_equal(np.flatnonzero(truncated), [4, 9])
    # at the time-out the final observation is the real one and the next obs a fresh reset
    assert not np.allclose(final[4], nobs[4])
    np.testing.assert_allclose(final[3], nobs[3])
    np.testing.assert_allclose(obs[5], nobs[4])


def test_brax_termination_resets_and_never_steps_past_done():
    env, params = envs.make("brax/inverted_pendulum", episode_length=1000)
    obs, nobs, reward, terminated, truncated, final = map(np.asarray, run_steps(env, params, jnp.ones(1), 200))
    assert terminated.any() and not truncated.any()
    first = int(np.flatnonzero(terminated)[0])
    assert abs(final[first][1]) > 0.2        # the pole really fell (angle limit 0.2)
    assert abs(nobs[first][1]) < 0.05        # and the next observation is a fresh start
    assert np.isfinite(obs).all() and np.isfinite(reward).all()


@pytest.mark.slow   # 24 s; brax truncation test stays
def test_brax_ant_episode_ends_without_nans():
    env, params = envs.make("brax/ant", episode_length=1000)
    obs, nobs, reward, terminated, truncated, final = map(np.asarray, run_steps(env, params, jnp.ones(8), 150))
    assert np.isfinite(reward).all() and np.isfinite(obs).all() and np.isfinite(final).all()
    # 150 steps of a 1000-step limit: nothing may be cut off by time
    assert not truncated.any()
    # where an episode ended the final observation is the real last one, the
    # next a reset; everywhere else the two agree
    ends = np.flatnonzero(terminated)
    np.testing.assert_array_equal(final[~terminated], nobs[~terminated])
    for t in ends:
        assert not np.allclose(final[t], nobs[t])


# ----------------------------------------------------------------------------- CartPole by hand

# gym's CartPole-v1 constants (gym/envs/classic_control/cartpole.py)
GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
THETA_LIMIT, X_LIMIT = 12 * 2 * np.pi / 360, 2.4


def cartpole_by_hand(obs, action):
    """One Euler step of gym's CartPole equations, in float32 numpy."""
    x, x_dot, theta, theta_dot = (np.float32(v) for v in obs)
    f32 = np.float32
    total, pml = f32(MASSCART + MASSPOLE), f32(MASSPOLE * LENGTH)
    force = f32(FORCE_MAG) if action == 1 else f32(-FORCE_MAG)
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + pml * theta_dot ** 2 * sin) / total
    theta_acc = (f32(GRAVITY) * sin - cos * temp) / (f32(LENGTH) * (f32(4.0 / 3.0) - f32(MASSPOLE) * cos ** 2 / total))
    x_acc = temp - pml * theta_acc * cos / total
    new = np.array([x + f32(TAU) * x_dot, x_dot + f32(TAU) * x_acc, theta + f32(TAU) * theta_dot,
                    theta_dot + f32(TAU) * theta_acc], np.float32)
    fell = abs(new[0]) > X_LIMIT or abs(new[2]) > THETA_LIMIT
    return new, fell


def run_actions(env, params, actions, key=0):
    """Steps `actions` (one per step) from a reset; (obs before, obs after,
    reward, terminated, truncated, final_observation, episode_return)."""
    obs, state = env.reset(jax.random.PRNGKey(key), params)

    def body(carry, xs):
        obs, state = carry
        k, action = xs
        nobs, state, reward, terminated, truncated, info = env.step(k, state, action, params)
        return (nobs, state), (obs, nobs, reward, terminated, truncated, info["final_observation"],
                               info["episode_return"])

    keys = jax.random.split(jax.random.PRNGKey(key + 1), len(actions))
    return map(np.asarray, jax.jit(lambda ks, acts: jax.lax.scan(body, (obs, state), (ks, acts))[1])(
        keys, jnp.asarray(actions, jnp.int32)))


def test_cartpole_pushed_one_way_terminates_where_the_equations_say():
    env, params = envs.make("CartPole-v1")
    obs, nobs, reward, terminated, truncated, final, ep_return = run_actions(env, params, [1] * 30)
    # the hand-computed episode: always push right until the pole falls
    state, expected = obs[0], []
    for t in range(30):
        state, fell = cartpole_by_hand(state, 1)
        expected.append(state)
        if fell:
            break
    end = t
    assert 5 < end < 20                                     # the pole falls (left) well before any limit
    assert terminated[end] and not terminated[:end].any() and not truncated.any()
    np.testing.assert_allclose(final[:end + 1], np.array(expected), rtol=1e-5, atol=1e-6)
    assert final[end][2] < -THETA_LIMIT                     # it fell to the left: the real last observation
    np.testing.assert_allclose(final[:end], nobs[:end])    # before the end the final observation is the next one
    assert np.abs(nobs[end]).max() <= 0.05                  # after it the next observation is a fresh reset
    np.testing.assert_array_equal(obs[end + 1], nobs[end])
    assert reward[:end + 1].tolist() == [1.0] * (end + 1) and ep_return[end] == end + 1


def test_cartpole_time_limit_truncates_and_does_not_terminate():
    env, params = envs.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=5)
    actions = [1, 0] * 8                                    # keeps the pole up: no termination in 16 steps
    obs, nobs, reward, terminated, truncated, final, ep_return = run_actions(env, params, actions)
    assert not terminated.any()
    np.testing.assert_array_equal(np.flatnonzero(truncated), [4, 9, 14])
    for start, end in ((0, 4), (5, 9), (10, 14)):
        state = obs[start]
        for t in range(start, end + 1):
            state, fell = cartpole_by_hand(state, actions[t])
            assert not fell
            np.testing.assert_allclose(final[t], state, rtol=1e-5, atol=1e-6)
        # the time-out's final observation is the real 5th state, not the reset that follows
        assert not np.allclose(final[end], nobs[end]) and np.abs(nobs[end]).max() <= 0.05
        assert ep_return[end] == 5.0
    np.testing.assert_array_equal(obs[5], nobs[4])


def test_episode_statistics_on_discounting_probe():
    env, params = envs.make("probe/discounting")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    returns = []
    for t in range(6):
        obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(t), state, 0, params)
        if info["episode_done"]:
            returns.append((float(info["episode_return"]), int(info["episode_length"])))
    assert returns == [(1.0, 2)] * 3
    assert float(state.last_return) == 1.0


def test_flatten_and_clip_wrappers():
    env, params = envs.make("Breakout-MinAtar")
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (400,)
    env, params = envs.make("Pendulum-v1")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    clipped = env.step(jax.random.PRNGKey(1), state, jnp.array([50.0]), params)
    at_bound = env.step(jax.random.PRNGKey(1), state, jnp.array([2.0]), params)
    np.testing.assert_allclose(clipped[0], at_bound[0])
    np.testing.assert_allclose(clipped[2], at_bound[2])


def test_gymnax_render_imports_wait_until_used():
    """gymnax's module-level seaborn/pyplot imports are deferred (start-up time),
    and the real modules arrive on first use."""
    code = (
        "import sys, envs\n"
        "assert type(sys.modules['seaborn']).__name__ == '_ImportedOnFirstUse', type(sys.modules['seaborn'])\n"
        "assert 'seaborn.palettes' not in sys.modules\n"
        "import gymnax.environments.misc.pong as pong\n"
        "assert len(pong.sns.color_palette('cubehelix', 3)) == 3\n"
        "import seaborn\n"
        "assert type(seaborn).__name__ == 'module' and hasattr(seaborn, 'color_palette')\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "assert plt.get_backend().lower() == 'agg'\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr[-2000:]
