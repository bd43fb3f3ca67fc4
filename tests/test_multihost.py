"""Population commands over several processes (src/distributed.py).

Two processes on this machine, one CPU device each, joined with
`--coordinator 127.0.0.1:PORT --num-processes 2 --process-id I`, run `train`
(and, in the slow tests, `meta pbt`, `meta lpo` and `meta qd`, stopped and resumed); one process
with two host devices runs the same commands: the same members per device.
Every file of the run directories must be the same byte for byte (timings
aside), process 1 must have written nothing there, and bad flags must stop
before anything starts. JAX fixes its device list and
process group when it starts, so every run is a fresh subprocess
(tests/population_worker.py `steps`).
"""
import csv
import json
import os
import re
import subprocess
import sys

import pytest

import run
from src import distributed
from tests.population_worker import free_port
from tests.xla_level import with_suite_level

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny runs: the cost is compiling each program (three processes compile it)
TRAIN = ["train", "--total-steps", "128", "--seeds", "2", "--no-progress", "--set", "num_envs=2",
         "--set", "num_steps=16", "--set", "hidden=[8]", "--set", "num_epochs=1", "--set", "num_minibatches=1"]
PBT = ["meta", "pbt", "--config", "configs/pbt_ppo_cartpole.yaml", "--population", "2", "--ready", "2",
       "--truncation", "0.5", "--set", "inner.total_steps=128", "--set", "inner.num_envs=2",
       "--set", "inner.num_steps=16", "--set", "inner.hidden=[8]", "--set", "inner.num_epochs=1",
       "--set", "inner.num_minibatches=1", "--set", "checkpoint_every=1", "--set", "eval_episodes=1",
       "--no-progress"]
# LPO and QD at their smallest (tests/test_lpo.py's and tests/test_qd.py's tiny runs)
LPO = ["meta", "lpo", "--pop", "4", "--generations", "2", "--seeds", "1", "--no-progress",
       "--set", "init=random", "--set", "sigma=0.3", "--set", "eval_seeds=2", "--set", "checkpoint_every=1",
       "--set", "inner.total_steps=256", "--set", "inner.num_envs=2", "--set", "inner.num_steps=16",
       "--set", "inner.hidden=[8]", "--set", "inner.num_epochs=1", "--set", "inner.num_minibatches=2"]
QD = ["meta", "qd", "--env", "hard-maze", "--method", "map-elites,novelty", "--seeds", "2", "--generations", "4",
      "--batch", "8", "--set", "checkpoint_every=2", "--set", "novelty_k=3", "--set", "hidden=[8]",
      "--set", "grid=[5,5]", "--set", "episode_steps=30", "--no-progress"]
# (and in summary.json every "session_*" key: QD's figures of the session that ended the run)
TIMINGS = {"summary.json": ("compile_s", "run_s", "env_steps_per_s", "seconds_this_session"),
           "fitness.csv": ("seconds",)}


def start(steps, devices):
    # XLA's backend optimisation level 0 halves the compile, on both sides of
    # the comparison alike (it compares process layouts, not recorded numbers)
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": with_suite_level(f"--xla_force_host_platform_device_count={devices}")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "tests.population_worker", "steps", json.dumps(steps)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, json.loads(out.strip().splitlines()[-1])


