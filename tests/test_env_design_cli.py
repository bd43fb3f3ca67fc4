"""`run.py meta ued` from the command line: bad input, a whole PLR run and its
stop and resume (its own module so that pytest-xdist runs it beside
tests/test_env_design.py's compiled programs instead of after them)."""
import jax
import numpy as np
import pytest

from meta import env_design as ed
from src.config import ConfigError
from tests.helpers import check_golden, csv_numbers, run_cli_steps


# ---------------------------------------------------------------- the command line

def test_cli_bad_input_fails_before_compiling(tmp_path):
    import subprocess
    import sys
    from commands import ued as cli
    with pytest.raises(ConfigError, match="unknown method 'bogus'"):
        cli.main(["--method", "bogus", "--out", str(tmp_path / "a")])
    bad = tmp_path / "mazes"
    bad.mkdir()
    (bad / "broken.txt").write_text("S.?\n..G\n")
    with pytest.raises(ConfigError, match="broken.txt:1: unknown cell '\\?'"):
        cli.main(["--method", "dr", "--set", f"space_kwargs={{data_dir: {bad}}}", "--out", str(tmp_path / "b")])
    (bad / "broken.txt").write_text("S#.\n#.G\n")
    with pytest.raises(ConfigError, match="cannot be reached"):
        cli.main(["--method", "dr", "--set", f"space_kwargs={{data_dir: {bad}}}", "--out", str(tmp_path / "c")])
    # a level file larger than the grid: the message names the file and the fix
    (bad / "broken.txt").write_text("S..........\n..........G\n")
    with pytest.raises(ConfigError, match="broken.txt: the maze is 2x11, larger than the environment's 9x9; set the "
                                          "level space's height and width \\(space_kwargs\\)"):
        cli.main(["--method", "dr", "--set", f"space_kwargs={{data_dir: {bad}}}", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "a").exists()
    # through run.py: "error: ..." and exit status 2
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "run.py"), "meta", "ued", "--method", "bogus"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 2 and "error: unknown method 'bogus'" in proc.stderr


UED_CLI = ["--method", "plr", "--score", "pvl", "--seeds", "1", "--no-progress",
           "--set", "num_envs=4", "--set", "num_steps=16", "--set", "num_minibatches=1", "--set", "num_epochs=1",
           "--set", "hidden=[16]", "--set", "capacity=16", "--set", "replay_prob=0.5", "--set", "num_iterations=4",
           "--set", "eval_every=2", "--set", "eval_episodes=2",
           "--set", "space_kwargs={height: 9, width: 9, max_walls: 10, max_steps: 32}"]


