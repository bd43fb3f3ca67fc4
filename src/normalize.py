"""Running mean and variance (parallel Welford), held in the agent's state
and shared by all of one agent's environments."""
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
    mean: jnp.ndarray
    var: jnp.ndarray
    count: jnp.ndarray


def init(shape) -> RunningStats:
    return RunningStats(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.float32(1e-4))


def update(stats: RunningStats, batch) -> RunningStats:
    """Merge a batch (leading axes are samples) into the statistics."""
    batch = batch.reshape(-1, *stats.mean.shape)
    batch_mean = batch.mean(0)
    batch_var = batch.var(0)
    batch_count = jnp.float32(batch.shape[0])
    delta = batch_mean - stats.mean
    total = stats.count + batch_count
    mean = stats.mean + delta * batch_count / total
    m2 = stats.var * stats.count + batch_var * batch_count + delta**2 * stats.count * batch_count / total
    return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats, x, clip=10.0):
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)


def scale(stats: RunningStats, x):
    """Divide by the standard deviation only (reward scaling keeps the sign)."""
    return x / jnp.sqrt(stats.var + 1e-8)
