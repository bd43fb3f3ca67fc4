"""Policy-smoothing certificate arithmetic against scipy.stats."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from src import certificates
from src.config import ConfigError


def reference_bound(returns, sigma, budget, r_min, r_max, num_thresholds, alpha):
    """The same bound in plain numpy/scipy, threshold by threshold."""
    returns = np.clip(np.asarray(returns, float), r_min, r_max)
    spacing = (r_max - r_min) / num_thresholds
    total = r_min
    for i in range(1, num_thresholds + 1):
        t = r_min + i * spacing
        k, n = int(np.sum(returns > t)), len(returns)
        p = stats.beta.ppf(alpha / num_thresholds, k, n - k + 1) if k > 0 else 0.0
        total += spacing * (stats.norm.cdf(stats.norm.ppf(p) - budget / sigma) if p > 0 else 0.0)
    return total


@pytest.mark.parametrize("k,n,alpha", [(1, 10, 0.05), (5, 10, 0.05), (37, 50, 1e-3), (50, 50, 0.01),
                                       (99, 100, 1e-4), (0, 20, 0.05), (200, 1000, 0.05 / 100)])
def test_clopper_pearson_lower_bound_matches_scipy(k, n, alpha):
    expected = stats.beta.ppf(alpha, k, n - k + 1) if k > 0 else 0.0
    np.testing.assert_allclose(float(certificates.clopper_pearson_lower(k, n, alpha)), expected, rtol=2e-5, atol=2e-6)


def test_certified_return_matches_a_scipy_reference_on_known_returns():
    rng = np.random.default_rng(0)
    returns = np.concatenate([np.full(30, 500.0), rng.uniform(0, 500, 70)])
    for sigma, budget, thresholds in [(0.2, 0.0, 100), (0.2, 0.1, 100), (0.5, 0.3, 20), (1.0, 1.0, 100)]:
        ours = float(certificates.certified_return(returns, sigma, budget, 0.0, 500.0, thresholds, 0.05))
        ref = reference_bound(returns, sigma, budget, 0.0, 500.0, thresholds, 0.05)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_bound_is_below_the_sample_mean_and_falls_as_the_budget_grows():
    returns = np.random.default_rng(1).uniform(100, 500, 200)
    budgets = jnp.linspace(0.0, 1.0, 11)
    bounds = np.asarray(jax.vmap(lambda b: certificates.certified_return(returns, 0.2, b, 0.0, 500.0))(budgets))
    assert bounds[0] <= returns.mean()
    assert bounds[0] > 0.8 * returns.min()    # with no budget it is a mild discount of the data
    assert np.all(np.diff(bounds) < 0) and bounds[-1] < 0.05 * bounds[0]
    # more noise (larger sigma) certifies more at the same budget (for the same returns)
    wide = float(certificates.certified_return(returns, 1.0, 0.5, 0.0, 500.0))
    assert wide > bounds[5]


def test_bad_certificate_input_fails_clearly():
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        certificates.check(0.0, [0.5])
    with pytest.raises(ConfigError, match="budget must be >= 0"):
        certificates.check(0.2, [0.5, -1.0])
    with pytest.raises(ConfigError, match="r_max > r_min"):
        certificates.check(0.2, [0.5], r_min=1.0, r_max=1.0)
