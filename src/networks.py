"""Actor-critic MLPs with discrete (categorical) and Gaussian heads.

Separate actor and critic torsos, orthogonal initialisation with a small
final actor layer (the PPO implementation details that matter on CartPole).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


def _orthonormal_columns(matrix):
    """Gram-Schmidt (each projection done twice for float32 accuracy): the Q of
    a QR decomposition with a positive diagonal R."""
    rows, cols = matrix.shape

    def add_column(j, q):
        v = jax.lax.dynamic_index_in_dim(matrix, j, axis=1, keepdims=False)
        earlier = (jnp.arange(cols) < j).astype(matrix.dtype)
        for _ in range(2):
            v = v - q @ ((q.T @ v) * earlier)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, cols, add_column, jnp.zeros_like(matrix))


def orthogonal(scale: float = 1.0):
    """Orthogonal initialiser (uniformly random, like flax's) in plain JAX ops.

    flax's version calls LAPACK's QR. Under vmap (a population of networks)
    jaxlib spreads that batched QR over XLA's CPU thread pool from inside the
    pool, which deadlocks at random on 2 cores (reproduced with jax 0.10.2:
    vmap of QR over 8 keys hangs within 200 calls); it also costs ~2 s of
    compilation. Gram-Schmidt on a Gaussian matrix gives the same distribution.
    """
    def init(key, shape, dtype=jnp.float32):
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        tall = (max(rows, cols), min(rows, cols))
        q = _orthonormal_columns(jax.random.normal(key, tall, jnp.float32))
        if rows < cols:
            q = q.T
        return (scale * q).reshape(shape).astype(dtype)
    return init


def _dense(features, scale):
    return nn.Dense(features, kernel_init=orthogonal(scale), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    activation: str = "tanh"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(_dense(width, np.sqrt(2.0))(x))
        return _dense(self.out, self.out_scale)(x)


class ActorCritic(nn.Module):
    """Returns (policy parameters, value). Discrete: logits. Continuous: (mean, log_std)."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"

    def setup(self):
        self.actor = MLP(self.hidden, self.action_dim, self.activation, out_scale=0.01)
        self.critic = MLP(self.hidden, 1, self.activation, out_scale=1.0)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def __call__(self, obs):
        return self.policy(obs), self.value(obs)

    def policy(self, obs):
        out = self.actor(obs)
        if self.discrete:
            return out
        return out, jnp.broadcast_to(self.log_std, out.shape)

    def value(self, obs):
        return self.critic(obs)[..., 0]


# Distributions as plain functions of the head's output: a dependency for a
# categorical and a diagonal Gaussian would be more code than this.

def sample(key, dist, discrete):
    if discrete:
        return jax.random.categorical(key, dist)
    mean, log_std = dist
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)


def mode(dist, discrete):
    return jnp.argmax(dist, axis=-1) if discrete else dist[0]


def log_prob(dist, action, discrete):
    if discrete:
        logp = jax.nn.log_softmax(dist)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mean, log_std = dist
    z = (action - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def entropy(dist, discrete):
    if discrete:
        logp = jax.nn.log_softmax(dist)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    _, log_std = dist
    return jnp.sum(log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e), axis=-1)
