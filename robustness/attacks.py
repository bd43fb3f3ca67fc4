"""Observation attacks on a trained policy, as pure functions.

A threat model (`ThreatModel`) states the norm ball, its units, whether the
radius is spent per step or as one total budget over an episode, and what is
perturbed. An attack maps (key, x, eps) -> delta with ||delta|| <= eps, where x
is the victim's observation in the threat model's units; everything here runs
inside a jitted, vmapped evaluation rollout, so eps is a traced argument (one
compiled program evaluates a whole return-vs-eps curve).

    victim = Victim(policy, value, normalize, discrete)     # static functions of (params, input)
    attack = make_attack("pgd", threat, victim, steps=10)
    returns, lengths = evaluate(env, env_params, victim, vparams, attack, threat, key, eps, 50, 500)

Attacks: random (uniform in the ball), fgsm (one normalised gradient step),
pgd (K projected steps from a random start), critic (minimise V), mad
(maximise KL between the clean and perturbed action distributions), and
learned (an adversary policy acting as eps * tanh(a); see meta/adversary.py).
For a Gaussian policy whose action the environment clips, `action_bounds`
makes FGSM/PGD and MAD measure the clipped action's distribution (what the
environment receives) instead of the network's Gaussian.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from src.config import ConfigError
from src.networks import mode

NORMS = ("linf", "l2")
UNITS = ("normalised", "raw")
BUDGETS = ("step", "episode")
TARGETS = ("observation", "action", "dynamics")
ATTACKS = ("random", "fgsm", "pgd", "critic", "mad", "learned")
# attacks that need the gradient of the victim (and so an observation target)
GRADIENT_ATTACKS = ("fgsm", "pgd", "critic", "mad")


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """norm: linf | l2. units: normalised (the policy network's input, i.e.
    after the agent's running observation statistics) | raw (the
    environment's observation). budget: step (every step's perturbation lies
    in the eps-ball) | episode (eps is a total L2 budget over the episode:
    sum_t ||delta_t||^2 <= eps^2, spent greedily). target: observation |
    action (continuous actions: delta added to the action) | dynamics
    (physical parameters; see envs/perturbations.py, not an attack here)."""
    norm: str = "linf"
    units: str = "normalised"
    budget: str = "step"
    target: str = "observation"

    def validate(self):
        for name, choices in (("norm", NORMS), ("units", UNITS), ("budget", BUDGETS), ("target", TARGETS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"threat model {name} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        if self.budget == "episode" and self.norm != "l2":
            raise ConfigError("a per-episode budget is a total L2 norm over the episode: use norm='l2'")
        if self.target == "dynamics":
            raise ConfigError("target 'dynamics' is a shift of env_params (envs/perturbations.py), "
                              "not an attack; use target observation or action")
        return self


class Memory(NamedTuple):
    """How a recurrent victim's carry starts and moves. Its `policy` and
    `value` read the carry from `vparams["carry"]`, which the episode loop
    (`evaluate`, `envs.adversarial.AdversaryEnv`) sets step by step with
    `with_carry`, so the attacks themselves never see it: each attacks the
    current step's observation given the history the victim has seen, its
    own perturbed observations included.

    initial() -> the carry at an episode's start;
    advance(vparams, net_input) -> the carry after acting on net_input."""
    initial: Callable
    advance: Callable


class Victim(NamedTuple):
    """A trained policy, as static functions of its parameter pytree.

    policy(vparams, net_input) -> dist (logits, or (mean, log_std));
    value(vparams, net_input) -> V, or None for agents without a state-value critic;
    normalize(vparams, raw_obs) -> net_input (identity without observation normalisation);
    action_map(action) -> the environment's action (e.g. SAC's tanh squashing), or None;
    memory: a `Memory` for a policy with a carry, None without."""
    policy: Callable
    value: Optional[Callable]
    normalize: Callable
    discrete: bool
    action_map: Optional[Callable] = None
    memory: Optional[Memory] = None


def with_carry(vparams, carry):
    """A recurrent victim's parameters with the carry it acts from now (a
    dict of parameters, as `meta.adversary.ppo_vparams` builds)."""
    return {**vparams, "carry": carry}


def check_eps(eps_values):
    for eps in eps_values:
        if not eps >= 0:   # also catches NaN
            raise ConfigError(f"eps must be >= 0, got {eps}")


# ----------------------------------------------------------------------------- balls

def project(delta, eps, norm):
    """The closest point of the eps-ball (per sample: the last axis is the observation)."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    size = jnp.linalg.norm(delta, axis=-1, keepdims=True)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(size, 1e-12))


