"""`run.py meta lpo` and `run.py train --objective`: bad input fails before
compiling; a tiny end-to-end run stops, resumes and ends as the uninterrupted
run does, is reevaluated, and (slow) a longer one trains with the result."""
import csv
import json
import os
import subprocess
import sys

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
from tests.helpers import check_golden, run_cli_steps  # noqa: E402

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
    from agents import objectives as lo
    (_, pa), (_, pb) = lo.load(a), lo.load(b)
    np.testing.assert_array_equal(pa["w1"], pb["w1"])
    summary = json.load(open(os.path.join(a, "summary.json")))
    assert summary["complete"] and "CartPole-v1" in summary["train_envs"]
    assert os.path.exists(os.path.join(a, "fitness.png"))
    result = run.main(["train", "--objective", f"learned:{a}", "--out", str(tmp_path / "t"), "--seeds", "2",
                       "--total-steps", "512", "--set", "num_steps=32", "--set", "hidden=[8]", "--no-progress"])
    assert result["objective"] == f"learned:{a}" and result["members"] == 2


# ----------------------------------------------------------------------------- tiny runs through the CLI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 16 inner iterations of 2 envs x 16 steps, 2 minibatches (with one, the ratio
# is always 1 and every drift, zero there, trains alike); a random initial
# drift (the fit to PPO-clip takes longer than the run) and big ES steps
CLI_TINY = ["--pop", "4", "--generations", "2", "--seeds", "1", "--no-progress",
            "--set", "init=random", "--set", "sigma=0.3", "--set", "lr=0.3", "--set", "eval_seeds=2",
            "--set", "checkpoint_every=1", "--set", "inner.total_steps=512", "--set", "inner.num_envs=2",
            "--set", "inner.num_steps=16", "--set", "inner.hidden=[8]", "--set", "inner.num_epochs=1",
            "--set", "inner.num_minibatches=2", "--set", "inner.lr=0.02"]


def read_rows(out):
    with open(os.path.join(out, "fitness.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def read_json(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def lpo_runs(tmp_path_factory):
    """`run.py meta lpo` calls as a user makes them: a tiny run stopped after
    generation 1 (a copy of its directory kept), resumed to the end; the same
    run uninterrupted; the first one reevaluated. One process runs them in
    turn (tests/population_worker.py `cli`) with a JAX compilation cache
    directory, so each program compiles once (a process per call would add
    start-up time, not coverage: all that carries over is on disk)."""
    root = tmp_path_factory.mktemp("lpo")
    a, b, stopped = str(root / "a"), str(root / "b"), str(root / "a_stopped")
    steps = [["meta", "lpo", *CLI_TINY, "--out", a, "--stop-at", "1"], ["copy", a, stopped],
             ["meta", "lpo", "--out", a, "--resume", "--no-progress"],
             ["meta", "lpo", *CLI_TINY, "--out", b],
             ["meta", "lpo", "--out", a, "--reevaluate", "CartPole-v1", "--reeval-seeds", "2"]]
    proc = run_cli_steps(steps, root, timeout=900)
    printed = dict(zip(["stopped", "resumed", "whole", "reevaluated"],
                       proc.stdout.split("=== end")[0].split("=== run.py ")[1:]))
    after_stop = {"rows": read_rows(stopped), "checkpoint": read_json(stopped, "checkpoint.json"),
                  "summary": read_json(stopped, "summary.json")}
    return a, b, {**printed, "after_stop": after_stop}


@pytest.mark.slow   # 92 s of compiling; like test_tiny_meta_training_resumes_bit_identically above (slow too). In the
#                     default suite, resume is covered by tests/test_es.py (LPO is es.evolve with its own fitness)
def test_cli_run_stops_resumes_and_ends_as_the_uninterrupted_run(lpo_runs):
    from agents import objectives as lo
    a, b, runs = lpo_runs
    stopped = runs["after_stop"]
    assert [r["generation"] for r in stopped["rows"]] == ["1"] and stopped["checkpoint"] == {"generation": 1}
    assert stopped["summary"]["generation"] == 1 and stopped["summary"]["complete"] is False
    assert "train_envs" not in stopped["summary"]              # the final comparison waits for the end
    # resumed: one more generation, the first kept as it was
    rows = read_rows(a)
    assert [r["generation"] for r in rows] == ["1", "2"] and rows[0] == stopped["rows"][0]
    assert read_json(a, "checkpoint.json") == {"generation": 2}
    summary = read_json(a, "summary.json")
    assert summary["generation"] == 2 and summary["complete"] is True
    assert os.path.exists(os.path.join(a, "fitness.png"))
    # ... and bit-identical to the run that never stopped
    assert rows == read_rows(b)
    (kind_a, pa), (kind_b, pb) = lo.load(a), lo.load(b)
    assert kind_a == kind_b == "learned"
    np.testing.assert_array_equal(pa["w1"], pb["w1"])
    np.testing.assert_array_equal(pa["w2"], pb["w2"])
    whole = read_json(b, "summary.json")
    assert summary["train_envs"] == whole["train_envs"]
    # the final comparison: PPO-clip, the initial and the final drift on eval_seeds = 2 seeds each
    result = summary["train_envs"]["CartPole-v1"]
    assert set(result) == {"ppo_clip", "initial", "learned"}
    for name in result:
        assert len(result[name]["returns"]) == 2 and np.isfinite(result[name]["returns"]).all()
    assert result["learned"]["paired_vs_ppo_clip"]["final"]["diff"] == pytest.approx(
        np.mean(result["learned"]["returns"]) - np.mean(result["ppo_clip"]["returns"]))
    # the objective matters in these inner runs (else the comparison says nothing)
    assert len({tuple(result[name]["auc"]["values"]) for name in result}) == 3
    assert "generation 2 mean" in runs["resumed"] and "train_envs CartPole-v1 (2 seeds)" in runs["resumed"]
    check_golden("meta_lpo", {"fitness": read_rows(b), "train_envs": whole["train_envs"]}, where="subprocess")


@pytest.mark.slow   # shares the slow CLI runs above
def test_cli_reevaluate_compares_on_fresh_seeds(lpo_runs):
    a, _, runs = lpo_runs
    res = read_json(a, "reeval_CartPole-v1_2_2026.json")
    assert set(res) == {"ppo_clip", "initial", "learned"}
    for name, r in res.items():
        assert len(r["returns"]) == 2 and np.isfinite(r["returns"]).all()
        assert r["mean"] == pytest.approx(np.mean(r["returns"])) and len(r["auc"]["values"]) == 2
    for window in ("final", "auc"):
        paired = res["learned"]["paired_vs_initial"][window]
        values = {"final": lambda n: res[n]["returns"], "auc": lambda n: res[n]["auc"]["values"]}[window]
        assert paired["n"] == 2 and paired["diff"] == pytest.approx(
            np.mean(np.subtract(values("learned"), values("initial"))), abs=1e-6)
    # fresh seeds (key 2026), not the ones of the run's own final comparison
    own = read_json(a, "summary.json")["train_envs"]["CartPole-v1"]
    assert res["ppo_clip"]["auc"]["values"] != own["ppo_clip"]["auc"]["values"]
    assert "-> reeval_CartPole-v1_2_2026.json" in runs["reevaluated"]


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
