"""Synthetic preferences, Bradley-Terry reward models and their ensembles,
and the overoptimisation numerics (best-of-n, fitted forms, KL estimators)."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import overoptimisation as oo
from envs import preferences as prefs
from envs import reward_models as rm
from envs.rewards import Transition

OBS_DIM, ACTIONS, HORIZON, SEG = 3, 2, 20, 5
GOLD_W = np.array([1.0, -0.5, 0.25], np.float32)   # gold reward = GOLD_W . s' + 0.5 * [a == 1]


@functools.partial(jax.jit, static_argnames=("num_traj", "horizon"))
def linear_rollouts(key, num_traj=32, horizon=HORIZON):
    """Random trajectories whose gold reward is linear in (a, s')."""
    obs_key, act_key = jax.random.split(key)
    states = jax.random.normal(obs_key, (num_traj, horizon + 1, OBS_DIM), jnp.float32)
    action = jax.random.randint(act_key, (num_traj, horizon), 0, ACTIONS)
    next_obs = states[:, 1:]
    gold = next_obs @ GOLD_W + 0.5 * (action == 1)
    return prefs.Segments(states[:, :-1], action, next_obs, gold, jnp.zeros((num_traj, horizon), bool))


def linear_model(weights, bias=0.0):
    """A reward model without hidden layers: r = weights . [s, onehot(a), s'] + bias."""
    w = jnp.asarray(weights, jnp.float32)[:, None]
    return [{"w": w, "b": jnp.full((1,), bias, jnp.float32)}]


NUM_PAIRS = 20000


@pytest.fixture(scope="module")
def data():
    """Clean train and held-out pairs from two independent sets of rollouts."""
    train_traj, held_traj = linear_rollouts(jax.random.key(0)), linear_rollouts(jax.random.key(2))
    train_pairs = prefs.make_pairs(jax.random.key(1), train_traj, SEG, NUM_PAIRS, 0.0, 0.0)
    held_pairs = prefs.make_pairs(jax.random.key(3), held_traj, SEG, NUM_PAIRS, 0.0, 0.0)
    return train_traj, train_pairs, held_pairs


@pytest.fixture(scope="module")
def sweep(data):
    """Pairs under (temperature, label_noise) = (0, 0), (1e-6, 0), (0, 0.25), (2, 0): traced, so one program
    (the data fixture's) serves them all."""
    traj = data[0]
    out = [prefs.make_pairs(jax.random.key(11), traj, SEG, NUM_PAIRS, t, noise)
           for t, noise in ((0.0, 0.0), (1e-6, 0.0), (0.0, 0.25), (2.0, 0.0))]
    assert prefs.make_pairs._cache_size() == 1
    return out


def config(pairs, i):
    return pairs[i]


def gold_preference(pairs):
    """1, 0, or 0.5 on an exact tie (a segment paired with itself)."""
    return 0.5 * (1 + np.sign(np.asarray(pairs.first.gold).sum(-1) - np.asarray(pairs.second.gold).sum(-1)))


TRAIN = dict(steps=200, lr=1e-2, batch_size=32, action_size=ACTIONS, hidden=(16,))


@pytest.fixture(scope="module")
def ensembles(data):
    train_pairs = data[1]
    key = jax.random.key(7)
    return {bootstrap: rm.train_ensemble(key, train_pairs, 3, bootstrap, **TRAIN) for bootstrap in (False, True)}


# ----------------------------------------------------------------------------- preferences

def test_bt_loss_matches_a_hand_computation():
    # r = first observation feature of s; segments of 2 steps; returns R1 = [3, 1, 0.5], R2 = [1, 2, 0.5]
    params = linear_model([1.0, 0, 0, 0, 0, 0, 0, 0])

    def segs(returns):
        obs = jnp.zeros((3, 2, OBS_DIM)).at[:, 0, 0].set(jnp.asarray(returns))
        return prefs.Segments(obs, jnp.zeros((3, 2), jnp.int32), obs, jnp.zeros((3, 2)), jnp.zeros((3, 2), bool))

    label = jnp.array([1.0, 0.0, 0.25])
    pairs = prefs.Pairs(segs([3.0, 1.0, 0.5]), segs([1.0, 2.0, 0.5]), label, jnp.full((3,), 0.5))
    softplus = lambda x: math.log1p(math.exp(x))
    # pair 1: D = 2, y = 1 -> -log sigmoid(2) = softplus(-2); pair 2: D = -1, y = 0 -> softplus(-1);
    # pair 3: D = 0, soft label -> log 2
    expected = (softplus(-2.0) + softplus(-1.0) + math.log(2.0)) / 3
    flipped = linear_model([-1.0, 0, 0, 0, 0, 0, 0, 0])
    loss, flipped_loss = jax.jit(jax.vmap(rm.bt_loss, in_axes=(0, None)))(
        jax.tree.map(lambda *x: jnp.stack(x), params, flipped), pairs)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # a model that prefers the other segment pays more
    assert float(flipped_loss) == pytest.approx((softplus(2.0) + softplus(1.0) + math.log(2.0)) / 3, rel=1e-5)


def test_segments_are_windows_of_the_trajectories(data):
    traj, pairs, _ = data
    assert pairs.first.obs.shape == (NUM_PAIRS, SEG, OBS_DIM) and pairs.first.action.shape == (NUM_PAIRS, SEG)
    segs = jax.tree.map(lambda x: x[:256], pairs.first)
    gold = np.asarray(traj.gold)
    for seg_gold in np.asarray(segs.gold)[:10]:
        assert any(np.array_equal(gold[i, t:t + SEG], seg_gold)
                   for i in range(gold.shape[0]) for t in range(HORIZON - SEG + 1))
    # each step's gold belongs to that step's own (a, s'), and s' follows s
    recomputed = np.asarray(segs.next_obs) @ GOLD_W + 0.5 * (np.asarray(segs.action) == 1)
    np.testing.assert_allclose(np.asarray(segs.gold), recomputed, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(segs.obs)[:, 1:], np.asarray(segs.next_obs)[:, :-1])
    # starts cover the whole range of windows
    starts = {t for seg in np.asarray(segs.gold) for i in range(gold.shape[0]) for t in range(HORIZON - SEG + 1)
              if np.array_equal(gold[i, t:t + SEG], seg)}
    assert starts == set(range(HORIZON - SEG + 1))


def test_labels_at_low_temperature_and_no_noise_are_the_gold_preference(sweep):
    for i in (0, 1):      # temperature 0 and 1e-6
        pairs = config(sweep, i)
        gold_pref = gold_preference(pairs)
        gap = np.abs(np.asarray(pairs.first.gold).sum(1) - np.asarray(pairs.second.gold).sum(1))
        # exact ties (a segment paired with itself) get probability 1/2 and a fair coin;
        # at temperature 1e-6 a gap of a few 1e-6 is still soft
        strict = gap > 1e-4
        assert strict.mean() > 0.95
        np.testing.assert_array_equal(np.asarray(pairs.gold_prob)[strict], gold_pref[strict])
        np.testing.assert_array_equal(np.asarray(pairs.label)[strict], gold_pref[strict])
        np.testing.assert_array_equal(np.asarray(pairs.gold_prob)[gap == 0], 0.5)


def test_label_noise_flips_at_its_rate_and_labels_follow_the_bradley_terry_probability(sweep):
    noisy = config(sweep, 2)
    gold_pref = gold_preference(noisy)
    strict = gold_pref != 0.5
    flips = np.asarray(noisy.label)[strict] != gold_pref[strict]
    assert abs(flips.mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / strict.sum())
    # at temperature 2, label ~ Bernoulli(sigmoid((G1 - G2) / 2)), and gold_prob is that probability
    soft = config(sweep, 3)
    g1, g2 = np.asarray(soft.first.gold).sum(1), np.asarray(soft.second.gold).sum(1)
    p = 1 / (1 + np.exp(-(g1 - g2) / 2))
    np.testing.assert_allclose(np.asarray(soft.gold_prob), p, atol=1e-5)
    label = np.asarray(soft.label)
    assert abs(label.mean() - p.mean()) < 4 * math.sqrt(np.sum(p * (1 - p))) / p.size
    # and calibrated: among pairs with p in a bin, the label rate matches the bin's mean p
    for lo, hi in ((0.1, 0.3), (0.4, 0.6), (0.7, 0.9)):
        inside = (p > lo) & (p < hi)
        rate, expected = label[inside].mean(), p[inside].mean()
        assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / inside.sum())


