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


def is_process_local(tree) -> bool:
    """Whether every leaf lives whole on this process (numpy, or a jax.Array
    on its own devices), as a state replicated by hand on every process is
    (an ES or QD state computed from gathered fitness); a member-sharded
    population state spans the processes and is not."""
    return all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


def _checkpointer(tree):
    # With several processes orbax makes every save and restore a collective
    # of all of them. A process-local tree is written by one process alone
    # (src.experiment.Run: process 0) and read by each on its own, so it
    # gets a checkpointer of this process only.
    if _one_process_of_several(tree):
        me = jax.process_index()
        options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                                     barrier_sync_key_prefix=f"process{me}")
        return ocp.StandardCheckpointer(multiprocessing_options=options)
    return ocp.StandardCheckpointer()


def _one_process_of_several(tree) -> bool:
    return jax.process_count() > 1 and is_process_local(tree)


def save(path, tree):
    """Write `tree` to the directory `path` (replacing what is there)."""
    path = os.path.abspath(path)
    tree = _to_storable(tree)
    checkpointer = _checkpointer(tree)
    if _one_process_of_several(tree):
        # orbax refuses a jax.Array on one process's devices once there are
        # several processes (it cannot tell which owns it); as numpy it is data
        tree = jax.tree.map(np.asarray, tree)
    with checkpointer:
        checkpointer.save(path, tree, force=True)


def restore(path, like):
    """Read the checkpoint at `path` into the structure, shapes and dtypes of `like`."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    storable = _to_storable(like)
    local = _one_process_of_several(storable)
    if local:   # read back as numpy (as saved), then onto this process's default device
        target = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), storable)
    else:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                             sharding=getattr(x, "sharding", None)), storable)
    with _checkpointer(storable) as checkpointer:
        try:
            restored = checkpointer.restore(path, target)
        except (ValueError, KeyError) as error:
            raise ConfigError(f"checkpoint at {path} does not match this config's train state: {error}") from None
    if local:
        restored = jax.tree.map(jnp.asarray, restored)
    return jax.tree.map(lambda r, x: jax.random.wrap_key_data(r) if _is_typed_key(x) else r, restored, like)
