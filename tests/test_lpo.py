"""`run.py meta lpo` and `run.py train --objective`: bad input fails before
compiling; a tiny end-to-end run (slow) resumes bit-identically."""
import json
import os

import numpy as np
import pytest

# run.py (the CLI) exposes every CPU core as a JAX device when imported; in a
# shared pytest process that would change the device count of every test file
# collected after this one (tests/test_population.py assumes the default).
_XLA_FLAGS = os.environ.get("XLA_FLAGS")
import run  # noqa: E402
if _XLA_FLAGS is None:
    os.environ.pop("XLA_FLAGS", None)
else:
    os.environ["XLA_FLAGS"] = _XLA_FLAGS
from commands import lpo  # noqa: E402
from src import config as cfg  # noqa: E402
from src.config import ConfigError  # noqa: E402

TINY = ["--set", "inner.total_steps=256", "--set", "inner.num_steps=32", "--set", "inner.hidden=[8]",
        "--set", "inner.num_epochs=1", "--set", "inner.num_minibatches=2", "--set", "eval_seeds=2",
        "--set", "checkpoint_every=1", "--seeds", "1", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--pop", "7"], "even population"),
    (["--strategy", "adam"], "unknown ES strategy 'adam'; choose one of openes, snes, cma_es"),
    (["--strategy", "snes"], "only available with openes"),
    (["--env", "NotAnEnv-v0"], "NotAnEnv-v0"),
    (["--set", "objective=magic"], "objective must be 'learned' or 'temporal'"),
    (["--set", "inner.num_envs=0"], "num_envs must be >= 1"),
    (["--set", "fitness=last"], "fitness must be 'final' or 'auc'"),
    (["--set", "populaton=4"], "unknown config key 'populaton'"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_lpo_input_fails_before_compiling(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        lpo.main([*argv, "--out", str(tmp_path / "run")] if "--resume" not in argv else argv)
    assert not os.path.exists(tmp_path / "run")


def test_resume_with_another_config_fails_clearly(tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    cfg.save_yaml(lpo.build_config(lpo.parser().parse_args(["--pop", "4"])), out / "config.yaml")
    with pytest.raises(ConfigError, match=r"different config \(pop\)"):
        lpo.main(["--out", str(out), "--resume", "--pop", "6"])


def test_train_rejects_a_bad_objective(tmp_path, capsys):
    for spec, message in (("clip", "ppo, dpo or learned:RUN_DIR"), (f"learned:{tmp_path}", "no objective.json")):
        with pytest.raises(SystemExit) as exit_info:
            run.main(["train", "--objective", spec, "--out", str(tmp_path / "run"), "--total-steps", "512"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["train", "--algo", "sac", "--objective", "dpo", "--out", str(tmp_path / "run")])
    assert "ppo only" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_tiny_meta_training_resumes_bit_identically_and_trains_with_the_result(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["--pop", "4", "--generations", "3", *TINY]
    lpo.main([*args, "--out", a])
    lpo.main([*args, "--out", b, "--stop-at", "2"])
    lpo.main(["--out", b, "--resume", "--no-progress"])
    rows = [[{k: v for k, v in r.items() if k != "seconds"} for r in __import__("meta.es").es.read_fitness(d)]
            for d in (a, b)]
    assert rows[0] == rows[1] and len(rows[0]) == 3
    from meta import learned_objective as lo
    (_, pa), (_, pb) = lo.load(a), lo.load(b)
    np.testing.assert_array_equal(pa["w1"], pb["w1"])
    summary = json.load(open(os.path.join(a, "summary.json")))
    assert summary["complete"] and "CartPole-v1" in summary["train_envs"]
    assert os.path.exists(os.path.join(a, "fitness.png"))
    result = run.main(["train", "--objective", f"learned:{a}", "--out", str(tmp_path / "t"), "--seeds", "2",
                       "--total-steps", "512", "--set", "num_steps=32", "--set", "hidden=[8]", "--no-progress"])
    assert result["objective"] == f"learned:{a}" and result["members"] == 2


@pytest.mark.parametrize("name", ["lpo_cartpole", "lpo_cartpole_auc", "lpo_brax_ant", "lpo_temporal_minatar"])
def test_lpo_presets_load_and_validate(name):
    config = lpo.build_config(lpo.parser().parse_args(["--config", os.path.join(run.__file__.rsplit("/", 1)[0],
                                                                                 "configs", f"{name}.yaml")]))
    for env in config.envs + config.held_out:
        assert lpo.inner_config(config, env).env == env
    if name == "lpo_brax_ant":
        assert config.pop >= 64 and config.envs == ("brax/ant",)


def test_paired_difference_is_seed_by_seed():
    # a constant per-seed gain of 2 over very different seeds: paired s.e. 0
    clip = np.array([-500.0, -90.0, -100.0, -80.0])
    r = lpo.paired(clip + 2.0, clip)
    assert r["diff"] == 2.0 and r["se"] == 0.0 and r["wins"] == 4 and r["n"] == 4
    assert np.isclose(r["relative"], 2.0 / abs(clip.mean()))
    r = lpo.paired(np.array([1.0, np.nan, 3.0]), np.array([0.0, 5.0, 0.0]))   # a NaN seed is dropped
    assert r["n"] == 2 and r["diff"] == 2.0 and np.isclose(r["se"], 1.0)


def test_reevaluate_needs_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match="--reevaluate needs --out RUN_DIR"):
        lpo.main(["--reevaluate", "Acrobot-v1", "--out", str(tmp_path)])
    cfg.save_yaml(lpo.build_config(lpo.parser().parse_args(["--pop", "4"])), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="NotAnEnv-v0"):
        lpo.main(["--reevaluate", "NotAnEnv-v0", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="no objective.json"):
        lpo.main(["--reevaluate", "Acrobot-v1", "--out", str(tmp_path)])