def test_split_and_concatenate(data):
    pairs = data[1]
    train, held = prefs.split(pairs, 0.3)
    assert prefs.num_pairs_of(train) == 14000 and prefs.num_pairs_of(held) == 6000
    train, held = prefs.split(pairs, 16)
    assert prefs.num_pairs_of(held) == 16
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), prefs.concatenate(train, held), pairs)))


# ----------------------------------------------------------------------------- reward models

def test_a_reward_model_learns_a_linear_gold_reward(data, ensembles):
    _, train_pairs, held_pairs = data
    params, losses = rm.train(jax.random.key(4), train_pairs, **TRAIN)
    assert losses.shape == (TRAIN["steps"],)
    assert float(losses[-20:].mean()) < float(losses[:20].mean())
    acc = rm.accuracy(params, held_pairs)
    assert float(acc.gold) >= 0.9 and float(acc.label) == float(acc.gold)    # clean labels
    # the ensemble's members are train() on the split keys, and each is accurate too
    ens_params, _, _ = ensembles[False]
    member1 = jax.tree.map(lambda x: x[1], ens_params)
    again, _ = rm.train(jax.random.split(jax.random.key(7), 3)[1], train_pairs, **TRAIN)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-4), member1, again)))
    member_acc = rm.accuracy(ens_params, held_pairs)
    assert member_acc.gold.shape == (3,) and float(member_acc.gold.min()) >= 0.85
    assert float(rm.accuracy(ens_params, held_pairs, "uwo", 0.1).gold) >= 0.85


