import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src.networks import (ActorCritic, entropy, log_prob, orthogonal, orthogonal_stack, policy_without_dots,
                          policy_without_dots_fits)


def test_orthogonal_init_is_orthogonal_and_scaled():
    for shape in [(4, 64), (64, 64), (64, 2)]:
        w = orthogonal(2.0)(jax.random.PRNGKey(0), shape)
        small = min(shape)
        gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
        np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-4)


def test_vmapped_orthogonal_init_matches_unbatched_and_does_not_hang():
    # Batched LAPACK QR deadlocks XLA's CPU thread pool on 2 cores; a hang here
    # shows up as the suite timing out.
    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    init = jax.jit(jax.vmap(lambda k: orthogonal(1.0)(k, (64, 64))))
    for i in range(50):
        batched = init(keys)
    np.testing.assert_allclose(batched[3], orthogonal(1.0)(keys[3], (64, 64)), atol=1e-5)


def test_log_prob_and_entropy_match_closed_forms():
    logits = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    np.testing.assert_allclose(log_prob(logits, jnp.array(2), True), np.log(0.5), rtol=1e-6)
    np.testing.assert_allclose(entropy(logits, True), -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5)),
                               rtol=1e-6)
    mean, log_std = jnp.zeros(2), jnp.log(jnp.array([1.0, 2.0]))
    x = jnp.array([0.5, -1.0])
    expected = sum(-0.5 * (xi / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi) for xi, s in zip([0.5, -1.0], [1.0, 2.0]))
    np.testing.assert_allclose(log_prob((mean, log_std), x, False), expected, rtol=1e-6)
    net = ActorCritic(action_dim=2, discrete=False)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(3))
    assert net.apply(params, jnp.zeros((5, 3)))[1].shape == (5,)


def _reference_orthonormal(matrix):
    """numpy's QR with R's diagonal made positive: the unique Q that Gram-Schmidt gives."""
    q, r = np.linalg.qr(matrix)
    return q * np.sign(np.diag(r))


def test_orthogonal_stack_equals_gram_schmidt_of_each_corner():
    shapes, scales = [(4, 64), (64, 64), (64, 2), (17, 256), (256, 6)], [1.0, 2.0, 0.5, 1.0, 3.0]
    key = jax.random.PRNGKey(3)
    kernels = orthogonal_stack(key, shapes, scales)
    draws = np.asarray(jax.random.normal(key, (len(shapes), 256, 64)), np.float64)
    for draw, shape, scale, kernel in zip(draws, shapes, scales, kernels):
        tall = (max(shape), min(shape))
        expected = scale * _reference_orthonormal(draw[:tall[0], :tall[1]])
        if shape[0] < shape[1]:
            expected = expected.T
        assert kernel.shape == shape
        np.testing.assert_allclose(kernel, expected, atol=2e-5)


def test_actor_critic_init_orthogonal_scaled_and_the_same_under_vmap():
    net = ActorCritic(action_dim=3, discrete=True, hidden=(32, 16))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(5))["params"]
    scales = {"actor": (np.sqrt(2), np.sqrt(2), 0.01), "critic": (np.sqrt(2), np.sqrt(2), 1.0)}
    kernels = []
    for head, head_scales in scales.items():
        for i, scale in enumerate(head_scales):
            w = np.asarray(params[head][f"Dense_{i}"]["kernel"])
            gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
            np.testing.assert_allclose(gram, scale**2 * np.eye(min(w.shape)), atol=1e-5 * max(1.0, scale**2))
            assert not np.any(params[head][f"Dense_{i}"]["bias"])
            kernels.append(w / scale)
    # distinct draws per layer, not one matrix reused
    assert not np.allclose(kernels[0], kernels[3])
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batched = jax.jit(jax.vmap(lambda k: net.init(k, jnp.zeros(5))))(keys)
    one = net.init(keys[2], jnp.zeros(5))
    jax.tree.map(lambda b, o: np.testing.assert_allclose(b[2], o, atol=1e-5), batched, one)


def test_actor_critic_init_through_one_head_fills_it_as_a_full_init_would():
    net = ActorCritic(action_dim=2, discrete=False)
    key, obs = jax.random.PRNGKey(0), jnp.zeros(3)
    critic_only = net.init(key, obs, method=ActorCritic.value)["params"]
    assert "actor" not in critic_only and "critic" in critic_only
    full = net.init(key, obs)["params"]
    jax.tree.map(np.testing.assert_array_equal, critic_only["critic"], full["critic"])
    w = np.asarray(critic_only["critic"]["Dense_1"]["kernel"])
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(64), atol=1e-4)


def test_actor_critic_init_with_output_returns_the_initialised_networks_output():
    import flax.linen as nn

    net = ActorCritic(action_dim=2, discrete=True)
    out, variables = net.init_with_output(jax.random.PRNGKey(0), jnp.ones(3))
    assert np.abs(np.asarray(variables["params"]["actor"]["Dense_0"]["kernel"])).max() > 0.1
    np.testing.assert_allclose(out[1], net.apply(variables, jnp.ones(3))[1], rtol=1e-6)

    class Parent(nn.Module):   # its init would leave the kernels at zero: refused
        @nn.compact
        def __call__(self, x):
            return ActorCritic(action_dim=2, discrete=True)(x)

    with pytest.raises(TypeError, match="on its own"):
        Parent().init(jax.random.PRNGKey(0), jnp.ones(3))


@pytest.mark.parametrize("discrete, hidden, activation", [(True, (64, 64), "tanh"), (False, (7, 5, 3), "relu"),
                                                          (True, (1,), "tanh")])
def test_policy_without_dots_equals_the_policy_head(discrete, hidden, activation):
    # odd widths exercise the pairwise sum's leftover rows
    net = ActorCritic(3, discrete, hidden, activation)
    params = net.init(jax.random.key(0), jnp.zeros(5))
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), params)  # nonzero biases
    obs = jax.random.normal(jax.random.key(2), (4, 5))
    reference = net.apply(params, obs, method=ActorCritic.policy)
    got = jax.jit(lambda p, o: policy_without_dots(net, p, o))(params, obs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, reference)
    assert "dot(" not in jax.jit(lambda p, o: policy_without_dots(net, p, o)).lower(params, obs).as_text("hlo")


def test_policy_without_dots_is_only_for_small_products():
    assert policy_without_dots_fits(4, 4, (64, 64), 2)       # CartPole's 4 envs: 4 x 64 x 64
    assert policy_without_dots_fits(16, 4, (64, 64), 2)
    assert not policy_without_dots_fits(17, 4, (64, 64), 2)
    assert policy_without_dots_fits(1, 17, (256, 256), 6)
    assert not policy_without_dots_fits(2, 17, (256, 256), 6)
