"""`run.py meta reward-model` (meta/reward_model.py) on a tiny gridworld
sweep: its structure, the exact facts the numbers must obey (zero KL before
the optimisation, best-of-n's analytic KL), bit-identical stop and resume,
compiled programs shared between sweeps, and bad input refused before
anything compiles."""
import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest

import run
from meta import reward_model as rmod
from src.config import ConfigError

TINY = rmod.RewardModelConfig(
    env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=2048,
    ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2},
    data_envs=8, data_steps=64, pairs=(20, 80), held_out_pairs=50, segment_len=8, rm_steps=100, rm_hidden=(16,),
    rm_batch=16, ensemble=2, aggregate=("single", "wco"), beta=(0.0, 1.0), rl_steps=2048, eval_every=4,
    eval_episodes=8, bon=(1, 4, 16), bon_episodes=32)
STOP = 4      # PPO iterations before the interruption (of 8)


@pytest.fixture(scope="module")
def sweeps():
    """The whole sweep; the same stopped after STOP iterations with its
    checkpoint kept in memory; and resumed from it."""
    quiet = dict(show_progress=False, log=lambda *a: None)
    whole = rmod.sweep(TINY, **quiet)
    saved = {}
    stopped = rmod.sweep(TINY, on_chunk=lambda ts, done, rows: saved.update(ts=ts, done=done), stop_at=STOP, **quiet)
    resumed = rmod.sweep(TINY, restore=lambda like: (saved["ts"], saved["done"]), **quiet)
    return whole, stopped, resumed, saved


