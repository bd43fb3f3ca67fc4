"""Populations across devices: the member axis of a vmapped run is sharded
over the local devices, so 8 seeds on a 2-core CPU or 2048 on 8 GPUs run as
one program with no Python loop over members."""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def use_all_cpu_cores():
    """Expose each CPU core as a JAX device (call before JAX starts its backend).

    XLA runs a small-network training step on about one core; as separate
    devices, the cores each take a share of the population. Leaves XLA_FLAGS
    alone when the user already chose a device count.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(cores or 1, 1)}".strip()


def member_sharding(num_members: int):
    """A sharding that splits a leading member axis over as many local devices
    as divide it evenly (one device when nothing else divides). With several
    processes (`src.distributed`), over every device of every process, which
    the members must split over evenly (`population_mesh`)."""
    if jax.process_count() > 1:
        return NamedSharding(population_mesh(num_members), PartitionSpec("members"))
    devices = jax.local_devices()
    used = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    mesh = Mesh(np.array(devices[:used]), ("members",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("members"))


def distribute(tree, num_members: int):
    """Place a pytree whose leaves have a leading member axis across devices
    (with several processes, each holds the whole tree and keeps its share)."""
    return place(tree, member_sharding(num_members))


def place(tree, sharding):
    """`jax.device_put(tree, sharding)`, where with several processes every
    process holds the same values and keeps the slices its devices own.
    (device_put would first check, leaf by leaf, that the processes agree: a
    collective per leaf, and NaN != NaN fails a state that holds NaN by
    design, such as the return of an episode not yet ended.)"""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        typed = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        data = np.asarray(jax.random.key_data(x) if typed else x)
        out = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
        return jax.random.wrap_key_data(out, impl=jax.random.key_impl(x)) if typed else out

    return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------- population x seeds

def population_mesh(num_members: int, devices=None):
    """A 1-D mesh ("members", Auto axis type) over every device of every
    process, or over `devices`. The population must split evenly over it: with
    several processes each one must own a share, so no device may sit idle."""
    from src.config import ConfigError

    devices = list(jax.devices() if devices is None else devices)
    if jax.process_count() > 1:
        if num_members % len(devices):
            raise ConfigError(f"population {num_members} must be a multiple of the {len(devices)} devices across "
                              f"{jax.process_count()} processes")
        used = len(devices)
    else:
        used = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    return Mesh(np.array(devices[:used]), ("members",), axis_types=(jax.sharding.AxisType.Auto,))


def _raw_keys(keys):
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys)
    return keys


def make_evaluator(fitness, num_members: int, batch_size: int | None = None, mesh=None):
    """Compile-once evaluation of `fitness(member_params, key) -> pytree of
    scalars` over a population and seeds.

    Returns `evaluate(params, keys) -> pytree of [num_members, seeds] arrays`
    (global jax arrays sharded over members). `params` has a leading member
    axis; `keys` are raw uint32 keys of shape [num_members, seeds, 2] (or typed
    keys [num_members, seeds]): antithetic pairs get the same keys from the
    caller. Each device vmaps over seeds and runs its share of members
    `batch_size` at a time (`lax.map`; None: all at once), so memory scales
    with the batch, not the population. The result does not depend on the number of devices: a
    device's members go through the same batch-shaped program either way.
    """
    from src.config import ConfigError

    mesh = mesh or population_mesh(num_members)
    devices = mesh.devices.size
    per_device = num_members // devices
    if num_members % devices:
        raise ConfigError(f"population {num_members} does not split over {devices} devices")
    if batch_size is not None and not 1 <= batch_size <= per_device:
        raise ConfigError(f"batch_size must be in 1..{per_device} (members per device), got {batch_size}")
    spec = PartitionSpec("members")
    sharding = NamedSharding(mesh, spec)

    def one_member(args):
        params, keys = args
        return jax.vmap(fitness, in_axes=(None, 0))(params, keys)

    def local(params, keys):
        if batch_size is None or batch_size >= per_device:
            return jax.vmap(one_member)((params, keys))
        # (lax.map without a batch size would run members one at a time)
        return jax.lax.map(one_member, (params, keys), batch_size=batch_size)

    # check_vma off: fitness functions (whole PPO runs) are written for plain
    # jit and do not carry manual-axis annotations.
    program = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False))

    def place(x):
        x = np.asarray(x)
        # every process holds the same full array and contributes its slices
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def evaluate(params, keys):
        keys = _raw_keys(keys)
        if keys.shape[0] != num_members or jax.tree.leaves(params)[0].shape[0] != num_members:
            raise ConfigError(f"expected {num_members} members, got params with "
                              f"{jax.tree.leaves(params)[0].shape[0]} and keys with {keys.shape[0]}")
        return program(jax.tree.map(place, params), place(keys))

    evaluate.program = program
    evaluate.mesh = mesh
    evaluate.place = place
    return evaluate


def gather(tree):
    """Bring a (possibly multi-process) sharded result to every host as numpy."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


def evaluate(fitness, params, keys, batch_size: int | None = None, mesh=None):
    """One-shot `make_evaluator(...)(params, keys)`, gathered to numpy."""
    num_members = jax.tree.leaves(params)[0].shape[0]
    return gather(make_evaluator(fitness, num_members, batch_size, mesh)(params, keys))