def files(path):
    """{name: bytes} of a run directory, checkpoint/ aside (orbax's files
    name the writing process); summary.json as a dict without its timings."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isdir(full) or name.endswith(".png"):
            out[name] = os.path.isdir(full)
        elif name == "summary.json":
            with open(full) as f:
                out[name] = untimed(json.load(f))
        elif name in TIMINGS:
            with open(full, newline="") as f:
                out[name] = [{k: v for k, v in row.items() if k not in TIMINGS[name]} for row in csv.DictReader(f)]
        else:
            with open(full, "rb") as f:
                out[name] = f.read()
    return out


def untimed(tree):
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items()
                if k not in TIMINGS["summary.json"] and not k.startswith("session_")}
    return [untimed(v) for v in tree] if isinstance(tree, list) else tree


def launch(tmp_path, make_steps):
    """`make_steps(out, group)` (run.py argv lists writing under `out`, with
    the `group` flags) in two processes of one device each, side by side with
    one process of two devices: the same members per device. Returns
    {"multi": [(stdout, result) of process 0, of process 1], "one": (stdout, result)}."""
    group = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "{id}"]
    multi = make_steps(tmp_path / "multi", group)
    procs = [start([[a.format(id=i) for a in step] for step in multi], devices=1) for i in range(2)]
    procs.append(start(make_steps(tmp_path / "one", []), devices=2))   # three processes share the cores
    p0, p1, one = (finish(p) for p in procs)
    print(f"CPU seconds: process 0 {p0[1]['cpu_s']:.1f}, process 1 {p1[1]['cpu_s']:.1f}, "
          f"one process {one[1]['cpu_s']:.1f}")
    assert p0[1]["processes"] == p1[1]["processes"] == 2 and one[1]["processes"] == 1
    return {"multi": [p0, p1], "one": one}


def assert_same_run_directories(tmp_path, name, multi):
    """Byte for byte, timings aside; process 1 wrote its copies in a private
    directory (printed after `->`), removed when it exited."""
    two, one = files(tmp_path / "multi" / name), files(tmp_path / "one" / name)
    assert set(two) == set(one), name
    for key in two:
        assert two[key] == one[key], (name, key)
    private = re.findall(r"-> (\S*process1-\S+)", multi[1][0])
    assert private and not any(p.startswith(str(tmp_path)) or os.path.exists(p) for p in private)


def test_two_processes_train_as_one_process(tmp_path):
    """`train`, 2 seeds: two processes of one device each write the run
    directory one process of two devices writes. Before it, in the two
    processes, three commands stop both before compiling: 3 seeds (not a
    multiple of the 2 devices); another learning rate in process 1 than in
    process 0; a used run directory (process 0's error reaches process 1)."""
    def make_steps(out, group):
        train = [*TRAIN, "--out", str(out / "train"), *group]
        if not group:
            return [train]
        mismatch = [*TRAIN, "--out", str(out / "mismatch"), "--set", "lr=0.00{id}5", *group]
        return [[*TRAIN, "--seeds", "3", "--out", str(out / "odd"), *group], mismatch, mismatch, train]

    runs = launch(tmp_path, make_steps)
    for i, (stdout, result) in enumerate(runs["multi"]):
        odd, mismatch, used, train = result["steps"]
        assert odd["code"] == 2 and "3 members do not split over the 2 devices of 2 processes" in odd["error"]
        assert mismatch["code"] == 2 and "process 1 runs another config or population" in mismatch["error"]
        assert used["code"] == 2 and "is not empty" in used["error"]
        assert ("process 0 could not open the run directory" in used["error"]) == (i == 1)
        assert train["code"] == 0, result
        assert "2 device(s) of 2 processes" in stdout
    assert [step["code"] for step in runs["one"][1]["steps"]] == [0]
    assert not (tmp_path / "multi" / "odd").exists()
    assert_same_run_directories(tmp_path, "train", runs["multi"])
    # the two members differ (else equal files would say little)
    with open(tmp_path / "one" / "train" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["entropy"] != rows[-2]["entropy"]


@pytest.mark.slow   # about 3 min on the shared 2-core box: three processes compile PBT's and train's programs twice
def test_two_processes_stop_and_resume_pbt_and_train_as_one_uninterrupted_process(tmp_path):
    """PBT (population 2, 2 rounds, a checkpoint after each) and `train` (2
    chunks), each stopped after its first checkpoint and resumed by both
    processes (the checkpoint written and read by the two together), against
    one process of two devices that runs them uninterrupted. PBT's exploit
    copies members between the processes."""
    def make_steps(out, group):
        pbt, train = [*PBT, "--out", str(out / "pbt"), *group], [*TRAIN, "--out", str(out / "train"), *group]
        train = [*train, "--set", "checkpoint_every=2"]
        if not group:
            return [pbt, train]
        resume = ["--resume", "--no-progress", *group]
        return [[*pbt, "--stop-at", "1"], ["meta", "pbt", "--out", str(out / "pbt"), *resume],
                [*train, "--stop-at", "2"], ["train", "--out", str(out / "train"), *resume]]

    runs = launch(tmp_path, make_steps)
    for stdout, result in runs["multi"]:
        assert [step["code"] for step in result["steps"]] == [0] * 4, result
        assert "resuming from round 1" in stdout and "resuming from iteration 2" in stdout
    assert_same_run_directories(tmp_path, "pbt", runs["multi"])
    assert_same_run_directories(tmp_path, "train", runs["multi"])
    # in each of the 2 rounds the worse of the 2 members became a copy of the better
    with open(tmp_path / "one" / "pbt" / "lineage.csv") as f:
        lineage = list(csv.DictReader(f))
    assert len(lineage) == 2 * 2
    assert all(sum(r["parent"] != r["member"] for r in lineage if r["round"] == k) == 1 for k in ("1", "2"))


@pytest.mark.slow   # about 3 min on the shared 2-core box: three processes compile LPO's and QD's programs
def test_two_processes_stop_and_resume_lpo_and_qd_as_one_uninterrupted_process(tmp_path):
    """`meta lpo` (population 4, 2 generations) and `meta qd` (MAP-Elites and
    novelty search, 2 seeds x 8 evaluations, 4 generations), each stopped at
    its first checkpoint and resumed by both processes, against one process
    of two devices that runs them uninterrupted. Their states (the ES, the
    archives) are whole on every process: process 0 writes the checkpoint
    alone and every process reads it back on --resume."""
    def make_steps(out, group):
        lpo, qd = [*LPO, "--out", str(out / "lpo"), *group], [*QD, "--out", str(out / "qd"), *group]
        if not group:
            return [lpo, qd]
        resume = ["--resume", "--no-progress", *group]
        return [[*lpo, "--stop-at", "1"], ["meta", "lpo", "--out", str(out / "lpo"), *resume],
                [*qd, "--stop-at", "2"], ["meta", "qd", "--out", str(out / "qd"), *resume]]

    runs = launch(tmp_path, make_steps)
    for stdout, result in runs["multi"]:
        assert [step["code"] for step in result["steps"]] == [0] * 4, result
        assert "2 device(s)" in stdout
    assert_same_run_directories(tmp_path, "lpo", runs["multi"])
    assert_same_run_directories(tmp_path, "qd", runs["multi"])
    # the resumed runs went on from their checkpoints: every generation once
    with open(tmp_path / "multi" / "lpo" / "fitness.csv") as f:
        assert [row["generation"] for row in csv.DictReader(f)] == ["1", "2"]
    with open(tmp_path / "multi" / "qd" / "metrics.csv") as f:
        assert sorted(int(r["generation"]) for r in csv.DictReader(f)) == sorted([1, 2, 3, 4] * 2 * 2)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234"], "missing --num-processes, --process-id"),
    (["--num-processes", "2", "--process-id", "0"], "missing --coordinator"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "expects HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "--num-processes must be >= 1"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"], "--process-id must be in 0..1"),
])
@pytest.mark.parametrize("command", [["train"], ["meta", "pbt"], ["meta", "lpo"], ["meta", "qd"]])
def test_bad_flags_stop_before_anything_starts(tmp_path, capsys, monkeypatch, command, flags, message):
    def no_joining(*args, **kwargs):
        raise AssertionError("joined a process group with bad flags")
    monkeypatch.setattr(__import__("jax").distributed, "initialize", no_joining)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run.main([*command, "--out", str(out), "--no-progress", *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_no_flags_is_the_plain_command():
    assert distributed.check(None, None, None) is None
    assert distributed.check("node-0.cluster:8476", 4, 3) == ("node-0.cluster", 8476, 4, 3)
