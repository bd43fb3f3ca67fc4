"""run.py end to end, as a user calls it (small runs)."""
import csv
import json
import os
import subprocess
import sys

import pytest

import run
from src import config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--total-steps", "2048", "--seeds", "2", "--no-progress", "--set", "num_steps=64", "--set", "hidden=[16]"]


def cli(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_train_eval_plot_leave_a_complete_run_directory(tmp_path):
    out = str(tmp_path / "run")
    summary = run.main(["train", *SMALL, "--sweep", "lr=1e-3,3e-4", "--out", out, "--logger", "tensorboard"])
    assert {"config.yaml", "metrics.csv", "summary.json", "checkpoint", "learning_curve.png",
            "members.json", "tensorboard"} <= set(os.listdir(out))
    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {"iteration", "env_steps", "member", "seed", "episode_return", "lr"} <= set(rows[0])
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
    chunks = ["--set", "checkpoint_every=2"]
    run.main(["train", *SMALL, *chunks, "--out", str(tmp_path / "a"), "--stop-at", "4"])
    with open(tmp_path / "a" / "summary.json") as f:
        assert json.load(f)["complete"] is False
    resumed = run.main(["train", "--resume", "--out", str(tmp_path / "a"), "--no-progress"])
    whole = run.main(["train", *SMALL, *chunks, "--out", str(tmp_path / "b")])
    assert resumed["final_returns"] == whole["final_returns"]
    with open(tmp_path / "a" / "metrics.csv") as f, open(tmp_path / "b" / "metrics.csv") as g:
        assert f.read() == g.read()


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


def test_existing_run_directory_is_not_overwritten(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(SystemExit):
        run.main(["train", "--out", str(tmp_path / "used")])


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = str(tmp_path / "r")
    run.main(["train", *SMALL, "--out", out])
    with pytest.raises(SystemExit):
        run.main(["train", "--resume", "--out", out, "--seeds", "3"])


def test_eval_of_a_missing_run_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["eval", str(tmp_path)])
    assert "not a run directory" in capsys.readouterr().err


def test_envs_command():
    listed = cli("envs")
    assert listed.returncode == 0 and "brax/ant" in listed.stdout and "CartPole-v1" in listed.stdout


def test_progress_bar_reports_from_inside_jit(tmp_path):
    done = cli("train", "--total-steps", "2048", "--seeds", "2", "--set", "num_steps=64", "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr
    assert "8/8" in done.stderr          # tqdm writes to stderr
    assert "final return" in done.stdout


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


def test_sharded_population_equals_plain_vmap(tmp_path):
    """run.py shards members over the CPU cores; the numbers must not change."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from agents import ppo

    summary = run.main(["train", *SMALL, "--out", str(tmp_path / "s")])
    config = cfg.override(ppo.PPOConfig(total_steps=2048, seeds=2), ["num_steps=64", "hidden=[16]"])
    agent = ppo.make(config)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2, dtype=jnp.uint32))
    _, metrics = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(keys, ppo.hparams_from(config))
    np.testing.assert_allclose(summary["final_returns"], np.asarray(metrics["episode_return"][:, -1]), rtol=1e-6)