def steepest(grad, norm):
    """The unit-norm direction of steepest ascent for the ball's norm."""
    if norm == "linf":
        return jnp.sign(grad)
    return grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)


def uniform_in_ball(key, shape, eps, norm):
    if norm == "linf":
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) * eps
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, shape)
    direction = direction / jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    radius = jax.random.uniform(radius_key, shape[:-1] + (1,)) ** (1.0 / shape[-1])
    return direction * radius * eps


# ----------------------------------------------------------------------------- divergences

def kl(p, q, discrete):
    """KL(p || q) between two action distributions of the same kind."""
    if discrete:
        logp, logq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
        return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    (mp, lp), (mq, lq) = p, q
    return jnp.sum(lq - lp + (jnp.exp(2 * lp) + (mp - mq) ** 2) / (2 * jnp.exp(2 * lq)) - 0.5, axis=-1)


def _standard_bounds(mean, log_std, low, high):
    """(low - mean) / std and (high - mean) / std, clamped to +-50 (beyond
    which float32 normal tails are exactly 0 or 1) so that infinite bounds and
    far-away means stay finite."""
    std = jnp.exp(log_std)
    return jnp.clip((low - mean) / std, -50.0, 50.0), jnp.clip((high - mean) / std, -50.0, 50.0)


def clipped_kl(p, q, low, high):
    """KL(p || q) between the distributions of clip(a, low, high) for Gaussian
    a ~ p and a ~ q: what an environment that clips continuous actions to the
    box [low, high] receives. Each is a point mass at low (P(a <= low)), one at
    high (P(a >= high)) and the Gaussian density in between; summed over the
    action dimensions. Without bounds (low = -inf, high = inf) it is `kl`."""
    from jax.scipy.special import log_ndtr, ndtr
    (mp, lp), (mq, lq) = p, q
    alpha, beta = _standard_bounds(mp, lp, low, high)
    alpha_q, beta_q = _standard_bounds(mq, lq, low, high)
    log_p_low, log_p_high = log_ndtr(alpha), log_ndtr(-beta)
    atoms = (jnp.exp(log_p_low) * (log_p_low - log_ndtr(alpha_q))
             + jnp.exp(log_p_high) * (log_p_high - log_ndtr(-beta_q)))
    # the interior mass Z = P(low < a < high), computed on the side of the
    # smaller tail probabilities (no cancellation of two numbers near 1)
    upper_half = mp > 0.5 * (low + high)
    z = jnp.where(upper_half, ndtr(beta) - ndtr(alpha), ndtr(-alpha) - ndtr(-beta))
    pdf = lambda t: jnp.exp(-0.5 * t * t) / jnp.sqrt(2 * jnp.pi)  # noqa: E731
    sp = jnp.exp(lp)
    m1 = sp * (pdf(alpha) - pdf(beta))                               # int (a - mp) p(a) da over the box
    m2 = sp ** 2 * (z + alpha * pdf(alpha) - beta * pdf(beta))       # int (a - mp)^2 p(a) da over the box
    d = mp - mq
    interior = z * (lq - lp) - m2 / (2 * sp ** 2) + (m2 + 2 * d * m1 + d ** 2 * z) / (2 * jnp.exp(2 * lq))
    return jnp.sum(atoms + interior, axis=-1)


