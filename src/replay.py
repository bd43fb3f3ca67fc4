"""A replay buffer as a pure-JAX circular buffer: a pytree that lives in the
agent's train state, so it is jitted, vmapped and checkpointed with it.

    buffer = replay.init(capacity, example_transition)   # example: one unbatched transition
    buffer = replay.add(buffer, transitions)              # leading axis: n new transitions
    batch = replay.sample(buffer, key, n)                 # uniform over the filled part

Transitions are any pytree of arrays. Storage is one array per leaf with a
leading `capacity` axis; `position` is where the next write goes and `size`
how many slots hold data. When full, the oldest transitions are overwritten.
"""
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Buffer:
    data: object          # pytree, each leaf [capacity, ...]
    position: jax.Array   # int32, next slot to write
    size: jax.Array       # int32, filled slots (<= capacity)

    @property
    def capacity(self) -> int:
        return jax.tree.leaves(self.data)[0].shape[0]


def init(capacity: int, example) -> Buffer:
    """An empty buffer for `capacity` transitions shaped like `example` (one transition)."""
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")
    data = jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example)
    return Buffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def add(buffer: Buffer, transitions) -> Buffer:
    """Write a batch of transitions (leading axis n <= capacity), wrapping around."""
    capacity = buffer.capacity
    n = jax.tree.leaves(transitions)[0].shape[0]
    if n > capacity:
        raise ValueError(f"cannot add {n} transitions at once to a buffer of capacity {capacity}")
    index = (buffer.position + jnp.arange(n, dtype=jnp.int32)) % capacity
    data = jax.tree.map(lambda store, new: store.at[index].set(new.astype(store.dtype)), buffer.data, transitions)
    return Buffer(data, (buffer.position + n) % capacity, jnp.minimum(buffer.size + n, capacity))


def sample(buffer: Buffer, key, n: int):
    """n transitions drawn uniformly, with replacement, from the filled slots.
    The buffer must not be empty (the result is then slot 0, meaningless)."""
    index = jax.random.randint(key, (n,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda store: store[index], buffer.data)


def nbytes(capacity: int, example) -> int:
    """Bytes a buffer of `capacity` transitions shaped like `example` holds."""
    leaves = jax.tree.leaves(example)
    return capacity * sum(int(jnp.size(x)) * jnp.asarray(x).dtype.itemsize for x in leaves)
