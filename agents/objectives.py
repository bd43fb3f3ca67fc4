"""PPO's policy objective as a plug-in: PPO-clip, the closed-form DPO drift,
and a learned drift network (learned policy optimisation, Lu et al. 2022),
optionally temporally aware (Jackson et al. 2024).

Every objective here has PPO's signature

    objective(objective_params, ratio, advantage, progress) -> per-sample loss

and is the mirror-learning form  loss = -(r * A - D(r, A)),  with a drift
D >= 0 that vanishes at r = 1. PPO-clip is the drift D = ReLU((r - clip(r)) A).

The drift network's parameters are a plain pytree (two weight matrices, no
biases): evolution strategies treat them as one flat vector, and without
biases a zero input gives a zero output, which is what makes D(1, .) = 0 hold
for any parameters.
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from src.config import ConfigError

DPO_ALPHA, DPO_BETA = 2.0, 0.6
DRIFT_HIDDEN = 128
KINDS = ("ppo", "dpo", "learned", "temporal")


def ppo_clip_drift(ratio, advantage, clip_eps=0.2):
    return jax.nn.relu((ratio - jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)) * advantage)


def ppo_clip(clip_eps, ratio, advantage, progress):
    """PPO-clip written as a drift; equal to min(rA, clip(r)A) up to sign."""
    return -(ratio * advantage - ppo_clip_drift(ratio, advantage, clip_eps))


def dpo_drift(ratio, advantage, alpha=DPO_ALPHA, beta=DPO_BETA):
    """The closed form discovered by LPO (Discovered Policy Optimisation)."""
    pos = (ratio - 1.0) * advantage
    neg = jnp.log(ratio) * advantage
    return jnp.where(advantage >= 0,
                     jax.nn.relu(pos - alpha * jnp.tanh(pos / alpha)),
                     jax.nn.relu(neg - beta * jnp.tanh(neg / beta)))


def dpo(params, ratio, advantage, progress):
    """`params` is {"alpha", "beta"}; anything else (PPO passes its clip_eps
    when a caller gives no objective parameters) means the published 2 and 0.6."""
    if isinstance(params, dict):
        alpha, beta = params["alpha"], params["beta"]
    else:
        alpha, beta = DPO_ALPHA, DPO_BETA
    return -(ratio * advantage - dpo_drift(ratio, advantage, alpha, beta))


def dpo_params():
    return {"alpha": jnp.float32(DPO_ALPHA), "beta": jnp.float32(DPO_BETA)}


# ----------------------------------------------------------------------------- learned drift

def ratio_features(ratio, advantage):
    """[log r, log^2 r, 1-r, (1-r)^2] and each times A: all zero at r = 1."""
    log_r = jnp.log(ratio)
    base = jnp.stack([log_r, log_r ** 2, 1.0 - ratio, (1.0 - ratio) ** 2], axis=-1)
    return jnp.concatenate([base, base * advantage[..., None]], axis=-1)


def lifetime_feature(num_iterations):
    # log lifetime, scaled to O(1) for lifetimes of 10..1e5 iterations
    return jnp.float32(math.log(max(num_iterations, 1)) / 10.0)


def drift_inputs(ratio, advantage, progress=None, log_lifetime=None):
    """The 8 ratio features; the temporally-aware variant also multiplies them
    by training progress n/N and by log lifetime (24 inputs). Time enters
    multiplicatively so the inputs, and with them D, still vanish at r = 1."""
    f = ratio_features(ratio, advantage)
    if progress is None:
        return f
    progress = jnp.broadcast_to(jnp.asarray(progress, jnp.float32), ratio.shape)[..., None]
    log_lifetime = jnp.broadcast_to(jnp.asarray(log_lifetime, jnp.float32), ratio.shape)[..., None]
    return jnp.concatenate([f, f * progress, f * log_lifetime], axis=-1)


def num_inputs(temporal: bool) -> int:
    return 24 if temporal else 8


def init_drift(key, temporal=False, hidden=DRIFT_HIDDEN, scale=1.0):
    """Random drift-network parameters {w1: [in, hidden], w2: [hidden, 1]}."""
    k1, k2 = jax.random.split(key)
    n_in = num_inputs(temporal)
    return {"w1": scale * jax.random.normal(k1, (n_in, hidden), jnp.float32) / math.sqrt(n_in),
            "w2": scale * jax.random.normal(k2, (hidden, 1), jnp.float32) / math.sqrt(hidden)}


def drift(params, ratio, advantage, progress=None, log_lifetime=None):
    """D(r, A[, n/N, log N]) >= 0 with D(1, .) = 0 for any params."""
    x = drift_inputs(ratio, advantage, progress, log_lifetime)
    out = (jnp.tanh(x @ params["w1"]) @ params["w2"])[..., 0]
    return jax.nn.relu(out - 1e-4)


def learned(num_iterations: int | None = None) -> Callable:
    """The learned objective; with `num_iterations` (the inner run's lifetime,
    a static size) it is the temporally-aware variant."""
    log_lifetime = None if num_iterations is None else lifetime_feature(num_iterations)

    def objective(params, ratio, advantage, progress):
        p = None if log_lifetime is None else progress
        return -(ratio * advantage - drift(params, ratio, advantage, p, log_lifetime))

    return objective


def fit_to_ppo_clip(key, temporal=False, hidden=DRIFT_HIDDEN, clip_eps=0.2, steps=2000, lr=3e-3, samples=4096):
    """Drift-network parameters regressed onto PPO-clip's drift (the LPO
    initialisation): ratios log-normal around 1, advantages standard normal,
    progress and lifetime uniform for the temporal variant."""
    init_key, data_key = jax.random.split(key)
    params = init_drift(init_key, temporal, hidden)
    k1, k2, k3, k4 = jax.random.split(data_key, 4)
    ratio = jnp.exp(0.3 * jax.random.normal(k1, (samples,)))
    advantage = jax.random.normal(k2, (samples,))
    progress = jax.random.uniform(k3, (samples,)) if temporal else None
    log_lifetime = jax.random.uniform(k4, (samples,), minval=0.2, maxval=1.0) if temporal else None
    target = ppo_clip_drift(ratio, advantage, clip_eps)
    tx = optax.adam(lr)

    def loss(p):
        x = drift_inputs(ratio, advantage, progress, log_lifetime)
        out = (jnp.tanh(x @ p["w1"]) @ p["w2"])[..., 0]
        return jnp.mean((out - target) ** 2)   # before the ReLU, so gradients flow everywhere

    def step(carry, _):
        p, opt = carry
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), value

    (params, _), losses = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(params)
    return params, losses


# ----------------------------------------------------------------------------- by name

class Objective(NamedTuple):
    kind: str
    fn: Callable          # objective(params, ratio, advantage, progress)
    params: object        # default parameters (None: PPO's clip_eps hyperparameter)


def make(kind: str, num_iterations: int | None = None, params=None) -> Objective:
    """`ppo`, `dpo`, `learned` or `temporal` (needs `num_iterations`)."""
    if kind == "ppo":
        return Objective(kind, ppo_clip, params)
    if kind == "dpo":
        return Objective(kind, dpo, params if params is not None else dpo_params())
    if kind == "learned":
        return Objective(kind, learned(None), params)
    if kind == "temporal":
        if num_iterations is None:
            raise ConfigError("the temporally-aware objective needs the run's number of iterations")
        return Objective(kind, learned(num_iterations), params)
    raise ConfigError(f"unknown objective {kind!r}; choose one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------- meta-training pieces

def final_return(metrics, window: int):
    """Mean of the per-iteration `episode_return` over the last `window`
    iterations: the LPO fitness (final return), smoothed a little because a
    few envs' last episodes are a noisy estimate."""
    return jnp.nanmean(metrics["episode_return"][-window:])


