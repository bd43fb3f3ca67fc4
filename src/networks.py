"""Actor-critic networks: MLPs with discrete (categorical) and Gaussian heads, and a
recurrent actor-critic (a GRU or LSTM core between encoder and heads) for partially
observed tasks.

Separate actor and critic torsos, orthogonal initialisation with a small
final actor layer (the PPO implementation details that matter on CartPole).
"""
from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from src.config import ConfigError

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
        return orthogonal_stack(key, [shape], [scale])[0].astype(dtype)
    return init


def orthogonal_stack(key, shapes, scales):
    """Orthogonal matrices of several shapes from one Gaussian draw and one
    batched Gram-Schmidt: the same distribution as calling `orthogonal` once
    per shape, at a fraction of the compile time (each draw of a new shape and
    each loop is its own piece of XLA code: an actor-critic's initialiser
    compiles in 0.9 s on CPU, against 1.5 s drawing kernel by kernel;
    benchmarks/compile_time.py).

    Each matrix (made tall) is Gram-Schmidt'ed as the top-left corner of a
    block of the largest rows x columns: padding rows are zero in its columns,
    so they change no inner product, and padding columns come after its own,
    so they change nothing that Gram-Schmidt has already produced."""
    talls = [(max(int(np.prod(s[:-1])), s[-1]), min(int(np.prod(s[:-1])), s[-1])) for s in shapes]
    rows = max(r for r, _ in talls)
    cols = max(c for _, c in talls)
    draws = jax.random.normal(key, (len(shapes), rows, cols), jnp.float32)
    row_ids, col_ids = np.arange(rows)[:, None], np.arange(cols)[None, :]
    keep = np.stack([(row_ids < r) | (col_ids >= c) for r, c in talls])
    qs = jax.vmap(_orthonormal_columns)(jnp.where(keep, draws, 0.0))
    out = []
    for q, shape, (r, c), scale in zip(qs, shapes, talls, scales):
        q = q[:r, :c]
        if int(np.prod(shape[:-1])) < shape[-1]:
            q = q.T
        out.append((scale * q).reshape(shape))
    return out


def kernel_scales(hidden, out_scale):
    """An MLP's orthogonal scales, layer by layer: sqrt(2) for the hidden
    layers (tanh/relu), then the output layer's own."""
    return [np.sqrt(2.0)] * len(hidden) + [out_scale]


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    activation: str = "tanh"
    out_scale: float = 1.0
    # zero kernels, for a parent that initialises them all at once (ActorCritic)
    zero_kernels: bool = False
    # "orthogonal" (scaled, PPO's), or "lecun": flax's default LeCun normal, as
    # SAC usually has; it also needs no QR at init (jaxlib's batched LAPACK QR
    # can deadlock XLA:CPU's thread pool when a population is initialised under vmap)
    kernel_init: str = "orthogonal"

    @nn.compact
    def __call__(self, x):
        act = _ACTIVATIONS[self.activation]
        scales = kernel_scales(self.hidden, self.out_scale)
        for width, scale in zip(self.hidden, scales):
            x = act(self._dense(width, scale)(x))
        return self._dense(self.out, scales[-1])(x)

    def _dense(self, features, scale):
        if self.kernel_init not in ("orthogonal", "lecun"):
            raise ValueError(f"kernel_init must be 'orthogonal' or 'lecun', got {self.kernel_init!r}")
        kernel_init = (nn.initializers.zeros if self.zero_kernels else
                       orthogonal(scale) if self.kernel_init == "orthogonal" else nn.initializers.lecun_normal())
        return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros)