def test_the_sweep_covers_every_run_and_compiles_each_program_once(sweeps):
    whole = sweeps[0]
    runs = rmod.grid(TINY)
    assert len(runs) == 2 * 2 * 2 * 2           # pair counts x aggregations x betas x seeds
    iterations = TINY.rl_iterations()
    assert iterations == 8 and len(whole["rl"]) == len(runs) * (iterations // TINY.eval_every + 1)
    assert len(whole["bon"]) == 2 * 2 * 2 * 3   # pair counts x seeds x aggregations x n
    assert set(whole["accuracy"]) == {20, 80}
    for acc in whole["accuracy"].values():
        assert len(acc["accuracy_gold"]) == TINY.seeds and all(0 <= a <= 1 for a in acc["accuracy_gold"])
    programs = rmod.make(TINY)
    # three sweeps, one compiled program each (a second sweep of one config retraces nothing)
    for program in (programs.reference, programs.data, programs.score_bon, programs.score_eval,
                    programs.rlhf_chunk, *programs.reward_models.values()):
        assert program._cache_size() == 1


def test_before_optimising_the_policy_is_the_reference_kl_zero(sweeps):
    """At iteration 0 every run's policy is its seed's reference: the log-ratio
    is exactly 0 on every step, and runs of one seed see the same episodes
    whatever their pair count, aggregation or beta."""
    start = [r for r in sweeps[0]["rl"] if r["iteration"] == 0]
    assert all(r["kl"] == 0.0 and r["d"] == 0.0 for r in start)
    for seed in range(TINY.seeds):
        assert len({r["gold"] for r in start if r["seed"] == seed}) == 1


def test_best_of_n_rows_carry_the_analytic_kl_and_n1_is_the_reference_mean(sweeps):
    whole = sweeps[0]
    for row in whole["bon"]:
        n = row["n"]
        assert row["kl"] == pytest.approx(math.log(n) - (n - 1) / n) and row["d"] == pytest.approx(math.sqrt(row["kl"]))
    ones = [r for r in whole["bon"] if r["n"] == 1 and r["pairs"] == 20 and r["aggregate"] == "single"]
    np.testing.assert_allclose(sorted(r["gold"] for r in ones), sorted(whole["reference_gold"]), rtol=1e-6)
    # best-of-n by the proxy raises the proxy's expected score with n
    for pairs in TINY.pairs:
        for seed in range(TINY.seeds):
            proxy = [r["proxy"] for r in whole["bon"] if (r["pairs"], r["seed"], r["aggregate"]) == (pairs, seed, "wco")]
            assert proxy == sorted(proxy)


def test_beta_enters_the_optimisation(sweeps):
    end = {(r["pairs"], r["aggregate"], r["beta"], r["seed"]): r for r in sweeps[0]["rl"]
           if r["iteration"] == TINY.rl_iterations()}
    assert any(end[(p, a, 0.0, s)]["kl"] != end[(p, a, 1.0, s)]["kl"]
               for p in TINY.pairs for a in TINY.aggregate for s in range(TINY.seeds))


def test_stop_and_resume_is_bit_identical(sweeps):
    whole, stopped, resumed, saved = sweeps
    assert saved["done"] == STOP and not stopped["complete"] and resumed["complete"]
    assert stopped["rl"] == [r for r in whole["rl"] if r["iteration"] <= STOP]
    assert resumed["rl"] == [r for r in whole["rl"] if r["iteration"] > STOP]
    assert resumed["bon"] == whole["bon"] and resumed["accuracy"] == whole["accuracy"]


def test_summaries_fit_gaos_forms_and_name_the_peak(sweeps):
    summaries = rmod.summarise(TINY, sweeps[0])
    assert len(summaries) == 2 * 2 + 2 * 2 * 2      # best-of-n per (pairs, aggregation); PPO per (.., beta)
    for s in summaries:
        assert set(s["fit"]) == {"alpha", "beta", "r2", "d_peak", "r_peak"}
        assert s["peak_gold"] == max(s["gold_mean"]) and len(s["d"]) == s["points"]


def test_cli_writes_the_run_directory(sweeps, tmp_path):
    """The command on the same config (its programs already compiled here)."""
    preset = tmp_path / "tiny.yaml"
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(TINY).items()}
    import yaml
    preset.write_text(yaml.safe_dump(fields))
    out = tmp_path / "run"
    # (with the progress bar on: the path a user takes)
    assert run.main(["meta", "reward-model", "--config", str(preset), "--out", str(out)]) == 0
    assert {"config.yaml", "curves.csv", "curves_bon.csv", "accuracy.json", "fits.json", "summary.json",
            "comparison.md", "best_of_n.png", "ppo_kl.png"} <= set(os.listdir(out))
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(sweeps[0]["rl"])
    assert [float(r["gold"]) for r in rows] == [r["gold"] for r in sweeps[0]["rl"]]
    with open(out / "fits.json") as f:
        assert len(json.load(f)) == 12


def test_decided_accuracy_leaves_ties_out():
    """Two pairs gold decides (the model right on one) and one tie: 1/2 of the
    decided pairs, whatever the model says about the tie."""
    import jax.numpy as jnp
    from envs import preferences as prefs
    from envs import reward_models as rm
    params = [{"w": jnp.ones((3, 1)), "b": jnp.zeros((1,))}]       # r = obs + action + next_obs, obs_dim 1
    seg = lambda obs, gold: prefs.Segments(jnp.asarray(obs, jnp.float32)[:, :, None],  # noqa: E731
                                           jnp.zeros((3, 1, 1), jnp.float32), jnp.zeros((3, 1, 1), jnp.float32),
                                           jnp.asarray(gold, jnp.float32), jnp.zeros((3, 1), bool))
    pairs = prefs.Pairs(seg([[2.0], [3.0], [5.0]], [[1.0], [0.0], [0.0]]),
                        seg([[1.0], [1.0], [0.0]], [[0.0], [1.0], [0.0]]), jnp.ones(3), jnp.ones(3))
    out = rmod.decided_accuracy(params, pairs)
    assert float(out["accuracy_gold_decided"]) == 0.5 and float(out["decided_fraction"]) == pytest.approx(2 / 3)
    assert rm.num_members(params) == 1


def test_a_constant_gold_reward_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="gold=random"):
        rmod.check_gold_varies(np.ones((4, 10), np.float32), "CartPole-v1")
    rmod.check_gold_varies(np.array([[0.0, 1.0]]), "gridworld/barfi")


