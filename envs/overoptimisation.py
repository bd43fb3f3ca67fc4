"""Numerics of reward-model overoptimisation (Gao et al. 2022): best-of-n and
its KL, the functional forms of gold reward against d = sqrt(KL), and KL
divergences between policies.

best_of_n and the fits run in float64 NumPy on results pulled off the device;
the KL functions are jnp and run inside a jitted program.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln


# ----------------------------------------------------------------------------- best-of-n

def bon_kl(n):
    """KL(best-of-n || base) = log n - (n - 1) / n (for a continuous proxy
    score; an upper bound with ties). n >= 1, scalar or array."""
    n = np.asarray(n, np.float64)
    if np.any(n < 1):
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return np.log(n) - (n - 1.0) / n


def _selection_weights(m: int, n: int):
    """P(the sample of rank i, 1-indexed ascending, is the best of a uniform
    n-subset of m) = C(i - 1, n - 1) / C(m, n), in log space."""
    i = np.arange(1, m + 1, dtype=np.float64)
    weights = np.zeros(m)
    ok = i >= n
    log_w = (gammaln(i[ok]) - gammaln(n) - gammaln(i[ok] - n + 1)
             - (gammaln(m + 1) - gammaln(n + 1) - gammaln(m - n + 1)))
    weights[ok] = np.exp(log_w)
    return weights


def best_of_n(proxy_scores, gold_scores, n):
    """The expected gold score of the sample with the highest proxy score among
    n drawn uniformly without replacement from the M given, computed exactly:
    sum over ranks of C(i - 1, n - 1) / C(M, n) times the gold score of rank i
    (the unbiased order-statistics estimator of Gao et al. 2022, appendix).

    Ties in the proxy score: the best of a subset is picked uniformly among its
    tied samples, so each tie group contributes its total selection probability
    times its mean gold score. The result is deterministic and does not depend
    on the order of the inputs. `n` may be an int or a sequence (an array of
    results). Expected proxy score: best_of_n(proxy, proxy, n)."""
    proxy = np.asarray(proxy_scores, np.float64).ravel()
    gold = np.asarray(gold_scores, np.float64).ravel()
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy_scores and gold_scores differ in length ({proxy.size} vs {gold.size}): "
                         f"give one proxy and one gold score per sample")
    m = proxy.size
    ns = np.atleast_1d(np.asarray(n))
    if not np.issubdtype(ns.dtype, np.integer):
        raise ValueError(f"n must be an integer (or integers), got {n!r}")
    if m < 1 or np.any(ns < 1) or np.any(ns > m):
        raise ValueError(f"best-of-n needs 1 <= n <= M = {m} samples, got n = {n}: draw at least max(n) "
                         f"samples, or lower n")
    order = np.argsort(proxy, kind="stable")
    proxy, gold = proxy[order], gold[order]
    # tie groups of the sorted proxy scores, and each group's mean gold
    starts = np.flatnonzero(np.r_[True, proxy[1:] != proxy[:-1]])
    group = np.cumsum(np.r_[True, proxy[1:] != proxy[:-1]]) - 1
    group_gold = np.add.reduceat(gold, starts) / np.diff(np.r_[starts, m])
    results = []
    for k in ns:
        group_weight = np.bincount(group, weights=_selection_weights(m, int(k)), minlength=starts.size)
        results.append(float(np.dot(group_weight, group_gold)))
    return results[0] if np.ndim(n) == 0 else np.asarray(results)


# ----------------------------------------------------------------------------- functional forms

class Fit(NamedTuple):
    alpha: float
    beta: float
    r2: float          # 1 - SS_res / SS_tot about the mean of `gold`
    d_peak: float      # argmax of the fitted curve over d > 0 (nan where it has none); beyond max(d) it is an
                       # extrapolation, not an observed hump
    r_peak: float      # the fitted curve's value there (nan where none)


def _least_squares(columns, gold):
    design = np.stack(columns, axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gold, rcond=None)
    residual = gold - design @ np.array([alpha, beta])
    total = np.sum((gold - gold.mean()) ** 2)
    r2 = 1.0 - np.sum(residual ** 2) / total if total > 0 else (1.0 if np.allclose(residual, 0) else 0.0)
    return float(alpha), float(beta), float(r2)


def _curve_input(d, gold):
    d = np.asarray(d, np.float64).ravel()
    gold = np.asarray(gold, np.float64).ravel()
    if d.shape != gold.shape:
        raise ValueError(f"d and gold differ in length ({d.size} vs {gold.size}): give one gold value per d")
    if d.size < 2:
        raise ValueError(f"fitting two coefficients needs at least 2 points, got {d.size}")
    if np.any(d < 0) or not np.all(np.isfinite(d)):
        raise ValueError("d = sqrt(KL) must be finite and >= 0: pass sqrt of the KL, not a log or a difference")
    return d, gold


def fit_bon(d, gold) -> Fit:
    """Least squares of R(d) = d (alpha - beta d) (Gao et al.'s best-of-n
    form), with d = sqrt(KL) and `gold` measured relative to the reference
    policy's (R(0) = 0). Peak at d* = alpha / (2 beta), R* = alpha^2 / (4
    beta), where alpha > 0 and beta > 0."""
    d, gold = _curve_input(d, gold)
    alpha, beta, r2 = _least_squares([d, -d * d], gold)
    if alpha > 0 and beta > 0:
        return Fit(alpha, beta, r2, alpha / (2 * beta), alpha * alpha / (4 * beta))
    return Fit(alpha, beta, r2, float("nan"), float("nan"))


def fit_rl(d, gold) -> Fit:
    """Least squares of R(d) = d (alpha - beta log d) (Gao et al.'s RL form),
    gold relative to the reference policy's; points at d = 0 count with the
    limit R(0) = 0. Peak at d* = exp(alpha / beta - 1), R* = beta d*, where
    beta > 0."""
    d, gold = _curve_input(d, gold)
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    alpha, beta, r2 = _least_squares([d, -d_log_d], gold)
    if beta > 0:
        d_peak = float(np.exp(alpha / beta - 1.0))
        return Fit(alpha, beta, r2, d_peak, beta * d_peak)
    return Fit(alpha, beta, r2, float("nan"), float("nan"))


# ----------------------------------------------------------------------------- KL divergences

class TurnDown(NamedTuple):
    peak: int            # index of the mean curve's highest point
    rise: float          # mean over seeds of gold at the peak minus gold at the first point
    rise_se: float       # its standard error, paired by seed
    drop: float          # mean over seeds of gold at the peak minus gold at the end
    drop_se: float       # its standard error, paired by seed
    significant: bool    # drop > 2 drop_se (and the peak is not the last point)
    hump: bool           # and rise > 2 rise_se: gold rose first, then fell


def _paired(differences):
    differences = np.asarray(differences, np.float64)
    se = float(differences.std(ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else float("inf")
    return float(differences.mean()), se


def turn_down(gold) -> TurnDown:
    """Whether a gold curve [points, seeds] falls after its peak, and whether
    it rose to it. The peak is the mean curve's highest point; the rise from
    the first point and the drop to the last are taken per seed, so the
    seeds' different levels (their own reference and reward model) cancel,
    and their standard errors are over seeds. The peak is chosen on the same
    data, which biases both upwards a little."""
    gold = np.asarray(gold, np.float64)
    peak = int(np.argmax(gold.mean(axis=1)))
    rise, rise_se = _paired(gold[peak] - gold[0])
    drop, drop_se = _paired(gold[peak] - gold[-1])
    significant = bool(peak < len(gold) - 1 and drop > 2 * drop_se)
    return TurnDown(peak, rise, rise_se, drop, drop_se, significant, bool(significant and peak > 0
                                                                          and rise > 2 * rise_se))


def kl_categorical(logits_p, logits_q):
    """KL(p || q) of categoricals given by logits, over the last axis."""
    logp = jax.nn.log_softmax(jnp.asarray(logits_p, jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(jnp.asarray(logits_q, jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_gaussian(mean_p, logstd_p, mean_q, logstd_q):
    """KL(p || q) of diagonal Gaussians, summed over the last axis."""
    var_p, var_q = jnp.exp(2.0 * logstd_p), jnp.exp(2.0 * logstd_q)
    per_dim = logstd_q - logstd_p + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return jnp.sum(per_dim, axis=-1)


def kl_from_samples(logp, logq):
    """KL(p || q) estimated from actions sampled from p: the mean of log p(a) -
    log q(a) (unbiased; per-sample values can be negative). With rollouts of
    pi, logp = log pi(a|s) and logq = log pi_ref(a|s) give KL(pi || pi_ref)
    per step, averaged over the visited states."""
    return jnp.mean(jnp.asarray(logp, jnp.float32) - jnp.asarray(logq, jnp.float32))
