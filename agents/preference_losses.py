"""Direct preference-optimisation losses over pairs of trajectory segments.

Naming: "DPO" in this module means *Direct* Preference Optimisation
(Rafailov et al. 2023). It has nothing to do with `--objective dpo`, which is
*Discovered* Policy Optimisation, a PPO drift (`agents/objectives.py`). The
command-line family here is "prefopt"; the PPO plug-ins are "objective".

Inputs: a `PairBatch`, one entry per pair, already ordered chosen/rejected
(`pairs_from_label` orders a first/second pair by a hard label):

    logp_chosen, logp_rejected          sum over the segment's steps of log pi(a_t | s_t)
    ref_logp_chosen, ref_logp_rejected  the same under the frozen reference policy
    len_chosen, len_rejected            segment lengths in steps (float)
    reward_chosen, reward_rejected      CoPG only; None = the preference as rewards +-COPG_PREF_REWARD
    weight                              optional per-pair weight (a mask for padding pairs); None = 1

With  Delta = logp - ref_logp  (the summed log-ratio of a segment) and
h = Delta_chosen - Delta_rejected, the per-pair losses are

    dpo         softplus(-beta h)                     = -log sigmoid(beta h)
    ipo         (h - 1 / (2 beta))^2                  (Azar et al. 2023; sums, not per-step means)
    slic        max(0, delta - beta h)                (SLiC-HF's calibration hinge, see below)
    cdpo        (1 - eps) softplus(-beta h) + eps softplus(beta h)          (label smoothing)
    robust_dpo  ((1 - eps) softplus(-beta h) - eps softplus(beta h)) / (1 - 2 eps)   (Chowdhury et al. 2024)
    simpo       softplus(-(beta (logp_chosen/len_chosen - logp_rejected/len_rejected) - gamma))   (Meng et al. 2024)
    rpo         dpo + alpha * (-logp_chosen / len_chosen)   (per-step mean NLL of the chosen segment)
    copg        -(1/2) sg[c] (logp_chosen - logp_rejected),
                c = (R_chosen - beta Delta_chosen) - (R_rejected - beta Delta_rejected)   (Flet-Berliac et al. 2024)

and `LOSSES[name](batch, params)` is their (weighted) mean over the batch.
Every coefficient (beta, delta, gamma, alpha, eps) is a traced float in
`LossParams`, so a sweep is a vmap; nothing here is static but the batch size.

Notes on the choices:
- SLiC. SLiC-HF (Zhao et al. 2023) calibrates with max(0, delta - log pi(w) +
  log pi(l)) plus a regulariser towards the reference. Here the hinge is
  applied to the reference-adjusted margin and scaled by beta, as in Tang et
  al.'s GPO family (and TRL's "hinge"): max(0, delta - beta h), margin
  coefficient delta = `slic_margin` (default 1, which is GPO's hinge); the
  reference term takes the place of SLiC-HF's separate regulariser. The
  gradient is zero once beta h > delta.
- Noise rate eps. cDPO is defined for any eps (at 0.5 it is flat in h).
  Robust DPO divides by 1 - 2 eps: for eps >= 0.5 (or eps < 0) the value
  cannot be raised as an error inside a traced program, so `robust_dpo`
  returns NaN there (the divergence watch then names the member) instead of
  clamping eps silently. `check_noise_rate` raises ValueError on concrete
  values before compiling. Robust DPO is unbiased: its expectation over
  eps-flipped labels is the clean DPO loss.
- RPO. The NLL term is the per-step mean, -logp_chosen / len_chosen (as in
  Pang et al. 2024's iterative RPO, which normalises by the chosen length), so
  alpha does not scale with segment length.
- CoPG. For a pair (y, y') with rewards R, the regularised reward is
  R_beta(y) = R(y) - beta (log pi(y) - log pi_ref(y)). CoPG's gradient is
  (1/2) (R_beta(y) - R_beta(y')) (grad log pi(y) - grad log pi(y')), with the
  coefficient held fixed; `copg` is the surrogate with that gradient (its value
  is not a quantity to monitor). It equals the gradient of the squared form
  (1 / (4 beta)) c^2, `copg_squared`, whose value is zero at the fixed point
  beta (Delta(y) - Delta(y')) = R(y) - R(y'), i.e. pi* proportional to
  pi_ref exp(R / beta), from pairs drawn by any behaviour policy (no
  importance weights). With preference labels only (rewards None), the
  chosen segment gets +COPG_PREF_REWARD = +1/4 and the rejected -1/4: a reward
  gap of 1/2, under which CoPG's gradient is beta/4 times IPO's (the paper's
  "CoPG generalises IPO"). Pass rewards to use any other scale.

Equal lengths. None of the formulas needs equal segment lengths as algebra.
But the sum-based losses (`NEEDS_EQUAL_LENGTHS`: all but simpo) compare summed
log-ratios, the DPO reparametrisation of a Bradley-Terry model over *summed*
segment returns, which this project's oracle defines for segments of one
length (envs/preferences.py): at unequal lengths every extra step adds its
log-ratio, so length is confounded with quality. `check_lengths` refuses
unequal lengths for them before compiling; SimPO averages per step (its
answer to length bias) and is exempt.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

COPG_PREF_REWARD = 0.25
ROBUST_EPS_MAX = 0.5   # robust_dpo needs 0 <= eps < ROBUST_EPS_MAX


class PairBatch(NamedTuple):
    logp_chosen: jax.Array         # [P] summed log pi over the chosen segment
    logp_rejected: jax.Array       # [P]
    ref_logp_chosen: jax.Array     # [P] the same under the reference policy
    ref_logp_rejected: jax.Array   # [P]
    len_chosen: jax.Array          # [P] float, steps
    len_rejected: jax.Array        # [P]
    reward_chosen: jax.Array | None = None     # [P] CoPG only (None: +COPG_PREF_REWARD)
    reward_rejected: jax.Array | None = None   # [P] CoPG only (None: -COPG_PREF_REWARD)
    weight: jax.Array | None = None            # [P] per-pair weight (None: 1)


class LossParams(NamedTuple):
    beta: jax.Array          # KL strength / inverse temperature, > 0
    slic_margin: jax.Array   # SLiC hinge margin delta
    simpo_gamma: jax.Array   # SimPO target margin gamma
    rpo_alpha: jax.Array     # RPO's NLL weight alpha
    noise_rate: jax.Array    # cDPO / robust DPO label-flip rate eps


def loss_params(beta=0.1, slic_margin=1.0, simpo_gamma=0.5, rpo_alpha=1.0, noise_rate=0.0) -> LossParams:
    """Float32 leaves; defaults are placeholders, not tuned values."""
    f = lambda x: jnp.asarray(x, jnp.float32)
    return LossParams(f(beta), f(slic_margin), f(simpo_gamma), f(rpo_alpha), f(noise_rate))


# ----------------------------------------------------------------------------- pieces

def log_ratios(b: PairBatch):
    """(Delta_chosen, Delta_rejected): summed log pi - log pi_ref of each segment."""
    return b.logp_chosen - b.ref_logp_chosen, b.logp_rejected - b.ref_logp_rejected


def margin(b: PairBatch):
    """h = Delta_chosen - Delta_rejected; beta * h is DPO's implicit reward margin."""
    d_w, d_l = log_ratios(b)
    return d_w - d_l