def test_cli_plr_run_end_to_end_replays_when_the_coin_says(tmp_path):
    """`run.py meta ued` as a user runs it (PLR, tiny): the run directory's
    files and contents, and PLR's replay-or-new choice against the coin flips
    run.py documents (iteration i replays iff uniform(coin_i) < replay_prob,
    coin_i = split(fold_in(PRNGKey(seed), 7919), iterations)[i]): a replay
    only rescores, a new batch adds num_envs levels to the buffer. The fast
    stand-in for the slow every-method and CLI tests above and below."""
    import csv
    import json
    import os
    out, stopped = tmp_path / "ued", str(tmp_path / "stopped")
    # the whole run; the same stopped after the first chunk (its checkpoint) and resumed; in one process
    # sharing compiled programs through JAX's cache (what carries over comes from disk)
    steps = [["meta", "ued", *UED_CLI, "--out", str(out)], ["meta", "ued", *UED_CLI, "--out", stopped, "--stop-at", "2"],
             ["copy", stopped, stopped + "_at_2"], ["meta", "ued", "--out", stopped, "--resume", "--no-progress"]]
    proc = run_cli_steps(steps, tmp_path, timeout=600)
    with open(os.path.join(stopped + "_at_2", "summary.json")) as f:
        assert json.load(f) == {"env": "maze", "method": "plr", "iterations": 2, "complete": False}
    with open(os.path.join(stopped + "_at_2", "checkpoint.json")) as f:
        assert json.load(f) == {"iteration": 2}
    assert "resuming from iteration 2" in proc.stdout
    for name in ("metrics.csv", "held_out.csv"):
        with open(out / name) as f, open(os.path.join(stopped, name)) as g:
            assert f.read() == g.read(), name
    assert {"config.yaml", "metrics.csv", "held_out.csv", "held_out.png", "summary.json", "buffer_00000.png",
            "buffer_00002.png", "buffer_00004.png"} <= set(os.listdir(out))
    from src import config as cfg
    config = cfg.from_dict(ed.UEDConfig, cfg.load_yaml(out / "config.yaml"))
    assert (config.method, config.capacity, config.num_envs, config.buffer_iterations) == ("plr", 16, 4, (0, 2, 4))
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4] and {r["seed"] for r in rows} == {"0"}
    assert [int(r["env_steps"]) for r in rows] == [64, 128, 192, 256]                 # 4 envs x 16 steps each
    assert [int(r["env_steps_total"]) for r in rows] == [128, 256, 384, 512]          # + one scoring rollout
    coins = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 7919), 4)
    replayed = [float(jax.random.uniform(k) < 0.5) for k in coins]
    assert 0 < sum(replayed) < 4                                                      # both branches ran
    assert [float(r["replayed"]) for r in rows] == replayed
    expected_size = np.minimum(16, 4 + 4 * np.cumsum(1 - np.array(replayed)))       # prefilled with one batch
    assert [float(r["buffer_size"]) for r in rows] == expected_size.tolist()
    # positive value loss is a mean of max(advantage, 0): never negative, and not all zero
    scores = np.array([float(r["buffer_mean_score"]) for r in rows])
    assert (scores >= 0).all() and (scores > 0).any()
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("entropy", "value_loss", "solvable_trained"))
    with open(out / "held_out.csv") as f:
        held = list(csv.DictReader(f))
    from envs import levels
    space = levels.make("maze", height=9, width=9, max_walls=10, max_steps=32)
    assert [(int(r["iteration"]), r["level"]) for r in held] == [(i, n) for i in (0, 2, 4)
                                                                  for n in space.held_out_names]
    assert all(0.0 <= float(r["solve_rate"]) <= 1.0 for r in held)
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert (summary["method"], summary["iterations"], summary["seeds"]) == ("plr", 4, [0])
    assert summary["env_steps_trained"] == 256 and summary["env_steps_total"] == 512
    assert set(summary["held_out_solve_rate_per_level"]) == set(space.held_out_names)
    last = [float(r["solve_rate"]) for r in held if r["iteration"] == "4"]
    assert summary["held_out_solve_rate_mean"] == pytest.approx(np.mean(last))
    assert "plr on maze: held-out solve rate" in proc.stdout
    check_golden("meta_ued_plr", {"metrics": csv_numbers(out / "metrics.csv"),
                                  "held_out": csv_numbers(out / "held_out.csv")}, where="subprocess")


@pytest.mark.slow
def test_cli_writes_the_run_directory(tmp_path):
    import json
    import os
    from commands import ued as cli
    out = str(tmp_path / "run")
    summary = cli.main(["--method", "accel", "--seeds", "2", "--out", out, "--no-progress",
                        "--set", "num_envs=4", "--set", "num_steps=16", "--set", "num_minibatches=1",
                        "--set", "num_epochs=1", "--set", "hidden=[16]", "--set", "capacity=8",
                        "--set", "num_iterations=4", "--set", "eval_every=2", "--set", "eval_episodes=2",
                        "--set", "space_kwargs={max_steps: 32}"])
    for name in ("config.yaml", "metrics.csv", "held_out.csv", "held_out.png", "summary.json",
                 "buffer_00000.png", "buffer_00002.png", "buffer_00004.png"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["env_steps_trained"] == 4 * 4 * 16 == summary["env_steps_trained"]