def test_ensemble_members_differ_and_bootstrap_resamples_differ(data, ensembles):
    train_pairs = data[1]
    size = prefs.num_pairs_of(train_pairs)
    for bootstrap, (params, losses, index) in ensembles.items():
        assert losses.shape == (3, TRAIN["steps"]) and index.shape == (3, size)
        w = np.asarray(params[0]["w"])
        assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])
    _, _, plain = ensembles[False]
    assert (np.asarray(plain) == np.arange(size)).all()
    _, _, boot = ensembles[True]
    boot = np.asarray(boot)
    assert not np.array_equal(boot[0], boot[1]) and not np.array_equal(boot[1], boot[2])
    for row in boot:   # with replacement: about 1 - 1/e distinct
        assert 0.5 * size < np.unique(row).size < 0.75 * size


def test_aggregations_match_hand_computed_values():
    # three linear members whose rewards at the transition below are 1, 2 and 4
    members = [linear_model([1.0] + [0.0] * 7, bias=b) for b in (0.0, 1.0, 3.0)]
    ensemble = jax.tree.map(lambda *x: jnp.stack(x), *members)
    t = Transition(jnp.array([1.0, 5.0, -2.0]), jnp.int32(1), jnp.zeros(3), jnp.float32(0.0), jnp.bool_(False), {})
    batch = jax.tree.map(lambda x: jnp.stack([x] * 4), t)
    lambdas = jnp.array([0.0, 0.5, 2.0])

    @jax.jit
    def rewards(ensemble, single, t, batch, lambdas):
        out = {kind: rm.aggregate(kind, 0.5)(ensemble, t) for kind in rm.AGGREGATIONS}
        # a traced lambda: a sweep is a vmap over reward params
        in_axes = ({"ensemble": None, "uwo_lambda": 0}, None)
        out["swept"] = jax.vmap(rm.aggregate("uwo"), in_axes=in_axes)(rm.aggregate_params(ensemble, lambdas), t)
        # a batch of transitions (the learner vmaps the reward function over envs)
        out["batch"] = jax.vmap(rm.aggregate("wco"), in_axes=(None, 0))(ensemble, batch)
        # a single model is an ensemble of one: every aggregate is its reward
        out["single"] = jnp.stack([rm.aggregate(kind, 3.0)(single, t) for kind in rm.AGGREGATIONS])
        return out

    out = rewards(ensemble, members[2], t, batch, lambdas)
    mean, var = 7.0 / 3.0, 14.0 / 9.0      # population variance of (1, 2, 4)
    assert float(out["mean"]) == pytest.approx(mean, rel=1e-6)
    assert float(out["wco"]) == pytest.approx(1.0, rel=1e-6)
    assert float(out["uwo"]) == pytest.approx(mean - 0.5 * var, rel=1e-6)
    np.testing.assert_allclose(np.asarray(out["swept"]), mean - np.asarray(lambdas) * var, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["batch"]), np.ones(4), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["single"]), np.full(3, 4.0), rtol=1e-6)
    with pytest.raises(ValueError, match="mean, wco, uwo"):
        rm.aggregate("median")


