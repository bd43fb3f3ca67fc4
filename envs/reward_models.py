"""Reward models learned from preferences: an MLP r(s, a, s') trained by
Bradley-Terry cross-entropy, ensembles of them, and their aggregation into a
reward function with the contract of envs/rewards.py.

Parameters
- One model's parameters are a list of layers {"w": [n_in, n_out], "b":
  [n_out]} (ReLU between layers, one output). The input is [s, a, s'] with a
  discrete action one-hot (an integer action array means discrete) and a
  continuous one as its vector; the network reads obs_dim and action_size
  from the shapes, so no other configuration travels with the parameters.
- An ensemble is the same pytree with a leading member axis [K] on every
  leaf (`as_ensemble` makes a single model an ensemble of 1). Everything that
  takes an ensemble also takes a single model.

Ensembles (`train_ensemble`)
- bootstrap=False: every member trains on the same pairs from its own seed
  (its own initialisation and minibatch order), as Coste et al. 2023 build
  their ensembles. Members then disagree mostly off the data.
- bootstrap=True: each member also trains on its own resample of the pairs
  drawn with replacement (about 63% distinct pairs each), which adds data
  diversity: members disagree more, also on the data, and each sees fewer
  distinct pairs, so single members are somewhat less accurate.

Aggregation (`aggregate(kind, uwo_lambda)`) per step, across members:
"mean"; "wco" (worst case: the member minimum); "uwo" (uncertainty weighted:
mean - uwo_lambda * variance, the population variance over members, 0 for a
single model). A segment's return under an aggregate is the sum over steps of
the aggregated reward, which is what a learner optimising it sees.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs.preferences import Pairs, Segments, check_bootstrap, gold_preference, segment_scores
from envs.rewards import Transition

AGGREGATIONS = ("mean", "wco", "uwo")


# ----------------------------------------------------------------------------- the network

def init(key, obs_dim: int, action_size: int, hidden=(64, 64)):
    """He-normal hidden layers, LeCun-normal output layer, zero biases (all
    weights from one Gaussian draw: one random-number kernel to compile)."""
    sizes = [2 * obs_dim + action_size, *hidden, 1]
    shapes = list(zip(sizes[:-1], sizes[1:]))
    draws = jax.random.normal(key, (sum(i * o for i, o in shapes),), jnp.float32)
    layers, start = [], 0
    for i, (n_in, n_out) in enumerate(shapes):
        gain = 1.0 if i == len(shapes) - 1 else 2.0
        w = draws[start:start + n_in * n_out].reshape(n_in, n_out) * jnp.sqrt(jnp.float32(gain / n_in))
        layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
        start += n_in * n_out
    return layers


def is_ensemble(params) -> bool:
    return params[0]["w"].ndim == 3


def as_ensemble(params):
    """A single model as an ensemble of one (an ensemble is returned as is)."""
    return params if is_ensemble(params) else jax.tree.map(lambda x: x[None], params)


def num_members(params) -> int:
    return params[0]["w"].shape[0] if is_ensemble(params) else 1


def _features(params, obs, action, next_obs):
    obs = jnp.asarray(obs).astype(jnp.float32)
    next_obs = jnp.asarray(next_obs).astype(jnp.float32)
    action = jnp.asarray(action)
    action_size = params[0]["w"].shape[-2] - 2 * obs.shape[-1]
    if jnp.issubdtype(action.dtype, jnp.integer) or action.dtype == jnp.bool_:
        action = jax.nn.one_hot(action, action_size, dtype=jnp.float32)
    else:
        action = action.astype(jnp.float32)
        if action.ndim == obs.ndim - 1:       # a continuous action of size 1 without its axis
            action = action[..., None]
    if action.shape[-1] != action_size:
        raise ValueError(f"the reward model expects {action_size}-dimensional actions (from its input size and "
                         f"obs_dim {obs.shape[-1]}), got an action of shape {action.shape}")
    return jnp.concatenate([obs, action, next_obs], axis=-1)


def reward(params, obs, action, next_obs):
    """r(s, a, s') of one model over any leading shape: obs [..., obs_dim],
    action [...] (int) or [..., act_dim]; returns [...]."""
    x = _features(params, obs, action, next_obs)
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return (x @ params[-1]["w"] + params[-1]["b"])[..., 0]


def member_rewards(params, obs, action, next_obs):
    """Every member's reward: [K, ...] (K = 1 for a single model)."""
    return jax.vmap(reward, in_axes=(0, None, None, None))(as_ensemble(params), obs, action, next_obs)


def segment_return(params, segments: Segments):
    """One model's undiscounted return of each segment: [N]."""
    return jnp.sum(reward(params, segments.obs, segments.action, segments.next_obs), axis=-1)


# ----------------------------------------------------------------------------- Bradley-Terry training

def bt_loss(params, pairs: Pairs):
    """Mean Bradley-Terry cross-entropy of one model: with D = R(first) -
    R(second) (segment return sums), -[y log sigmoid(D) + (1 - y) log
    sigmoid(-D)], y the label (hard 0/1 or soft in [0, 1])."""
    diff = segment_return(params, pairs.first) - segment_return(params, pairs.second)
    y = pairs.label.astype(jnp.float32)
    return jnp.mean(y * jax.nn.softplus(-diff) + (1.0 - y) * jax.nn.softplus(diff))


def fit(params, pairs: Pairs, batches, lr, weight_decay=0.0):
    """Continue one model's Bradley-Terry fit: Adam(W) from a fresh optimiser
    state, one step per row of `batches` (indices into pairs). Returns the
    params (the online reward-model loop draws the indices itself)."""
    return _fit(params, pairs, batches, lr, weight_decay)[0]


def _fit(params, pairs: Pairs, batches, lr, weight_decay):
    """Adam(W), one step per row of `batches` (indices into pairs)."""
    optimiser = optax.adamw(lr, weight_decay=weight_decay)

    def step(carry, batch_index):
        params, opt_state = carry
        batch = jax.tree.map(lambda x: x[batch_index], pairs)
        loss, grads = jax.value_and_grad(bt_loss)(params, batch)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimiser.init(params)), batches)
    return params, losses