def clipped_action_deviation(clean, perturbed, low, high):
    """The FGSM/PGD objective for a Gaussian policy whose action the
    environment clips to [low, high]: minus the log-probability, under the
    perturbed policy's clipped distribution, of the action the clean
    deterministic policy sends, clip(mean, low, high). Inside the box that is
    `action_deviation`; at a bound it is minus the log of the perturbed
    policy's mass beyond that bound, which keeps a gradient (towards the
    inside of the box) where the mean itself is clipped."""
    from jax.scipy.special import log_ndtr
    (mp, _), (mq, lq) = clean, perturbed
    alpha_q, beta_q = _standard_bounds(mq, lq, low, high)
    inside = 0.5 * ((mp - mq) / jnp.exp(lq)) ** 2 + lq
    per_dim = jnp.where(mp >= high, -log_ndtr(-beta_q), jnp.where(mp <= low, -log_ndtr(alpha_q), inside))
    return jnp.sum(per_dim, axis=-1)


def action_deviation(clean, perturbed, discrete):
    """The FGSM/PGD objective: minus the log-probability, under the perturbed
    policy, of the action the clean policy takes (cross-entropy for discrete
    policies; for a Gaussian, the std-scaled squared distance of the means)."""
    if discrete:
        target = jnp.argmax(clean, axis=-1)
        logq = jax.nn.log_softmax(perturbed)
        return -jnp.take_along_axis(logq, target[..., None], axis=-1)[..., 0]
    (mp, _), (mq, lq) = clean, perturbed
    return jnp.sum(0.5 * ((mp - mq) / jnp.exp(lq)) ** 2 + lq, axis=-1)


# ----------------------------------------------------------------------------- optimisers

def pgd_maximise(objective, key, x, eps, norm, steps, random_start=True, step_scale=2.5):
    """max over ||delta|| <= eps of objective(x + delta) (per sample: the
    objective returns one value per leading index of x), by `steps` projected
    steepest-ascent steps of step_scale*eps/steps from a uniform random start.
    Returns the best iterate seen (no gradient flows through it): fixed-size
    projected steps can circle the optimum on an L2 sphere."""
    x = jax.lax.stop_gradient(x)
    delta = uniform_in_ball(key, x.shape, eps, norm) if random_start else jnp.zeros_like(x)
    alpha = step_scale * eps / steps

    def value_and_grad(delta):
        value, pullback = jax.vjp(lambda d: objective(x + d), delta)
        return value, pullback(jnp.ones_like(value))[0]

    def keep_better(best, best_value, delta, value):
        better = value > best_value
        return jnp.where(better[..., None], delta, best), jnp.where(better, value, best_value)

    def body(_, carry):
        delta, best, best_value = carry
        value, grad = value_and_grad(delta)
        best, best_value = keep_better(best, best_value, delta, value)
        return project(delta + alpha * steepest(grad, norm), eps, norm), best, best_value

    first = objective(x + delta)
    delta, best, best_value = jax.lax.fori_loop(0, steps, body, (delta, delta, jnp.full_like(first, -jnp.inf)))
    best, _ = keep_better(best, best_value, delta, objective(x + delta))
    return jax.lax.stop_gradient(best)


def fgsm(objective, key, x, eps, norm, start_scale=1e-3):
    """One steepest-ascent step of length eps. The gradient is taken at a tiny
    random offset: objectives measured against the clean output (the Gaussian
    deviation, the KL) are stationary at delta = 0."""
    x = jax.lax.stop_gradient(x)
    start = uniform_in_ball(key, x.shape, start_scale * eps, norm)
    grad = jax.grad(lambda d: jnp.sum(objective(x + d)))(start)
    return jax.lax.stop_gradient(project(eps * steepest(grad, norm), eps, norm))


# ----------------------------------------------------------------------------- attacks

