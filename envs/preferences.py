"""Synthetic preferences over trajectory segments (Christiano et al. 2017's
simulated oracle): segments cut from rollouts, paired, and labelled by the
Bradley-Terry probability of their gold returns, with label noise.

Shapes and conventions
- A `Segments` holds per-step arrays with leading [N, L] (N segments of L
  steps). Rollouts go in as a `Segments` with leading [num_traj, T] (one row
  per environment, time second: transpose a learner's [T, num_envs] rollout
  with `jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), ...)`). Rollouts are
  fixed-length streams of an auto-resetting environment, so a segment may span
  an episode end; `terminated` marks it, and gold and learned returns both sum
  over all L steps, so the comparison stays consistent.
- The gold return of a segment is the undiscounted sum of `gold` over its L
  steps. The oracle's probability that the first segment is preferred is
  sigmoid((G1 - G2) / temperature); at temperature 0 it is the limit: 1, 0,
  or 0.5 on an exact tie.
- A label is 1.0 when the first segment is preferred and 0.0 when the second
  is. It is drawn from Bernoulli(gold_prob), so at temperature 0 it is the
  deterministic gold preference (a fair coin on exact ties), and then flipped
  with probability `label_noise`. `Pairs.gold_prob` is the oracle's
  probability before the flip.
- `temperature` and `label_noise` are traced (a sweep is a vmap); sizes
  (segment_len, number of segments and pairs) are static. Bad sizes raise
  ValueError at trace time, before anything compiles; `validate` checks the
  values a command line gets, traced ones included, before any tracing.
"""
import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.rewards import Transition

# A bootstrapped ensemble needs at least this many training pairs per member
# (each member resamples all pairs with replacement; with fewer, the
# resamples are tiny and the members mostly fit duplicates).
MIN_PAIRS_PER_MEMBER = 2


class Segments(NamedTuple):
    obs: jax.Array          # [N, L, obs_dim]
    action: jax.Array       # [N, L] int (discrete) or [N, L, act_dim] float (continuous)
    next_obs: jax.Array     # [N, L, obs_dim], the real next observation (final_observation at episode ends)
    gold: jax.Array         # [N, L] gold reward of each step
    terminated: jax.Array   # [N, L] bool


class Pairs(NamedTuple):
    first: Segments
    second: Segments
    label: jax.Array        # [P] float32: 1.0 = first preferred, 0.0 = second (soft labels in [0, 1] also accepted)
    gold_prob: jax.Array    # [P] the oracle's P(first preferred) before label noise


# ----------------------------------------------------------------------------- checks

def _is_traced(x):
    return isinstance(x, jax.core.Tracer)


def _values(x):
    """The concrete values of a scalar or sequence (a sweep), or () when traced."""
    if _is_traced(x):
        return ()
    return [float(v) for v in np.ravel(np.asarray(x, dtype=np.float64))]


def held_out_count(num_pairs: int, held_out) -> int:
    """The number of held-out pairs `split` takes: a fraction in (0, 1) of
    num_pairs (rounded, at least 1), or a count (an int >= 0)."""
    if isinstance(held_out, bool):
        raise ValueError(f"held_out must be a fraction in (0, 1) or a count of pairs, got {held_out!r}")
    if isinstance(held_out, numbers.Integral):
        count = int(held_out)
    elif isinstance(held_out, numbers.Real) and 0.0 < float(held_out) < 1.0:
        count = max(1, int(round(float(held_out) * num_pairs)))
    else:
        raise ValueError(f"held_out must be a fraction strictly between 0 and 1 or an integer count of pairs, "
                         f"got {held_out!r}")
    if count < 0 or count >= num_pairs:
        raise ValueError(f"held_out={held_out!r} holds out {count} of {num_pairs} pairs, leaving none to train on: "
                         f"hold out between 0 and {num_pairs - 1} pairs, or make more pairs")
    return count


def validate(trajectory_len: int, segment_len: int, num_pairs: int, label_noise=0.0, temperature=1.0,
             members: int = 1, bootstrap: bool = False, held_out=0):
    """Checks a preference and reward-model setup before anything compiles;
    raises ValueError naming the fix. `label_noise` and `temperature` may be a
    scalar or a sequence (a sweep); `held_out` is as in `split`."""
    if int(segment_len) < 1:
        raise ValueError(f"segment_len must be at least 1, got {segment_len}: set segment_len >= 1")
    if int(segment_len) > int(trajectory_len):
        raise ValueError(f"segment_len={segment_len} is longer than the trajectories ({trajectory_len} steps): "
                         f"set segment_len <= {trajectory_len}, or collect rollouts of at least "
                         f"{segment_len} steps")
    if int(num_pairs) < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}: ask for at least one pair")
    for noise in _values(label_noise):
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"label_noise={noise} is outside [0, 0.5]: it is the probability of flipping a label "
                             f"(above 0.5 the labels prefer the worse segment); give a value in [0, 0.5]")
    for temp in _values(temperature):
        if not temp >= 0.0:
            raise ValueError(f"temperature={temp} is negative: give a temperature >= 0 "
                             f"(0 = deterministic gold preference)")
    if int(members) < 1:
        raise ValueError(f"an ensemble needs at least one member, got members={members}")
    train_pairs = int(num_pairs) - (held_out_count(int(num_pairs), held_out) if held_out else 0)
    if bootstrap:
        check_bootstrap(train_pairs, members)


