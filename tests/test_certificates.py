"""Policy-smoothing certificates: the Clopper-Pearson bound against scipy, the
whole bound against an independent reference (binomial tail inversion, the
mean of the pessimistic return distribution) and closed forms, and its
coverage: exactly on a two-point return distribution, by Monte Carlo on a
continuous one whose true value is known."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from robustness import certificates
from src.config import ConfigError


def binomial_lower(k, n, level):
    """The p at which P(Bin(n, p) >= k) = level (0 for k = 0): the one-sided
    lower confidence bound, by root finding on the binomial tail (not the Beta
    quantile the certificate uses)."""
    if k == 0:
        return 0.0
    return optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - level, 0.0, 1.0, xtol=1e-12)


def reference_bound(returns, sigma, budget, r_min, r_max, num_thresholds, alpha):
    """The mean of the pessimistic return distribution: on the grid t_0 = r_min
    < t_1 < ... < t_T = r_max, P(R' >= t_i) is the budget-shifted lower
    confidence bound on P(R > t_i) from the sorted sample; E[R'] as a sum over
    its probability masses."""
    r = np.sort(np.clip(np.asarray(returns, float), r_min, r_max))
    n = len(r)
    grid = np.linspace(r_min, r_max, num_thresholds + 1)
    survival = [1.0]
    for t in grid[1:]:
        k = n - np.searchsorted(r, t, side="right")           # how many returns exceed t
        p = binomial_lower(k, n, alpha / num_thresholds)
        survival.append(stats.norm.cdf(stats.norm.ppf(p) - budget / sigma) if p > 0 else 0.0)
    survival.append(0.0)
    mass = -np.diff(survival)                                   # P(R' = t_i), i = 0..T
    assert np.all(mass >= -1e-12) and abs(mass.sum() - 1) < 1e-12
    return float(np.dot(mass, grid))


def test_clopper_pearson_lower_bound_matches_the_binomial_tail_and_scipy():
    cases = [(1, 10, 0.05), (5, 10, 0.05), (37, 50, 1e-3), (50, 50, 0.01), (99, 100, 1e-4), (0, 20, 0.05),
             (200, 1000, 0.05 / 100)]
    k, n, alpha = (np.array(c, np.float32) for c in zip(*cases))
    ours = np.asarray(jax.jit(certificates.clopper_pearson_lower)(k, n, alpha))   # all cases in one program
    for (ki, ni, ai), got in zip(cases, ours):
        expected = binomial_lower(ki, ni, ai)
        np.testing.assert_allclose(expected, stats.beta.ppf(ai, ki, ni - ki + 1) if ki > 0 else 0.0, rtol=1e-6)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6, err_msg=str((ki, ni, ai)))


def test_thresholds_split_the_range_into_equal_steps_ending_at_its_top():
    # E[R] = r_min + sum_t spacing * P(R > t) needs the thresholds r_min + spacing, ..., r_max
    levels, spacing = certificates.thresholds(-2.0, 8.0, 5)
    np.testing.assert_allclose(levels, [0.0, 2.0, 4.0, 6.0, 8.0])
    assert float(spacing) == 2.0


def test_certified_return_matches_an_independent_reference_and_closed_forms():
    # one shape of returns and one number of thresholds throughout: one compiled program
    rng = np.random.default_rng(0)
    returns = np.concatenate([np.full(30, 500.0), rng.uniform(0, 500, 70)])
    for sigma, budget in [(0.2, 0.0), (0.2, 0.1), (0.5, 0.3), (1.0, 1.0)]:
        ours = float(certificates.certified_return(returns, sigma, budget, 0.0, 500.0, 100, 0.05))
        ref = reference_bound(returns, sigma, budget, 0.0, 500.0, 100, 0.05)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
    # every return at r_max: each threshold below r_max is exceeded n times out
    # of n, whose one-sided lower bound solves p^n = alpha / T; the last
    # threshold (r_max itself) is never exceeded
    n, alpha, sigma, T = 100, 0.05, 0.25, 100
    for budget in (0.0, 0.1, 0.4):
        p = (alpha / T) ** (1.0 / n)
        expected = -100.0 + 300.0 * (T - 1) / T * stats.norm.cdf(stats.norm.ppf(p) - budget / sigma)
        got = certificates.certified_return(np.full(n, 200.0), sigma, budget, -100.0, 200.0, T, alpha)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)
        # every return at r_min: nothing is certified above it
        at_min = certificates.certified_return(np.full(n, -100.0), sigma, budget, -100.0, 200.0, T, alpha)
        assert float(at_min) == -100.0


def test_coverage_exact_on_a_two_point_and_by_monte_carlo_on_a_continuous_return_distribution():
    """The certificate may fail (exceed the value it bounds) with probability at most alpha.

    Under budget B the worst-case expected return of the smoothed policy is
    V(B) = int Phi(Phi^-1(S(t)) - B / sigma) dt over [r_min, r_max], S the true
    survival function P(R > t) (V(0) = E[R]); the certificate bounds V_T(B) <=
    V(B), the same integrand's right-end sum over its T thresholds, so its
    failures are counted against V_T(B) (the sharper test).

    Two-point: R = 500 with probability p, else 0. Every threshold below 500
    sees the same count k ~ Bin(n, p), so the certificate fails exactly when
    that one lower confidence bound at level alpha / T exceeds p: its
    probability is computed exactly by enumerating k. Continuous: R = 500 *
    Beta(3, 1.5); the share of failing data sets, up to binomial sampling
    error. Both in one compiled program (one shape of data)."""
    n, T, alpha, sigma, p, sets = 50, 100, 0.05, 0.2, 0.5, 400
    two_point = 500.0 * (np.arange(n)[None, :] < np.arange(n + 1)[:, None])       # row k: k returns of 500
    weights = stats.binom.pmf(np.arange(n + 1), n, p)
    dist = stats.beta(3.0, 1.5, scale=500.0)
    data = jnp.asarray(np.concatenate([two_point, dist.rvs(size=(sets, n), random_state=np.random.default_rng(0))]),
                       jnp.float32)
    grid = np.linspace(0.0, 500.0, T + 1)[1:]
    allowed = stats.binom.ppf(0.999, sets, alpha) / sets
    run = jax.jit(jax.vmap(lambda r, b: certificates.certified_return(r, sigma, b, 0.0, 500.0, T, alpha),
                           in_axes=(0, None)))
    for budget in (0.0, 0.1):
        shift = lambda s: stats.norm.cdf(stats.norm.ppf(s) - budget / sigma)  # noqa: E731
        bounds = np.asarray(run(data, budget))
        exact, continuous = bounds[:n + 1], bounds[n + 1:]

        value = 500.0 * (T - 1) / T * shift(p)            # V_T(B) of the two-point distribution
        assert np.all(np.abs(exact - value) > 1e-3)        # no k on the edge of float32 rounding
        fails = float(weights[exact > value].sum())
        # 4.7e-4 here; 0.032 with the union over the thresholds dropped, about 0.5
        # without any confidence correction
        assert 1e-4 < fails <= alpha / T, (budget, fails)

        value = 500.0 / T * shift(dist.sf(grid)).sum()    # V_T(B) of the continuous distribution
        worst = integrate.quad(lambda t: shift(dist.sf(t)), 0.0, 500.0, limit=200)[0]   # V(B)
        assert value <= worst
        if budget == 0.0:
            np.testing.assert_allclose(worst, dist.mean(), rtol=1e-6)
        fails = float((continuous > value).mean())
        # without the confidence correction about half the data sets fail
        assert fails <= allowed, (budget, fails, allowed)
        assert continuous.mean() > 0.6 * value              # and the bound is not vacuous


def test_bound_is_below_the_sample_mean_and_falls_as_the_budget_grows():
    returns = np.random.default_rng(1).uniform(100, 500, 100)
    bounds = np.array([float(certificates.certified_return(returns, 0.2, b, 0.0, 500.0, 100, 0.05))
                       for b in np.linspace(0.0, 1.0, 11).tolist()])
    assert bounds[0] <= returns.mean()
    assert bounds[0] > 0.8 * returns.min()    # with no budget it is a mild discount of the data
    assert np.all(np.diff(bounds) < 0) and bounds[-1] < 0.05 * bounds[0]
    # more noise (larger sigma) certifies more at the same budget (for the same returns)
    wide = float(certificates.certified_return(returns, 1.0, 0.5, 0.0, 500.0, 100, 0.05))
    assert wide > bounds[5]


def test_bad_certificate_input_fails_clearly():
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        certificates.check(0.0, [0.5])
    with pytest.raises(ConfigError, match="budget must be >= 0"):
        certificates.check(0.2, [0.5, -1.0])
    with pytest.raises(ConfigError, match="r_max > r_min"):
        certificates.check(0.2, [0.5], r_min=1.0, r_max=1.0)