def make_attack(name, threat: ThreatModel, victim: Victim, steps: int = 10, adversary=None, step_scale: float = 2.5,
                action_bounds=None):
    """attack(key, vparams, x, eps, adv_params=None) -> delta, for x in the threat model's units.

    adversary: for 'learned', a function (adv_params, raw_obs) -> pre-tanh action.
    step_scale: PGD's step is step_scale * eps / steps (1: the K steps of eps/K).
    action_bounds: (low, high) of the box the environment clips a continuous
    Gaussian policy's action to; given, FGSM/PGD and MAD measure the clipped
    action distribution the environment receives (`clipped_action_deviation`,
    `clipped_kl`) instead of the unclipped Gaussian."""
    threat.validate()
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if name == "critic" and victim.value is None:
        raise ConfigError("the critic attack minimises the victim's state value V(s), and this agent has no "
                          f"state-value critic; choose from {', '.join(a for a in ATTACKS if a != 'critic')}")
    if name in GRADIENT_ATTACKS and threat.target != "observation":
        raise ConfigError(f"attack {name!r} perturbs observations; with target {threat.target!r} use random or learned")
    if threat.target == "action" and victim.discrete:
        raise ConfigError("target 'action' adds delta to a continuous action; this policy's actions are discrete")
    if name == "learned" and adversary is None:
        raise ConfigError("the learned attack needs a trained adversary (meta/adversary.py)")
    if steps < 1:
        raise ConfigError(f"attack steps must be >= 1, got {steps}")
    if not step_scale > 0:
        raise ConfigError(f"the PGD step scale must be > 0, got {step_scale}")
    if action_bounds is not None and (victim.discrete or victim.action_map is not None):
        raise ConfigError("action_bounds apply to a Gaussian policy whose action the environment clips; this "
                          "victim's actions are " + ("discrete" if victim.discrete else "mapped by its action_map"))

    def policy_of(vparams, x):
        z = x if threat.units == "normalised" else victim.normalize(vparams, x)
        return victim.policy(vparams, z)

    def attack(key, vparams, x, eps, adv_params=None, raw_obs=None):
        if name == "random":
            shape = x.shape
            return uniform_in_ball(key, shape, eps, threat.norm)
        if name == "learned":
            a = adversary(adv_params, raw_obs if raw_obs is not None else x)
            return project(eps * jnp.tanh(a), eps, threat.norm)
        if name == "critic":
            objective = lambda y: -victim.value(vparams, y if threat.units == "normalised"  # noqa: E731
                                                else victim.normalize(vparams, y))
        else:
            clean = jax.lax.stop_gradient(policy_of(vparams, x))
            if action_bounds is not None:
                low, high = action_bounds
                divergence = (lambda p, q: clipped_action_deviation(p, q, low, high)) if name in ("fgsm", "pgd") \
                    else (lambda p, q: clipped_kl(p, q, low, high))
            else:
                divergence = (lambda p, q: action_deviation(p, q, victim.discrete)) if name in ("fgsm", "pgd") \
                    else (lambda p, q: kl(p, q, victim.discrete))
            objective = lambda y: divergence(clean, policy_of(vparams, y))  # noqa: E731
        if name == "fgsm":
            return fgsm(objective, key, x, eps, threat.norm)
        return pgd_maximise(objective, key, x, eps, threat.norm, steps, step_scale=step_scale)

    return attack


# ----------------------------------------------------------------------------- one attacked step

