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
    obs, state = env.reset(key, params)
    assert obs.dtype == jnp.float32 and obs.shape == obs_space.shape == (envs.obs_size(env, params),)

    def body(carry, key):
        obs, state = carry
        action = action_space.sample(key)
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return (obs, state), (obs, reward, terminated, truncated, info)

    rollout = lambda k: jax.lax.scan(body, (obs, state), jax.random.split(k, steps))[1]  # noqa: E731
    # `abstract` traces the whole API (shapes, dtypes, pytree structure) without
    # compiling: brax physics takes 5-25 s per env to compile on 2 cores.
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
    ours = [n for n in names if n.startswith(("probe/", "gridworld/")) or n == "maze"]
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


def test_brax_ant_episode_ends_without_nans():
    env, params = envs.make("brax/ant", episode_length=1000)
    _, _, reward, terminated, truncated, _ = map(np.asarray, run_steps(env, params, jnp.ones(8), 150))
    assert np.isfinite(reward).all()


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
