import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("gamma, lam", [(0.97, 0.9), (0.99, 0.0), (0.9, 1.0), (1.0, 0.95)])
def test_gae_matches_python_loop_with_truncation_and_termination(gamma, lam):
    rng = np.random.default_rng(0)
    T, N = 37, 5
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    next_values = rng.normal(size=(T, N)).astype(np.float32)
    terminated = rng.random((T, N)) < 0.1
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    done = terminated | truncated
    assert terminated.any() and truncated.any()
    adv, ret = jax.jit(gae)(rewards, values, next_values, terminated, done, gamma, lam)
    ref_adv, ref_ret = gae_loop(rewards, values, next_values, terminated, done, gamma, lam)
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


def test_gae_worked_example():
    """One env, 4 steps, gamma 0.9, lambda 0.8: a truncation at t = 1 (bootstrap
    from the final observation's value 7, then start afresh) and a termination
    at t = 3 (no bootstrap), worked out by hand."""
    rewards = jnp.ones((4, 1))
    values = jnp.array([[0.5], [0.4], [0.3], [0.2]])
    next_values = jnp.array([[0.4], [7.0], [0.2], [9.0]])   # 7: final obs of the truncated episode
    terminated = jnp.array([[False], [False], [False], [True]])
    done = jnp.array([[False], [True], [False], [True]])
    adv, ret = gae(rewards, values, next_values, terminated, done, 0.9, 0.8)
    a3 = 1.0 - 0.2                                  # terminated: r - V
    a2 = (1.0 + 0.9 * 0.2 - 0.3) + 0.72 * a3        # 0.88 + 0.576
    a1 = 1.0 + 0.9 * 7.0 - 0.4                      # truncated: bootstraps, carries nothing back from t = 2
    a0 = (1.0 + 0.9 * 0.4 - 0.5) + 0.72 * a1        # 0.86 + 4.968
    np.testing.assert_allclose(adv[:, 0], [5.828, 6.9, 1.456, 0.8], rtol=1e-6)
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2, a3], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [a0 + 0.5, a1 + 0.4, a2 + 0.3, a3 + 0.2], rtol=1e-6)