def attacked_action(attack, threat, victim, vparams, key, obs, eps, adv_params=None, deterministic=True,
                    noise_sigma=0.0):
    """The victim's action on an attacked observation.

    Returns (action, delta, net_input): delta in the threat model's units and
    net_input exactly what the policy network saw. noise_sigma > 0 adds
    Gaussian smoothing noise (in the same units) after the attack."""
    attack_key, noise_key, act_key = jax.random.split(key, 3)
    if threat.units == "normalised":
        x = victim.normalize(vparams, obs)
        delta = attack(attack_key, vparams, x, eps, adv_params, obs)
        net_input = x + delta
    else:
        delta = attack(attack_key, vparams, obs, eps, adv_params, obs)
        net_input = victim.normalize(vparams, obs + delta)
    # smoothing noise is always drawn (times zero when off) so that sigma can
    # be a traced argument of one compiled program
    noise = noise_sigma * jax.random.normal(noise_key, obs.shape)
    net_input = net_input + noise if threat.units == "normalised" else victim.normalize(vparams, obs + delta + noise)
    dist = victim.policy(vparams, net_input)
    if deterministic:
        action = mode(dist, victim.discrete)
    elif victim.discrete:
        action = jax.random.categorical(act_key, dist)
    else:
        action = dist[0] + jnp.exp(dist[1]) * jax.random.normal(act_key, dist[0].shape)
    if victim.action_map is not None:
        action = victim.action_map(action)
    return action, delta, net_input


def evaluate(env, env_params, victim, vparams, attack, threat, key, eps, num_episodes: int, max_steps: int,
             adv_params=None, noise_sigma=0.0, deterministic=True, with_spent=False):
    """Returns (returns, lengths) of num_episodes attacked episodes, vmapped
    over episodes (and, with_spent, each episode's sum_t ||delta_t||^2).

    Per-step budget: every step's delta lies in the eps-ball. Per-episode
    budget: eps is the episode's total L2 budget; each step may spend what is
    left. With target 'action' the (continuous) action is perturbed instead."""
    threat.validate()
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)
    per_episode = threat.budget == "episode"
    memory = victim.memory

    def one(key, obs, spent, memory_carry):
        # a recurrent victim acts from its carry (the history it saw, attacks included)
        vp = vparams if memory is None else with_carry(vparams, memory_carry)
        radius = jnp.sqrt(jnp.maximum(eps ** 2 - spent, 0.0)) if per_episode else eps
        if threat.target == "action":
            no_attack = lambda k, vp, x, e, a=None, r=None: jnp.zeros_like(x)  # noqa: E731
            action, _, net_input = attacked_action(no_attack, threat, victim, vp, key, obs, 0.0, None,
                                                   deterministic, noise_sigma)
            delta = attack(jax.random.fold_in(key, 1), vp, action, radius, adv_params, obs)
            action = action + delta
        else:
            action, delta, net_input = attacked_action(attack, threat, victim, vp, key, obs, radius, adv_params,
                                                       deterministic, noise_sigma)
        if memory is not None:
            memory_carry = memory.advance(vp, net_input)
        return action, jnp.sum(delta ** 2), memory_carry

    def body(carry, key):
        obs, state, returns, lengths, running, spent, memory_carry = carry
        act_key, step_key = jax.random.split(key)
        action, used, memory_carry = jax.vmap(one)(jax.random.split(act_key, num_episodes), obs, spent,
                                                   memory_carry)
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, num_episodes), state, action, env_params)
        returns = returns + reward * running
        lengths = lengths + running.astype(jnp.int32)
        # one episode per index: what follows its end is not counted, so the carry needs no reset
        running = jnp.logical_and(running, jnp.logical_not(jnp.logical_or(terminated, truncated)))
        return (obs, state, returns, lengths, running, spent + used, memory_carry), None

    zeros = jnp.zeros(num_episodes, jnp.float32)
    memory_carry = None if memory is None else jax.tree.map(
        lambda c: jnp.broadcast_to(c, (num_episodes, *c.shape)), memory.initial())
    init = (obs, state, zeros, jnp.zeros(num_episodes, jnp.int32), jnp.ones(num_episodes, bool), zeros,
            memory_carry)
    (_, _, returns, lengths, _, spent, _), _ = jax.lax.scan(body, init, jax.random.split(run_key, max_steps))
    return (returns, lengths, spent) if with_spent else (returns, lengths)