@pytest.mark.parametrize("change, message", [
    ({"aggregate": ("wco",), "ensemble": 1}, "set ensemble >= 2"),
    ({"beta": (0.0, -0.1)}, "beta must be >= 0"),
    ({"bon": (1, 64)}, "bon_episodes >= 64"),
    ({"bootstrap": True, "ensemble": 5, "pairs": (6,)}, "pairs"),
    ({"segment_len": 100}, "segment_len"),
    ({"gold": "learned"}, "unknown gold reward"),
    ({"aggregate": ("median",), "ensemble": 2}, "unknown aggregation"),
    ({"ppo": {"clip": 0.1}}, "clip"),
    ({"online_every": 3}, "multiple of eval_every"),
    ({"online_every": 4, "online_pairs": 0}, "online_pairs and online_rm_steps must be >= 1"),
])
def test_bad_input_fails_before_compiling(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **change).validate()


def test_best_of_n_may_rank_more_episodes_than_ppo_steps_per_iteration():
    """The scorers only collect: a best-of-n pool of bon_episodes x num_steps
    beyond rl_steps is valid (it once failed PPO's one-iteration check)."""
    config = dataclasses.replace(TINY, bon_episodes=TINY.rl_steps)     # 2048 x 32 steps >> rl_steps
    programs = rmod.build(config)
    assert programs.score_bon is not None


# ----------------------------------------------------------------------------- online: pairs from the learner

ONLINE = dataclasses.replace(TINY, pairs=(20,), aggregate=("mean",), beta=(0.0,), online_every=4, online_pairs=12,
                             online_rm_steps=20, bon=(1,), bon_episodes=8)


@pytest.fixture(scope="module")
def online_sweeps():
    """The online sweep (8 PPO iterations, the reward models updated once,
    after iteration 4) whole, and stopped at 4 then resumed from the state
    handed to on_chunk."""
    quiet = dict(show_progress=False, log=lambda *a: None)
    whole = rmod.sweep(ONLINE, **quiet)
    saved = {}
    stopped = rmod.sweep(ONLINE, on_chunk=lambda state, done, rows: saved.update(state=state, done=done),
                         stop_at=4, **quiet)
    resumed = rmod.sweep(ONLINE, restore=lambda like: (saved["state"], saved["done"]), **quiet)
    return whole, stopped, resumed, saved["state"]


def test_online_updates_train_the_reward_model_on_the_learners_pairs(online_sweeps):
    import jax
    whole, _, _, state = online_sweeps
    assert ONLINE.online_rounds() == 1
    # after the update at iteration 4: each run's buffer holds its 12 new pairs, the rest still empty
    assert np.asarray(state["count"]).tolist() == [12] * ONLINE.seeds
    labels = np.asarray(state["buffer"].label)
    assert labels.shape == (ONLINE.seeds, 12) and set(np.unique(labels)) <= {0.0, 1.0}
    # the reward models moved off their offline fit
    programs = rmod.make(ONLINE)
    _, _, offline, _, _ = rmod.learned_rewards(programs, log=lambda *a: None)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(state["rm"]), jax.tree.leaves(offline[20]))]
    assert max(moved) > 1e-4
    # the accuracy on the learner's new pairs is recorded at the update only
    known = {r["iteration"]: r["rm_accuracy_new_pairs"] for r in whole["rl"]}
    assert 0.0 <= known[4] <= 1.0 and all(math.isnan(v) for i, v in known.items() if i != 4)
    assert programs.online_update._cache_size() == 1


def test_online_sweep_resumes_bit_identically(online_sweeps):
    whole, stopped, resumed, _ = online_sweeps
    assert not stopped["complete"] and resumed["complete"]
    after = lambda rows: [{k: v for k, v in r.items() if k != "rm_accuracy_new_pairs"}   # noqa: E731
                          for r in rows if r["iteration"] > 4]
    assert after(whole["rl"]) == after(resumed["rl"])
