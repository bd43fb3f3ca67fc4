"""Level buffer, level scores and the environment-design methods (meta/env_design.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from meta import env_design as ed
from src.config import ConfigError
from tests.helpers import check_golden, csv_numbers, tree_equal


def scalar_levels(values):
    """Levels that are just a number: enough to test the buffer."""
    return {"x": jnp.asarray(values, jnp.float32)}


TEMPLATE = {"x": jnp.float32(0)}


def filled_buffer(scores, capacity=None):
    n = len(scores)
    buf = ed.buffer_init(TEMPLATE, capacity or n)
    return ed.insert(buf, scalar_levels(np.arange(n) * 10.0), jnp.asarray(scores, jnp.float32))


# ---------------------------------------------------------------- buffer invariants

def test_capacity_is_never_exceeded_and_the_lowest_score_is_replaced():
    buf = filled_buffer([0.5, 0.1, 0.9, 0.3])
    assert int(ed.size(buf)) == 4
    # higher than the lowest (0.1 at slot 1): replaces it
    buf = ed.insert(buf, scalar_levels([77.0]), jnp.array([0.2]))
    assert int(ed.size(buf)) == 4
    np.testing.assert_allclose(buf.scores, [0.5, 0.2, 0.9, 0.3])
    assert float(buf.levels["x"][1]) == 77.0
    # lower than every entry: dropped
    before = buf
    buf = ed.insert(buf, scalar_levels([88.0]), jnp.array([0.05]))
    assert tree_equal(before, buf)
    # a batch larger than the buffer: the best ones stay
    buf = ed.insert(buf, scalar_levels(np.arange(100, 110.0)), jnp.linspace(0.0, 2.0, 10))
    assert int(ed.size(buf)) == 4 and buf.scores.shape == (4,)
    np.testing.assert_allclose(np.sort(np.asarray(buf.scores)), np.linspace(0.0, 2.0, 10)[-4:], rtol=1e-6)


def test_empty_slots_fill_first_and_duplicates_only_refresh_their_score():
    buf = ed.buffer_init(TEMPLATE, 5)
    buf = ed.insert(buf, scalar_levels([1.0, 2.0]), jnp.array([0.3, 0.4]))
    assert int(ed.size(buf)) == 2 and buf.filled.tolist() == [True, True, False, False, False]
    buf = ed.insert(buf, scalar_levels([2.0]), jnp.array([0.9]))
    assert int(ed.size(buf)) == 2 and float(buf.scores[1]) == pytest.approx(0.9)
    no_dedupe = ed.insert(buf, scalar_levels([2.0]), jnp.array([0.9]), dedupe=False)
    assert int(ed.size(no_dedupe)) == 3


def test_staleness_grows_for_levels_not_sampled():
    buf = filled_buffer([0.5, 0.1, 0.9, 0.3])
    stale = []
    for i in range(5):
        buf = ed.tick(buf)
        buf = buf.replace(last_seen=buf.last_seen.at[2].set(buf.clock))   # level 2 replayed every time
        stale.append(np.asarray(buf.clock - buf.last_seen))
    stale = np.array(stale)
    assert (np.diff(stale[:, [0, 1, 3]], axis=0) == 1).all() and (stale[:, 2] == 0).all()
    # sampling marks the drawn levels as just seen
    buf, idx, _ = ed.sample(buf, jax.random.key(0), 3, 0.3, 0.3)
    assert (np.asarray(buf.clock - buf.last_seen)[np.asarray(idx)] == 0).all()


def test_rank_and_staleness_probabilities_match_the_formula():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    buf = ed.buffer_init(TEMPLATE, 7)   # two empty slots must get probability 0
    buf = ed.insert(buf, scalar_levels(np.arange(5.0)), jnp.asarray(scores, jnp.float32))
    buf = buf.replace(last_seen=jnp.array([0, 3, 1, 4, 2, 0, 0]), clock=jnp.int32(6))
    temperature, rho = 0.3, 0.25
    rank = np.empty(5)
    rank[np.argsort(-scores)] = np.arange(1, 6)
    h = (1 / rank) ** (1 / temperature)
    p_score = h / h.sum()
    stale = 6 - np.array([0, 3, 1, 4, 2])
    p_stale = stale / stale.sum()
    expected = np.concatenate([(1 - rho) * p_score + rho * p_stale, [0, 0]])
    np.testing.assert_allclose(ed.replay_probs(buf, temperature, rho), expected, rtol=1e-5, atol=1e-7)


def test_sampling_follows_the_replay_distribution():
    """Chi-square goodness of fit on 20000 draws; the same test rejects the
    draws as a sample of a slightly different distribution (so it can fail)."""
    buf = filled_buffer([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    buf = buf.replace(last_seen=jnp.array([0, 3, 1, 4, 2, 5]), clock=jnp.int32(6))
    probs = np.asarray(ed.replay_probs(buf, 1.0, 0.3), np.float64)
    probs = probs / probs.sum()
    _, idx, levels = ed.sample(buf, jax.random.key(42), 20000, 1.0, 0.3)
    counts = np.bincount(np.asarray(idx), minlength=6)
    np.testing.assert_array_equal(np.asarray(levels["x"]), np.asarray(idx) * 10.0)
    assert stats.chisquare(counts, 20000 * probs).pvalue > 1e-3
    wrong = probs.copy()
    wrong[0] += 0.03
    wrong[1] -= 0.03
    assert stats.chisquare(counts, 20000 * wrong).pvalue < 1e-3


def test_update_rescored_levels_keeps_the_best_return():
    buf = filled_buffer([0.5, 0.1, 0.9])
    buf = buf.replace(max_returns=jnp.array([0.2, 0.4, 0.6]))
    buf = ed.update(buf, jnp.array([0, 2]), jnp.array([0.05, 0.07]), jnp.array([0.3, 0.1]))
    np.testing.assert_allclose(buf.scores, [0.05, 0.1, 0.07])
    np.testing.assert_allclose(buf.max_returns, [0.3, 0.4, 0.6])


# ---------------------------------------------------------------- scores on a fixed trajectory

# one level, T = 6: an episode ends (terminated) at t = 2, the second runs on
REWARDS = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.5], np.float32)
VALUES = np.array([0.5, 0.6, 0.8, 0.3, 0.2, 0.4], np.float32)
NEXT_VALUES = np.array([0.6, 0.8, 0.0, 0.2, 0.4, 0.45], np.float32)
TERMINATED = np.array([0, 0, 1, 0, 0, 0], bool)
GAMMA, LAM = 0.9, 0.8


def test_positive_value_loss_against_a_hand_computation():
    adv, running = np.zeros(6), 0.0
    for t in reversed(range(6)):
        delta = REWARDS[t] + GAMMA * NEXT_VALUES[t] * (1 - TERMINATED[t]) - VALUES[t]
        running = delta + GAMMA * LAM * (1 - TERMINATED[t]) * running
        adv[t] = running
    expected = np.maximum(adv, 0).mean()
    # two of the deltas by hand, as a check on the loop above
    assert REWARDS[2] - VALUES[2] == pytest.approx(0.2, abs=1e-6)
    assert GAMMA * NEXT_VALUES[5] - VALUES[5] == pytest.approx(0.005, abs=1e-6)
    got = ed.positive_value_loss(REWARDS[:, None], VALUES[:, None], NEXT_VALUES[:, None], TERMINATED[:, None],
                                 TERMINATED[:, None], GAMMA, LAM)
    np.testing.assert_allclose(got, [expected], rtol=1e-5)
    assert expected > 0


def test_positive_value_loss_of_a_truncated_and_a_terminated_level_by_hand():
    """Two levels, T = 3, one step each, gamma 0.5, lambda 0.5. Level 0 ends
    by termination at t = 1, level 1 by a time-out there (bootstrapped from
    V(s'_1) = 2.0, the real last observation's value, while the trace is still
    cut). Rewards 1, 0, 1; values 1, 1, 1; next values 1, 2, 1.
      deltas, level 0: 1 + 0.5 - 1 = 0.5, 0 + 0 - 1 = -1, 1 + 0.5 - 1 = 0.5
      deltas, level 1: 0.5, 0 + 1 - 1 = 0, 0.5
      A_2 = 0.5 both; A_1 = delta_1 (trace cut): -1 and 0;
      A_0 = 0.5 + 0.25 A_1: 0.25 and 0.5
    PVL = mean max(A, 0): (0.25 + 0 + 0.5) / 3 = 0.25 and (0.5 + 0 + 0.5) / 3 = 1/3."""
    rewards = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    values = np.ones((3, 2), np.float32)
    next_values = np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]], np.float32)
    terminated = np.array([[False, False], [True, False], [False, False]])
    done = np.array([[False, False], [True, True], [False, False]])
    got = ed.positive_value_loss(rewards, values, next_values, terminated, done, 0.5, 0.5)
    np.testing.assert_allclose(got, [0.25, 1 / 3], rtol=1e-6)


def test_max_mc_and_rollout_returns_against_a_hand_computation():
    done = TERMINATED[:, None]
    episode_return = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.5], np.float32)[:, None]
    roll = ed.LevelRollout(REWARDS[:, None], VALUES[:, None], NEXT_VALUES[:, None], done, done, done,
                           episode_return)
    mean, best = ed.rollout_returns(roll)
    assert float(mean[0]) == pytest.approx(1.0) and float(best[0]) == pytest.approx(1.0)
    # R_max = max(previous best 1.2, this rollout's 1.0) = 1.2
    expected = np.mean(1.2 - VALUES)
    got = ed.max_mc(VALUES[:, None], jnp.maximum(best, 1.2))
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    # a level with no finished episode counts its running return
    none = roll._replace(episode_done=np.zeros_like(done))
    mean, best = ed.rollout_returns(none)
    assert float(mean[0]) == pytest.approx(1.5) and float(best[0]) == pytest.approx(1.5)


def test_algorithmic_and_paired_regret_signs():
    assert float(ed.algorithmic_regret(jnp.float32(0.9), jnp.float32(0.25))) == pytest.approx(0.65)
    ant = jnp.array([[0.9, 0.5, 0.7], [0.0, 0.1, 0.0]])
    pro = jnp.array([[0.2, 0.4, 0.0], [0.6, 0.8, 0.7]])
    regret = ed.paired_regret(ant, pro)
    np.testing.assert_allclose(regret, [0.9 - 0.2, 0.1 - 0.7], rtol=1e-6)
    # positive where the antagonist does better, negative where the protagonist does
    assert float(regret[0]) > 0 > float(regret[1])


def test_tied_scores_rank_by_index():
    """Ties are broken by index (a stable sort): the earlier of two equal
    scores gets the better rank, so the higher probability."""
    scores = [0.5] * 12 + [0.9] + [0.5] * 7
    buf = filled_buffer(scores)
    temperature = 0.5
    rank = np.empty(20)
    rank[np.argsort(-np.asarray(scores), kind="stable")] = np.arange(1, 21)
    h = (1 / rank) ** (1 / temperature)
    np.testing.assert_allclose(ed.score_probs(buf, temperature), h / h.sum(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("filled", [1, 3])
def test_staleness_is_uniform_over_filled_levels_when_all_are_fresh(filled):
    buf = filled_buffer([0.2, 0.7, 0.4][:filled], capacity=5)   # inserted now: none is stale
    expected = np.concatenate([np.full(filled, 1 / filled), np.zeros(5 - filled)])
    np.testing.assert_allclose(ed.staleness_probs(buf), expected, rtol=1e-6)
    assert float(ed.staleness_probs(buf).sum()) == pytest.approx(1.0)


def test_staleness_of_one_step_goes_to_the_one_stale_level():
    buf = filled_buffer([0.2, 0.7, 0.4])
    buf = buf.replace(last_seen=jnp.array([1, 0, 1]), clock=jnp.int32(1))   # total staleness 1
    np.testing.assert_allclose(ed.staleness_probs(buf), [0.0, 1.0, 0.0])


def test_a_level_inserted_without_returns_takes_its_first_rescored_return():
    """Without max_returns an entry's best return starts at -inf, so the
    first rescoring's return is kept whatever its sign."""
    buf = filled_buffer([0.5, 0.1])
    assert np.isneginf(np.asarray(buf.max_returns)).all()
    buf = ed.update(buf, jnp.array([0, 1]), jnp.array([0.4, 0.3]), jnp.array([-2.0, 0.6]))
    np.testing.assert_allclose(buf.max_returns, [-2.0, 0.6])


def test_a_duplicate_insert_keeps_the_higher_best_return():
    buf = ed.buffer_init(TEMPLATE, 3)
    buf = ed.insert(buf, scalar_levels([1.0]), jnp.array([0.3]), max_returns=jnp.array([0.8]))
    buf = ed.insert(buf, scalar_levels([1.0]), jnp.array([0.5]), max_returns=jnp.array([0.2]))
    assert int(ed.size(buf)) == 1
    assert float(buf.max_returns[0]) == pytest.approx(0.8) and float(buf.scores[0]) == pytest.approx(0.5)
    buf = ed.insert(buf, scalar_levels([1.0]), jnp.array([0.5]), max_returns=jnp.array([1.1]))
    assert float(buf.max_returns[0]) == pytest.approx(1.1)


def test_paired_regret_reduces_over_the_last_axis_only():
    """[seeds, levels, episodes]: one regret per (seed, level), against a loop."""
    rng = np.random.default_rng(0)
    ant = rng.normal(size=(2, 3, 4)).astype(np.float32)
    pro = rng.normal(size=(2, 3, 4)).astype(np.float32)
    expected = np.array([[ant[s, l].max() - pro[s, l].mean() for l in range(3)] for s in range(2)])
    np.testing.assert_allclose(ed.paired_regret(jnp.asarray(ant), jnp.asarray(pro)), expected, rtol=1e-5)


# ---------------------------------------------------------------- config errors

@pytest.mark.parametrize("changes, message", [
    ({"method": "plr++"}, "unknown method 'plr\\+\\+'; valid methods: dr, plr, robust_plr, accel, paired"),
    ({"score": "td"}, "unknown score"),
    ({"env": "minigrid"}, "unknown level space"),
    ({"num_iterations": 10, "eval_every": 3}, "multiple of eval_every"),
    ({"capacity": 4, "num_envs": 8}, "capacity"),
    # a recurrent student's minibatches are whole env sequences: split over envs, never over time
    ({"num_envs": 6, "num_minibatches": 4, "ppo": {"memory": "gru"}},
     "memory=gru splits minibatches over environments.*num_envs \\(6\\) must be divisible by num_minibatches "
     "\\(4\\); set num_minibatches to one of \\[1, 2, 3, 6\\]"),
])
def test_bad_configs_fail_before_compiling(changes, message):
    with pytest.raises(ConfigError, match=message):
        ed.UEDConfig(**changes).validate()


# ---------------------------------------------------------------- one small run

TINY = dict(env="maze", method="robust_plr", num_envs=4, num_steps=16, num_epochs=1, num_minibatches=1,
            hidden=(16,), capacity=8, num_iterations=2, eval_every=2, eval_episodes=2, seeds=2,
            space_kwargs={"height": 9, "width": 9, "max_walls": 10, "max_steps": 32})


@pytest.fixture(scope="module")
def tiny_run():
    ued = ed.make(ed.UEDConfig(**TINY))
    init = jax.jit(jax.vmap(ued.init))
    chunk = jax.jit(lambda s, coins: jax.lax.scan(
        lambda s, c: jax.vmap(ued.iteration, in_axes=(0, None))(s, c), s, coins))

    def run(seed):
        state = init(jax.random.split(jax.random.key(seed), 2))
        coins = jax.random.split(jax.random.key(seed + 1), 2)
        return chunk(state, coins)

    return ued, run, chunk


@pytest.mark.slow   # UED's numbers are pinned by tests/test_env_design_cli.py's golden run and its resume
def test_same_seed_same_numbers_and_one_compile(tiny_run):
    ued, run, chunk = tiny_run
    state_a, metrics_a = run(0)
    state_b, metrics_b = run(0)
    state_c, _ = run(1)
    assert tree_equal(metrics_a, metrics_b) and tree_equal(state_a.buffer, state_b.buffer)
    assert tree_equal(state_a.student.params, state_b.student.params)
    assert not tree_equal(state_a.student.params, state_c.student.params)
    assert chunk._cache_size() == 1
    # the buffer holds valid levels, no more than its capacity, scores finite where filled
    buf = jax.tree.map(lambda x: x[0], state_a.buffer)
    assert 0 < int(ed.size(buf)) <= 8
    assert bool(jax.vmap(ued.space.is_valid)(buf.levels)[buf.filled].all())
    assert np.isfinite(np.asarray(buf.scores)[np.asarray(buf.filled)]).all()
    assert int(buf.clock) == 2
    metrics = jax.tree.map(np.asarray, metrics_a)
    assert metrics["buffer_size"].shape == (2, 2)
    # held-out evaluation
    out = jax.jit(jax.vmap(ued.evaluate))(state_a, jax.random.split(jax.random.key(3), 2))
    assert out["returns"].shape == (2, len(ued.space.held_out_names), 2)
    assert out["solved"].dtype == bool
    assert bool(((out["returns"] > 0) == out["solved"]).all())


@pytest.mark.slow
@pytest.mark.parametrize("method, score, trained", [
    ("dr", "pvl", False), ("plr", "maxmc", False), ("accel", "pvl", False), ("paired", "pvl", False),
    ("robust_plr", "regret", False), ("plr", "pvl", True), ("accel", "maxmc", True), ("robust_plr", "pvl", True)])
def test_every_method_runs(method, score, trained):
    config = ed.UEDConfig(**{**TINY, "method": method, "score": score, "ref_iterations": 2, "ref_num_envs": 2,
                             "score_trained_rollout": trained})
    ued = ed.make(config)
    state = jax.jit(jax.vmap(ued.init))(jax.random.split(jax.random.key(0), 2))
    step = jax.jit(jax.vmap(ued.iteration, in_axes=(0, None)))
    for i in range(3):
        state, metrics = step(state, jax.random.key(i))
    assert np.isfinite(np.asarray(metrics["entropy"])).all()
    if method == "paired":
        assert np.isfinite(np.asarray(metrics["regret"])).all()
        # regret uses the antagonist's best episode, so it is at least the gap of the means
        gap = np.asarray(metrics["antagonist_return"]) - np.asarray(metrics["protagonist_return"])
        assert (np.asarray(metrics["regret"]) >= gap - 1e-6).all()
    if method in ("plr", "accel", "robust_plr"):
        assert np.isfinite(np.asarray(state.buffer.scores)[np.asarray(state.buffer.filled)]).all()



def test_groove_config_errors():
    from meta.groove import GrooveConfig
    with pytest.raises(ConfigError, match="even population"):
        GrooveConfig(pop=7).validate()
    with pytest.raises(ConfigError, match="multiple of eval_every"):
        GrooveConfig(generations=5, eval_every=2).validate()


@pytest.mark.slow
def test_groove_scores_levels_by_algorithmic_regret():
    """Buffer scores are reference return minus the learned objective's
    return on the same level, computed again by hand here."""
    from meta import groove
    config = groove.GrooveConfig(seeds=1, generations=1, eval_every=1, levels_per_generation=2, capacity=4,
                                 lifetime_iterations=4, num_envs=4, num_steps=16, pop=4, drift_hidden=8)
    g = groove.make(config)
    state = jax.jit(g.init)(jax.random.key(0))
    state, metrics = jax.jit(g.generation)(state, jax.random.key(1))
    assert np.isfinite(float(metrics["fitness_mean"])) and np.isfinite(float(metrics["regret"]))
    np.testing.assert_allclose(metrics["regret"], metrics["reference_return"] - metrics["learned_return"],
                               rtol=1e-5, atol=1e-4)
    assert int(ed.size(state.buffer)) >= 2


GROOVE_TINY = ["--method", "groove", "--seeds", "1", "--no-progress", "--set", "generations=2", "--set", "eval_every=1",
               "--set", "pop=4", "--set", "lifetime_iterations=2", "--set", "num_envs=4", "--set", "num_steps=8",
               "--set", "hidden=[8]", "--set", "drift_hidden=4", "--set", "eval_episodes=1",
               "--set", "levels_per_generation=2", "--set", "capacity=4", "--set", "num_minibatches=1",
               "--set", "num_epochs=1"]


@pytest.mark.slow
def test_groove_cli_stops_and_resumes_bit_identically(tmp_path):
    """About 3 min on 2 cores (GROOVE's programs take 90 s to compile even this small)."""
    import json
    import os
    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    steps = [["meta", "ued", *GROOVE_TINY, "--out", whole], ["meta", "ued", *GROOVE_TINY, "--out", stopped,
                                                             "--stop-at", "1"],
             ["meta", "ued", "--out", stopped, "--resume", "--no-progress"]]
    proc = run_cli_steps(steps, tmp_path, timeout=900)
    assert "resuming from generation 1" in proc.stdout
    for name in ("metrics.csv", "held_out.csv"):
        with open(os.path.join(whole, name)) as f, open(os.path.join(stopped, name)) as g:
            assert f.read() == g.read(), name
    with open(os.path.join(stopped, "summary.json")) as f:
        assert json.load(f)["complete"] is True


# ---------------------------------------------------------------- a recurrent student

RECURRENT = dict(TINY, num_envs=2, num_steps=8, hidden=(8,), capacity=4, eval_episodes=1, ref_iterations=1,
                 ref_num_envs=2, paired_episodes=1, ppo={"memory_size": 8},
                 space_kwargs={"height": 9, "width": 9, "max_walls": 10, "max_steps": 12, "view_mode": "forward"})


# the default suite keeps DR (the cheapest program, ~15 s to compile); the
# methods that also score levels or train an antagonist compile 1.5-2x longer
@pytest.mark.parametrize("method, memory", [
    ("dr", "gru"), pytest.param("plr", "gru", marks=pytest.mark.slow),
    pytest.param("robust_plr", "lstm", marks=pytest.mark.slow), pytest.param("accel", "gru", marks=pytest.mark.slow),
    pytest.param("paired", "lstm", marks=pytest.mark.slow)])
def test_a_recurrent_student_trains_through_every_method_traced_once(method, memory):
    """One UED iteration (two calls of one compiled program) with a GRU or
    LSTM student: the carry is reset at every level swap, carried through the
    scoring rollouts, restarted per held-out episode; the student moves."""
    config = ed.UEDConfig(**{**RECURRENT, "method": method, "ppo": {**RECURRENT["ppo"], "memory": memory}})
    ued = ed.make(config)
    assert ued.agent.initial_carry is not None
    traces = []

    def iteration(state, coin):
        traces.append(1)
        return ued.iteration(state, coin)

    state = jax.jit(jax.vmap(ued.init))(jax.random.split(jax.random.key(0), 2))
    step = jax.jit(jax.vmap(iteration, in_axes=(0, None)))
    before = state.student.params
    state, _ = step(state, jax.random.key(1))
    state, metrics = step(state, jax.random.key(2))
    assert len(traces) == 1 and step._cache_size() == 1
    assert np.isfinite(np.asarray(metrics["value_loss"])).all()
    assert not tree_equal(before, state.student.params)
    carry = jax.tree.leaves(state.student.carry)
    assert carry and all(c.shape[:2] == (2, config.num_envs) for c in carry)
    if config.uses_buffer:
        assert np.isfinite(np.asarray(state.buffer.scores)[np.asarray(state.buffer.filled)]).all()
    if method == "robust_plr":   # the held-out evaluation with a fresh carry per episode
        out = jax.jit(jax.vmap(ued.evaluate))(state, jax.random.split(jax.random.key(3), 2))
        assert out["returns"].shape == (2, len(ued.space.held_out_names), 1)


# ---------------------------------------------------------------- the published ordering (slow)

ORDERING_ITERATIONS = 250   # 512,000 trained env steps per seed: the largest budget run on 2 CPU cores (RESULTS.md)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="not reproduced at CPU budgets: on 13x13 with an LSTM student, 3 seeds, "
                   "robust PLR - DR = +0.040 +- 0.026 s.e. of held-out solve rate at 204,800 trained steps per "
                   "seed (ACCEL -0.021 +- 0.028) and -0.019 +- 0.015 at 512,000; the papers' runs are 2.5e8 "
                   "steps (configs/ued_maze_gpu.yaml)")
