"""`run.py meta reward-alignment` end to end, as a user calls it (one small
BARFI run): the run directory's files and the numbers in them."""
import csv
import json
import math
import os

import numpy as np
import pytest
import yaml

import run
from tests.helpers import check_golden, csv_numbers, run_cli_steps

ENVS, STEPS, ROLLOUT = 4, 8, 16
BATCH = ENVS * STEPS
# one outer step per PPO iteration (the preset's outer_every), on a separate
# rollout of ROLLOUT steps in each env (reuse_rollout off here), counted too
PER_BLOCK = BATCH + ROLLOUT * ENVS
BLOCKS = 8


@pytest.mark.slow   # BARFI's command line and run directory stay covered by the stop-and-resume test below
def test_barfi_run_from_the_gridworld_preset_leaves_a_consistent_run_directory(tmp_path):
    out = str(tmp_path / "run")
    code = run.main(["meta", "reward-alignment", "--config", "configs/barfi_gridworld_bad.yaml", "--method", "barfi",
                     "--estimator", "implicit", "--seeds", "2", "--total-steps", str(BLOCKS * PER_BLOCK + PER_BLOCK // 2),
                     "--no-progress", "--out", out,
                     "--set", "env_kwargs={size: 3}", "--set", "hidden=[8]", "--set", f"num_envs={ENVS}",
                     "--set", f"num_steps={STEPS}", "--set", "num_epochs=1", "--set", "num_minibatches=1",
                     "--set", "reuse_rollout=false", "--set", f"outer_rollout={ROLLOUT}"])
    assert code == 0
    assert {"config.yaml", "metrics.csv", "summary.json", "comparison.md", "learning_curve.png"} <= set(os.listdir(out))

    # config.yaml: the preset with the flags and --set applied, and the methods run
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["method"] == "barfi" and saved["estimator"] == "implicit" and saved["seeds"] == 2
    assert saved["env_kwargs"] == {"size": 3} and saved["hidden"] == [8] and saved["outer_rollout"] == ROLLOUT
    assert saved["heuristic"] == "gridworld-bad" and saved["reuse_rollout"] is False and saved["outer_every"] == 1
    assert saved["outer_optimizer"] == "normalized" and saved["outer_lr"] == 0.02     # the preset's

    with open(os.path.join(out, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == BLOCKS * 2                       # one row per iteration and seed
    assert {r["method"] for r in rows} == {"barfi"} and sorted({r["seed"] for r in rows}) == ["0", "1"]
    assert {"episode_return", "entropy", "policy_loss", "outer_fitness", "outer_grad_norm", "gamma_phi",
            "phi2_mean", "phi1_mean"} <= set(rows[0])
    for r in rows:     # every sample counted: the PPO batch and the outer rollout, charged per block
        assert int(r["env_steps"]) == int(r["iteration"]) * PER_BLOCK
        assert 0.0 < float(r["gamma_phi"]) < 1.0 and math.isfinite(float(r["outer_grad_norm"]))
    by_seed = {m: [r for r in rows if r["member"] == str(m)] for m in (0, 1)}
    for seed_rows in by_seed.values():
        assert [int(r["iteration"]) for r in seed_rows] == list(range(1, BLOCKS + 1))
    # phi leaves its start (phi1 = 0, phi2 = 1) once a rollout reaches the goal (non-zero gradient)
    assert any(float(r["outer_grad_norm"]) > 0 for r in rows)
    assert all(abs(float(r["phi1_mean"])) > 1e-3 for r in rows if int(r["iteration"]) == BLOCKS)

    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["env"] == "gridworld/barfi" and summary["heuristic"] == "gridworld-bad" and summary["seeds"] == 2
    barfi = summary["methods"]["barfi"]
    assert barfi["env_steps"] == BLOCKS * PER_BLOCK and barfi["iterations"] == BLOCKS and barfi["outer_steps"] == BLOCKS
    # the summary's numbers, recomputed from metrics.csv: final return = mean of the last 10% of
    # iterations (here the last one), area = mean over all iterations, mean and std over the seeds
    finals = [float(by_seed[m][-1]["episode_return"]) for m in (0, 1)]
    areas = [np.nanmean([float(r["episode_return"]) for r in by_seed[m]]) for m in (0, 1)]
    np.testing.assert_allclose(barfi["final_return"]["per_seed"], finals, rtol=1e-6)
    np.testing.assert_allclose(barfi["auc"]["per_seed"], areas, rtol=1e-6)
    np.testing.assert_allclose(barfi["final_return"]["mean"], np.mean(finals), rtol=1e-6)
    np.testing.assert_allclose(barfi["final_return"]["std"], np.std(finals, ddof=1), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(barfi["final_return"]["se"], np.std(finals, ddof=1) / np.sqrt(2), rtol=1e-6,
                               atol=1e-12)
    np.testing.assert_allclose(barfi["gamma_phi_final"]["per_seed"], [float(by_seed[m][-1]["gamma_phi"]) for m in (0, 1)],
                               rtol=1e-6)
    np.testing.assert_allclose(barfi["phi2_mean_final"]["per_seed"],
                               [float(by_seed[m][-1]["phi2_mean"]) for m in (0, 1)], rtol=1e-6)

    with open(os.path.join(out, "learning_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "comparison.md")) as f:
        table = f.read()
    assert "gridworld/barfi" in table and "gridworld-bad" in table
    line = next(x for x in table.splitlines() if x.startswith("| barfi |"))
    assert f"{barfi['final_return']['mean']:.3f} ± {barfi['final_return']['std']:.3f}" in line
    assert f"| {BLOCKS * PER_BLOCK} | {BLOCKS} |" in line
    check_golden("meta_reward_alignment", csv_numbers(os.path.join(out, "metrics.csv")))


def test_saved_config_runs_the_same_methods_again(tmp_path, monkeypatch):
    """config.yaml names the methods run: a preset without `method` runs all
    four, and `--config RUN_DIR/config.yaml` must run all four again (it
    used to store the dataclass default, barfi alone). Nothing is compiled:
    the runs themselves are stopped before they start."""
    from commands import reward_alignment as cmd

    class Stop(Exception):
        pass

    def no_run(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(cmd, "run_method", no_run)
    first = str(tmp_path / "first")
    with pytest.raises(Stop):
        cmd.main(["--config", "configs/barfi_gridworld_bad.yaml", "--set", "outer_lr=0.03", "--out", first])
    _, configs = cmd.build_config(cmd.parser().parse_args(["--config", "configs/barfi_gridworld_bad.yaml",
                                                           "--set", "outer_lr=0.03"]))
    _, rerun = cmd.build_config(cmd.parser().parse_args(["--config", os.path.join(first, "config.yaml")]))
    assert list(rerun) == list(configs) == ["primary", "naive", "pbrs", "barfi"]
    assert rerun == configs


def test_a_stopped_run_resumes_bit_identically_method_by_method(tmp_path):
    """Two methods, checkpoints every 2 blocks of 6: stopped at block 2 (each
    method at its checkpoint), resumed, and the same run uninterrupted, all
    in one process sharing compiled programs through JAX's cache (what
    carries over comes from disk)."""
    import shutil
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    args = ["meta", "reward-alignment", "--config", "configs/barfi_gridworld_bad.yaml", "--method", "primary,barfi",
            "--estimator", "implicit", "--seeds", "2", "--total-steps", str(6 * PER_BLOCK), "--no-progress",
            "--set", "env_kwargs={size: 3}", "--set", "hidden=[8]", "--set", f"num_envs={ENVS}",
            "--set", f"num_steps={STEPS}", "--set", "num_epochs=1", "--set", "num_minibatches=1",
            "--set", "reuse_rollout=false", "--set", f"outer_rollout={ROLLOUT}", "--set", "checkpoint_every=2"]
    steps = [[*args, "--out", a, "--stop-at", "2"], ["copy", a, a + "_stopped"],
             ["meta", "reward-alignment", "--out", a, "--resume", "--no-progress"], [*args, "--out", b]]
    proc = run_cli_steps(steps, tmp_path, timeout=600)
    with open(os.path.join(a + "_stopped", "summary.json")) as f:
        stopped = json.load(f)
    assert stopped["complete"] is False and stopped["blocks"] == {"primary": 2, "barfi": 2}
    with open(os.path.join(a + "_stopped", "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted({(r["method"], int(r["iteration"])) for r in rows}) == [
        (m, i) for m in ("barfi", "primary") for i in (1, 2)]
    assert "resuming" in proc.stdout and "primary at block 2, barfi at block 2" in proc.stdout
    with open(os.path.join(a, "metrics.csv")) as f, open(os.path.join(b, "metrics.csv")) as g:
        assert f.read() == g.read()
    with open(os.path.join(a, "summary.json")) as f, open(os.path.join(b, "summary.json")) as g:
        resumed, whole = json.load(f), json.load(g)
    assert resumed["complete"] and resumed["methods"]["barfi"]["iterations"] == 6
    for method in ("primary", "barfi"):
        for key in ("final_return", "auc"):
            assert resumed["methods"][method][key] == whole["methods"][method][key]
    shutil.rmtree(tmp_path / "jax-cache", ignore_errors=True)