def check_bootstrap(num_pairs: int, members: int):
    need = MIN_PAIRS_PER_MEMBER * int(members)
    if int(num_pairs) < need:
        raise ValueError(f"a bootstrapped ensemble of {members} members needs at least {need} training pairs "
                         f"({MIN_PAIRS_PER_MEMBER} per member), got {num_pairs}: make at least {need} pairs, use "
                         f"fewer members, or train with bootstrap=False (different seeds on the same pairs)")


# ----------------------------------------------------------------------------- segments and pairs

@functools.partial(jax.jit, static_argnames=("reward_fn",))
def with_gold(trajectories: Segments, reward_fn, reward_params) -> Segments:
    """`trajectories` with `gold` replaced by reward_fn(reward_params, transition)
    at every step (e.g. `reward_models.random_gold`'s network). The transition's
    `reward` is the old `gold` field (the environment's reward) and its info is
    empty. Works on any leading shape."""
    lead = trajectories.gold.shape
    flat = jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[len(lead):]), trajectories)
    transitions = Transition(flat.obs, flat.action, flat.next_obs, flat.gold, flat.terminated, {})
    gold = jax.vmap(reward_fn, in_axes=(None, 0))(reward_params, transitions)
    return trajectories._replace(gold=jnp.reshape(gold, lead).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("segment_len", "num"))
def cut_segments(key, trajectories: Segments, segment_len: int, num: int) -> Segments:
    """`num` windows of `segment_len` consecutive steps, each from a trajectory
    and a start drawn uniformly (start in [0, T - segment_len]), independently
    and with replacement. trajectories: leading [num_traj, T]; returns leading
    [num, segment_len]."""
    num_traj, horizon = trajectories.gold.shape[:2]
    if segment_len < 1 or segment_len > horizon:
        raise ValueError(f"segment_len={segment_len} must be between 1 and the trajectory length {horizon}: "
                         f"set segment_len <= {horizon}, or collect longer rollouts")
    if num < 1:
        raise ValueError(f"num={num}: ask for at least one segment")
    traj, start = segment_starts(key, num_traj, horizon, segment_len, num)
    return jax.tree.map(lambda x: windows_at(x, traj, start, segment_len), trajectories)


def segment_starts(key, num_traj: int, horizon: int, segment_len: int, num: int):
    """The (trajectory, start) of each of `cut_segments`' windows, for the same key."""
    draws = jax.random.randint(key, (2, num), 0, jnp.array([[num_traj], [horizon - segment_len + 1]]))
    return draws[0], draws[1]


def windows_at(x, traj, start, segment_len: int):
    """x [num_traj, T, ...] -> the windows x[traj, start:start + segment_len] [num, segment_len, ...]."""
    return jax.vmap(lambda i, s: jax.lax.dynamic_slice_in_dim(x[i], s, segment_len, axis=0))(traj, start)


def pair_starts(key, num_traj: int, horizon: int, segment_len: int, num_pairs: int):
    """Where `make_pairs(key, ...)` cut each pair's segments: ((trajectory,
    start) of the first segments, the same of the second), each [num_pairs]."""
    traj, start = segment_starts(jax.random.split(key)[0], num_traj, horizon, segment_len, 2 * num_pairs)
    return (traj[:num_pairs], start[:num_pairs]), (traj[num_pairs:], start[num_pairs:])


def segment_returns(gold):
    """Undiscounted sum over the segment axis (the last of [..., L])."""
    return jnp.sum(gold.astype(jnp.float32), axis=-1)


# What the synthetic oracle compares. "bt" is Christiano et al.'s: the
# segments' gold returns. "worst" judges a segment by its worst step's gold
# reward, a rater who remembers the worst moment: no per-step reward sums to
# it, so it is non-Markovian, and a reward model over (s, a, s') can only
# approximate it; SPO (meta/spo.py) optimises it without one. "intransitive"
# asks three raters, each of whom judges only one third of the segment (the
# gold return of its first, middle or last third), and reports the preference
# of a rater drawn at random: the mean of their Bradley-Terry probabilities,
# at temperature 0 their majority. Majorities over several criteria cycle
# (Condorcet): thirds' returns (3, 1, 2), (2, 3, 1), (1, 2, 3) beat each
# other in a ring, so no score of single segments reproduces the oracle, as
# Swamy et al. argue aggregated raters make preferences intransitive.
ORACLES = ("bt", "worst", "intransitive")
CRITERIA = 3          # the intransitive oracle's raters (thirds of a segment)