def test_normalise_gives_each_member_mean_zero_std_one(data, ensembles):
    ensemble, _, _ = ensembles[True]
    reference = data[0]
    before = rm.member_rewards(ensemble, reference.obs, reference.action, reference.next_obs)
    normed = rm.normalise(ensemble, reference)
    after = np.asarray(rm.member_rewards(normed, reference.obs, reference.action, reference.next_obs))
    after = after.reshape(3, -1)
    np.testing.assert_allclose(after.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(after.std(1), 1.0, rtol=1e-4)
    # an increasing affine map of each member's rewards: its preferences are unchanged
    b = np.asarray(before).reshape(3, -1)
    for k in range(3):
        assert np.corrcoef(b[k], after[k])[0, 1] > 0.9999
    assert jax.tree.structure(normed) == jax.tree.structure(ensemble)


def test_random_gold_is_a_reward_function(data):
    reward_fn, params = rm.random_gold(jax.random.key(0), OBS_DIM, ACTIONS, discrete=True, width=32)
    cont_fn, cont_params = rm.random_gold(jax.random.key(0), OBS_DIM, 2, discrete=False, width=32)
    assert params[0]["w"].shape == (2 * OBS_DIM + ACTIONS, 32) and len(params) == 3
    traj = data[0]
    relabelled = prefs.with_gold(traj, reward_fn, params)
    t = Transition(traj.obs[0, 3], traj.action[0, 3], traj.next_obs[0, 3], traj.gold[0, 3], False, {})
    one, cont = jax.jit(lambda p, q, t: (reward_fn(p, t), cont_fn(q, t._replace(action=jnp.array([0.1, -0.3])))))(
        params, cont_params, t)
    assert relabelled.gold.shape == traj.gold.shape and float(jnp.std(relabelled.gold)) > 0
    assert float(one) == pytest.approx(float(relabelled.gold[0, 3]), rel=1e-5)
    assert jnp.shape(cont) == ()


# ----------------------------------------------------------------------------- best-of-n and fits

def test_bon_kl():
    assert oo.bon_kl(1) == 0.0
    for n in (2, 4, 64):
        assert oo.bon_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)
    np.testing.assert_allclose(oo.bon_kl([1, 4]), [0.0, math.log(4) - 0.75])


def brute_force_best_of_n(proxy, gold, n):
    """Mean over all n-subsets of the gold of the best proxy, ties split uniformly."""
    values = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        values.append(np.mean([gold[i] for i in subset if proxy[i] == top]))
    return float(np.mean(values))


