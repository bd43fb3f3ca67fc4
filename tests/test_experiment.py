"""The experiment layer (src/experiment.py): run directories, resume, divergence."""
import json
import math
import os

import numpy as np
import pytest

from src import experiment
from src.config import ConfigError

import run


def test_divergence_names_the_first_metric_member_and_iteration_that_went_bad():
    watch = experiment.FiniteWatch()
    nan = math.nan
    # member 1's q_loss is NaN before learning starts (never finite yet: not a divergence)
    first = {"q_loss": np.array([[1.0, 2.0], [nan, nan]]), "episode_return": np.array([[nan, nan], [nan, nan]])}
    params = {"w": np.zeros((2, 3))}
    watch.check(first, params, 0)
    second = {"q_loss": np.array([[3.0, np.inf], [nan, 4.0]]), "policy_loss": np.array([[1.0, 1.0], [nan, 1.0]]),
              "episode_return": np.array([[nan, 1.0], [1.0, nan]])}
    with pytest.raises(experiment.Diverged, match="q_loss of member 0 became inf at iteration 4"):
        watch.check(second, params, 2)
    # a member whose loss became NaN earlier in the chunk than another's goes first
    watch = experiment.FiniteWatch()
    third = {"a_loss": np.array([[1.0, 1.0, nan], [1.0, 1.0, 1.0]]),
             "b_loss": np.array([[1.0, 1.0, 1.0], [1.0, nan, 1.0]])}
    with pytest.raises(experiment.Diverged, match="b_loss of member 1 became nan at iteration 12"):
        watch.check(third, {"w": np.zeros((2, 1))}, 10)
    # parameters alone (every loss NaN from the start): the member is named
    watch = experiment.FiniteWatch()
    with pytest.raises(experiment.Diverged, match="parameters of member 1 hold NaN"):
        watch.check({"q_loss": np.full((3, 2), nan)}, {"w": np.array([[0.0], [nan], [1.0]])}, 0)


def test_a_diverging_member_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """lr = inf for the second member of a sweep: its parameters are NaN after
    the first update; the run stops at the end of that chunk with a message
    naming the member, and writes no checkpoint (there was no good one)."""
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit):
        run.main(["train", "--total-steps", "1024", "--seeds", "1", "--no-progress", "--set", "num_steps=64",
                  "--set", "hidden=[8]", "--set", "num_envs=4", "--set", "checkpoint_every=2",
                  "--sweep", "lr=3e-4,inf", "--out", out])
    err = capsys.readouterr().err
    assert "the run diverged: the parameters of member 1 hold NaN" in err and "by iteration 2" in err
    assert not os.path.exists(os.path.join(out, "checkpoint.json"))
    with open(os.path.join(out, "members.json")) as f:
        assert [m["hparams"]["lr"] for m in json.load(f)] == [3e-4, math.inf]


def test_start_refuses_a_used_directory_and_a_resume_without_a_run(tmp_path):
    from agents.ppo import PPOConfig
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    with pytest.raises(ConfigError, match="is not empty"):
        experiment.start(str(used), "x", PPOConfig(), PPOConfig)
    with pytest.raises(ConfigError, match="no run to resume"):
        experiment.start(str(tmp_path / "none"), "x", PPOConfig(), PPOConfig, resume=True)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        experiment.start(None, "x", PPOConfig(), PPOConfig, resume=True)
    fresh = experiment.start(str(tmp_path / "new"), "x", PPOConfig(seeds=3), PPOConfig, members=[{"seed": 0}])
    assert sorted(os.listdir(fresh.path)) == ["config.yaml", "members.json"]
    again = experiment.start(fresh.path, "x", PPOConfig(seeds=3), PPOConfig, resume=True)
    assert again.config == PPOConfig(seeds=3) and again.members == [{"seed": 0}] and again.resumed
    with pytest.raises(ConfigError, match=r"different config \(seeds\)"):
        experiment.start(fresh.path, "x", PPOConfig(seeds=4), PPOConfig, resume=True)


def test_rows_append_read_and_cut(tmp_path):
    from agents.ppo import PPOConfig
    r = experiment.start(str(tmp_path / "r"), "x", PPOConfig(), PPOConfig)
    r.append_rows("m.csv", [{"iteration": 1, "v": 0.5, "method": "a"}, {"iteration": 2, "v": math.nan, "method": "a"}])
    r.append_rows("m.csv", [{"iteration": 3, "v": 1.5, "method": "b"}])
    rows = r.read_rows("m.csv")
    assert [row["iteration"] for row in rows] == [1.0, 2.0, 3.0] and rows[2]["method"] == "b"
    assert math.isnan(rows[1]["v"])
    r.cut_rows("m.csv", lambda row: int(row["iteration"]) <= 2)
    assert len(r.read_rows("m.csv")) == 2


def test_presets_inherit_from_a_base_and_refuse_a_cycle(tmp_path):
    from src import config as cfg
    (tmp_path / "a.yaml").write_text("lr: 0.1\nseeds: 2\ninner: {num_envs: 4, lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseeds: 3\ninner: {lr: 0.25}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.yaml").write_text("base: ../b.yaml\nenv: Acrobot-v1\n")
    assert cfg.load_yaml(sub / "c.yaml") == {"lr": 0.1, "seeds": 3, "inner": {"num_envs": 4, "lr": 0.25},
                                              "env": "Acrobot-v1"}
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        cfg.load_yaml(tmp_path / "x.yaml")
    (tmp_path / "z.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_yaml(tmp_path / "z.yaml")
    # a derived preset in configs/ resolves to its base plus its own keys
    sappo, plain = cfg.load_yaml("configs/ppo_cartpole_sappo.yaml"), cfg.load_yaml("configs/ppo_cartpole.yaml")
    assert {k: v for k, v in sappo.items() if plain.get(k) != v} == {
        "seeds": 5, "ent_coef": 0.0, "sa_kappa": 1.0, "sa_eps": 0.2, "sa_pgd_steps": 10, "sa_ramp": 0.5}


def test_meta_configs_take_any_ppo_key_in_their_ppo_block():
    """BARFI's and UED's PPO learner: the loop's own PPO settings plus any
    other PPOConfig key under `ppo:` (`--set ppo.KEY=VALUE`); a key the loop
    already sets, or one PPO does not have, is refused."""
    from meta import env_design as ed
    from meta import reward_alignment as ra
    from src import config as cfg
    aligned = cfg.override(ra.AlignmentConfig(), ["ppo.vf_coef=0.25", "ppo.activation=relu"]).validate()
    assert aligned.ppo == {"vf_coef": 0.25, "activation": "relu"}
    inner = aligned.ppo_config()
    assert (inner.vf_coef, inner.activation, inner.lr) == (0.25, "relu", ra.AlignmentConfig().lr)
    assert ra.AlignmentConfig().ppo_config().vf_coef == 0.5     # PPO's default where nothing is set
    with pytest.raises(ConfigError, match="lr set both at the top level and in `ppo:`"):
        cfg.override(ra.AlignmentConfig(), ["ppo.lr=0.1"]).validate()
    with pytest.raises(ConfigError, match="'vf_coeff' is not a PPOConfig key"):
        cfg.override(ed.UEDConfig(), ["ppo.vf_coeff=0.1"]).validate()
    with pytest.raises(ConfigError, match="'seed' is not a mapping"):
        cfg.override(ed.UEDConfig(), ["seed.x=1"])
    assert cfg.override(ed.UEDConfig(), ["ppo.max_grad_norm=2"]).validate().ppo_config().max_grad_norm == 2.0