def final_window(num_iterations: int) -> int:
    return max(1, num_iterations // 10)


FITNESS_KINDS = ("final", "auc")


def fitness_window(kind: str, num_iterations: int) -> int:
    """Iterations the fitness averages `episode_return` over: `final`, the
    last 10% (the published LPO fitness); `auc`, all of them (area under the
    learning curve: on short runs far from saturation it is about 3x less
    noisy across seeds than the final return, and it rewards learning speed)."""
    if kind == "final":
        return final_window(num_iterations)
    if kind == "auc":
        return num_iterations
    raise ConfigError(f"unknown fitness {kind!r}; choose one of {', '.join(FITNESS_KINDS)}")


def inner_fitness(agent, hparams, window: int):
    """fitness(objective_params, key) -> final return of one whole PPO run."""
    def fitness(objective_params, key):
        _, metrics = agent.train(key, hparams, None, objective_params)
        return final_return(metrics, window)
    return fitness


def multi_env_fitness(fitnesses, baselines):
    """Several envs: each return divided by PPO-clip's return there, then averaged.
    One env: the raw return (no baseline needed)."""
    if len(fitnesses) == 1:
        return fitnesses[0]

    def fitness(objective_params, key):
        keys = jax.random.split(key, len(fitnesses))
        return sum(f(objective_params, k) / b for f, k, b in zip(fitnesses, keys, baselines)) / len(fitnesses)
    return fitness


def save(out, kind: str, params, hidden: int = DRIFT_HIDDEN):
    """A learned objective in OUT/objective/ (orbax) + OUT/objective.json."""
    import json
    import os

    from src import checkpoint
    checkpoint.save(os.path.join(out, "objective"), params)
    with open(os.path.join(out, "objective.json"), "w") as f:
        json.dump({"kind": kind, "hidden": hidden}, f)


def load(run_dir):
    """(kind, params) of the learned objective saved in `run_dir`."""
    import json
    import os

    from src import checkpoint
    path = os.path.join(run_dir, "objective.json")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir} holds no learned objective (no objective.json); "
                          "make one with `run.py meta lpo`")
    with open(path) as f:
        spec = json.load(f)
    if spec.get("kind") not in ("learned", "temporal"):
        raise ConfigError(f"{path}: unknown objective kind {spec.get('kind')!r}")
    like = init_drift(jax.random.PRNGKey(0), spec["kind"] == "temporal", int(spec["hidden"]))
    return spec["kind"], checkpoint.restore(os.path.join(run_dir, "objective"), like)


def from_spec(spec: str, num_iterations: int) -> Objective:
    """`ppo`, `dpo` or `learned:RUN_DIR` (the `run.py train --objective` flag)."""
    if spec in ("ppo", "dpo"):
        return make(spec)
    if spec.startswith("learned:") and len(spec) > len("learned:"):
        kind, params = load(spec[len("learned:"):])
        return make(kind, num_iterations, params)
    raise ConfigError(f"unknown objective {spec!r}; choose ppo, dpo or learned:RUN_DIR")
