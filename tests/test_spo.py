"""SPO (meta/spo.py) and the preference oracles it is judged by: the
self-play win rate against a brute-force loop, its place in the rollout,
the non-Markovian `worst` oracle, PPO's rollout_reward hook, a tiny run of
both methods (one program each, compiled once, bit-identical stop and
resume) and bad input refused before anything compiles."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import preferences as prefs
from meta import spo
from src.config import ConfigError


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("temperature, noise", [(1.0, 0.0), (0.5, 0.2), (0.0, 0.0)])
def test_win_rates_match_a_loop_over_pairs(temperature, noise):
    scores = np.array([0.3, -1.0, 2.0, 0.3, 5.0], np.float32)
    got = np.asarray(spo.win_rates(jnp.asarray(scores), temperature, noise))
    for i, si in enumerate(scores):
        probs = []
        for j, sj in enumerate(scores):
            if i == j:
                continue
            if temperature > 0:
                p = sigmoid((si - sj) / temperature)
            else:
                p = 1.0 if si > sj else 0.0 if si < sj else 0.5
            probs.append(noise + (1 - 2 * noise) * p)
        assert got[i] == pytest.approx(np.mean(probs), abs=1e-6)
    # the best segment wins most, and win rates of a set sum to half the pairs (noise-free, any temperature)
    assert int(np.argmax(got)) == 4
    if noise == 0.0:
        assert got.sum() == pytest.approx(len(scores) / 2, abs=1e-5)


def test_every_step_of_a_segment_gets_its_win_rate_in_its_time_window():
    steps, num_envs, seg = 12, 3, 4
    gold = jax.random.normal(jax.random.key(0), (steps, num_envs))
    reward = np.asarray(spo.segment_win_reward(gold, seg, "worst", 1.0, 0.0))
    assert reward.shape == (steps, num_envs)
    # segment k of env e is gold[4k:4k+4, e]; it is compared with the other envs' segment k
    g = np.asarray(gold)
    for k in range(steps // seg):
        scores = np.array([g[k * seg:(k + 1) * seg, e].min() for e in range(num_envs)])
        expected = np.asarray(spo.win_rates(jnp.asarray(scores), 1.0, 0.0))
        for e in range(num_envs):
            np.testing.assert_allclose(reward[k * seg:(k + 1) * seg, e], expected[e], atol=1e-7)


def test_the_worst_oracle_judges_by_the_worst_step():
    # equal returns (0), different worst steps: bt ties, worst prefers the even one
    even = jnp.array([[0.0, 0.0, 0.0, 0.0]])
    spiky = jnp.array([[3.0, -3.0, 0.0, 0.0]])
    assert float(prefs.segment_scores(even, "bt")[0]) == float(prefs.segment_scores(spiky, "bt")[0])
    assert float(prefs.segment_scores(even, "worst")[0]) == 0.0 and float(prefs.segment_scores(spiky, "worst")[0]) == -3.0
    segs = lambda g: prefs.Segments(jnp.zeros((1, 4, 1)), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4, 1)), g,  # noqa: E731
                                    jnp.zeros((1, 4), bool))
    worst = prefs.label_pairs(jax.random.key(0), segs(even), segs(spiky), 1.0, 0.0, oracle="worst")
    bt = prefs.label_pairs(jax.random.key(0), segs(even), segs(spiky), 1.0, 0.0)
    assert float(worst.gold_prob[0]) == pytest.approx(sigmoid(3.0)) and float(bt.gold_prob[0]) == 0.5
    with pytest.raises(ValueError, match="choose one of bt, worst, intransitive"):
        prefs.segment_scores(even, "majority")


# ----------------------------------------------------------------------------- the intransitive oracle

def thirds(*values):
    """Segments of 6 steps whose thirds (2 steps each) return the given values."""
    return jnp.array([[v / 2 for v in row for _ in range(2)] for row in values], jnp.float32)


def test_the_intransitive_oracle_scores_each_third_and_averages_its_raters():
    gold = jax.random.normal(jax.random.key(2), (5, 7))
    scores = np.asarray(prefs.segment_scores(gold, "intransitive"))
    g = np.asarray(gold)
    # 7 steps: thirds [0:2], [2:5], [5:7]
    np.testing.assert_allclose(scores, np.stack([g[:, :2].sum(1), g[:, 2:5].sum(1), g[:, 5:].sum(1)], 1), rtol=1e-6)
    p = float(prefs.prefer(jnp.asarray(scores[0]), jnp.asarray(scores[1]), "intransitive", 0.7))
    assert p == pytest.approx(np.mean([sigmoid((scores[0, k] - scores[1, k]) / 0.7) for k in range(3)]), abs=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_the_intransitive_oracle_prefers_in_a_cycle(temperature):
    a, b, c = prefs.segment_scores(thirds((3, 1, 2), (2, 3, 1), (1, 2, 3)), "intransitive")
    ring = [float(prefs.prefer(x, y, "intransitive", temperature)) for x, y in ((a, b), (b, c), (c, a))]
    assert all(p > 0.5 for p in ring), ring          # a > b > c > a: no score of single segments orders them
    # the same three under "bt" (equal returns) tie
    bt = prefs.segment_scores(thirds((3, 1, 2), (2, 3, 1)), "bt")
    assert float(prefs.prefer(bt[0], bt[1], "bt", temperature)) == 0.5
    # at temperature 0 each verdict is the majority of three raters: 2/3
    if temperature == 0.0:
        assert ring == pytest.approx([2 / 3] * 3)


def test_intransitive_labels_and_self_play_win_rates_use_the_pairwise_oracle():
    gold = thirds((3, 1, 2), (2, 3, 1), (1, 2, 3))
    segs = lambda g: prefs.Segments(jnp.zeros((*g.shape, 1)), jnp.zeros(g.shape, jnp.int32),  # noqa: E731
                                    jnp.zeros((*g.shape, 1)), g, jnp.zeros(g.shape, bool))
    pairs = prefs.label_pairs(jax.random.key(0), segs(gold), segs(gold[jnp.array([1, 2, 0])]), 0.0, 0.0,
                              oracle="intransitive")
    np.testing.assert_allclose(np.asarray(pairs.gold_prob), [2 / 3] * 3, rtol=1e-6)
    # in a perfect ring every segment wins half its comparisons
    wins = np.asarray(spo.win_rates(prefs.segment_scores(gold, "intransitive"), 0.0, 0.0, "intransitive"))
    np.testing.assert_allclose(wins, [0.5] * 3, rtol=1e-6)


# ----------------------------------------------------------------------------- P3O's and DNO's pairs

def test_p3o_advantage_matches_a_loop_over_pairs():
    steps, num_envs, seg, scale, noise, temperature = 8, 4, 4, 3.0, 0.1, 0.5
    gold = jax.random.normal(jax.random.key(4), (steps, num_envs))
    kl = -0.1 * jax.random.uniform(jax.random.key(5), (steps, num_envs))
    got = np.asarray(spo.pairwise_advantage(gold, kl, seg, "bt", temperature, noise, scale))
    g, k = np.asarray(gold), np.asarray(kl)
    assert got.shape == (steps, num_envs)
    for w in range(steps // seg):
        window = slice(w * seg, (w + 1) * seg)
        for i in range(0, num_envs, 2):
            p = noise + (1 - 2 * noise) * sigmoid((g[window, i].sum() - g[window, i + 1].sum()) / temperature)
            first = scale * (2 * p - 1) + k[window, i].sum() - k[window, i + 1].sum()
            np.testing.assert_allclose(got[window, i], first, rtol=1e-5)
            np.testing.assert_allclose(got[window, i + 1], -first, rtol=1e-5)


def test_dno_pairs_the_kth_best_with_the_kth_worst_segment_of_each_window():
    steps, num_envs, seg = 6, 6, 3
    gold = jax.random.normal(jax.random.key(6), (steps, num_envs))
    chosen, rejected, weight = (np.asarray(x) for x in spo.nash_pairs(gold, seg, "bt", 0.0, 0.0, 0.3))
    assert chosen.shape == rejected.shape == weight.shape == (steps // seg, num_envs // 2)
    g = np.asarray(gold)
    for w in range(steps // seg):
        returns = g[w * seg:(w + 1) * seg].sum(axis=0)
        ranked = list(np.argsort(-returns))
        # at temperature 0 the win rate orders segments as their returns
        assert list(chosen[w]) == ranked[:3] and list(rejected[w]) == ranked[::-1][:3]
        wins = (returns[:, None] > returns[None, :]).sum(1) / (num_envs - 1)
        np.testing.assert_array_equal(weight[w], (wins[chosen[w]] - wins[rejected[w]] >= 0.3).astype(np.float32))


@pytest.mark.parametrize("paired", [True, False])
def test_paired_envs_start_and_restart_each_pair_in_the_same_state(paired):
    """PPO's paired_envs: env 2i and 2i+1 share reset and step keys, so each
    pair starts from one state and, after Pendulum's 200-step episodes end
    (auto-reset by the step key), restarts from one state again; the pairs
    differ from each other. Without it every env has its own."""
    from agents import ppo
    config = ppo.PPOConfig(env="Pendulum-v1", num_envs=4, num_steps=208, hidden=(8,), num_minibatches=1,
                           num_epochs=1, total_steps=4 * 208, paired_envs=paired).validate()
    agent = ppo.make(config)
    ts = agent.init(jax.random.key(0), ppo.hparams_from(config))
    _, rollout = jax.jit(agent.collect)(ts)
    for step in (0, 200):   # the first observation, and the first after the reset
        obs = np.asarray(rollout.obs[step])
        assert np.array_equal(obs[0], obs[1]) == paired and np.array_equal(obs[2], obs[3]) == paired
        assert not np.array_equal(obs[0], obs[2])
    # the actions are the policy's own draws: they differ within a pair
    assert not np.array_equal(np.asarray(rollout.action[0, 0]), np.asarray(rollout.action[0, 1]))
    with pytest.raises(ConfigError, match="num_envs must be even"):
        dataclasses.replace(config, num_envs=3, paired_envs=True).validate()


def test_the_advantage_hook_replaces_gae_in_the_policy_loss_only():
    from agents import ppo
    config = ppo.PPOConfig(env="gridworld/barfi", env_kwargs={"size": 3}, num_envs=4, num_steps=8, hidden=(8,),
                           num_minibatches=2, num_epochs=1, total_steps=64).validate()
    hp = ppo.hparams_from(config)
    ts0 = ppo.make(config).init(jax.random.key(3), hp)
    step = lambda agent: jax.jit(lambda ts: agent.step(ts, hp))(ts0)[0]  # noqa: E731
    plain = step(ppo.make(config))
    same = step(ppo.make(config, advantage_fn=lambda p, rollout, adv: adv))
    flipped = step(ppo.make(config, advantage_fn=lambda p, rollout, adv: -adv))
    leaves = lambda t: jax.tree.leaves(t.params)  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(plain), leaves(same)))
    assert any(not np.array_equal(x, y) for x, y in zip(leaves(plain), leaves(flipped)))


def test_win_rates_go_on_the_gold_scale():
    wins = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(np.asarray(spo.on_gold_scale(wins, -2.0, 3.0)),
                               [-2.0 - 3.0 * 0.5 * math.sqrt(12), -2.0, -2.0 + 3.0 * 0.5 * math.sqrt(12)], rtol=1e-6)
    # win rates of many distinct segments get about the gold's spread
    wins = spo.win_rates(jax.random.normal(jax.random.key(1), (400,)), 0.0, 0.0)
    assert float(jnp.std(spo.on_gold_scale(wins, 0.0, 2.0))) == pytest.approx(2.0, rel=0.02)


def test_episode_segment_scores_cut_whole_segments():
    gold = jnp.arange(2 * 3 * 10, dtype=jnp.float32).reshape(2, 3, 10)      # [seeds, episodes, horizon 10]
    scores = np.asarray(spo.episode_segment_scores(gold, 4, "bt"))
    assert scores.shape == (2, 3, 2)                                          # floor(10 / 4) segments, the rest dropped
    g = np.asarray(gold)
    assert scores[1, 2, 1] == g[1, 2, 4:8].sum()


# ----------------------------------------------------------------------------- PPO's rollout_reward hook

def test_rollout_reward_replaces_the_rewards_ppo_trains_on():
    from agents import ppo
    config = ppo.PPOConfig(env="gridworld/barfi", env_kwargs={"size": 3}, num_envs=4, num_steps=8, hidden=(8,),
                           num_minibatches=2, num_epochs=1, total_steps=64).validate()
    hp = ppo.hparams_from(config)
    key = jax.random.key(3)
    plain = ppo.make(config)
    same = ppo.make(config, rollout_reward=lambda p, rollout: rollout.reward)
    flipped = ppo.make(config, rollout_reward=lambda p, rollout: -rollout.reward + rollout.env_reward)
    ts0 = plain.init(key, hp)
    a, _, ra = jax.jit(lambda ts: plain.step(ts, hp, with_rollout=True))(ts0)
    b, _, rb = jax.jit(lambda ts: same.step(ts, hp, with_rollout=True))(ts0)
    c, _, rc = jax.jit(lambda ts: flipped.step(ts, hp, with_rollout=True))(ts0)
    leaves = lambda t: jax.tree.leaves(t.params)  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    np.testing.assert_array_equal(np.asarray(ra.reward), np.asarray(rb.reward))
    # the rollout (and so collect) carries the replaced rewards, and training follows them
    np.testing.assert_allclose(np.asarray(rc.reward), -np.asarray(ra.reward) + np.asarray(ra.env_reward))
    if np.any(np.asarray(rc.reward) != np.asarray(ra.reward)):
        assert any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


# ----------------------------------------------------------------------------- a tiny run of both methods

TINY = spo.SPOConfig(
    env="gridworld/barfi", env_kwargs={"size": 3}, seeds=2, reference_steps=1024, oracle="bt",
    ppo={"num_envs": 8, "num_steps": 32, "hidden": [16], "num_minibatches": 2, "num_epochs": 2},
    data_envs=8, data_steps=64, pairs=60, held_out_pairs=40, segment_len=8, rm_hidden=(16,), rm_steps=50,
    rl_steps=8 * 32 * 4, eval_every=2, eval_episodes=8)


# Three runs of both methods (about a minute of compiling and running on an
# idle 2-core box): slow. The default suite keeps the pieces SPO is built from
# (win rates, their place in the rollout, the oracle, PPO's hook) and bad input.
@pytest.fixture(scope="module")
def runs():
    quiet = dict(show_progress=False, log=lambda *a: None)
    whole = spo.run(TINY, **quiet)
    saved = {}
    stopped = spo.run(TINY, on_chunk=lambda state, done, rows: saved.update(state=state, done=done), stop_at=2,
                      **quiet)
    resumed = spo.run(TINY, restore=lambda like: (saved["state"], saved["done"]), **quiet)
    stopped["states"] = saved["state"]
    return whole, stopped, resumed


@pytest.mark.slow
def test_both_methods_run_from_the_reference_each_compiled_once(runs):
    whole, _, _ = runs
    rows = whole["rows"]
    assert {r["method"] for r in rows} == set(spo.METHODS)
    assert len(rows) == len(spo.METHODS) * TINY.seeds * 3        # iterations 0, 2, 4
    start = [r for r in rows if r["iteration"] == 0]
    # before any update each policy is the reference: same episodes, win rate exactly a half, no KL
    assert all(r["win_rate"] == pytest.approx(0.5) and r["kl"] == pytest.approx(0.0, abs=1e-5) for r in start)
    for s in range(TINY.seeds):
        assert r_gold(start, s) == pytest.approx(whole["reference"]["gold"][s])
    assert all(0.0 <= r["win_rate"] <= 1.0 and np.isfinite(r["oracle_metric"]) and r["kl"] >= 0.0 for r in rows)


@pytest.mark.slow
def test_each_method_moves_the_policy_off_the_reference(runs):
    # By parameters, not by the KL column: on this tiny gridworld the
    # reference is nearly deterministic, so the sampled KL (a mean of
    # log-ratios, clipped at 0) is often exactly 0 after a real update.
    from meta import reward_model as rmod
    _, stopped, _ = runs
    programs = spo.make(TINY)
    ref_ts, _ = programs.rm.reference(rmod.stage_keys(programs.rm.config)[0])
    for method in spo.METHODS:
        moved = [float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(stopped["states"][method].params), jax.tree.leaves(ref_ts.params))]
        assert max(moved) > 1e-6, method


def r_gold(rows, seed):
    values = {r["gold"] for r in rows if r["seed"] == seed}
    assert len(values) == 1
    return values.pop()


@pytest.mark.slow
def test_each_online_chunk_compiles_once(runs):
    programs = spo.make(TINY)
    assert set(programs.chunks) == {"spo", "p3o", "dno"}
    assert all(chunk._cache_size() == 1 for chunk in programs.chunks.values())
    assert programs.evaluate._cache_size() == 1


@pytest.mark.slow
def test_stop_and_resume_give_the_same_rows(runs):
    whole, stopped, resumed = runs
    assert not stopped["complete"] and resumed["complete"]
    assert [r for r in whole["rows"] if r["iteration"] > 2] == [r for r in resumed["rows"] if r["iteration"] > 2]
    assert [r for r in whole["rows"] if r["iteration"] <= 2] == stopped["rows"]


@pytest.mark.slow
def test_the_online_command_writes_its_run_directory(runs, tmp_path):
    """`run.py meta prefopt --online` on the tiny config (the fixture's
    programs, cached by config value): curves, both plots, comparison.md."""
    import csv

    from commands import prefopt
    from src import config as cfg
    path = tmp_path / "tiny.yaml"
    cfg.save_yaml(TINY, path)
    out = tmp_path / "run"
    assert prefopt.main(["--online", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    for name in ("curves.csv", "curves.png", "frontier.png", "comparison.md", "summary.json", "accuracy.json"):
        assert (out / name).exists(), name
    with open(out / "curves.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == set(spo.METHODS)
    text = (out / "comparison.md").read_text()
    assert all(name in text for name in ("SPO", "P3O", "DNO", "reward model"))


@pytest.mark.parametrize("change, message", [
    ({"segment_len": 7}, "nearest is 8"),
    ({"oracle": "majority"}, "choose one of bt, worst, intransitive"),
    ({"gold": "random"}, "gold=env"),
    ({"methods": ("spo", "nash")}, "one or more of spo, p3o, dno, rlhf"),
    ({"methods": ("spo", "spo")}, "each once"),
    ({"methods": ("p3o",), "ppo": {**TINY.ppo, "num_envs": 7}}, "even number"),
    ({"methods": ("spo",), "paired_starts": True, "ppo": {**TINY.ppo, "num_envs": 7}}, "even number"),
    ({"methods": ("dno",), "dno_loss": "kto"}, "dno_loss: unknown"),
    ({"methods": ("dno",), "dno_margin": 1.0}, "in \\[0, 1\\)"),
    ({"methods": ("dno",), "dno_beta": 0.0}, "dno_beta > 0"),
    ({"beta": -0.1}, "beta must be >= 0"),
])
def test_bad_input_is_refused_before_compiling(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TINY, **change).validate()


def test_the_command_line_refuses_an_unknown_oracle_naming_the_choices(tmp_path, capsys):
    from commands import prefopt
    with pytest.raises((ConfigError, SystemExit)) as info:
        prefopt.main(["--online", "--oracle", "majority", "--out", str(tmp_path / "run")])
    assert "bt, worst, intransitive" in str(info.value) or "bt, worst, intransitive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_collect_can_keep_the_observation_statistics_fixed():
    """Evaluations against a frozen reference collect with the statistics
    fixed: the acting policy is then exactly the state's, and the reference
    scores KL 0 against itself."""
    from agents import ppo
    config = ppo.PPOConfig(env="Pendulum-v1", num_envs=4, num_steps=8, hidden=(8,), num_minibatches=2,
                           num_epochs=1, total_steps=64, normalize_obs=True).validate()
    agent = ppo.make(config)
    ts = agent.init(jax.random.key(0), ppo.hparams_from(config))
    moved, _ = jax.jit(agent.collect)(ts)
    kept, _ = jax.jit(lambda t: agent.collect(t, update_obs_stats=False))(ts)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
    assert same(kept.obs_stats, ts.obs_stats) and not same(moved.obs_stats, ts.obs_stats)