def check_oracle(oracle: str):
    if oracle not in ORACLES:
        raise ValueError(f"unknown preference oracle {oracle!r}; choose one of {', '.join(ORACLES)} (bt: Bradley-"
                         f"Terry on the segments' gold returns; worst: on their worst step's gold reward; "
                         f"intransitive: three raters, each on one third of the segment, a random one asked)")


def segment_scores(gold, oracle: str = "bt"):
    """The oracle's score of each segment (over the last axis of [..., L]):
    [...] for "bt" and "worst"; [..., 3] for "intransitive" (each third's
    gold return; a segment shorter than 3 steps repeats steps so every
    rater sees one)."""
    check_oracle(oracle)
    if oracle == "worst":
        return jnp.min(gold.astype(jnp.float32), axis=-1)
    if oracle == "intransitive":
        length = gold.shape[-1]
        bounds = [round(i * length / CRITERIA) for i in range(CRITERIA + 1)]
        return jnp.stack([segment_returns(gold[..., bounds[i]:max(bounds[i + 1], bounds[i] + 1)])
                          for i in range(CRITERIA)], axis=-1)
    return segment_returns(gold)


def preference_probability(return_first, return_second, temperature):
    """Bradley-Terry sigmoid((G1 - G2) / temperature); at temperature 0 the
    limit (1, 0, or 0.5 on a tie). temperature may be traced; the gradient is
    finite at 0."""
    diff = jnp.asarray(return_first, jnp.float32) - jnp.asarray(return_second, jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    positive = temperature > 0
    soft = jax.nn.sigmoid(diff / jnp.where(positive, temperature, 1.0))
    hard = 0.5 * (1.0 + jnp.sign(diff))
    return jnp.where(positive, soft, hard)


def prefer(scores_first, scores_second, oracle: str, temperature):
    """The oracle's probability that the first segment is preferred, from
    both segments' `segment_scores` (broadcasting)."""
    p = preference_probability(scores_first, scores_second, temperature)
    return p.mean(axis=-1) if oracle == "intransitive" else p


def gold_preference(scores_first, scores_second, oracle: str):
    """The oracle's verdict in {0, 0.5, 1}: which segment it prefers more
    often than not (0.5: a tie)."""
    return 0.5 * (1.0 + jnp.sign(prefer(scores_first, scores_second, oracle, 0.0) - 0.5))


def label_pairs(key, first: Segments, second: Segments, temperature, label_noise, oracle: str = "bt") -> Pairs:
    """Label each pair (first[i], second[i]): gold_prob from the oracle
    (`prefer`: by default Bradley-Terry on the gold returns), label ~ Bernoulli(gold_prob), then flipped with probability
    label_noise. temperature and label_noise are traced."""
    if first.gold.shape != second.gold.shape:
        raise ValueError(f"first and second segments differ in shape ({first.gold.shape} vs "
                         f"{second.gold.shape}): pair segments of the same count and length")
    if not _is_traced(label_noise):
        validate(first.gold.shape[-1], first.gold.shape[-1], first.gold.shape[0], label_noise=label_noise,
                 temperature=temperature)
    gold_prob = prefer(segment_scores(first.gold, oracle), segment_scores(second.gold, oracle), oracle, temperature)
    u = jax.random.uniform(key, (2,) + gold_prob.shape)
    clean = u[0] < gold_prob
    flip = u[1] < jnp.asarray(label_noise, jnp.float32)
    label = jnp.logical_xor(clean, flip).astype(jnp.float32)
    return Pairs(first, second, label, gold_prob.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("segment_len", "num_pairs", "oracle"))
def make_pairs(key, trajectories: Segments, segment_len: int, num_pairs: int, temperature, label_noise,
               oracle: str = "bt") -> Pairs:
    """2 * num_pairs segments from `cut_segments`, paired in order, labelled by
    `label_pairs`. Both segments of a pair are drawn independently (they may
    come from the same trajectory)."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs={num_pairs}: ask for at least one pair")
    cut_key, label_key = jax.random.split(key)
    segs = cut_segments(cut_key, trajectories, segment_len, 2 * num_pairs)
    first = jax.tree.map(lambda x: x[:num_pairs], segs)
    second = jax.tree.map(lambda x: x[num_pairs:], segs)
    return label_pairs(label_key, first, second, temperature, label_noise, oracle)


def num_pairs_of(pairs: Pairs) -> int:
    return pairs.label.shape[0]


def split(pairs: Pairs, held_out):
    """(train, held_out) pairs: the last `held_out` pairs (a count, or a
    fraction of all pairs, rounded) are held out. Pairs are drawn i.i.d., so
    this is a random split; the two sets may share trajectories (for held-out
    data from new rollouts, call make_pairs on them with another key)."""
    total = num_pairs_of(pairs)
    count = held_out_count(total, held_out)
    return (jax.tree.map(lambda x: x[:total - count], pairs),
            jax.tree.map(lambda x: x[total - count:], pairs))


def concatenate(*pairs: Pairs) -> Pairs:
    """Pairs from several sources (e.g. the reference policy's and the
    learner's rollouts, online) as one set, in the order given."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *pairs)