def swapped(b: PairBatch) -> PairBatch:
    """The same pairs with chosen and rejected exchanged (the flipped labels)."""
    return PairBatch(b.logp_rejected, b.logp_chosen, b.ref_logp_rejected, b.ref_logp_chosen,
                     b.len_rejected, b.len_chosen, b.reward_rejected, b.reward_chosen, b.weight)


def pairs_from_label(label, logp_first, logp_second, ref_first, ref_second, len_first, len_second,
                     reward_first=None, reward_second=None, weight=None) -> PairBatch:
    """A PairBatch from first/second segments and envs.preferences' labels
    (1 = first preferred; a soft label counts as first preferred when >= 0.5)."""
    first = jnp.asarray(label) >= 0.5
    pick = lambda a, c: (None if a is None else jnp.where(first, a, c))
    other = lambda a, c: (None if a is None else jnp.where(first, c, a))
    return PairBatch(pick(logp_first, logp_second), other(logp_first, logp_second),
                     pick(ref_first, ref_second), other(ref_first, ref_second),
                     pick(len_first, len_second), other(len_first, len_second),
                     pick(reward_first, reward_second), other(reward_first, reward_second), weight)


# ----------------------------------------------------------------------------- per-pair losses

def dpo_per_pair(b: PairBatch, beta):
    return jax.nn.softplus(-beta * margin(b))


def ipo_per_pair(b: PairBatch, beta):
    return (margin(b) - 1.0 / (2.0 * beta)) ** 2


def slic_per_pair(b: PairBatch, beta, delta):
    return jax.nn.relu(delta - beta * margin(b))


def cdpo_per_pair(b: PairBatch, beta, eps):
    h = margin(b)
    return (1.0 - eps) * jax.nn.softplus(-beta * h) + eps * jax.nn.softplus(beta * h)


def robust_dpo_per_pair(b: PairBatch, beta, eps):
    """NaN where eps is outside [0, 0.5) (see the module docstring)."""
    h = margin(b)
    value = ((1.0 - eps) * jax.nn.softplus(-beta * h) - eps * jax.nn.softplus(beta * h)) / (1.0 - 2.0 * eps)
    ok = (eps >= 0.0) & (eps < ROBUST_EPS_MAX)
    return jnp.where(ok, value, jnp.nan)


def simpo_per_pair(b: PairBatch, beta, gamma):
    avg_w = b.logp_chosen / b.len_chosen
    avg_l = b.logp_rejected / b.len_rejected
    return jax.nn.softplus(-(beta * (avg_w - avg_l) - gamma))


def rpo_per_pair(b: PairBatch, beta, alpha):
    return dpo_per_pair(b, beta) + alpha * (-b.logp_chosen / b.len_chosen)


