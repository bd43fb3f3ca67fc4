"""One population command over several processes (hosts) with jax.distributed.

    distributed.add_flags(parser)      # --coordinator HOST:PORT --num-processes N --process-id I
    distributed.initialize(args)       # checks the flags, then jax.distributed.initialize (before any JAX work)
    run = distributed.start(args.out, name, config, config_cls, resume=..., members=...)   # not experiment.start

Every process runs the same command; the member axis of the population is
sharded over the devices of all of them (`src.population`), so each process
computes its share and the collectives between them (PBT's exploit, a
gather of the metrics) go over the network (gloo on CPU, NCCL on GPUs).

Who writes what: process 0 writes the run directory (`--out`, required with
several processes: every process must name the same one), exactly the files
one process would write. A sharded checkpoint (PBT's population, `train`'s
seeds) is written by all of them together (orbax: each process its own shards,
process 0 the metadata); a state every process holds whole (the ES of `meta
lpo`, the archives of `meta qd`) by process 0 alone. Either way the run
directory must be on a filesystem every process sees (one machine, NFS, a
cluster's shared disk). The other processes write their copies of the rows,
summary and plots to a private temporary directory, removed when they exit:
nothing of theirs can clobber process 0's files. `--resume` works as with one
process, with every process given `--out DIR --resume` and the same flags:
they read the same config.yaml and checkpoint.
"""
import argparse
import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

from src import experiment
from src.config import ConfigError

FLAGS = ("coordinator", "num_processes", "process_id")


def add_flags(parser: argparse.ArgumentParser):
    """The three flags of a multi-process launch (all or none)."""
    group = parser.add_argument_group("several processes (jax.distributed; all three or none)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, which every process connects to")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, default=None, metavar="I", help="this process, 0..N-1")
    return parser


def check(coordinator, num_processes, process_id):
    """(host, port, num_processes, process_id), or None when no flag is given;
    a missing flag, a bad address or an id out of range stops here."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"several processes need all of --coordinator HOST:PORT, --num-processes N and "
                          f"--process-id I; missing {', '.join(missing)}")
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator expects HOST:PORT (a port in 1..65535), got {coordinator!r}")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in 0..{num_processes - 1} (--num-processes {num_processes}), "
                          f"got {process_id}")
    return host, int(port), num_processes, process_id


def initialize(args) -> bool:
    """jax.distributed.initialize from the flags (a no-op without them, or
    with --num-processes 1). Must run before JAX computes anything: JAX fixes
    its device list when its backend starts. Returns whether it connected."""
    import jax
    from jax._src import xla_bridge

    checked = check(*(getattr(args, name, None) for name in FLAGS))
    if checked is None or checked[2] == 1:
        return False
    host, port, num_processes, process_id = checked
    if jax.distributed.is_initialized():   # a second command in the same process (tests)
        if (jax.process_count(), jax.process_index()) != (num_processes, process_id):
            raise ConfigError(f"this process already joined a group of {jax.process_count()} as process "
                              f"{jax.process_index()}")
        return True
    if xla_bridge.backends_are_initialized():
        raise ConfigError("--coordinator: JAX already started its backend in this process; "
                          "jax.distributed must be initialised before any JAX computation")
    # CPU devices of different processes need a collectives library to talk
    # (GPUs use NCCL and ignore this setting)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"{host}:{port}", num_processes=num_processes,
                               process_id=process_id)
    return True


# ----------------------------------------------------------------------------- the run directory

def is_leader() -> bool:
    import jax
    return jax.process_index() == 0


class FollowerRun(experiment.Run):
    """A process other than 0: the shared checkpoint (saved and restored
    together with process 0, which alone writes checkpoint.json), every other
    file in `path`, its private directory."""

    def __init__(self, shared, path, config, members, resumed, unit):
        super().__init__(path, config, members, resumed, unit)
        self.shared = shared

    def progress(self) -> dict:
        path = os.path.join(self.shared, "checkpoint.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def save(self, state, done, name="checkpoint", **extra):
        from src import checkpoint
        if checkpoint.is_process_local(state):
            return   # the same state on every process (ES, QD): process 0 writes it alone
        checkpoint.save(os.path.join(self.shared, name), state)   # collective: every process writes its shards

    def restore(self, like, name="checkpoint"):
        done = self.progress().get(experiment._progress_key(name, self.unit), 0)
        if not done:
            return like, 0
        from src import checkpoint
        return checkpoint.restore(os.path.join(self.shared, name), like), done


def _broadcast_bytes(data: bytes, size: int) -> bytes:
    """Process 0's `data` (at most `size` bytes) on every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    buffer = np.zeros(size + 4, np.uint8)
    buffer[:4] = np.frombuffer(len(data).to_bytes(4, "little"), np.uint8)
    buffer[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return got[4:4 + int.from_bytes(got[:4].tobytes(), "little")].tobytes()


def _digest(config, members) -> bytes:
    text = json.dumps({"config": dataclasses.asdict(config), "members": members}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).digest()


def start(out, name, config, config_cls, *, members=None, **kwargs) -> experiment.Run:
    """`experiment.start` for a command that may run on several processes.

    One process: exactly `experiment.start`. Several: process 0 opens the run
    directory; the others learn whether it could (else they would wait in the
    first collective for ever), then check that they run the same config and
    members as process 0, before anything compiles."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return experiment.start(out, name, config, config_cls, members=members, **kwargs)
    if not out:
        raise ConfigError(f"with {jax.process_count()} processes --out is required: every process must name the "
                          "same run directory (on a filesystem they all see, for the checkpoint)")
    if members is not None and len(members) % jax.device_count():
        raise ConfigError(f"{len(members)} members do not split over the {jax.device_count()} devices of "
                          f"{jax.process_count()} processes: use a multiple of {jax.device_count()}")
    run, error = None, ""
    if is_leader():
        try:
            run = experiment.start(out, name, config, config_cls, members=members, **kwargs)
        except (ConfigError, OSError) as e:
            error = str(e) or type(e).__name__
    error_0 = _broadcast_bytes(error.encode()[:4000], 4000).decode(errors="replace")
    if error_0:
        raise ConfigError(error if is_leader() else f"process 0 could not open the run directory: {error_0}")
    if run is None:   # a follower: read the stored config on --resume, keep its own files elsewhere
        scratch = tempfile.mkdtemp(prefix=f"process{jax.process_index()}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        mine = experiment.start(out if kwargs.get("resume") else os.path.join(scratch, "run"), name, config,
                                config_cls, members=members, **kwargs)
        path = os.path.join(scratch, "run")
        os.makedirs(path, exist_ok=True)
        run = FollowerRun(os.path.abspath(out), path, mine.config, mine.members, mine.resumed, mine.unit)
    # every process learns of a mismatch (else the others would wait for it in the first collective)
    digests = np.asarray(multihost_utils.process_allgather(np.frombuffer(_digest(run.config, run.members), np.uint8)))
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if differ:
        who = f"process {differ[0]} runs" if len(differ) == 1 else f"processes {', '.join(map(str, differ))} run"
        raise ConfigError(f"{who} another config or population than process 0: start every process with the same "
                          "command (only --process-id differs)")
    return run
