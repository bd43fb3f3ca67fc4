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
    as divide it evenly (one device when nothing else divides)."""
    devices = jax.local_devices()
    used = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    mesh = Mesh(np.array(devices[:used]), ("members",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec("members"))


def distribute(tree, num_members: int):
    """Place a pytree whose leaves have a leading member axis across devices."""
    return jax.device_put(tree, member_sharding(num_members))