def _copg_rewards(b: PairBatch):
    if (b.reward_chosen is None) != (b.reward_rejected is None):
        raise ValueError("CoPG needs both reward_chosen and reward_rejected, or neither (then the preference "
                         f"becomes rewards +-{COPG_PREF_REWARD})")
    if b.reward_chosen is None:
        ones = jnp.ones_like(b.logp_chosen)
        return COPG_PREF_REWARD * ones, -COPG_PREF_REWARD * ones
    return b.reward_chosen, b.reward_rejected


def copg_coefficient(b: PairBatch, beta):
    """c = R_beta(chosen) - R_beta(rejected), R_beta(y) = R(y) - beta (log pi(y) - log pi_ref(y))."""
    r_w, r_l = _copg_rewards(b)
    d_w, d_l = log_ratios(b)
    return (r_w - beta * d_w) - (r_l - beta * d_l)


def copg_per_pair(b: PairBatch, beta):
    c = jax.lax.stop_gradient(copg_coefficient(b, beta))
    return -0.5 * c * (b.logp_chosen - b.logp_rejected)


def copg_squared_per_pair(b: PairBatch, beta):
    """(1 / (4 beta)) c^2: the same gradient as `copg_per_pair`, a value that is 0 at the fixed point."""
    return copg_coefficient(b, beta) ** 2 / (4.0 * beta)


PER_PAIR = {
    "dpo": lambda b, p: dpo_per_pair(b, p.beta),
    "ipo": lambda b, p: ipo_per_pair(b, p.beta),
    "slic": lambda b, p: slic_per_pair(b, p.beta, p.slic_margin),
    "cdpo": lambda b, p: cdpo_per_pair(b, p.beta, p.noise_rate),
    "robust_dpo": lambda b, p: robust_dpo_per_pair(b, p.beta, p.noise_rate),
    "simpo": lambda b, p: simpo_per_pair(b, p.beta, p.simpo_gamma),
    "rpo": lambda b, p: rpo_per_pair(b, p.beta, p.rpo_alpha),
    "copg": lambda b, p: copg_per_pair(b, p.beta),
}
NEEDS_EQUAL_LENGTHS = frozenset(PER_PAIR) - {"simpo"}


def batch_mean(values, weight=None):
    """The mean over pairs; with weights, sum(w * l) / sum(w) (0 when every weight is 0)."""
    if weight is None:
        return jnp.mean(values)
    total = jnp.sum(weight)
    return jnp.sum(weight * values) / jnp.where(total > 0, total, 1.0)


def _mean_loss(per_pair):
    def loss(b: PairBatch, params: LossParams):
        return batch_mean(per_pair(b, params), b.weight)
    return loss


LOSSES = {name: _mean_loss(fn) for name, fn in PER_PAIR.items()}


# ----------------------------------------------------------------------------- checks

def get(name: str, per_pair: bool = False):
    """LOSSES[name] ((batch, params) -> mean loss), or PER_PAIR[name] with per_pair=True."""
    table = PER_PAIR if per_pair else LOSSES
    if name not in table:
        raise ValueError(f"unknown preference loss {name!r}: known losses are {', '.join(sorted(table))}")
    return table[name]


def _concrete(x, what):
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"{what} is traced: call this check on concrete arrays, before jit")
    return np.asarray(x, dtype=np.float64)


def check_lengths(name: str, len_chosen, len_rejected):
    """Raises ValueError, naming the fix, when `name` needs equal segment
    lengths (NEEDS_EQUAL_LENGTHS) and some pair's differ. Call before compiling."""
    get(name)
    if name not in NEEDS_EQUAL_LENGTHS:
        return
    w, l = _concrete(len_chosen, "len_chosen"), _concrete(len_rejected, "len_rejected")
    bad = np.flatnonzero(np.ravel(w != l))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"loss {name!r} compares summed log-ratios, so both segments of a pair need the same "
                         f"length; {bad.size} pair(s) differ (first: pair {i}, {np.ravel(w)[i]:g} vs "
                         f"{np.ravel(l)[i]:g} steps): cut all segments to one segment_len "
                         f"(envs.preferences.make_pairs does), or use 'simpo', which normalises by length")


def check_noise_rate(name: str, noise_rate):
    """Raises ValueError for a concrete eps (scalar or sweep) the loss cannot take."""
    get(name)
    if name not in ("cdpo", "robust_dpo"):
        return
    for eps in np.ravel(_concrete(noise_rate, "noise_rate")):
        if not 0.0 <= eps <= 0.5 or (name == "robust_dpo" and eps >= ROBUST_EPS_MAX):
            limit = "[0, 0.5)" if name == "robust_dpo" else "[0, 0.5]"
            raise ValueError(f"noise_rate={eps:g} is outside {limit} for {name!r}: it is the label-flip "
                             f"probability; give a value in {limit}"
                             + (" (robust DPO divides by 1 - 2 eps)" if name == "robust_dpo" else ""))