def test_best_of_n_is_exact():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)
    for n in range(1, 8):
        assert oo.best_of_n(proxy, gold, n) == pytest.approx(brute_force_best_of_n(proxy, gold, n), rel=1e-10)
    assert oo.best_of_n(proxy, gold, 1) == pytest.approx(gold.mean())
    assert oo.best_of_n(proxy, gold, 7) == pytest.approx(gold[np.argmax(proxy)])
    np.testing.assert_allclose(oo.best_of_n(proxy, gold, [1, 3]),
                               [gold.mean(), brute_force_best_of_n(proxy, gold, 3)])
    # ties: split uniformly within a tie, whatever the input order
    tied = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, -1.0])
    for n in (2, 3, 5):
        expected = brute_force_best_of_n(tied, gold, n)
        assert oo.best_of_n(tied, gold, n) == pytest.approx(expected, rel=1e-10)
        perm = rng.permutation(7)
        assert oo.best_of_n(tied[perm], gold[perm], n) == pytest.approx(expected, rel=1e-10)
    # large M stays finite (log-space binomials)
    big = rng.normal(size=5000)
    assert oo.best_of_n(big, big, 256) > oo.best_of_n(big, big, 4) > big.mean()
    with pytest.raises(ValueError, match="lower n"):
        oo.best_of_n(proxy, gold, 8)


def test_fits_recover_their_coefficients():
    d = np.linspace(0.05, 6.0, 40)
    fit = oo.fit_bon(d, d * (1.5 - 0.25 * d))
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((1.5, 0.25, 1.0), abs=1e-9)
    assert (fit.d_peak, fit.r_peak) == pytest.approx((3.0, 2.25))
    fit = oo.fit_rl(d, d * (0.8 - 0.4 * np.log(d)))
    assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((0.8, 0.4, 1.0), abs=1e-9)
    d_star = math.exp(0.8 / 0.4 - 1)
    assert (fit.d_peak, fit.r_peak) == pytest.approx((d_star, 0.4 * d_star))
    # the fitted peak is the maximum of the fitted curve
    grid = np.linspace(0.01, 20, 20001)
    assert fit.r_peak == pytest.approx(np.max(grid * (0.8 - 0.4 * np.log(grid))), rel=1e-6)
    # no hump: no peak
    assert math.isnan(oo.fit_bon(d, 2.0 * d + 0.1 * d * d).d_peak)


