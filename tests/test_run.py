"""run.py end to end, as a user calls it (small runs)."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import run
from src import config as cfg
from tests.helpers import check_golden, csv_numbers, run_cli_steps
from tests.xla_level import with_suite_level

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--total-steps", "2048", "--seeds", "2", "--no-progress", "--set", "num_steps=64", "--set", "hidden=[16]"]


def cli(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_eval_plot_leave_a_complete_run_directory(tmp_path):
    """Also the one run of `train --objective dpo` (DPO's closed-form drift in
    place of PPO-clip: nothing below depends on the objective)."""
    out = str(tmp_path / "run")
    summary = run.main(["train", *SMALL, "--sweep", "lr=1e-3,3e-4", "--out", out, "--logger", "tensorboard",
                        "--objective", "dpo"])
    assert summary["objective"] == "dpo"
    assert {"config.yaml", "metrics.csv", "summary.json", "checkpoint", "learning_curve.png",
            "members.json", "tensorboard"} <= set(os.listdir(out))
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {"iteration", "env_steps", "member", "seed", "episode_return", "lr"} <= set(rows[0])
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("policy_loss", "value_loss", "approx_kl"))
    assert len(rows) == 8 * 4                     # 8 iterations x (2 seeds x 2 lr)
    assert sorted({(r["seed"], r["lr"]) for r in rows}) == [("0", "0.0003"), ("0", "0.001"),
                                                            ("1", "0.0003"), ("1", "0.001")]
    with open(os.path.join(out, "summary.json")) as f:
        stored = json.load(f)
    for key in ("final_return_mean", "final_return_std", "env_steps", "compile_s", "run_s"):
        assert stored[key] is not None
    assert stored == json.loads(json.dumps(summary))
    assert stored["env_steps"] == 2048 and set(stored["by_setting"]) == {"lr=0.001", "lr=0.0003"}
    assert os.listdir(os.path.join(out, "tensorboard", "member_3"))

    result = run.main(["eval", out, "--episodes", "3"])
    assert len(result["members"]) == 4 and result["episodes"] == 3
    assert os.path.exists(os.path.join(out, "eval.json"))
    os.remove(os.path.join(out, "learning_curve.png"))
    run.main(["plot", out])
    assert os.path.exists(os.path.join(out, "learning_curve.png"))


def test_resume_equals_uninterrupted_run(tmp_path):
    """Stopped at iteration 4 of 8, resumed; the same run uninterrupted. The
    three calls run in one process (tests/population_worker.py `cli`) with a
    JAX compilation cache directory, so the chunk program compiles once;
    everything the resumed run carries over comes from disk."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    chunks = ["--set", "checkpoint_every=2"]
    steps = [["train", *SMALL, *chunks, "--out", a, "--stop-at", "4"], ["copy", a, a + "_stopped"],
             ["train", "--resume", "--out", a, "--no-progress"], ["train", *SMALL, *chunks, "--out", b]]
    proc = run_cli_steps(steps, tmp_path, timeout=600)
    with open(os.path.join(a + "_stopped", "summary.json")) as f:
        stopped = json.load(f)
    assert stopped["complete"] is False and stopped["iterations"] == 4
    with open(os.path.join(a + "_stopped", "metrics.csv")) as f:
        assert {int(r["iteration"]) for r in csv.DictReader(f)} == {1, 2, 3, 4}
    assert "resuming from iteration 4" in proc.stdout
    with open(os.path.join(a, "summary.json")) as f, open(os.path.join(b, "summary.json")) as g:
        resumed, whole = json.load(f), json.load(g)
    assert resumed["complete"] and resumed["iterations"] == whole["iterations"] == 8
    assert resumed["final_returns"] == whole["final_returns"]
    with open(os.path.join(a, "metrics.csv")) as f, open(os.path.join(b, "metrics.csv")) as g:
        assert f.read() == g.read()
    check_golden("train_ppo", csv_numbers(os.path.join(b, "metrics.csv")), where="subprocess")


def test_sac_train_command_keeps_its_numbers(tmp_path):
    """A tiny SAC run through the command line, against its recorded numbers
    (tests/helpers.py `check_golden`): learning starts at step 64, updates
    from then on, an episode of Pendulum ends at step 200."""
    out = str(tmp_path / "sac")
    summary = run.main(["train", "--algo", "sac", "--env", "Pendulum-v1", "--seeds", "2", "--total-steps", "256",
                        "--no-progress", "--out", out, "--set", "hidden=[16]", "--set", "buffer_size=256",
                        "--set", "sgd_batch_size=16", "--set", "learning_starts=64", "--set", "checkpoint_every=128"])
    rows = csv_numbers(os.path.join(out, "metrics.csv"))
    assert len(rows) == 2 * 256 and summary["iterations"] == 256
    assert all(np.isfinite(r["episode_return"]) for r in rows if r["iteration"] >= 200)
    check_golden("train_sac", rows[::32])      # every 16th iteration of both members


