"""agents/preference_losses.py: each Direct Preference Optimisation-family loss
against a hand computation, its gradient's sign, its invariances, the noise-rate
limits, and CoPG's toy claim (a bandit's KL-regularised optimum from
off-policy pairs)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents import preference_losses as pl

# 4 pairs: chosen ahead, behind, level, and far ahead of the rejected segment
LOGP_W = [-3.0, -5.5, -2.0, -1.0]
LOGP_L = [-4.0, -5.0, -2.5, -6.0]
REF_W = [-3.5, -5.0, -2.2, -4.0]
REF_L = [-3.8, -5.2, -2.7, -3.0]
LEN_W = [4.0, 5.0, 2.0, 3.0]
LEN_L = [4.0, 5.0, 2.0, 3.0]
REW_W = [1.0, 0.2, -0.5, 2.0]
REW_L = [0.0, 0.7, -1.0, -1.0]
BETA, DELTA, GAMMA, ALPHA, EPS = 0.7, 1.0, 0.3, 0.5, 0.2


def batch(rewards=False, **override):
    fields = dict(logp_chosen=LOGP_W, logp_rejected=LOGP_L, ref_logp_chosen=REF_W, ref_logp_rejected=REF_L,
                  len_chosen=LEN_W, len_rejected=LEN_L)
    if rewards:
        fields.update(reward_chosen=REW_W, reward_rejected=REW_L)
    fields.update(override)
    return pl.PairBatch(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


PARAMS = pl.loss_params(beta=BETA, slic_margin=DELTA, simpo_gamma=GAMMA, rpo_alpha=ALPHA, noise_rate=EPS)


# ----------------------------------------------------------------------------- hand computations

def _logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def hand(name, rewards=False, len_l=LEN_L):
    """Each loss written out with math, pair by pair."""
    out = []
    for i in range(4):
        dw = LOGP_W[i] - REF_W[i]
        dl = LOGP_L[i] - REF_L[i]
        x = BETA * (dw - dl)
        if name == "dpo":
            v = -_logsig(x)
        elif name == "ipo":
            v = (dw - dl - 1.0 / (2.0 * BETA)) ** 2
        elif name == "slic":
            v = max(0.0, DELTA - x)
        elif name == "cdpo":
            v = -(1 - EPS) * _logsig(x) - EPS * _logsig(-x)
        elif name == "robust_dpo":
            v = (-(1 - EPS) * _logsig(x) + EPS * _logsig(-x)) / (1 - 2 * EPS)
        elif name == "simpo":
            v = -_logsig(BETA * (LOGP_W[i] / LEN_W[i] - LOGP_L[i] / len_l[i]) - GAMMA)
        elif name == "rpo":
            v = -_logsig(x) + ALPHA * (-LOGP_W[i] / LEN_W[i])
        elif name == "copg":
            rw, rl = (REW_W[i], REW_L[i]) if rewards else (0.25, -0.25)
            c = (rw - BETA * dw) - (rl - BETA * dl)
            v = -0.5 * c * (LOGP_W[i] - LOGP_L[i])
        else:
            raise KeyError(name)
        out.append(v)
    return out


@jax.jit
def all_per_pair(b, params):
    return {name: fn(b, params) for name, fn in pl.PER_PAIR.items()}


@jax.jit
def all_means(b, params):
    return {name: fn(b, params) for name, fn in pl.LOSSES.items()}


def test_the_batch_covers_both_sides_of_every_kink():
    h = np.asarray(LOGP_W) - REF_W - (np.asarray(LOGP_L) - REF_L)
    assert (h > 0).any() and (h < 0).any()
    assert (BETA * h > DELTA).any() and (BETA * h < DELTA).any()          # SLiC's hinge active and inactive
    assert (h > 1 / (2 * BETA)).any() and (h < 1 / (2 * BETA)).any()     # IPO on both sides of its target


@pytest.mark.parametrize("name", sorted(pl.PER_PAIR))
def test_each_loss_matches_a_hand_computation(name):
    per_pair, means = all_per_pair(batch(), PARAMS), all_means(batch(), PARAMS)
    expected = hand(name)
    np.testing.assert_allclose(np.asarray(per_pair[name]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(means[name]), np.mean(expected), rtol=1e-5, atol=1e-6)


def test_copg_with_rewards_matches_a_hand_computation():
    got = all_per_pair(batch(rewards=True), PARAMS)["copg"]
    np.testing.assert_allclose(np.asarray(got), hand("copg", rewards=True), rtol=1e-5, atol=1e-6)


def test_simpo_with_unequal_lengths_matches_a_hand_computation():
    len_l = [2.0, 10.0, 1.0, 6.0]
    got = all_per_pair(batch(len_rejected=len_l), PARAMS)["simpo"]
    np.testing.assert_allclose(np.asarray(got), hand("simpo", len_l=len_l), rtol=1e-5, atol=1e-6)


def test_weights_give_a_weighted_mean_and_a_zero_weight_drops_a_pair():
    w = jnp.asarray([1.0, 0.0, 2.0, 1.0])
    got = all_means(batch(weight=w), PARAMS)
    for name in pl.PER_PAIR:
        v = np.asarray(hand(name))
        np.testing.assert_allclose(float(got[name]), float((v * np.asarray(w)).sum() / 4.0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- gradient signs

@jax.jit
def grads(b, params):
    """d(per-pair loss)/d logp_chosen and d/d logp_rejected for every loss (each pair's loss
    depends only on its own entries, so the gradient of the sum is the per-pair gradient)."""
    def one(name):
        f = lambda lw, ll: jnp.sum(pl.PER_PAIR[name](b._replace(logp_chosen=lw, logp_rejected=ll), params))
        return jax.grad(f, argnums=(0, 1))(b.logp_chosen, b.logp_rejected)
    return {name: one(name) for name in pl.PER_PAIR}


def test_raising_the_chosen_segment_lowers_each_loss_and_raising_the_rejected_raises_it():
    b = batch()
    g = grads(b, PARAMS)
    h = np.asarray(pl.margin(b))
    d_w, d_l = map(np.asarray, pl.log_ratios(b))
    # losses whose gradient has the sign everywhere
    for name in ("dpo", "robust_dpo", "simpo", "rpo"):
        gw, gl = map(np.asarray, g[name])
        assert (gw < 0).all() and (gl > 0).all(), (name, gw, gl)
    # IPO: only short of its target h = 1/(2 beta); beyond it, the loss pulls h back down
    gw, gl = map(np.asarray, g["ipo"])
    short = h < 1 / (2 * BETA)
    assert (gw[short] < 0).all() and (gl[short] > 0).all()
    assert (gw[~short] > 0).all() and (gl[~short] < 0).all()
    # SLiC: while the hinge is active; flat (zero) once beta h > delta
    gw, gl = map(np.asarray, g["slic"])
    active = BETA * h < DELTA
    assert (gw[active] < 0).all() and (gl[active] > 0).all()
    assert (gw[~active] == 0).all() and (gl[~active] == 0).all()
    # cDPO: while sigmoid(beta h) < 1 - eps (its bounded target); beyond, it pushes back
    gw, gl = map(np.asarray, g["cdpo"])
    below = 1 / (1 + np.exp(-BETA * h)) < 1 - EPS
    assert below.any() and (~below).any()
    assert (gw[below] < 0).all() and (gl[below] > 0).all()
    assert (gw[~below] > 0).all() and (gl[~below] < 0).all()
    # CoPG (preference rewards +-1/4): while the regularised reward gap c > 0
    gw, gl = map(np.asarray, g["copg"])
    c = 0.5 - BETA * (d_w - d_l)
    assert (c > 0).any() and (c < 0).any()
    np.testing.assert_allclose(gw, -c / 2, rtol=1e-5)
    np.testing.assert_allclose(gl, c / 2, rtol=1e-5)


def test_copg_surrogate_has_the_squared_forms_gradient_and_is_beta_over_4_times_ipos():
    b = batch(rewards=True)

    def grad_of(fn):
        return jax.grad(lambda lw, ll: jnp.sum(fn(b._replace(logp_chosen=lw, logp_rejected=ll), BETA)),
                        argnums=(0, 1))(b.logp_chosen, b.logp_rejected)

    for a, c in zip(grad_of(pl.copg_per_pair), grad_of(pl.copg_squared_per_pair)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)
    # with preference rewards +-1/4 (gap 1/2), CoPG's gradient is beta/4 times IPO's
    b = batch()
    g_copg = jax.grad(lambda lw: jnp.sum(pl.copg_per_pair(b._replace(logp_chosen=lw), BETA)))(b.logp_chosen)
    g_ipo = jax.grad(lambda lw: jnp.sum(pl.ipo_per_pair(b._replace(logp_chosen=lw), BETA)))(b.logp_chosen)
    np.testing.assert_allclose(np.asarray(g_copg), BETA / 4 * np.asarray(g_ipo), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- invariances and limits

def test_simpo_ignores_the_reference_and_reference_losses_ignore_a_shift_of_both():
    base = all_means(batch(), PARAMS)
    ref_shift = all_means(batch(ref_logp_chosen=np.asarray(REF_W) + 3.0,
                                ref_logp_rejected=np.asarray(REF_L) - 7.0), PARAMS)
    assert float(ref_shift["simpo"]) == float(base["simpo"])
    assert float(ref_shift["dpo"]) != pytest.approx(float(base["dpo"]))   # the shift does move DPO
    # the same constant added to logp and ref_logp of a segment (per segment: +2.5 chosen, -1.5 rejected)
    both = all_means(batch(logp_chosen=np.asarray(LOGP_W) + 2.5, ref_logp_chosen=np.asarray(REF_W) + 2.5,
                           logp_rejected=np.asarray(LOGP_L) - 1.5, ref_logp_rejected=np.asarray(REF_L) - 1.5),
                     PARAMS)
    for name in ("dpo", "ipo", "slic", "cdpo", "robust_dpo"):
        assert float(both[name]) == pytest.approx(float(base[name]), rel=1e-5, abs=1e-6), name


def test_cdpo_and_robust_dpo_at_zero_noise_are_dpo():
    got = all_means(batch(), PARAMS._replace(noise_rate=jnp.float32(0.0)))
    assert float(got["cdpo"]) == pytest.approx(float(got["dpo"]), rel=1e-6)
    assert float(got["robust_dpo"]) == pytest.approx(float(got["dpo"]), rel=1e-6)


def test_robust_dpo_is_unbiased_under_label_flips_and_nan_at_half():
    b = batch()
    rob = lambda x: pl.robust_dpo_per_pair(x, BETA, EPS)
    expected_over_flips = (1 - EPS) * rob(b) + EPS * rob(pl.swapped(b))
    np.testing.assert_allclose(np.asarray(expected_over_flips), np.asarray(pl.dpo_per_pair(b, BETA)), rtol=1e-5)
    for eps in (0.5, 0.7, -0.1):
        assert np.isnan(np.asarray(pl.robust_dpo_per_pair(b, BETA, eps))).all(), eps
    assert np.isfinite(np.asarray(pl.cdpo_per_pair(b, BETA, 0.5))).all()


def test_check_noise_rate():
    pl.check_noise_rate("robust_dpo", [0.0, 0.2, 0.49])
    pl.check_noise_rate("cdpo", 0.5)
    with pytest.raises(ValueError, match=r"outside \[0, 0.5\).*1 - 2 eps"):
        pl.check_noise_rate("robust_dpo", [0.1, 0.5])
    with pytest.raises(ValueError, match="outside"):
        pl.check_noise_rate("cdpo", -0.1)


def test_pairs_from_label_orders_by_the_label():
    first, second = jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray([10.0, 20.0, 30.0])
    b = pl.pairs_from_label(jnp.asarray([1.0, 0.0, 0.7]), first, second, first, second, first, second)
    np.testing.assert_array_equal(np.asarray(b.logp_chosen), [1.0, 20.0, 3.0])
    np.testing.assert_array_equal(np.asarray(b.logp_rejected), [10.0, 2.0, 30.0])
    assert b.reward_chosen is None and b.weight is None


# ----------------------------------------------------------------------------- bad input

def test_unknown_loss_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preference loss 'dpoo'.*copg.*dpo.*ipo.*robust_dpo.*simpo"):
        pl.get("dpoo")
    with pytest.raises(ValueError, match="known losses"):
        pl.check_lengths("kto", [1.0], [1.0])
    assert pl.get("ipo") is pl.LOSSES["ipo"] and pl.get("ipo", per_pair=True) is pl.PER_PAIR["ipo"]


def test_check_lengths_refuses_unequal_lengths_where_the_loss_sums():
    assert pl.NEEDS_EQUAL_LENGTHS == set(pl.PER_PAIR) - {"simpo"}
    pl.check_lengths("dpo", [5.0, 5.0], [5.0, 5.0])
    pl.check_lengths("simpo", [5.0, 3.0], [5.0, 7.0])
    with pytest.raises(ValueError, match=r"'dpo'.*1 pair\(s\) differ.*pair 1, 3 vs 7.*segment_len.*'simpo'"):
        pl.check_lengths("dpo", [5.0, 3.0], [5.0, 7.0])
    with pytest.raises(ValueError, match="before jit"):
        jax.jit(lambda w: pl.check_lengths("ipo", w, w) or w)(jnp.ones(2))
    with pytest.raises(ValueError, match="both reward_chosen and reward_rejected"):
        pl.LOSSES["copg"](batch(reward_chosen=REW_W), PARAMS)


# ----------------------------------------------------------------------------- the bandit: CoPG's toy claim

K = 5
R = np.array([1.0, 0.6, 0.0, -0.4, 0.3])              # known rewards
REF_LOGITS = np.array([0.0, -1.0, 1.2, 0.5, -0.3])     # pi_ref = softmax
BEHAVIOUR = np.array([0.1, 0.15, 0.4, 0.25, 0.1])      # mu: draws the pairs, neither pi_ref nor pi*
BETAS = np.array([0.25, 0.5, 1.0])
COPG_TV, DPO_TV = 0.02, 0.15


def optimum(beta):
    z = np.log(np.exp(REF_LOGITS - REF_LOGITS.max()) / np.exp(REF_LOGITS - REF_LOGITS.max()).sum()) + R / beta
    p = np.exp(z - z.max())
    return p / p.sum()


def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def _train(loss_name, pairs_i, pairs_j, rewards, beta, steps=1500, lr=0.05):
    """Softmax policy (logits = parameters, started at pi_ref) trained by adam on one loss,
    full batch, inside one lax.scan."""
    ref_logp = jax.nn.log_softmax(jnp.asarray(REF_LOGITS, jnp.float32))
    params = pl.loss_params(beta=beta)
    ones = jnp.ones(pairs_i.shape, jnp.float32)
    loss_fn = pl.LOSSES[loss_name]

    def loss(logits):
        logp = jax.nn.log_softmax(logits)
        b = pl.PairBatch(logp[pairs_i], logp[pairs_j], ref_logp[pairs_i], ref_logp[pairs_j], ones, ones,
                         None if rewards is None else rewards[pairs_i],
                         None if rewards is None else rewards[pairs_j])
        return loss_fn(b, params)

    opt = optax.adam(lr)

    def step(carry, _):
        logits, state = carry
        g = jax.grad(loss)(logits)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(logits, updates), state), None

    logits0 = jnp.asarray(REF_LOGITS, jnp.float32)
    (logits, _), _ = jax.lax.scan(step, (logits0, opt.init(logits0)), None, length=steps)
    return jax.nn.softmax(logits)


@jax.jit
def bandit_runs(key, betas):
    k1, k2, k3 = jax.random.split(key, 3)
    logits_mu = jnp.log(jnp.asarray(BEHAVIOUR, jnp.float32))
    r = jnp.asarray(R, jnp.float32)
    # CoPG: 256 off-policy pairs (y, y') ~ mu x mu, each with its known rewards
    i, j = jax.random.categorical(k1, logits_mu, shape=(2, 256))
    copg = jax.vmap(lambda beta: _train("copg", i, j, r, beta))(betas)
    # DPO: 4096 pairs ~ mu x mu labelled by Bradley-Terry on the rewards, P(a > b) = sigmoid(r_a - r_b)
    a, b = jax.random.categorical(k2, logits_mu, shape=(2, 4096))
    a_wins = jax.random.uniform(k3, a.shape) < jax.nn.sigmoid(r[a] - r[b])
    w, l = jnp.where(a_wins, a, b), jnp.where(a_wins, b, a)
    dpo = jax.vmap(lambda beta: _train("dpo", w, l, None, beta))(betas)
    return copg, dpo


def test_copg_recovers_the_kl_regularised_optimum_from_off_policy_pairs_and_dpo_moves_towards_it():
    copg, dpo = map(np.asarray, bandit_runs(jax.random.PRNGKey(0), jnp.asarray(BETAS, jnp.float32)))
    ref = optimum(np.inf)
    report = []
    for n, beta in enumerate(BETAS):
        star = optimum(beta)
        start, tv_copg, tv_dpo = tv(ref, star), tv(copg[n], star), tv(dpo[n], star)
        report.append((float(beta), round(start, 4), float(f"{tv_copg:.1e}"), round(tv_dpo, 4)))
        assert start > 0.15, (beta, start)            # pi_ref is far from pi*: the test can fail
        assert tv_copg < COPG_TV, report
        assert tv_dpo < DPO_TV and tv_dpo < start / 2, report
    print("beta, TV(pi_ref, pi*), TV(CoPG, pi*), TV(DPO, pi*):", report)
