"""Population-based training (meta/pbt.py, `run.py meta pbt`).

The exploit/explore step against a plain-Python reference (which members are
replaced, by whom, and what their hyperparameters become), over many keys;
the PBT paper's toy (Jaderberg et al. 2017, Figure 2) through the same
`make_chunk` that PPO's PBT uses: PBT reaches Q >= 1.19 where exploit-only
and explore-only fall short; bad input stops before compiling; a chunk of
rounds is traced once; a stopped and resumed run writes the same files as the
uninterrupted one. PPO's program (compiling it takes minutes on the 2-core
box) is in the slow tests: its resume through the command line, and PBT
against random search of equal population and budget on CartPole.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta import pbt
from src import experiment
from src.config import ConfigError
from tests.helpers import TraceCounter, tree_equal

# ----------------------------------------------------------------------------- the step against a reference

POP, K = 8, 2
PRIORS = {"lr": (1e-4, 1e-2, True), "clip": (0.05, 0.5, False)}
# ties (members 1 and 5) and a NaN (member 6, ranks last)
FITNESS = np.array([3.0, 7.0, -1.0, 2.0, 9.0, 7.0, np.nan, 0.5], np.float32)
HPARAMS = {"lr": np.geomspace(2e-4, 5e-3, POP).astype(np.float32),
           "clip": np.linspace(0.1, 0.45, POP).astype(np.float32),
           "gamma": np.full(POP, 0.99, np.float32)}      # not explored: must only ever be copied
MEMBERS = {"w": np.arange(POP * 3, dtype=np.float32).reshape(POP, 3), "step": np.arange(POP, dtype=np.int32)}
NUM_KEYS = 2000


def reference_ranks(fitness):
    """Best first, NaN last, ties by index: plain Python."""
    return sorted(range(len(fitness)), key=lambda i: (math.inf if math.isnan(fitness[i]) else -fitness[i], i))


SPECS = (("pbt", 0.5), ("exploit_only", 0.0), ("explore_only", 0.0))


@pytest.fixture(scope="module")
def outcomes():
    """`pbt.update` for each variant under NUM_KEYS keys (one program per spec, vmapped over keys)."""
    out = {}
    for variant, resample in SPECS:
        spec = pbt.make_spec(variant, ("lr", "clip"), PRIORS, POP, K / POP, resample_prob=resample)
        step = jax.jit(jax.vmap(lambda k, spec=spec: pbt.update(k, jnp.asarray(FITNESS), MEMBERS, HPARAMS, spec)))
        out[variant] = jax.tree.map(np.asarray, step(jax.random.split(jax.random.PRNGKey(3), NUM_KEYS)))
    return out


def test_truncation_selection_matches_the_reference(outcomes):
    ranks = reference_ranks(FITNESS.tolist())
    top, bottom = ranks[:K], ranks[-K:]
    assert set(bottom) == {6, 2}                  # the NaN and the worst
    members, hparams, parents = outcomes["pbt"]
    for i in range(POP):
        if i in bottom:
            assert set(parents[:, i]) <= set(top)
        else:
            assert (parents[:, i] == i).all()
    # the top member each replaced member copies is uniform over the top fraction
    for i in bottom:
        share = (parents[:, i] == top[0]).mean()
        assert abs(share - 0.5) < 4 * math.sqrt(0.25 / NUM_KEYS)
    # a copy is its parent in full: every leaf of the member, and the hyperparameters not explored
    for leaf in ("w", "step"):
        assert np.array_equal(members[leaf], MEMBERS[leaf][parents])
    assert np.array_equal(hparams["gamma"], HPARAMS["gamma"][parents])


def test_explore_perturbs_by_the_factors_within_the_prior_or_resamples_at_the_given_rate(outcomes):
    _, hparams, parents = outcomes["pbt"]
    replaced = parents != np.arange(POP)
    for name, (low, high, log) in PRIORS.items():
        new = hparams[name]
        # kept members keep their values exactly
        assert np.array_equal(new[~replaced], HPARAMS[name][np.nonzero(~replaced)[1]])
        x, p = new[replaced], HPARAMS[name][parents][replaced]
        assert ((x >= np.float32(low)) & (x <= np.float32(high))).all()
        up = np.isclose(x, np.clip(p * 1.2, low, high), rtol=1e-6)
        down = np.isclose(x, np.clip(p * 0.8, low, high), rtol=1e-6)
        resampled = ~(up | down)       # a draw equal to a perturbation has probability 0
        assert abs(resampled.mean() - 0.5) < 0.05, (name, resampled.mean())
        # perturbed: 0.8 or 1.2 with equal chance
        assert abs(up[~resampled].mean() - 0.5) < 0.05
        # redrawn from the prior: uniform (in log space for a log prior)
        r = x[resampled]
        u = (np.log(r) - math.log(low)) / math.log(high / low) if log else (r - low) / (high - low)
        assert abs(u.mean() - 0.5) < 0.04 and abs(u.var() - 1 / 12) < 0.015


def test_ablations_copy_without_exploring_and_explore_without_copying(outcomes):
    members, hparams, parents = outcomes["exploit_only"]
    for name in HPARAMS:
        assert np.array_equal(hparams[name], HPARAMS[name][parents])    # copied exactly, never moved
    assert (parents != np.arange(POP)).any()
    members, hparams, parents = outcomes["explore_only"]
    assert (parents == np.arange(POP)).all() and np.array_equal(members["w"], np.broadcast_to(MEMBERS["w"],
                                                                                              members["w"].shape))
    bottom = reference_ranks(FITNESS.tolist())[-K:]
    for name in PRIORS:
        moved = ~np.isclose(hparams[name], HPARAMS[name])
        assert not moved[:, [i for i in range(POP) if i not in bottom]].any()   # the top keeps its values
        assert moved[:, bottom].mean() > 0.9                                      # the bottom explores its own


# ----------------------------------------------------------------------------- the paper's toy

# Jaderberg et al. 2017, Figure 2: maximise Q(theta) = 1.2 - (theta0^2 + theta1^2)
# while each member only ascends Qhat = 1.2 - (h0 theta0^2 + h1 theta1^2);
# two members with h = (1, 0) and (0, 1), theta from (0.9, 0.9). Fitness (for
# selection) is the true Q. Explore perturbs h by 0.8/1.2 or (half the time)
# redraws it log-uniformly in [1e-3, 1]: a zero in h only becomes non-zero by
# a redraw. Step size 0.05, ready every 4 steps, 120 steps.
TOY_ETA, TOY_READY, TOY_STEPS, TOY_RUNS = 0.05, 4, 120, 512
TOY_PRIOR = {"h": (1e-3, 1.0, True)}


def toy_train_ready(theta, hparams):
    def ascend(th, _):
        th = th + TOY_ETA * (-2.0 * hparams["h"] * th)      # gradient ascent on Qhat
        return th, 1.2 - jnp.sum(th ** 2)
    theta, q = jax.lax.scan(ascend, theta, None, length=TOY_READY)
    return theta, {"q": q}


def toy_fitness(metrics, theta):
    return 1.2 - jnp.sum(theta ** 2)


def toy_start(runs=TOY_RUNS):
    theta = jnp.full((runs, 2, 2), 0.9, jnp.float32)
    hparams = {"h": jnp.broadcast_to(jnp.array([[1.0, 0.0], [0.0, 1.0]], jnp.float32), (runs, 2, 2))}
    return theta, hparams, jax.random.split(jax.random.PRNGKey(0), runs)


def toy_chunk(variant, rounds):
    spec = pbt.make_spec(variant, ("h",), TOY_PRIOR, population=2, truncation=0.5, resample_prob=0.5)
    return pbt.make_chunk(toy_train_ready, toy_fitness, spec, rounds)


@pytest.fixture(scope="module")
def toy_results():
    out = {}
    for variant in ("pbt", "exploit_only", "explore_only"):
        theta, _, _, record = jax.jit(toy_chunk(variant, TOY_STEPS // TOY_READY))(*toy_start())
        q = 1.2 - np.sum(np.asarray(theta) ** 2, axis=-1)      # [runs, members]
        out[variant] = (q.max(axis=1), record)
    return out


def test_toy_pbt_reaches_the_optimum_where_exploit_only_and_explore_only_fall_short(toy_results):
    q = {v: r[0] for v, r in toy_results.items()}
    # mean over 512 independent runs of the population's best Q at the end
    assert q["pbt"].mean() >= 1.19, q["pbt"].mean()
    assert q["explore_only"].mean() < 1.19 - 0.01, q["explore_only"].mean()
    # exploit-only: both members end with the same h, one coordinate never moves
    assert q["exploit_only"].max() < 1.19
    assert np.allclose(q["exploit_only"], 1.2 - 0.81, atol=1e-3)
    assert q["pbt"].mean() > q["explore_only"].mean() + 0.02


def test_toy_records_lineage_and_schedules(toy_results):
    _, record = toy_results["pbt"]
    parents, fitness, h = np.asarray(record.parents), np.asarray(record.fitness), np.asarray(record.hparams["h"])
    rounds = TOY_STEPS // TOY_READY
    assert parents.shape == (rounds, TOY_RUNS, 2) and h.shape == (rounds, TOY_RUNS, 2, 2)
    # after each round exactly one member (the worse) becomes the better one
    for r in range(rounds):
        worse = np.where(fitness[r, :, 0] >= fitness[r, :, 1], 1, 0)
        assert (parents[r, np.arange(TOY_RUNS), worse] == 1 - worse).all()
        assert (parents[r, np.arange(TOY_RUNS), 1 - worse] == 1 - worse).all()
    # the schedule: round 1 trains with the given h
    assert np.array_equal(h[0, 0], [[1.0, 0.0], [0.0, 1.0]])


# ----------------------------------------------------------------------------- resume through the chunk loop

@dataclasses.dataclass(frozen=True)
class ToyRunConfig:
    rounds: int = 12
    chunk: int = 4


def toy_loop(path, stop_at=None, resume=False):
    run = experiment.start(str(path), "toy", ToyRunConfig(), ToyRunConfig, resume=resume, unit="round")
    # placed on a device, as a restored checkpoint is: every session's chunks then see the same placement
    theta, hparams, keys = jax.device_put(toy_start(runs=3), jax.devices()[0])
    state = {"pbt": {"members": theta, "hparams": hparams, "keys": keys}}
    chunks = {"pbt": TOY_CHUNK}
    return pbt.train_chunks(run, chunks, state, 12, 4, TOY_READY, ("h",), stop_at=stop_at)


TOY_TRACES = TraceCounter(toy_chunk("pbt", 4))
TOY_CHUNK = jax.jit(TOY_TRACES)


def test_chunks_compile_once_and_a_resumed_run_writes_the_files_of_the_uninterrupted_one(tmp_path):
    """Three chunks per run, three sessions (whole; stopped after one chunk;
    resumed): one trace, one compiled program."""
    whole, done, _ = toy_loop(tmp_path / "a")
    assert done == 12
    _, done, _ = toy_loop(tmp_path / "b", stop_at=4)
    assert done == 4
    resumed, done, _ = toy_loop(tmp_path / "b", resume=True)
    assert done == 12 and tree_equal(whole, resumed)
    for name in ("metrics.csv", "lineage.csv", "checkpoint.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = experiment.Run(str(tmp_path / "a"), None, None, False, "round").read_rows("lineage.csv")
    assert len(rows) == 12 * 3 * 2 and {r["round"] for r in rows} == set(range(1, 13))
    assert TOY_TRACES.count == 1 and TOY_CHUNK._cache_size() == 1


# ----------------------------------------------------------------------------- bad input, before compiling

def config(**kw):
    inner = {"env": "CartPole-v1", "total_steps": 2048, "num_envs": 2, "num_steps": 64, "hidden": [8]}
    return pbt.PBTConfig(**{"population": 4, "ready": 2, "inner": inner, **kw})


@pytest.mark.parametrize("kw, devices, message", [
    ({"population": 6}, 4, "multiple of 4 (4, 8, 12, 16"),
    ({"truncation": 0.0}, 1, "in (0, 0.5]"),
    ({"truncation": 0.6}, 1, "in (0, 0.5]"),
    ({"truncation": -0.2}, 1, "in (0, 0.5]"),
    ({"truncation": 0.1}, 1, "replaces no member"),
    ({"explore": ("lr", "learning_rate")}, 1, "choose from lr, gamma, gae_lambda, clip_eps, ent_coef, vf_coef"),
    ({"explore": ("buffer_size",), "algo": "sac", "inner": {"env": "Pendulum-v1"}}, 1,
     "choose from lr, gamma, tau, init_alpha, target_entropy_scale"),
    ({"ready": 3}, 1, "ready (3) must divide"),
    ({"algo": "sac", "explore": ("lr",), "ready": 10, "inner": {"env": "Pendulum-v1", "total_steps": 2000,
                                                                 "learning_starts": 100}}, 1,
     "ends before learning starts (100 steps of random actions)"),
    ({"variant": "greedy"}, 1, "pbt, exploit_only, explore_only, fixed"),
    ({"baseline": "grid"}, 1, "none, random-search"),
    ({"resample_prob": 1.5}, 1, "resample_prob must be in [0, 1]"),
])
def test_bad_config_fails_naming_the_choices(kw, devices, message):
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        config(**kw).validate(num_devices=devices)


@pytest.mark.parametrize("flags, message", [
    (["--truncation", "0.75"], "in (0, 0.5]"),
    (["--explore", "lr,entropy"], "not a traced hyperparameter of ppo; choose from"),
    (["--population", "1"], "population must be >= 2"),
    (["--stop-at", "3"], "--stop-at must be a multiple of the checkpoint interval (4)"),
])
def test_command_line_stops_before_compiling(tmp_path, monkeypatch, flags, message):
    from agents import algorithms
    from commands import pbt as command

    algorithms()     # imported before jit is watched: module imports may jit their own helpers

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled before checking the input")
    monkeypatch.setattr(pbt, "make_agent_program", no_compiling)
    monkeypatch.setattr(jax, "jit", no_compiling)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        command.main(["--config", "configs/pbt_ppo_cartpole.yaml", *flags, "--out", str(out), "--no-progress"])
    assert not out.exists()


def test_population_must_split_over_the_devices_seen():
    # the check that make_agent_program's sharding runs, with the devices JAX has
    n = len(jax.devices())
    pbt.check_devices(2 * n, n)
    if n > 1:
        with pytest.raises(ConfigError, match=f"multiple of {n}"):
            pbt.member_sharding(n + 1)
    with pytest.raises(ConfigError, match="multiple of 3"):
        pbt.check_devices(4, 3)


# ----------------------------------------------------------------------------- PPO (slow: minutes of compiling)

CLI_TINY = ["meta", "pbt", "--config", "configs/pbt_ppo_cartpole.yaml", "--population", "4", "--ready", "2",
            "--runs", "2", "--baseline", "random-search", "--set", "inner.total_steps=2048", "--set",
            "inner.num_envs=2", "--set", "inner.num_steps=64", "--set", "inner.hidden=[16]", "--set",
            "checkpoint_every=2", "--set", "eval_episodes=2", "--no-progress"]


@pytest.mark.slow   # about 2 min of compiling on the 2-core box; the toy covers the chunk loop's resume by default
def test_ppo_cli_run_stops_resumes_and_ends_as_the_uninterrupted_run(tmp_path):
    """Through run.py (two CPU devices: the member axis sharded), with the
    random-search baseline in the same run: stopped after round 4 of 8 and
    resumed, every file but the timings is byte-identical."""
    import json

    from tests.helpers import run_cli_steps

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_cli_steps([[*CLI_TINY, "--out", a], [*CLI_TINY, "--out", b, "--stop-at", "4"],
                   ["meta", "pbt", "--out", b, "--resume", "--no-progress"]], tmp_path)
    for name in ("metrics.csv", "lineage.csv", "comparison.md", "config.yaml", "checkpoint.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    for s in (sa, sb):
        s.pop("seconds_this_session")
    assert sa == sb and sa["devices"] >= 1 and set(sa["methods"]) == {"pbt", "random_search"}
    for png in ("schedules.png", "return.png"):
        assert (tmp_path / "a" / png).stat().st_size > 10_000


@pytest.mark.slow
def test_ppo_chunks_are_traced_once_per_variant(tmp_path, monkeypatch):
    from commands import pbt as command

    counters = []
    original = pbt.make_chunk

    def counted(*args, **kwargs):
        counters.append(TraceCounter(original(*args, **kwargs)))
        return counters[-1]
    monkeypatch.setattr(pbt, "make_chunk", counted)
    summary = command.main([*CLI_TINY[2:], "--out", str(tmp_path / "run")])
    assert summary["complete"] and len(counters) == 2            # pbt and random search
    assert [c.count for c in counters] == [1, 1]                 # 4 chunks each, one trace


@pytest.mark.slow   # about 10 min on the shared 2-core box
def test_pbt_on_cartpole_ends_at_or_above_random_search_of_equal_population_and_budget(tmp_path):
    """configs/pbt_ppo_cartpole.yaml, 5 independent runs of PBT and of random
    search (the same members and prior draws, hyperparameters kept): PBT's
    best member at or above random search's best member on average and in at
    least 4 of the 5 runs, and PBT's population far above random search's."""
    from commands import pbt as command

    summary = command.main(["--config", "configs/pbt_ppo_cartpole.yaml", "--baseline", "random-search",
                            "--runs", "5", "--out", str(tmp_path / "run"), "--no-progress"])
    pbt_, rs = summary["methods"]["pbt"], summary["methods"]["random_search"]
    assert pbt_["best_eval"]["mean"] >= rs["best_eval"]["mean"]
    assert summary["pbt_vs_random_search"]["runs_at_or_above"] >= 4
    assert pbt_["population_eval"]["mean"] > rs["population_eval"]["mean"]


@pytest.mark.slow
def test_members_with_their_own_reward_parameters_carry_them_when_copied():
    """make_agent_program with per-member reward parameters: exploit copies a
    member's reward scale with its policy; explore leaves it alone."""
    cfg = config(population=4, ready=2, inner={"env": "CartPole-v1", "total_steps": 512, "num_envs": 2,
                                               "num_steps": 64, "hidden": [8], "num_epochs": 1})
    scales = jnp.array([[0.0, 1.0, 2.0, 3.0]], jnp.float32)              # [runs, population]
    _, init, chunks, _ = pbt.make_agent_program(cfg, reward_fn=lambda rp, t: rp * t.reward, reward_params=scales)
    members, hparams, keys = init(jax.random.PRNGKey(0))
    (ts, rp), _, _, record = chunks["pbt"](members, hparams, keys)
    parents = np.asarray(record.parents)                                  # [rounds, runs, population]
    expected = np.asarray(scales)[0]
    for r in range(parents.shape[0]):
        expected = expected[parents[r, 0]]
    assert np.array_equal(np.asarray(rp)[0], expected) and (parents != np.arange(4)).any()