def test_robust_plr_or_accel_beats_domain_randomisation_on_the_papers_mazes(tmp_path):
    """The ordering of the PLR/ACCEL papers on the jaxued setting (13x13, 25
    walls, forward 5x5 view, LSTM student): robust PLR or ACCEL above DR in
    held-out solve rate by 2 standard errors over 3 seeds. About 30 min of
    two idle cores (benchmarks/ued.py's run of configs/ued_maze13_cpu.yaml)."""
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from benchmarks import ued as bench
    bench.main(["--config", os.path.join(root, "configs", "ued_maze13_cpu.yaml"), "--methods", "dr,robust_plr,accel", "--seeds", "3",
                "--set", f"num_iterations={ORDERING_ITERATIONS}", "--out", str(tmp_path / "out"),
                "--runs", str(tmp_path / "runs")])
    with open(tmp_path / "out" / "ued.json") as f:
        runs = json.load(f)["runs"]
    dr = np.array(runs["dr"]["held_out_solve_rate_per_seed"])
    wins = []
    for method in ("robust_plr", "accel"):
        x = np.array(runs[method]["held_out_solve_rate_per_seed"])
        se = np.sqrt(x.var(ddof=1) / len(x) + dr.var(ddof=1) / len(dr))
        wins.append(x.mean() - dr.mean() >= 2 * se)
    assert any(wins)


def test_scoring_from_the_trained_rollout_saves_one_rollout_per_iteration():
    for method, rollouts in (("plr", 1), ("robust_plr", 2), ("accel", 2), ("dr", 0)):
        base = ed.UEDConfig(method=method, num_envs=4, num_steps=8).validate()
        fast = ed.UEDConfig(method=method, num_envs=4, num_steps=8, score_trained_rollout=True).validate()
        assert base.env_steps_per_iteration(10)["total"] - 32 == rollouts * 32
        assert fast.env_steps_per_iteration(10)["total"] - 32 == max(rollouts - 1, 0) * 32
        assert fast.env_steps_per_iteration(10)["trained"] == 32
