"""Offline preference optimisation (meta/prefopt.py) on a tiny gridworld
sweep: the pairs are the reward-model loop's, every (loss, beta, seed) is one
compiled program, zero KL before training, the loss picked by its index is
the named loss, bit-identical stop and resume, and bad input refused before
anything compiles."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import preference_losses as pl
from meta import prefopt as po
from meta import reward_model as rmod
from src.config import ConfigError

TINY = po.PrefOptConfig(
    env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=2048,
    ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2},
    data_envs=8, data_steps=64, pairs=80, held_out_pairs=50, segment_len=8, losses=("dpo", "ipo", "copg"),
    beta=(0.1, 1.0), steps=40, batch=16, lr=1e-2, eval_every=20, eval_episodes=8)
STOP = 20


@pytest.fixture(scope="module")
def sweeps():
    quiet = dict(show_progress=False, log=lambda *a: None)
    whole = po.sweep(TINY, **quiet)
    saved = {}
    stopped = po.sweep(TINY, on_chunk=lambda state, done, rows: saved.update(state=state, done=done), stop_at=STOP,
                       **quiet)
    resumed = po.sweep(TINY, restore=lambda like: (saved["state"], saved["done"]), **quiet)
    return whole, stopped, resumed


def test_every_run_is_in_one_program_compiled_once(sweeps):
    whole, _, _ = sweeps
    programs = po.make(TINY)
    assert programs.chunk._cache_size() == 1 and programs.evaluate._cache_size() == 1
    runs = po.runs(TINY)
    assert len(runs) == 3 * 2 * 2
    assert len(whole["rows"]) == len(runs) * (TINY.steps // TINY.eval_every + 1)
    assert {(r["loss"], r["beta"], r["seed"]) for r in whole["rows"]} == {(r["loss"], r["beta"], r["seed"]) for r in runs}
    assert all(np.isfinite(r["gold"]) and r["kl"] >= 0 for r in whole["rows"])


def test_before_training_the_policy_is_the_reference(sweeps):
    whole, _, _ = sweeps
    start = [r for r in whole["rows"] if r["step"] == 0]
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-5) for r in start)
    # every run of a seed starts from the same reference and is scored on the same episodes
    for seed in range(TINY.seeds):
        assert len({r["gold"] for r in start if r["seed"] == seed}) == 1
    # and training moves it: some KL, different for different losses or betas
    final = [r for r in whole["rows"] if r["step"] == TINY.steps]
    assert all(r["kl"] > 1e-3 for r in final if r["loss"] == "dpo") and np.mean([r["kl"] for r in final]) > 1e-2
    assert len({round(r["kl"], 6) for r in final}) > len(final) // 2


def test_the_pairs_are_the_reward_model_loops():
    """For the same data settings and seed, the pairs this loop trains on are
    those `run.py meta reward-model` trains its reward models on."""
    data_config = TINY.data_config()
    assert data_config.pairs == (TINY.pairs,) and data_config.segment_len == TINY.segment_len
    programs = po.make(TINY)
    ref_keys, data_keys, rm_keys, _, _ = rmod.stage_keys(data_config)
    ref_ts, _ = programs.data.reference(ref_keys)
    rollouts = programs.data.data(ref_ts, data_keys)
    mine = programs.pairs(rollouts, rm_keys)
    theirs = jax.vmap(lambda r, k: rmod.preference_pairs(data_config, r, k, TINY.pairs)[0])(rollouts, rm_keys)
    for x, y in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_loss_index_picks_the_named_loss():
    """lax.switch over config.losses: each index's value is the named loss's
    on the same batch (a permuted list would fail)."""
    rng = np.random.default_rng(0)
    batch = pl.PairBatch(*(jnp.asarray(rng.normal(size=6), jnp.float32) for _ in range(4)),
                         jnp.full(6, 8.0), jnp.full(6, 8.0))
    params = pl.loss_params(beta=0.3)
    losses = [pl.LOSSES[n] for n in TINY.losses]
    for i, name in enumerate(TINY.losses):
        picked = jax.jit(lambda idx: jax.lax.switch(idx, losses, batch, params))(i)
        assert float(picked) == pytest.approx(float(pl.LOSSES[name](batch, params)), rel=1e-6)


def test_stop_and_resume_is_bit_identical(sweeps):
    whole, stopped, resumed = sweeps
    assert not stopped["complete"] and resumed["complete"]
    first = [r for r in stopped["rows"] if r["step"] <= STOP]
    as_text = lambda rows: [{k: repr(v) for k, v in r.items()} for r in rows]   # noqa: E731  (NaN == NaN)
    assert as_text(first + resumed["rows"]) == as_text(whole["rows"])


def test_summaries_name_the_peak_and_the_end(sweeps):
    whole, _, _ = sweeps
    summaries = po.summarise(TINY, whole["rows"])
    assert len(summaries) == len(TINY.losses) * len(TINY.beta)
    for s in summaries:
        assert s["steps"] == [0, 20, 40] and s["peak_gold"] == max(s["gold_mean"])
        assert s["final_gold"] == s["gold_mean"][-1] and s["d"][0] == pytest.approx(0.0, abs=1e-2)


@pytest.mark.parametrize("change, message", [
    ({"losses": ("dpo", "bogus")}, "unknown preference loss 'bogus'"),
    ({"beta": (0.0,)}, "beta must be > 0"),
    ({"losses": ("robust_dpo",), "noise_rate": 0.5}, "robust DPO divides"),
    ({"steps": 30}, "multiple of eval_every"),
    ({"segment_len": 100}, "segment_len"),
    ({"losses": ("dpo", "dpo")}, "twice"),
])
def test_bad_input_fails_before_compiling(change, message):
    with pytest.raises(ConfigError, match=message):
        po.make(dataclasses.replace(TINY, **change))


# ------------------------------------------------------------ the command line

def write_tiny(path, config=TINY):
    from src import config as cfg
    cfg.save_yaml(config, str(path))
    return str(path)


def fake_reward_model_run(path, data_config, pairs=(TINY.pairs,)):
    """A reward-model run directory (its config and a few PPO rows), enough
    for --rlhf: the front end reads curves.csv, it does not rerun anything."""
    import csv
    from src import config as cfg
    path.mkdir()
    cfg.save_yaml(dataclasses.replace(data_config, pairs=pairs, aggregate=("mean",)), str(path / "config.yaml"))
    with open(path / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "pairs", "aggregate", "beta", "seed", "iteration", "gold", "kl", "d"])
        w.writeheader()
        for seed in range(2):
            for it, (gold, d) in enumerate([(0.5, 0.0), (0.9, 1.0), (0.4, 3.0)]):
                w.writerow({"method": "rl", "pairs": pairs[0], "aggregate": "mean", "beta": 0.0, "seed": seed,
                            "iteration": 4 * it, "gold": gold + 0.1 * seed, "kl": d * d, "d": d})
    return str(path)


def test_cli_writes_the_run_directory_and_draws_the_rlhf_run_on_the_frontier(sweeps, tmp_path):
    import json

    import run
    config = write_tiny(tmp_path / "tiny.yaml")
    rlhf = fake_reward_model_run(tmp_path / "rm", TINY.data_config())
    out = tmp_path / "run"
    assert run.main(["meta", "prefopt", "--config", config, "--rlhf", rlhf, "--out", str(out), "--no-progress"]) == 0
    assert {"config.yaml", "curves.csv", "fits.json", "summary.json", "comparison.md", "frontier.png"} <= \
        set(os.listdir(out))
    whole, _, _ = sweeps
    with open(out / "curves.csv") as f:
        assert sum(1 for _ in f) == len(whole["rows"]) + 1                  # the same sweep (programs shared)
    text = (out / "comparison.md").read_text()
    assert "reward model (mean) + PPO" in text and "| dpo | 0.1 |" in text
    # the RLHF frontier: best mean gold with d <= the largest d is its peak, mean of 0.9 and 1.0
    row = [line for line in text.splitlines() if line.startswith("| reward model (mean) + PPO")][0]
    assert row.rstrip(" |").endswith("0.95 ± 0.05")
    with open(out / "summary.json") as f:
        assert json.load(f)["rlhf"] == rlhf


def test_cli_refuses_an_rlhf_run_on_other_data_naming_the_difference(tmp_path):
    from commands import prefopt as cli
    config = write_tiny(tmp_path / "tiny.yaml")
    other = fake_reward_model_run(tmp_path / "rm", dataclasses.replace(TINY.data_config(), segment_len=4))
    with pytest.raises(ConfigError, match="data settings differ from this run's \\(segment_len\\)"):
        cli.main(["--config", config, "--rlhf", other, "--out", str(tmp_path / "a")])
    fewer = fake_reward_model_run(tmp_path / "rm2", TINY.data_config(), pairs=(40,))
    with pytest.raises(ConfigError, match="not 80: set --pairs"):
        cli.main(["--config", config, "--rlhf", fewer, "--out", str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="unknown preference loss"):
        cli.main(["--config", config, "--loss", "dpo,nope", "--out", str(tmp_path / "c")])
    assert not any((tmp_path / n).exists() for n in "abc")


# ------------------------------------------------------------ a reference from a run directory

def fake_train_run(path, algo="ppo", env="CartPole-v1", seeds=2, **env_kwargs):
    """A train run directory as far as the checks read it: config.yaml, members.json, checkpoint/."""
    from agents import ppo, sac
    from src import config as cfg
    from src import rundir
    path.mkdir()
    config = (ppo.PPOConfig if algo == "ppo" else sac.SACConfig)(env=env, env_kwargs=env_kwargs, seeds=seeds)
    cfg.save_yaml(config, str(path / "config.yaml"))
    if algo != "ppo":
        with open(path / "config.yaml", "a") as f:
            f.write(f"algo: {algo}\n")
    rundir.write_members(str(path), [{"seed": s, "hparams": {}} for s in range(seeds)])
    (path / "checkpoint").mkdir()
    return str(path)


def test_a_reference_run_from_another_env_or_too_small_is_refused_naming_the_fix(tmp_path):
    plain = dict(env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, ppo={})
    other_env = fake_train_run(tmp_path / "cartpole")
    with pytest.raises(ConfigError, match="was trained on CartPole-v1.*set env"):
        po.PrefOptConfig(**plain, reference_run=other_env).validate()
    small = fake_train_run(tmp_path / "one", env="gridworld/barfi", seeds=1, size=3)
    with pytest.raises(ConfigError, match="1 members, fewer than seeds = 2"):
        rmod.RewardModelConfig(**plain, reference_run=small).validate()
    with pytest.raises(ConfigError, match="remove the ppo: block"):
        po.PrefOptConfig(**{**plain, "seeds": 1, "ppo": {"lr": 1e-3}}, reference_run=small).validate()
    with pytest.raises(ConfigError, match="no checkpoint"):
        (tmp_path / "one" / "checkpoint").rmdir()
        po.PrefOptConfig(**{**plain, "seeds": 1}, reference_run=small).validate()
    sac_run = fake_train_run(tmp_path / "sac", algo="sac", env="Pendulum-v1")
    with pytest.raises(ConfigError, match="must be a PPO run"):
        po.PrefOptConfig(env="Pendulum-v1", seeds=2, reference_run=sac_run).validate()


@pytest.mark.slow    # a train run and the loop's programs compiled for its network
def test_a_trained_run_is_the_reference(tmp_path):
    """`reference_run`: the train run's final states are the references (the
    policy starts at KL 0 from them), and its PPO settings are the loop's."""
    import run
    from agents import load_run, restore_members
    out = str(tmp_path / "ref")
    run.main(["train", "--env", "gridworld/barfi", "--set", "env_kwargs={size: 3}", "--total-steps", "2048",
              "--seeds", "2", "--no-progress", "--set", "num_envs=8", "--set", "num_steps=32", "--set", "hidden=[16]",
              "--out", out])
    fields = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in ("ppo", "reference_steps")}
    config = po.PrefOptConfig(**{**fields, "reference_run": out, "losses": ("dpo",), "beta": (0.1,)})
    assert config.data_config().reference_config().hidden == (16,)
    result = po.sweep(config, show_progress=False, log=lambda *a: None)
    assert all(r["kl"] == pytest.approx(0.0, abs=1e-5) for r in result["rows"] if r["step"] == 0)
    programs = po.make(config)
    loaded, _ = programs.data.reference(None)
    module, run_config, members = load_run(out)
    stored = restore_members(out, module, programs.data.rl_agent, run_config, members)
    for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(stored.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
