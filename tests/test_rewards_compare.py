"""`run.py rewards compare` (commands/rewards.py): distances between reward
functions through the command line. Shaping and positive scaling of the
environment's reward must be at distance ~0 under EPIC and STARC (not under the
naive baseline), an unrelated random reward far; results reproduce from --seed;
bad input stops before anything compiles; and (slow) a reward-model run's
models are recomputed from its directory and match its accuracy.json. The
finite MDPs' tables and the environment rewards the command uses are tested
next to them (tests/test_finite_mdps.py, tests/test_env_rewards.py)."""
import json
import os
import shutil

import numpy as np
import pytest
import yaml

import run

SOURCES = ["env", "shaped", "scaled", "random"]
ZERO = 1e-3        # "distance 0": float32 rounding of cancelled shaping is ~1e-6 here


def compare(*args):
    return run.main(["rewards", "compare", "--no-progress", *args])


def matrix(result, name, seed=None):
    values = result["distances"][name]
    return np.asarray(values["per_seed"] if seed is None else values["per_seed"][seed])


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pendulum") / "run")
    result = compare("--env", "Pendulum-v1", "--rewards", ",".join(SOURCES), "--seeds", "2", "--samples", "256",
                     "--canon-samples", "64", "--out", out)
    return result, out


@pytest.fixture(scope="module")
def gridworld(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gridworld") / "run")
    result = compare("--env", "gridworld/barfi", "--env-kwargs", "{size: 3}", "--rewards", ",".join(SOURCES),
                     "--seeds", "2", "--out", out)
    return result, out


def test_sampled_epic_on_pendulum_ignores_shaping_and_scale_not_a_random_reward(pendulum):
    result, out = pendulum
    assert result["method"] == "sampled" and result["sources"] == SOURCES
    assert set(result["distances"]) == {"epic", "naive"}           # no STARC without the dynamics
    env, shaped, scaled, random = range(4)
    epic, naive = matrix(result, "epic"), matrix(result, "naive")  # [seeds, 4, 4]
    assert epic.shape == (2, 4, 4)
    assert np.all(epic[:, env, [shaped, scaled]] < ZERO)
    assert np.all(epic[:, env, random] > 0.1)
    # the baseline sees the shaping (so the potential is not a no-op), and ignores a positive factor
    assert np.all(naive[:, env, shaped] > 0.05) and np.all(naive[:, env, scaled] < ZERO)
    for m in (epic, naive):
        np.testing.assert_allclose(m, np.swapaxes(m, 1, 2), atol=1e-6)
        assert np.all(np.abs(np.diagonal(m, axis1=1, axis2=2)) < ZERO) and np.all((m >= 0) & (m <= 1))
    # seeds draw their own samples, potential and random network
    assert epic[0, env, random] != epic[1, env, random]
    # the model of Pendulum's reward as a function of the observations is the environment's
    assert result["checks"]["env_reward_relative_error"] < 1e-5


def test_the_run_directory(pendulum):
    result, out = pendulum
    assert {"config.yaml", "distances.json", "comparison.md", "distances.png"} <= set(os.listdir(out))
    with open(os.path.join(out, "distances.json")) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    with open(os.path.join(out, "config.yaml")) as f:
        stored = yaml.safe_load(f)
    assert stored["env"] == "Pendulum-v1" and stored["seeds"] == 2 and stored["rewards"] == SOURCES
    with open(os.path.join(out, "comparison.md")) as f:
        text = f.read()
    assert "## epic" in text and "| **random** |" in text and "uniformly random policy" in text


def test_exact_distances_on_the_gridworld(gridworld):
    result, _ = gridworld
    assert result["method"] == "exact"
    assert list(result["distances"]) == ["epic", "starc", "naive", "regret"]
    env, shaped, scaled, random = range(4)
    for name in ("epic", "starc"):
        m = matrix(result, name)
        assert np.all(m[:, env, [shaped, scaled]] < 1e-4), name
        assert np.all(m[:, env, random] > 0.1), name
    naive = matrix(result, "naive")
    assert np.all(naive[:, env, shaped] > 0.05) and np.all(naive[:, env, scaled] < 1e-4)
    regret = matrix(result, "regret")
    # shaping and scaling keep the optimal policy: optimising them costs nothing under env
    assert np.all(regret[:, [shaped, scaled], env] < 1e-4) and np.all(np.diagonal(regret, axis1=1, axis2=2) < 1e-4)
    assert result["checks"]["env_reward_relative_error"] < 1e-5


def test_results_reproduce_from_the_seed(gridworld, tmp_path):
    """The same --seed gives seed 0's numbers again, whatever the number of
    seeds and the other sources (each source draws from its own spec)."""
    result, _ = gridworld
    again = compare("--env", "gridworld/barfi", "--env-kwargs", "{size: 3}", "--rewards", "random,env",
                    "--seeds", "1", "--out", str(tmp_path / "again"))
    for name in result["distances"]:
        np.testing.assert_allclose(matrix(again, name, 0), matrix(result, name, 0)[np.ix_([3, 0], [3, 0])],
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input

def fails(capsys, tmp_path, *args):
    """The command stops with exit code 2, before writing (or compiling) anything; returns its message."""
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stop:
        compare(*args, "--out", str(out))
    assert stop.value.code == 2 and not out.exists()
    return capsys.readouterr().err


def test_bad_input_stops_before_compiling(capsys, tmp_path):
    assert "unknown reward source 'shapedd'" in fails(capsys, tmp_path, "--rewards", "env,shapedd")
    assert "rm:RUN_DIR[:PAIRS[:AGG]]" in fails(capsys, tmp_path, "--rewards", "env,bogus")
    assert "Did you mean 'Pendulum-v1'" in fails(capsys, tmp_path, "--env", "Pendulm-v1")
    assert "scale must be > 0" in fails(capsys, tmp_path, "--rewards", "env,scaled:-2")
    assert "names env twice" in fails(capsys, tmp_path, "--rewards", "env,env")
    assert "--env gridworld/tomato" in fails(capsys, tmp_path, "--env", "Pendulum-v1", "--rewards", "env,proxy")
    assert "use --method sampled" in fails(capsys, tmp_path, "--env", "Pendulum-v1", "--method", "exact")
    message = fails(capsys, tmp_path, "--env", "Breakout-MinAtar", "--rewards", "env,random")
    assert "known for Pendulum-v1" in message and "rm:, gold:" in message
    missing = tmp_path / "missing"
    assert "is not a directory" in fails(capsys, tmp_path, "--rewards", f"env,rm:{missing}")
    assert "no config.yaml" in fails(capsys, tmp_path, "--rewards", f"env,rm:{tmp_path}")
    assert "--rewards: no values given" in fails(capsys, tmp_path, "--rewards", ",")


def test_a_directory_that_is_not_a_finished_reward_model_run_is_refused(capsys, tmp_path):
    from meta import reward_model as rmod
    from src import config as cfg

    train_run = tmp_path / "train"
    train_run.mkdir()
    (train_run / "config.yaml").write_text("algo: ppo\nenv: CartPole-v1\nlr: 0.001\n")
    message = fails(capsys, tmp_path, "--rewards", f"env,rm:{train_run}")
    assert "is not a `run.py meta reward-model` run" in message and "unknown config key" in message

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    config = rmod.RewardModelConfig(env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, pairs=(20, 80))
    cfg.save_yaml(config, str(unfinished / "config.yaml"))
    assert "has no accuracy.json" in fails(capsys, tmp_path, "--rewards", f"env,rm:{unfinished}")

    (unfinished / "accuracy.json").write_text("{}")
    assert "not 30" in fails(capsys, tmp_path, "--rewards", f"env,rm:{unfinished}:30")
    assert "unknown aggregation 'median'" in fails(capsys, tmp_path, "--rewards", f"env,rm:{unfinished}:20:median")
    assert "--seeds 2 or fewer" in fails(capsys, tmp_path, "--rewards", f"env,rm:{unfinished}", "--seeds", "3")
    message = fails(capsys, tmp_path, "--env", "Pendulum-v1", "--rewards", f"env,rm:{unfinished}")
    assert "is not the environment of" in message and "leave --env out" in message


def test_the_rewards_command_needs_an_action(capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["rewards"])
    assert stop.value.code == 2 and "compare" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reward-model runs

TINY_RM = dict(env="gridworld/barfi", env_kwargs={"size": 3}, gold="random", gold_width=32, seeds=2,
               reference_steps=512, ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2,
                                         "num_epochs": 1},
               data_envs=8, data_steps=32, pairs=[20], held_out_pairs=50, segment_len=8, rm_steps=50,
               rm_hidden=[16], rm_batch=16, ensemble=2, aggregate=["mean"], beta=[0.0], rl_steps=256,
               eval_every=1, eval_episodes=1, bon=[1], bon_episodes=1)


@pytest.mark.slow   # a whole (tiny) `meta reward-model` run first: about 90 s on 2 cores
def test_reward_models_of_a_run_are_recomputed_and_compared(tmp_path):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY_RM))
    rm_dir = str(tmp_path / "rm")
    assert run.main(["meta", "reward-model", "--config", str(preset), "--out", rm_dir, "--no-progress"]) == 0
    # (in one process the reward-model programs compiled by the run are reused)
    result = compare("--rewards", f"gold:{rm_dir},rm:{rm_dir},rm:{rm_dir}:20:single,rm:{rm_dir}:20:wco,random",
                     "--out", str(tmp_path / "cmp"))
    assert result["env"] == "gridworld/barfi" and result["seeds"] == 2 and result["method"] == "exact"
    with open(os.path.join(rm_dir, "accuracy.json")) as f:
        stored = json.load(f)["20"]["accuracy_gold"]
    check = result["checks"]["rm:rm:20:mean"]
    assert check["accuracy_gold_recomputed"] == pytest.approx(stored, abs=1e-6) and check["members"] == 2
    assert result["checks"]["rm:rm:20:single"]["members"] == 1
    epic = matrix(result, "epic")
    assert np.all((epic >= 0) & (epic <= 1)) and np.all(np.isfinite(epic))
    # single (member 0) differs from the ensemble mean, and the member minimum from both
    assert np.all(epic[:, 1, 2] > 1e-4) and np.all(epic[:, 1, 3] > 1e-4)

    # a run whose stored accuracy the recomputation does not match is refused
    tampered = str(tmp_path / "tampered")
    shutil.copytree(rm_dir, tampered)
    with open(os.path.join(tampered, "accuracy.json"), "w") as f:
        json.dump({"20": {"accuracy_gold": [0.0, 0.0]}}, f)
    with pytest.raises(SystemExit):
        compare("--rewards", f"rm:{tampered},random", "--out", str(tmp_path / "never"))