def test_sample_kl_matches_the_analytic_kl():
    rng = np.random.default_rng(0)
    num = 100000
    logits_p, logits_q = rng.normal(size=5), rng.normal(size=5)
    log_softmax = lambda z: z - np.log(np.sum(np.exp(z)))
    actions = rng.choice(5, size=num, p=np.exp(log_softmax(logits_p)))
    logp, logq = log_softmax(logits_p)[actions], log_softmax(logits_q)[actions]
    analytic = float(oo.kl_categorical(logits_p, logits_q))
    assert analytic > 0.05
    assert abs(float(oo.kl_from_samples(logp, logq)) - analytic) < 4 * np.std(logp - logq) / math.sqrt(num)
    mean_p, logstd_p = np.array([0.3, -1.0]), np.array([0.0, -0.5])
    mean_q, logstd_q = np.array([0.0, 0.0]), np.array([0.2, 0.1])
    x = mean_p + np.exp(logstd_p) * rng.normal(size=(num, 2))
    log_density = lambda m, s: np.sum(-0.5 * ((x - m) / np.exp(s)) ** 2 - s - 0.5 * math.log(2 * math.pi), -1)
    logp, logq = log_density(mean_p, logstd_p), log_density(mean_q, logstd_q)
    analytic = float(oo.kl_gaussian(mean_p, logstd_p, mean_q, logstd_q))
    # by hand, summed over the two dimensions: log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2
    by_hand = sum(lq - lp + (math.exp(2 * lp) + (mp - mq) ** 2) / (2 * math.exp(2 * lq)) - 0.5
                  for mp, lp, mq, lq in zip(mean_p, logstd_p, mean_q, logstd_q))
    assert analytic == pytest.approx(by_hand, rel=1e-5) and analytic > 0.3
    assert abs(float(oo.kl_from_samples(logp, logq)) - analytic) < 4 * np.std(logp - logq) / math.sqrt(num)
    # identical distributions: zero
    assert float(oo.kl_categorical(logits_p, logits_p)) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_stops_before_compiling_with_the_fix(data):
    with pytest.raises(ValueError, match=r"set segment_len <= 20"):
        prefs.validate(trajectory_len=20, segment_len=25, num_pairs=10)
    with pytest.raises(ValueError, match="at least one pair"):
        prefs.validate(20, 5, 0)
    with pytest.raises(ValueError, match=r"give a value in \[0, 0.5\]"):
        prefs.validate(20, 5, 10, label_noise=[0.1, 0.6])
    with pytest.raises(ValueError, match="bootstrap=False"):
        prefs.validate(20, 5, 9, members=5, bootstrap=True)
    prefs.validate(20, 5, 10, label_noise=[0.0, 0.25, 0.5], members=5, bootstrap=True)
    with pytest.raises(ValueError, match="bootstrap=False"):   # after holding out, 8 < 2 * 5
        prefs.validate(20, 5, 10, members=5, bootstrap=True, held_out=0.2)
    # the same checks at trace time, before compiling
    traj = linear_rollouts(jax.random.key(0))
    with pytest.raises(ValueError, match="segment_len <= 20"):
        prefs.make_pairs(jax.random.key(0), traj, 25, 10, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        prefs.label_pairs(jax.random.key(0), traj, traj, 1.0, 0.75)
    pairs = prefs.split(data[1], NUM_PAIRS - 9)[0]
    with pytest.raises(ValueError, match="at least 10 training pairs"):
        rm.train_ensemble(jax.random.key(0), pairs, 5, True, steps=2, lr=1e-3, batch_size=4, action_size=ACTIONS)
    with pytest.raises(ValueError, match="leaving none to train on"):
        prefs.split(pairs, 9)
    with pytest.raises(ValueError, match="uwo_lambda >= 0"):
        rm.aggregate("uwo", -1.0)


def test_turn_down_pairs_the_drop_by_seed():
    """Seeds at very different levels, each falling by 10 +- 1 after the
    peak: paired, the drop is significant although the levels' spread (100s)
    dwarfs it; a curve still rising at its end has no turn."""
    from envs import overoptimisation as oo
    levels = np.array([0.0, 300.0, -200.0, 50.0, 120.0])
    shape = np.array([0.0, 20.0, 30.0, 20.0])[:, None]
    gold = levels[None, :] + shape - np.array([0, 0, 0, 1.0])[:, None] * np.array([9.0, 11.0, 10.0, 9.5, 10.5])
    down = oo.turn_down(gold)
    assert down.peak == 2 and down.drop == pytest.approx(10.0 + 10.0) and down.significant
    assert down.rise == pytest.approx(30.0) and down.rise_se == pytest.approx(0.0) and down.hump
    falling = levels[None, :] - np.arange(4.0)[:, None] * np.array([1.0, 2.0, 1.5, 1.0, 3.0])
    assert oo.turn_down(falling).significant and not oo.turn_down(falling).hump     # a fall is not a hump
    assert down.drop_se == pytest.approx(np.std([19.0, 21.0, 20.0, 19.5, 20.5], ddof=1) / np.sqrt(5))
    rising = levels[None, :] + np.arange(4.0)[:, None]
    assert not oo.turn_down(rising).significant and oo.turn_down(rising).peak == 3
    noisy = levels[None, :] + np.array([[0, 0, 0, 0, 0], [5, -5, 5, -5, 5], [-5, 5, -5, 5, -4.0]])
    assert not oo.turn_down(noisy).significant