def _member(key, pairs: Pairs, bootstrap, steps, lr, batch_size, action_size, hidden, weight_decay, params):
    """One member: its init, its resample (when `bootstrap`, a traced bool)
    and its minibatches, all from `key`. Minibatches draw batch_size pairs of
    the (resampled) set uniformly with replacement at every step."""
    init_key, data_key = jax.random.split(key)
    size = pairs.label.shape[0]
    if params is None:
        if action_size is None:
            raise ValueError("train needs action_size (the number of discrete actions, or the size of a continuous "
                             "action vector) when no starting params are given")
        params = init(init_key, pairs.first.obs.shape[-1], action_size, tuple(hidden))
    # one draw for the resample and the minibatch positions
    draws = jax.random.randint(data_key, (size + steps * batch_size,), 0, size)
    index = jnp.where(bootstrap, draws[:size], jnp.arange(size, dtype=draws.dtype))
    batches = index[draws[size:].reshape(steps, batch_size)]
    params, losses = _fit(params, pairs, batches, lr, weight_decay)
    return params, losses, index


def _check_sizes(pairs, steps, batch_size):
    if pairs.label.shape[0] < 1:
        raise ValueError("no pairs to train on: make at least one pair")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps} and batch_size={batch_size} must both be at least 1")


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "action_size", "hidden"))
def train(key, pairs: Pairs, steps: int, lr, batch_size: int, action_size: int | None = None, hidden=(64, 64),
          weight_decay=0.0, params=None):
    """One reward model by Bradley-Terry cross-entropy with Adam(W) on
    minibatches of `batch_size` pairs drawn uniformly with replacement.
    Returns (params, losses [steps], the minibatch loss of each step). Starts
    from a fresh init (needs action_size and hidden, a tuple) or from `params`
    (e.g. to continue online). lr and weight_decay are traced. Equals member
    k of train_ensemble(key, ..., bootstrap=False) given
    jax.random.split(key, members)[k]."""
    _check_sizes(pairs, steps, batch_size)
    params, losses, _ = _member(key, pairs, False, steps, lr, batch_size, action_size, hidden, weight_decay, params)
    return params, losses