class ActorCritic(nn.Module):
    """Returns (policy parameters, value). Discrete: logits. Continuous: (mean, log_std)."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"

    # the heads' orthogonal scales: a small actor head starts near-uniform
    ACTOR_OUT_SCALE = 0.01
    CRITIC_OUT_SCALE = 1.0

    def setup(self):
        if isinstance(self.parent, nn.Module):
            # a parent's init would not come through init_with_output below
            raise TypeError("ActorCritic fills its kernels in its own init: initialise it on its own, "
                            "not as a submodule of another module")
        # kernels start at zero and `init_with_output` fills them all at once
        self.actor = MLP(self.hidden, self.action_dim, self.activation, self.ACTOR_OUT_SCALE, zero_kernels=True)
        self.critic = MLP(self.hidden, 1, self.activation, self.CRITIC_OUT_SCALE, zero_kernels=True)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    @nn.nowrap
    def init_with_output(self, rngs, *args, method=None, **kwargs):
        """flax's init (`init` and `lazy_init` come through here), then every
        kernel orthogonal from one draw (`orthogonal_stack`): the same
        distribution as per-layer `orthogonal`, with about 1 s less XLA
        compilation for a whole PPO run on CPU (benchmarks/compile_time.py)."""
        _, variables = super().init_with_output(rngs, *args, method=method, **kwargs)
        variables = flax.core.unfreeze(variables)
        params = variables["params"]
        key = rngs["params"] if isinstance(rngs, dict) else rngs
        # Both heads' kernels are always drawn, so a key gives a head the same
        # kernels whether or not the other head was built (`method=`).
        heads = {"actor": (self.action_dim, self.ACTOR_OUT_SCALE), "critic": (1, self.CRITIC_OUT_SCALE)}
        inputs = next(params[h]["Dense_0"]["kernel"].shape[0] for h in heads if h in params)
        layers, shapes, scales = [], [], []
        for head, (outputs, out_scale) in heads.items():
            sizes = [inputs, *self.hidden, outputs]
            for i, scale in enumerate(kernel_scales(self.hidden, out_scale)):
                layers.append((head, f"Dense_{i}"))
                shapes.append((sizes[i], sizes[i + 1]))
                scales.append(scale)
        for (head, layer), kernel in zip(layers, orthogonal_stack(key, shapes, scales)):
            if head in params:
                params[head][layer]["kernel"] = kernel.astype(params[head][layer]["kernel"].dtype)
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("mutable", "capture_intermediates")}
        return self.apply(variables, *args, method=method, **call_kwargs), variables

    def __call__(self, obs):
        return self.policy(obs), self.value(obs)

    def policy(self, obs):
        out = self.actor(obs)
        if self.discrete:
            return out
        return out, jnp.broadcast_to(self.log_std, out.shape)

    def value(self, obs):
        return self.critic(obs)[..., 0]


# The policy head without dot products, for small rollouts on CPU.
#
# XLA:CPU compiles a while loop into one kernel, with no per-op dispatch
# inside, only when the loop holds no dot (nor scatter or custom call) and
# touches few bytes (`xla_cpu_small_while_loop_byte_threshold`, raised by
# `src.xla_cpu.compile_small_loops`). A rollout of a few envs through a 64x64
# MLP is such a loop once its matrix products are written as products and
# sums: about 2x faster per rollout step on a 2-core CPU (benchmarks/RESULTS.md).
# The sum is a pairwise tree of slices, not `jnp.sum`: XLA hands a summing
# reduce to YNNPACK as a library call, which would block the kernel again.
# Costs `in` times the memory of a matrix product, hence only for small ones.
POLICY_WITHOUT_DOTS_MAX_ELEMENTS = 1 << 16


def _matmul_without_dot(x, kernel):
    terms = x[..., :, None] * kernel      # (..., in, out)
    while terms.shape[-2] > 1:
        half = terms.shape[-2] // 2
        pairs = terms[..., :half, :] + terms[..., half:2 * half, :]
        terms = jnp.concatenate([pairs, terms[..., 2 * half:, :]], axis=-2) if terms.shape[-2] % 2 else pairs
    return terms[..., 0, :]


def policy_without_dots_fits(batch: int, obs_dim: int, hidden: Sequence[int], action_dim: int) -> bool:
    sizes = [obs_dim, *hidden, action_dim]
    return batch * max(a * b for a, b in zip(sizes[:-1], sizes[1:])) <= POLICY_WITHOUT_DOTS_MAX_ELEMENTS


def policy_without_dots(network: ActorCritic, params, obs):
    """`network.apply(params, obs, method=ActorCritic.policy)`, the same
    function up to float rounding order, with no dot product in its program."""
    act = _ACTIVATIONS[network.activation]
    layers = params["params"]["actor"]
    x = obs
    for i in range(len(network.hidden) + 1):
        x = _matmul_without_dot(x, layers[f"Dense_{i}"]["kernel"]) + layers[f"Dense_{i}"]["bias"]
        if i < len(network.hidden):
            x = act(x)
    if network.discrete:
        return x
    return x, jnp.broadcast_to(params["params"]["log_std"], x.shape)


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


# ----------------------------------------------------------------------------- recurrent actor-critic

MEMORY_CELLS = ("gru", "lstm")


class RecurrentActorCritic(nn.Module):
    """An encoder layer, a recurrent core (GRU or LSTM) and an actor and a
    critic head, for partially observed tasks. One core is shared by both
    heads: the critic needs the same history the actor remembers.

    The core's carry is explicit: `__call__(carry, obs) -> (carry, (policy
    parameters, value))` is one time step over any leading batch shape, and
    the caller resets the carry where an episode ended (`reset_carry`).
    `encode`, `core` and `heads` are the same three stages apart, so an
    unroll over time can run the encoder and the heads on the whole sequence
    at once and only the core step by step.

    Every kernel is orthogonal (sqrt(2) for the encoder and the heads' hidden
    layers, 1 for the core's, the heads' outputs as `ActorCritic`'s), all
    drawn at once in `init_with_output` as `ActorCritic` does: kernel by
    kernel, the initialiser alone took longer to compile than the update.

    The submodules are not named `actor` and `critic`: a caller that runs the
    stateless `ActorCritic.policy` or `.value` on this network (single
    observations, no carry) fails with the message below instead of running
    a head on the raw observation."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    memory: str = "gru"
    memory_size: int = 64

    def setup(self):
        if self.memory not in MEMORY_CELLS:
            raise ValueError(f"memory must be one of {MEMORY_CELLS}, got {self.memory!r}")
        if isinstance(self.parent, nn.Module):
            raise TypeError("RecurrentActorCritic fills its kernels in its own init: initialise it on its own, "
                            "not as a submodule of another module")
        # kernels start at zero and `init_with_output` fills them all at once
        # (which also keeps flax's LAPACK-QR recurrent initialiser out: it can
        # deadlock under vmap on CPU, see `orthogonal`)
        zeros = nn.initializers.zeros
        self.encoder = nn.Dense(self.hidden[0], kernel_init=zeros, bias_init=zeros)
        cell = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[self.memory]
        self.cell = cell(self.memory_size, kernel_init=zeros, recurrent_kernel_init=zeros)
        self.policy_head = MLP(self.hidden[1:], self.action_dim, self.activation, ActorCritic.ACTOR_OUT_SCALE,
                               zero_kernels=True)
        self.value_head = MLP(self.hidden[1:], 1, self.activation, ActorCritic.CRITIC_OUT_SCALE, zero_kernels=True)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    @nn.nowrap
    def init_with_output(self, rngs, *args, method=None, **kwargs):
        """flax's init, then every kernel orthogonal from one draw (`orthogonal_stack`)."""
        _, variables = super().init_with_output(rngs, *args, method=method, **kwargs)
        variables = flax.core.unfreeze(variables)
        params = variables["params"]
        key = rngs["params"] if isinstance(rngs, dict) else rngs
        kernels = [(("encoder",), np.sqrt(2.0))]
        kernels += [(("cell", gate), 1.0) for gate in sorted(params["cell"]) if "kernel" in params["cell"][gate]]
        for head, out_scale in (("policy_head", ActorCritic.ACTOR_OUT_SCALE),
                                ("value_head", ActorCritic.CRITIC_OUT_SCALE)):
            for i, scale in enumerate(kernel_scales(self.hidden[1:], out_scale)):
                kernels.append(((head, f"Dense_{i}"), scale))

        def layer(path):
            node = params
            for name in path:
                node = node[name]
            return node

        shapes = [layer(path)["kernel"].shape for path, _ in kernels]
        for (path, _), kernel in zip(kernels, orthogonal_stack(key, shapes, [scale for _, scale in kernels])):
            layer(path)["kernel"] = kernel.astype(layer(path)["kernel"].dtype)
        call_kwargs = {k: v for k, v in kwargs.items() if k not in ("mutable", "capture_intermediates")}
        return self.apply(variables, *args, method=method, **call_kwargs), variables

    @nn.nowrap
    def initial_carry(self, batch_shape=()):
        """The carry at an episode's start (zeros), for `batch_shape` envs."""
        zeros = jnp.zeros((*batch_shape, self.memory_size), jnp.float32)
        return (zeros, zeros) if self.memory == "lstm" else zeros

    def encode(self, obs):
        return _ACTIVATIONS[self.activation](self.encoder(obs))

    def core(self, carry, x):
        return self.cell(carry, x)

    def heads(self, h):
        out = self.policy_head(h)
        dist = out if self.discrete else (out, jnp.broadcast_to(self.log_std, out.shape))
        return dist, self.value_head(h)[..., 0]

    def __call__(self, carry, obs):
        carry, h = self.core(carry, self.encode(obs))
        return carry, self.heads(h)

    @property
    def actor(self):
        raise ConfigError(f"this policy has memory ({self.memory}): it acts on a history through a carry, not on "
                        "single observations; call it with its carry (`__call__(carry, obs)`) or over a sequence "
                        "(`unroll`)")

    critic = actor


def reset_carry(carry, initial, reset):
    """`initial` where `reset` (one flag per leading batch index), else `carry`."""
    return jax.tree.map(lambda c, i: jnp.where(reset.reshape(reset.shape + (1,) * (c.ndim - reset.ndim)), i, c),
                        carry, initial)


def unroll(network: RecurrentActorCritic, params, carry, obs, starts, forward_mode: bool = False):
    """The recurrent network over sequences [time, envs, ...] from the carry
    the first step acted with, the carry reset where `starts` (an episode
    began): the encoder and heads on every step at once, the core step by
    step. Returns (policy parameters, values), [time, envs, ...].

    An LSTM runs through `lstm_unroll` (its backward pass written out, about
    half the time), which supports reverse-mode differentiation only;
    `forward_mode=True` steps flax's cell instead, for callers that take
    `jax.jvp` through it (BARFI's Hessian-vector products)."""
    x = network.apply(params, obs, method=RecurrentActorCritic.encode)
    if network.memory == "lstm" and not forward_mode:
        h = lstm_unroll(params["params"]["cell"], carry, x, starts)
    else:
        def core_step(carry, inputs):
            x_t, start = inputs
            carry = reset_carry(carry, network.initial_carry(start.shape), start)
            return network.apply(params, carry, x_t, method=RecurrentActorCritic.core)

        _, h = jax.lax.scan(core_step, carry, (x, starts))
    return network.apply(params, h, method=RecurrentActorCritic.heads)


# ----------------------------------------------------------------------------- a whole LSTM sequence at once

def lstm_unroll(cell_params, carry, x, starts):
    """flax's `OptimizedLSTMCell` (its parameters `cell_params`, carry `(c, h)`)
    over a sequence `x` [time, batch, features], the carry zeroed where
    `starts` [time, batch] is set (an episode began). Returns the hidden
    state of every step, [time, batch, units].

    The same numbers as stepping the cell under `lax.scan` (to float
    rounding), in about half the time with its gradient on CPU
    (benchmarks/RESULTS.md): the input projection and every weight gradient
    are one batched product each, outside the loop; the backward loop is
    written by hand (`_lstm_core`), so it carries only the two per-step
    gradients instead of the weight-gradient sums autodiff would carry; and
    the gates are sigmoids computed through tanh. Reverse mode only:
    `jax.jvp` through it is refused by JAX."""
    gates = "ifgo"
    w_in = jnp.concatenate([cell_params[f"i{g}"]["kernel"] for g in gates], axis=-1)
    w_rec = jnp.concatenate([cell_params[f"h{g}"]["kernel"] for g in gates], axis=-1)
    bias = jnp.concatenate([cell_params[f"h{g}"]["bias"] for g in gates], axis=-1)
    c0, h0 = carry
    keep = 1.0 - starts.astype(x.dtype)
    return _lstm_core(w_rec, x @ w_in + bias, keep, c0, h0)


def _half_but_g(units):
    """sigmoid(z) = (1 + tanh(z / 2)) / 2: one tanh over all four gates, with
    z halved except in g, costs half of XLA:CPU's logistic in the loop."""
    return jnp.concatenate([jnp.full(2 * units, 0.5), jnp.ones(units), jnp.full(units, 0.5)])


def _lstm_gates(z_scaled, units):
    """(i, f, g, o) from pre-activations already multiplied by `_half_but_g`."""
    t = jnp.tanh(z_scaled)
    return (0.5 + 0.5 * t[..., :units], 0.5 + 0.5 * t[..., units:2 * units], t[..., 2 * units:3 * units],
            0.5 + 0.5 * t[..., 3 * units:])


@jax.custom_vjp
def _lstm_core(w_rec, z_in, keep, c0, h0):
    """Hidden states [time, batch, units] from input pre-activations z_in
    [time, batch, 4 units] (gates i, f, g, o), the recurrent kernel and the
    carry (c0, h0), multiplied by `keep` [time, batch] before each step."""
    return _lstm_core_forward(w_rec, z_in, keep, c0, h0)[0]


def _lstm_core_forward(w_rec, z_in, keep, c0, h0):
    units = h0.shape[-1]
    scale = _half_but_g(units)
    w_scaled = w_rec * scale

    def step(carry, inputs):
        c, h = carry
        z_t, keep_t = inputs
        i, f, g, o = _lstm_gates(z_t + (h * keep_t) @ w_scaled, units)
        c = f * (c * keep_t) + i * g
        h = o * jnp.tanh(c)
        return (c, h), (c, h)

    _, (cs, hs) = jax.lax.scan(step, (c0, h0), (z_in * scale, keep[..., None]))
    # only c and h are kept: the gates are recomputed after the loop, as one
    # batched product, which is cheaper than storing them step by step
    return hs, (w_rec, z_in, keep, c0, h0, cs, hs)


def _lstm_core_backward(saved, d_hs):
    w_rec, z_in, keep, c0, h0, cs, hs = saved
    units = h0.shape[-1]
    keep = keep[..., None]
    h_in = jnp.concatenate([h0[None], hs[:-1]]) * keep   # the carry each step started from
    c_in = jnp.concatenate([c0[None], cs[:-1]]) * keep
    i, f, g, o = _lstm_gates((z_in + h_in @ w_rec) * _half_but_g(units), units)
    tanh_c = jnp.tanh(cs)
    # everything that does not depend on the incoming gradient, batched:
    # d c_t / d h_t, and d z_t / d (c_t, c_t, c_t, h_t) gate by gate
    dc_dh = o * (1.0 - tanh_c * tanh_c)
    dz_dchh = jnp.concatenate([g * i * (1.0 - i), c_in * f * (1.0 - f), i * (1.0 - g * g),
                               tanh_c * o * (1.0 - o)], axis=-1)
    forget = f * keep
    w_rec_t = w_rec.T

    def step(carry, inputs):
        dc_next, dh_next = carry
        dh_out, dc_dh_t, dz_dchh_t, forget_t, keep_t = inputs
        dh = dh_out + dh_next
        dc = dc_next + dh * dc_dh_t
        dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * dz_dchh_t
        return (dc * forget_t, (dz @ w_rec_t) * keep_t), dz

    (dc0, dh0), dz = jax.lax.scan(step, (jnp.zeros_like(c0), jnp.zeros_like(h0)),
                                  (d_hs, dc_dh, dz_dchh, forget, keep), reverse=True)
    d_w_rec = jnp.einsum("tbh,tbg->hg", h_in, dz)
    return d_w_rec, dz, jnp.zeros_like(keep[..., 0]), dc0, dh0


_lstm_core.defvjp(_lstm_core_forward, _lstm_core_backward)
