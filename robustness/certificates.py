"""Policy-smoothing certificates (Kumar et al. 2022): a lower bound on the
expected return of a Gaussian-smoothed policy under any observation attack
whose perturbations have total L2 norm at most B over an episode.

From m episodes with N(0, sigma^2) observation noise, estimate for T
thresholds t_i the probability p_i = P(R > t_i), take one-sided
Clopper-Pearson lower bounds at level alpha/T (a union bound over the
thresholds), and shift each through the Gaussian: an adversary with budget B
can lower P(R > t) to no less than Phi(Phi^-1(p) - B/sigma). Since
E[R] = r_min + integral of P(R > t) over [r_min, r_max] and P(R > t) falls in
t, summing each interval's right-end probability lower-bounds the integral:

    bound(B) = r_min + sum_i spacing * Phi(Phi^-1(p_i_lb) - B / sigma),  t_i = r_min + i * spacing.

Pure JAX (the Beta quantile by bisection on the regularised incomplete
beta), so it runs jitted and vmapped over budgets; the tests check it
against scipy.stats.
"""
import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc, ndtri
from jax.scipy.stats import norm

from src.config import ConfigError


def beta_ppf(q, a, b, iterations: int = 60):
    """Quantile of Beta(a, b) at q, by bisection (betainc is increasing in x)."""
    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = betainc(a, b, mid) < q
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (jnp.zeros_like(q), jnp.ones_like(q)))
    return 0.5 * (lo + hi)


def clopper_pearson_lower(successes, trials, alpha):
    """One-sided (1 - alpha) lower confidence bound on a binomial proportion:
    the alpha-quantile of Beta(k, n - k + 1), and 0 when k = 0."""
    k = jnp.asarray(successes, jnp.float32)
    n = jnp.asarray(trials, jnp.float32)
    safe_k = jnp.maximum(k, 1.0)
    return jnp.where(k > 0, beta_ppf(jnp.asarray(alpha, jnp.float32) * jnp.ones_like(k), safe_k, n - k + 1.0), 0.0)


def thresholds(r_min, r_max, num_thresholds: int):
    spacing = (r_max - r_min) / num_thresholds
    return r_min + spacing * jnp.arange(1, num_thresholds + 1, dtype=jnp.float32), spacing


@functools.partial(jax.jit, static_argnames=("num_thresholds",))
def certified_return(returns, sigma, budget, r_min, r_max, num_thresholds: int = 100, alpha: float = 0.05):
    """Lower bound (holding with probability >= 1 - alpha) on the smoothed
    policy's expected return under any attack of total L2 norm <= budget.

    returns: [m] returns of episodes run with N(0, sigma^2) observation noise.
    Returns are clipped into [r_min, r_max], the range the bound integrates over."""
    returns = jnp.clip(jnp.asarray(returns, jnp.float32), r_min, r_max)
    ts, spacing = thresholds(r_min, r_max, num_thresholds)
    counts = jnp.sum(returns[None, :] > ts[:, None], axis=1)
    p_lower = clopper_pearson_lower(counts, returns.shape[0], alpha / num_thresholds)
    shifted = norm.cdf(ndtri(jnp.clip(p_lower, 0.0, 1.0)) - budget / sigma)
    # Phi^-1(0) = -inf -> Phi(-inf) = 0; Phi^-1(1) cannot occur (k < n + 1)
    shifted = jnp.where(p_lower > 0, shifted, 0.0)
    return r_min + spacing * jnp.sum(shifted)


def check(sigma, budgets, num_thresholds=100, alpha=0.05, r_min=0.0, r_max=1.0):
    if not sigma > 0:
        raise ConfigError(f"--sigma must be > 0, got {sigma}")
    for b in budgets:
        if not b >= 0:
            raise ConfigError(f"a certificate budget must be >= 0, got {b}")
    if num_thresholds < 1 or not 0 < alpha < 1:
        raise ConfigError("need num_thresholds >= 1 and 0 < alpha < 1")
    if not r_max > r_min:
        raise ConfigError(f"need r_max > r_min, got [{r_min}, {r_max}]")