@pytest.mark.parametrize("args, message", [
    (["--env", "CartPol"], "Did you mean 'CartPole-v1'"),
    (["--set", "num_minibatches=3"], "divisible by num_minibatches"),
    (["--set", "nonsense=1"], "unknown config key 'nonsense'"),
    (["--sweep", "num_envs=2,4"], "cannot sweep 'num_envs'"),
    (["--sweep", "lr=fast"], "values must be numbers"),
    (["--algo", "dqn"], "unknown algorithm 'dqn'"),
    (["--total-steps", "10"], "at least num_envs\\*num_steps"),
    (["--set", "checkpoint_every=3"], "must divide the number of iterations"),
])
def test_bad_input_stops_with_a_message_before_compiling(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        run.main(["train", "--no-progress", "--out", str(tmp_path / "x"), *args])
    assert stop.value.code == 2
    assert message.replace("\\", "") in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_existing_run_directory_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(SystemExit) as stop:
        run.main(["train", "--out", str(tmp_path / "used")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    # the problem, and both ways out
    assert f"run directory {tmp_path / 'used'} is not empty" in err
    assert "pass --resume to continue it or another --out" in err
    assert os.listdir(tmp_path / "used") == ["file"]


def test_resume_with_a_different_config_is_refused(tmp_path, capsys):
    out = str(tmp_path / "r")
    os.makedirs(out)
    # the run's stored config is all --resume compares (before compiling anything)
    _, config = run.build_config(run.parse_args(["train", *SMALL]))
    cfg.save_yaml(config, os.path.join(out, "config.yaml"))
    three_seeds = list(SMALL)
    three_seeds[SMALL.index("--seeds") + 1] = "3"
    with pytest.raises(SystemExit) as stop:
        run.main(["train", "--resume", "--out", out, *three_seeds])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    # names the key that differs, and what to pass instead
    assert f"the run in {out} has a different config (seeds)" in err
    assert "pass only --out and --resume" in err
    assert os.listdir(out) == ["config.yaml"]          # nothing written


def test_eval_of_a_missing_run_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["eval", str(tmp_path)])
    assert "not a run directory" in capsys.readouterr().err


def test_envs_command():
    listed = cli("envs")
    assert listed.returncode == 0 and "brax/ant" in listed.stdout and "CartPole-v1" in listed.stdout


def _validate_preset(path):
    """Each preset family through the loader of the command that reads it."""
    name = os.path.basename(path)
    if name.startswith(("ppo_", "sac_")):
        data = cfg.load_yaml(path)
        return cfg.from_dict(run.algorithms()[data.get("algo", "ppo")].CONFIG, data).validate()
    if name.startswith("barfi_"):
        from commands import reward_alignment
        return reward_alignment.build_config(reward_alignment.parser().parse_args(["--config", path]))
    if name.startswith("lpo_"):
        from commands import lpo
        return lpo.build_config(lpo.parser().parse_args(["--config", path]))
    if name.startswith("ued_"):
        from commands import ued
        return ued.build_config(ued.parse(["--config", path]))
    if name.startswith("reward_model_"):
        from commands import reward_model
        return reward_model.build_config(reward_model.parser().parse_args(["--config", path]))
    if name.startswith("prefopt_"):
        from commands import prefopt
        return prefopt.build_config(prefopt.parser().parse_args(["--config", path]))
    if name.startswith(("pbt_", "qd_", "spo_")):
        import importlib
        module = importlib.import_module(f"commands.{name.split('_')[0]}")
        return module.build_config(module.parser().parse_args(["--config", path]))
    if name.startswith("rewards_"):
        from commands import rewards
        return rewards.build_config(rewards.parser().parse_args(["--config", path]))
    if name.startswith("robust_"):   # benchmarks/robustness.py: names the two victims' train presets
        data = cfg.load_yaml(path)
        return [_validate_preset(os.path.join(ROOT, data[k])) for k in ("vanilla-config", "sappo-config")]
    raise AssertionError(f"configs/{name}: no loader for this preset family; add one here")


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_presets_load_and_validate(name):
    assert _validate_preset(os.path.join(ROOT, "configs", name)) is not None


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        cfg.load_yaml(evil)


@pytest.mark.slow   # sharding stays covered by tests/test_population.py's two-device tests
def test_sharded_population_equals_one_device(tmp_path):
    """run.py shards members over the CPU cores; the numbers must not change.

    JAX fixes its device count when it starts, and in a whole-suite run other
    test modules start it first (with one device), so this runs in a
    subprocess that forces 2 host devices (tests/population_worker.py `train`),
    checks there that run.py's population really spans both, and compares
    every metric of every iteration and member with the same population run
    on one device. The fast stand-in for the slow sharded-PPO test of
    tests/test_population.py. The run shows its progress bar, which is fed
    from inside the compiled program (and must count each iteration once
    with the members on two devices)."""
    env = {**os.environ, "XLA_FLAGS": with_suite_level("--xla_force_host_platform_device_count=2"),
           "PYTHONPATH": ROOT}
    args = [a for a in SMALL if a != "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "tests.population_worker", "train", str(tmp_path / "s"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["members"] == 2 and "2 device(s)" in result["printed"]
    assert "8/8" in proc.stderr and "9/8" not in proc.stderr       # tqdm writes to stderr
    assert "final return" in result["printed"]
    sharded, single = result["sharded"], result["single"]
    assert set(sharded) == set(single) and {"episode_return", "entropy", "value_loss"} <= set(sharded)
    # the same actions and episodes exactly; losses up to float32 rounding (the
    # per-device programs batch and reduce the members differently)
    for name in ("episode_return", "finished_return", "episodes_finished", "clip_frac"):
        np.testing.assert_array_equal(np.array(sharded[name]), np.array(single[name]), err_msg=name)
    for name in sharded:
        a, b = np.array(sharded[name]), np.array(single[name])
        # approx_kl (about 1e-5 here) and policy_loss (a mean of normalised
        # advantages) are small differences of O(1) numbers: their rounding is absolute
        atol = 1e-8 if name == "approx_kl" else 1e-6
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=name)
    assert len(sharded["episode_return"]) == 8 * 2
    # the two members differ (else equality would say little)
    entropy = np.array(single["entropy"]).reshape(8, 2)
    assert not np.array_equal(entropy[:, 0], entropy[:, 1])
    np.testing.assert_array_equal(result["summary_final_returns"], np.array(sharded["episode_return"][-2:]))
