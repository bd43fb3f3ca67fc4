import jax
import jax.numpy as jnp
import numpy as np

from src.gae import gae


def gae_loop(rewards, values, next_values, terminated, done, gamma, lam):
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t, n] else next_values[t, n]
            delta = rewards[t, n] + gamma * bootstrap - values[t, n]
            running = delta + gamma * lam * (0.0 if done[t, n] else running)
            adv[t, n] = running
    return adv, adv + values


def test_gae_matches_python_loop_with_truncation_and_termination():
    rng = np.random.default_rng(0)
    T, N = 37, 5
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    next_values = rng.normal(size=(T, N)).astype(np.float32)
    terminated = rng.random((T, N)) < 0.1
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    done = terminated | truncated
    assert terminated.any() and truncated.any()
    adv, ret = jax.jit(gae)(rewards, values, next_values, terminated, done, 0.97, 0.9)
    ref_adv, ref_ret = gae_loop(rewards, values, next_values, terminated, done, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_truncated_step_bootstraps_and_terminated_does_not():
    rewards = jnp.ones((1, 2))
    values = jnp.zeros((1, 2))
    next_values = jnp.full((1, 2), 10.0)
    terminated = jnp.array([[True, False]])
    done = jnp.array([[True, True]])       # env 0 terminated, env 1 truncated
    adv, _ = gae(rewards, values, next_values, terminated, done, 0.9, 0.95)
    np.testing.assert_allclose(adv, [[1.0, 1.0 + 0.9 * 10.0]])
