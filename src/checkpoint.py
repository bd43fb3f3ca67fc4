"""Checkpoints with orbax: the whole train state (optimiser state included),
restored into the structure of a freshly initialised state, so a checkpoint
from another config fails loudly instead of loading into the wrong shapes."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from src.config import ConfigError


def _is_typed_key(x):
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree):
    # orbax stores arrays, not typed PRNG keys: keep their raw bits.
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def save(path, tree):
    """Write `tree` to the directory `path` (replacing what is there)."""
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _to_storable(tree), force=True)


def restore(path, like):
    """Read the checkpoint at `path` into the structure, shapes and dtypes of `like`."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
                          _to_storable(like))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(path, target)
        except (ValueError, KeyError) as error:
            raise ConfigError(f"checkpoint at {path} does not match this config's train state: {error}") from None
    return jax.tree.map(lambda r, x: jax.random.wrap_key_data(r) if _is_typed_key(x) else r, restored, like)