@functools.partial(jax.jit, static_argnames=("members", "steps", "batch_size", "action_size", "hidden"))
def _train_ensemble(key, pairs, bootstrap, members, steps, lr, batch_size, action_size, hidden, weight_decay):
    return jax.vmap(lambda k: _member(k, pairs, bootstrap, steps, lr, batch_size, action_size, hidden,
                                      weight_decay, None))(jax.random.split(key, members))


def train_ensemble(key, pairs: Pairs, members: int, bootstrap: bool, steps: int, lr, batch_size: int,
                   action_size: int, hidden=(64, 64), weight_decay=0.0):
    """K = members reward models vmapped, each from its own seed
    (jax.random.split(key, members)); bootstrap=True also gives each its own
    resample of the pairs with replacement (see the module docstring).
    Returns (ensemble params [K, ...], losses [K, steps], indices [K, P]: the
    pairs each member trained on, arange(P) without bootstrap). Both settings
    of `bootstrap` share one compiled program; a bootstrap with fewer than
    MIN_PAIRS_PER_MEMBER pairs per member raises ValueError before tracing."""
    _check_sizes(pairs, steps, batch_size)
    if members < 1:
        raise ValueError(f"members={members}: an ensemble needs at least one member")
    if not isinstance(bootstrap, (bool, np.bool_)):
        raise ValueError(f"bootstrap must be True or False, got {bootstrap!r}")
    if bootstrap:
        check_bootstrap(pairs.label.shape[0], members)
    return _train_ensemble(key, pairs, jnp.asarray(bool(bootstrap)), members, steps, lr, batch_size, action_size,
                           tuple(hidden), weight_decay)


# ----------------------------------------------------------------------------- aggregation

def check_kind(kind: str):
    if kind not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {kind!r}: choose one of {', '.join(AGGREGATIONS)}")


def aggregate_rewards(rewards, kind: str, uwo_lambda=1.0):
    """Member rewards [K, ...] -> [...]: mean, min (wco), or mean - uwo_lambda
    * population variance (uwo). uwo_lambda may be traced."""
    check_kind(kind)
    mean = jnp.mean(rewards, axis=0)
    if kind == "mean":
        return mean
    if kind == "wco":
        return jnp.min(rewards, axis=0)
    return mean - jnp.asarray(uwo_lambda, jnp.float32) * jnp.var(rewards, axis=0)


def aggregate_params(ensemble_params, uwo_lambda):
    """reward_params that carry a traced uwo_lambda (a sweep over lambda is a vmap)."""
    return {"ensemble": ensemble_params, "uwo_lambda": jnp.asarray(uwo_lambda, jnp.float32)}


def aggregate(kind: str, uwo_lambda=1.0):
    """reward_fn(reward_params, transition) -> the aggregated proxy reward of
    one transition (or of any leading batch; the environment's reward in the
    transition is ignored), with reward_params the ensemble's
    (or a single model's) params, or `aggregate_params(ensemble, lambda)` for
    a traced lambda (which then replaces this uwo_lambda)."""
    check_kind(kind)
    if not isinstance(uwo_lambda, jax.core.Tracer) and float(uwo_lambda) < 0:
        raise ValueError(f"uwo_lambda={uwo_lambda} is negative, which would reward disagreement: give "
                         f"uwo_lambda >= 0")

    def reward_fn(reward_params, transition: Transition):
        if isinstance(reward_params, dict):
            params, lam = reward_params["ensemble"], reward_params["uwo_lambda"]
        else:
            params, lam = reward_params, uwo_lambda
        rewards = member_rewards(params, transition.obs, transition.action, transition.next_obs)
        return aggregate_rewards(rewards, kind, lam)

    return reward_fn


# ----------------------------------------------------------------------------- evaluation

class Accuracy(NamedTuple):
    label: jax.Array   # agreement with the (noisy) labels
    gold: jax.Array    # agreement with the gold preference (the sign of G1 - G2)


def _agreement(pred_first, target_first):
    """Expected agreement of two preference probabilities in {0, 0.5, 1} (or
    soft): a tie on either side counts as half."""
    return jnp.mean(pred_first * target_first + (1.0 - pred_first) * (1.0 - target_first))


@functools.partial(jax.jit, static_argnames=("kind", "oracle"))
def accuracy(params, pairs: Pairs, kind: str | None = None, uwo_lambda=1.0, oracle: str = "bt") -> Accuracy:
    """The fraction of pairs whose preferred segment under the model (the
    larger return sum) agrees with the label and, separately, with the gold
    preference (the oracle's: `envs.preferences.segment_scores`); ties count
    half. Single model: scalars. An ensemble: per member [K] when kind is
    None, else the aggregate's accuracy (scalars)."""
    gold_pref = gold_preference(segment_scores(pairs.first.gold, oracle), segment_scores(pairs.second.gold, oracle),
                                oracle)
    label = pairs.label.astype(jnp.float32)

    def score(diff):
        pred = 0.5 * (1.0 + jnp.sign(diff))
        return Accuracy(_agreement(pred, label), _agreement(pred, gold_pref))

    if kind is not None:
        def agg_return(seg):
            rewards = member_rewards(params, seg.obs, seg.action, seg.next_obs)
            return jnp.sum(aggregate_rewards(rewards, kind, uwo_lambda), axis=-1)
        return score(agg_return(pairs.first) - agg_return(pairs.second))
    if is_ensemble(params):
        return jax.vmap(lambda p: accuracy(p, pairs, oracle=oracle))(params)
    return score(segment_return(params, pairs.first) - segment_return(params, pairs.second))


# ----------------------------------------------------------------------------- normalisation and gold

@jax.jit
def normalise(params, reference, eps=1e-6):
    """Each member scaled and shifted so that its reward over `reference` (a
    Transition, Segments or anything with obs, action, next_obs, any leading
    shape) has mean 0 and std 1, as Gao et al. and Coste et al. normalise
    reward models. The affine is folded into the output layer, so the result
    has the same structure (and is a single model if `params` is)."""
    single = not is_ensemble(params)
    params = as_ensemble(params)
    rewards = member_rewards(params, reference.obs, reference.action, reference.next_obs)
    flat = jnp.reshape(rewards, (rewards.shape[0], -1))
    mean = jnp.mean(flat, axis=1)
    std = jnp.maximum(jnp.std(flat, axis=1), eps)
    last = params[-1]
    folded = {"w": last["w"] / std[:, None, None], "b": (last["b"] - mean[:, None]) / std[:, None]}
    params = [*params[:-1], folded]
    return jax.tree.map(lambda x: x[0], params) if single else params


def random_gold(key, obs_dim: int, action_size: int, discrete: bool, width: int = 256, depth: int = 2):
    """A frozen, randomly initialised wide network over (s, a, s') as the gold
    reward (Gao et al. use a large gold reward model): returns (reward_fn,
    params), reward_fn(params, transition) with envs/rewards.py's contract.
    Discrete actions are indices in [0, action_size). Rescale it with
    `normalise(params, rollouts)` for unit-scale gold rewards."""
    params = init(key, obs_dim, action_size, (width,) * depth)

    def reward_fn(reward_params, transition: Transition):
        action = jnp.asarray(transition.action)
        action = action.astype(jnp.int32) if discrete else action.astype(jnp.float32)
        return reward(reward_params, transition.obs, action, transition.next_obs)

    return reward_fn, params
