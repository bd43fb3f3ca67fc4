"""Bi-level reward alignment (BARFI: Gupta et al. 2023) and its baselines.

Inner level: a PPO agent (agents/ppo.py) driven one iteration at a time
through `agent.step`, trained on a reward r_phi and discount gamma_phi:

    r_phi(s, a) = phi1(s) + r_p + phi2(s) * r_aux,   gamma_phi = sigmoid(psi)

Outer level: maximise the primary return J (r_p at the fixed gamma of the
config) over phi = (phi1, phi2, psi), one outer step (Adam) every
`outer_every` inner iterations. The outer gradient has three estimators
behind one signature `estimate(ts, reward_params, hparams, key) -> (grad, ts, info)`:

- "implicit": dJ/dphi = -(d2L/dphi dtheta) H^-1 dJ/dtheta, H = d2L/dtheta2,
  with H^-1 v by a Neumann series and Hessian-vector products by autodiff.
  L is a policy-gradient loss on a fresh rollout of the current policy:
  L(theta, phi) = -mean(log pi_theta(a|s) * A_phi) - ent_coef * entropy, where
  A_phi is GAE of r_phi with gamma_phi against PPO's (fixed) critic, so it is
  differentiable in phi and psi. dJ/dtheta is the REINFORCE gradient of the
  same rollout with primary returns-to-go (gamma fixed) minus a per-time-step
  baseline over envs. The inner learner itself is PPO, so L is BARFI's model
  of the inner update, not PPO's clipped loss: an approximation, as in BARFI.
- "unrolled": jax.grad of the REINFORCE surrogate of J, evaluated on a
  rollout of the policy after K real inner PPO iterations, through those K
  iterations (rewards, GAE, minibatch Adam updates).
- "es": antithetic evolution strategies: `es_pairs` pairs phi +- sigma*eps,
  each pair sharing its random numbers, each member running K inner PPO
  iterations from the current state; fitness is the mean discounted primary
  return-to-go of a rollout after them. The perturbed runs are thrown away.

Every estimator's extra environment steps (outer rollouts, ES members) are
counted in `env_steps`, so curves against env steps compare fairly.

With `reuse_rollout` (the presets' setting) the rollout the outer gradient is
computed on is not a fresh one: it is the inner learner's own next on-policy
batch, the num_envs x num_steps transitions PPO's next `agent.step` collects
from the same TrainState (same parameters, env states and key), scored with
r_p. `collect_inner` is the agent's own `collect` from the learner's state
(tests check the env state it ends in against `agent.step`'s), and the
TrainState is left as it was, so PPO then trains on those very transitions:
the outer step costs no extra environment steps. (The outer step comes
before the iteration that trains on the batch, so that iteration already
sees the updated phi; collecting the batch twice costs compute, not
samples.) The batch is on-policy for the parameters the implicit gradient
is taken at, as the separate rollout was. No rollout is written here: every
one is the agent's `collect`.

The baselines (methods "primary", "naive", "pbrs") run the same PPO with
r_p, r_p + r_aux and r_p + gamma*Phi(s') - Phi(s).
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

import envs
from agents import ppo
from envs import heuristics, rewards
from envs.rewards import Transition
from meta import es as es_lib
from src import config as cfg
from src import progress
from src.config import ConfigError
from src.gae import gae
from src.networks import ActorCritic, entropy, log_prob, unroll

METHODS = ("barfi", "naive", "pbrs", "primary")
ESTIMATORS = ("implicit", "unrolled", "es")
OUTER_OPTIMIZERS = ("adam", "normalized")


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
    env: str = "gridworld/barfi"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    heuristic: str = "gridworld-bad"
    method: str = "barfi"
    estimator: str = "implicit"
    seed: int = 0
    seeds: int = 10
    total_steps: int = 200_000
    # inner learner (PPO)
    num_envs: int = 16
    num_steps: int = 32
    num_epochs: int = 4
    num_minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 2.5e-4
    anneal_lr: bool = True
    normalize_reward: bool = False   # PPO's running-return scaling, for every method alike
    gamma: float = 0.99          # the primary objective's discount (and the baselines')
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    # outer learner
    outer_every: int = 15        # inner iterations per outer step
    warmup: int = 1              # outer steps skipped at the start (inner learner warms up)
    outer_lr: float = 0.01
    # "adam", or "normalized": SGD with momentum 0.9 on dJ/dphi / |dJ/dphi| (one
    # global scale, so coordinates with tiny, noisy gradients move in proportion
    # to them, where Adam's per-coordinate scaling gives each a step of ~outer_lr)
    outer_optimizer: str = "adam"
    outer_rollout: int = 64      # steps per env of the rollout an outer step evaluates
    reuse_rollout: bool = False  # outer gradient on PPO's own next batch (num_steps per env), no extra steps
    learn_gamma: bool = True
    neumann_terms: int = 5
    neumann_alpha: float = 1e-3
    unroll: int = 1              # K inner iterations for "unrolled" and "es"
    es_pairs: int = 4
    es_sigma: float = 0.05
    checkpoint_every: int = 0    # blocks between checkpoints of each method's run (0: at the end only)
    ppo: dict = dataclasses.field(default_factory=dict)   # any other PPOConfig key of the learner (--set ppo.KEY=V)

    @property
    def batch_size(self):
        return self.num_envs * self.num_steps

    @property
    def outer_env_steps(self):
        """Environment steps an outer step takes beyond the inner iterations."""
        if self.method != "barfi":
            return 0
        extra = 0 if self.reuse_rollout else self.outer_rollout * self.num_envs
        if self.estimator == "es":
            extra += 2 * self.es_pairs * (self.unroll * self.batch_size + self.outer_rollout * self.num_envs)
        return extra

    @property
    def num_blocks(self):
        """Blocks of (outer_every inner iterations + one outer step) that fit in
        total_steps, outer steps' own samples included."""
        return max(self.total_steps // (self.batch_size * self.outer_every + self.outer_env_steps), 1)

    @property
    def num_iterations(self):
        return self.num_blocks * self.outer_every

    def validate(self):
        envs.check_name(self.env)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown outer-gradient estimator {self.estimator!r}; "
                              f"choose one of {', '.join(ESTIMATORS)}")
        heuristic = heuristics.get(self.heuristic, self.env)
        if self.method == "pbrs" and heuristic.potential is None:
            with_potential = [n for n in heuristics.names_for(self.env) if heuristics.HEURISTICS[n].potential]
            raise ConfigError(f"heuristic {self.heuristic!r} has no potential, so method 'pbrs' cannot use it; "
                              f"heuristics with one for {self.env}: {', '.join(with_potential) or 'none'}")
        for name in ("seeds", "num_envs", "num_steps", "num_epochs", "num_minibatches", "outer_every",
                     "outer_rollout", "neumann_terms", "unroll", "es_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.checkpoint_every < 0:
            raise ConfigError(f"warmup and checkpoint_every must be >= 0, got {self.warmup}, {self.checkpoint_every}")
        if self.unroll > self.outer_every:
            raise ConfigError(f"unroll ({self.unroll}) must be at most outer_every ({self.outer_every})")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"num_envs*num_steps ({self.batch_size}) must be divisible by "
                              f"num_minibatches ({self.num_minibatches})")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"gamma must be in (0, 1) (the learned discount is a sigmoid), got {self.gamma}")
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise ConfigError(f"unknown outer_optimizer {self.outer_optimizer!r}; "
                              f"choose one of {', '.join(OUTER_OPTIMIZERS)}")
        if self.outer_lr <= 0 or self.neumann_alpha <= 0 or self.es_sigma <= 0:
            raise ConfigError("outer_lr, neumann_alpha and es_sigma must be positive")
        if self.ppo_config().normalize_obs:   # an unknown or doubly set `ppo:` key fails here too
            raise ConfigError("ppo.normalize_obs is not supported here: the learned reward and the heuristics "
                              "read raw observations; drop ppo.normalize_obs")
        return self

    def ppo_config(self) -> "ppo.PPOConfig":
        return cfg.inner_config(ppo.PPOConfig, dict(
            env=self.env, env_kwargs=self.env_kwargs, seed=self.seed, seeds=self.seeds,
            total_steps=self.num_iterations * self.batch_size, num_envs=self.num_envs, num_steps=self.num_steps,
            num_epochs=self.num_epochs, num_minibatches=self.num_minibatches, hidden=tuple(self.hidden),
            lr=self.lr, anneal_lr=self.anneal_lr, normalize_reward=self.normalize_reward, gamma=self.gamma,
            gae_lambda=self.gae_lambda, clip_eps=self.clip_eps, ent_coef=self.ent_coef), self.ppo, "ppo")


def normalize_by_global_norm(eps: float = 1e-12) -> optax.GradientTransformation:
    """g / |g| (global norm over the pytree); an exactly zero g stays zero."""
    def update(updates, state, params=None):
        norm = optax.global_norm(updates)
        scale = jnp.where(norm > eps, 1.0 / jnp.maximum(norm, eps), 0.0)
        return jax.tree.map(lambda u: u * scale, updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_outer_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "normalized":
        return optax.chain(normalize_by_global_norm(), optax.sgd(lr, momentum=0.9))
    return optax.adam(lr)


# ----------------------------------------------------------------------------- generic implicit differentiation

def neumann_inverse_hvp(hvp: Callable, v, alpha, terms: int):
    """H^-1 v ~= alpha * sum_{k<terms} (I - alpha H)^k v, v a flat vector.

    Converges to H^-1 v when the eigenvalues of alpha*H lie in (0, 2); with
    few terms it is a damped, regularised inverse (BARFI uses 5)."""
    def body(carry, _):
        term, total = carry
        term = term - alpha * hvp(term)
        return (term, total + term), None

    (_, total), _ = jax.lax.scan(body, (v, v), None, length=terms - 1)
    return alpha * total


def implicit_gradient(inner_loss: Callable, theta, phi, outer_grad_theta, alpha, terms: int):
    """dJ/dphi for theta*(phi) = argmin_theta inner_loss(theta, phi):
    -(d2L/dphi dtheta) H^-1 dJ/dtheta, with H^-1 by `neumann_inverse_hvp`.
    theta and outer_grad_theta are pytrees of the same structure."""
    flat_theta, unravel = ravel_pytree(theta)
    v = ravel_pytree(outer_grad_theta)[0]

    def grad_theta(flat, phi_):
        return ravel_pytree(jax.grad(inner_loss)(unravel(flat), phi_))[0]

    def hvp(u):
        return jax.jvp(lambda f: grad_theta(f, phi), (flat_theta,), (u,))[1]

    w = jax.lax.stop_gradient(neumann_inverse_hvp(hvp, v, alpha, terms))
    cross = jax.grad(lambda p: jnp.vdot(grad_theta(flat_theta, p), w))(phi)
    return jax.tree.map(jnp.negative, cross)


# ----------------------------------------------------------------------------- evolution strategies

# ----------------------------------------------------------------------------- the RL pieces

class Batch(NamedTuple):
    """One rollout of the current policy, time first [T, E]."""
    transition: Transition      # for reward functions (info left empty)
    done: jax.Array
    value: jax.Array
    next_value: jax.Array
    carry: object = None        # memory: the carry each env's first step acted with; None without


def discounted_returns(rewards, done, gamma):
    """Returns-to-go inside the window, cut at episode ends, no bootstrap."""
    def backward(future, inputs):
        reward, d = inputs
        g = reward + gamma * (1.0 - d) * future
        return g, g
    _, returns = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (rewards, done), reverse=True)
    return returns


def primary_advantage(batch: Batch, gamma):
    """Primary returns-to-go minus the mean over envs at each time step: the
    per-time baseline also removes the bias of cutting returns at the window's
    end, which is the same for every env at a given step."""
    returns = discounted_returns(batch.transition.reward, batch.done.astype(jnp.float32), gamma)
    adv = returns - returns.mean(axis=1, keepdims=True)
    return adv / (adv.std() + 1e-8)


class State(NamedTuple):
    ts: object                  # the inner PPO TrainState
    reward_params: object
    opt_state: object
    key: jax.Array
    block: jax.Array


class Aligner(NamedTuple):
    config: AlignmentConfig
    agent: object
    heuristic: heuristics.Heuristic
    init: Callable
    block: Callable             # inner iterations then one outer step
    train: Callable             # key -> (state, metrics per inner iteration)
    estimate: Callable          # (ts, reward_params, hparams, key) -> (grad, ts, info)
    collect: Callable
    collect_inner: Callable     # ts -> (ts after, PPO's next batch with primary rewards)
    inner_loss: Callable
    env_steps_per_block: int
    estimators: dict            # all three estimators by name (`estimate` is config.estimator's), for tests
    es_fitness: Callable        # (ts, reward_params, key) -> the ES estimator's fitness of one member
    run: Callable               # (state, num_blocks) -> (state, metrics): a chunk of `train`, for checkpoints
    policy_terms: Callable      # (params, batch) -> (log pi, entropy) of the batch's actions (memory: given history)


def make(config: AlignmentConfig, show_progress: bool = False) -> Aligner:
    config = config.validate()
    heuristic = heuristics.get(config.heuristic, config.env)
    env, env_params = envs.make(config.env, **config.env_kwargs)
    discrete = envs.is_discrete(env, env_params)
    obs_dim = envs.obs_size(env, env_params)
    pconfig = config.ppo_config()
    reward_fn = {
        "primary": rewards.env_reward,
        "naive": rewards.naive_sum(heuristic.aux),
        "pbrs": rewards.potential_shaping(heuristic.potential or (lambda p, o: 0.0), config.gamma),
        "barfi": rewards.learned_reward(heuristic.aux),
    }[config.method]
    learned = rewards.learned_reward(heuristic.aux)
    agent = ppo.make(pconfig, env, env_params, reward_fn=reward_fn)
    # the same learner scoring the primary reward, for the rollouts outer steps evaluate
    primary_agent = ppo.make(pconfig, env, env_params)
    network = agent.network
    base_hparams = ppo.hparams_from(pconfig)
    outer_opt = make_outer_optimizer(config.outer_optimizer, config.outer_lr)
    barfi = config.method == "barfi"
    T, E = config.outer_rollout, config.num_envs

    def hparams_for(reward_params):
        if not barfi:
            return base_hparams
        return base_hparams.replace(gamma=rewards.learned_gamma(reward_params))

    def init(key):
        agent_key, key = jax.random.split(key)
        reward_params = rewards.init_learned_reward(obs_dim, config.gamma) if barfi else None
        ts = agent.init(agent_key, hparams_for(reward_params))
        opt_state = outer_opt.init(reward_params) if barfi else None
        return State(ts, reward_params, opt_state, key, jnp.zeros((), jnp.int32))

    def batch_of(rollout):
        """BARFI's view of a PPO rollout: the primary reward, and no gradient
        into the data (PPO never normalises observations here: validate)."""
        transition = Transition(rollout.obs, rollout.action, rollout.next_obs, rollout.env_reward,
                                rollout.terminated, {})
        carry = jax.tree.map(lambda c: c[0], rollout.carry)   # None (no leaves) without memory
        return jax.lax.stop_gradient(Batch(transition, rollout.done, rollout.value, rollout.next_value, carry))

    def collect(ts, key, length=T):
        """`length` steps of the current policy in the inner learner's own envs
        (their episodes go on), through the agent's `collect`; the learner's
        own key is left as it was."""
        after, rollout = primary_agent.collect(ts.replace(key=key), None, env_params, length)
        return after.replace(key=ts.key), batch_of(rollout)

    def collect_inner(ts):
        """The batch PPO's next `agent.step(ts, ...)` collects and trains on (the
        agent's `collect` from the same state), with primary rewards. Returns
        the state after it: its env states are those `agent.step` ends in."""
        after, rollout = primary_agent.collect(ts, None, env_params)
        return after, batch_of(rollout)

    def outer_batch(ts, key):
        """The rollout an outer step evaluates: PPO's own next batch (ts left as
        it is, so PPO trains on the same transitions) or a fresh one."""
        if config.reuse_rollout:
            return ts, collect_inner(ts)[1]
        return collect(ts, key)

    def policy_terms(params, batch):
        if pconfig.recurrent:
            # each env's whole window from the carry it started with, reset where
            # an episode began; flax's cell, as the implicit estimator's
            # Hessian-vector products take jax.jvp through it
            starts = jnp.concatenate([jnp.zeros_like(batch.done[:1]), batch.done[:-1]])
            dist, _ = unroll(network, params, batch.carry, batch.transition.obs, starts, forward_mode=True)
        else:
            dist = network.apply(params, batch.transition.obs, method=ActorCritic.policy)
        return log_prob(dist, batch.transition.action, discrete), entropy(dist, discrete)

    def primary_surrogate(params, batch):
        """Its gradient in params is the REINFORCE estimate of dJ/dtheta."""
        logp, _ = policy_terms(params, batch)
        return jnp.mean(logp * jax.lax.stop_gradient(primary_advantage(batch, config.gamma)))

    def inner_loss(params, reward_params, batch):
        """BARFI's inner objective: policy gradient with r_phi, gamma_phi, plus entropy."""
        r_phi = jax.vmap(jax.vmap(learned, in_axes=(None, 0)), in_axes=(None, 0))(reward_params, batch.transition)
        gamma = rewards.learned_gamma(reward_params)
        adv, _ = gae(r_phi, batch.value, batch.next_value, batch.transition.terminated, batch.done,
                         gamma, config.gae_lambda)
        logp, ent = policy_terms(params, batch)
        return -jnp.mean(logp * adv) - config.ent_coef * jnp.mean(ent)

    def fitness(batch):
        returns = discounted_returns(batch.transition.reward, batch.done.astype(jnp.float32), config.gamma)
        return returns.mean()

    def estimate_implicit(ts, reward_params, hparams, key):
        ts, batch = outer_batch(ts, key)
        outer_grad = jax.grad(primary_surrogate)(ts.params, batch)
        grad = implicit_gradient(lambda th, ph: inner_loss(th, ph, batch), ts.params, reward_params,
                                 outer_grad, config.neumann_alpha, config.neumann_terms)
        return grad, ts, {"outer_fitness": fitness(batch)}

    def run_inner(ts, reward_params, iterations):
        def body(t, _):
            return agent.step(t, hparams_for(reward_params), reward_params)
        return jax.lax.scan(body, ts, None, length=iterations)

    def estimate_unrolled(ts, reward_params, hparams, key):
        def objective(rp):
            t, metrics = run_inner(ts, rp, config.unroll)
            t, batch = outer_batch(t, key)
            return primary_surrogate(t.params, batch), (t, metrics, fitness(batch))

        grad, (ts, metrics, fit) = jax.grad(objective, has_aux=True)(reward_params)
        return grad, ts, {"outer_fitness": fit, "inner_metrics": metrics}

    def es_fitness(ts, reward_params, key):
        """An ES member's fitness: the primary return of a fresh rollout after
        `unroll` inner iterations with `reward_params`, the inner runs' own
        randomness (rollouts, minibatches) and the rollout's from `key`."""
        inner_key, rollout_key = jax.random.split(key)
        t, _ = run_inner(ts.replace(key=inner_key), reward_params, config.unroll)
        _, batch = collect(t, rollout_key)
        return fitness(batch)

    def estimate_es(ts, reward_params, hparams, key):
        flat, unravel = ravel_pytree(reward_params)
        noise_key, pair_key, key = jax.random.split(key, 3)
        grad = es_lib.antithetic_gradient(lambda delta, member_key: es_fitness(ts, unravel(flat + delta), member_key),
                                      flat.size, noise_key, pair_key, config.es_pairs, config.es_sigma)
        # the real learner takes one rollout too, so ES reports the same fitness as the others
        ts, batch = outer_batch(ts, key)
        return unravel(grad), ts, {"outer_fitness": fitness(batch)}

    estimators = {"implicit": estimate_implicit, "unrolled": estimate_unrolled, "es": estimate_es}
    estimate = estimators[config.estimator]
    inner_before = config.outer_every - (config.unroll if config.estimator == "unrolled" else 0)

    def block(state: State):
        key, outer_key = jax.random.split(state.key)
        ts, metrics = run_inner(state.ts, state.reward_params, inner_before)
        info = {}
        reward_params, opt_state = state.reward_params, state.opt_state
        if barfi:
            grad, ts, info = estimate(ts, reward_params, hparams_for(reward_params), outer_key)
            if "inner_metrics" in info:
                metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), metrics, info.pop("inner_metrics"))
            if not config.learn_gamma:
                grad = {**grad, "psi": jnp.zeros_like(grad["psi"])}
            # Adam minimises: step along -dJ/dphi; warm-up blocks leave phi alone
            updates, new_opt_state = outer_opt.update(jax.tree.map(jnp.negative, grad), opt_state, reward_params)
            active = state.block >= config.warmup
            reward_params = jax.tree.map(lambda p, u: jnp.where(active, p + u, p), reward_params, updates)
            opt_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_opt_state, opt_state)
            info["outer_grad_norm"] = optax.global_norm(grad)
            info["gamma_phi"] = rewards.learned_gamma(reward_params)
            # where the learned reward stands: its aux weight and extra term, averaged over the envs' states
            info["phi2_mean"] = jnp.mean(jax.vmap(lambda o: rewards.linear_head(reward_params["phi2"], o))(ts.obs))
            info["phi1_mean"] = jnp.mean(jax.vmap(lambda o: rewards.linear_head(reward_params["phi1"], o))(ts.obs))
        block_metrics = {"episode_return": metrics["episode_return"], "entropy": metrics["entropy"],
                         "policy_loss": metrics["policy_loss"]}
        for name, value in info.items():
            block_metrics[name] = jnp.broadcast_to(value, (config.outer_every,))
        return State(ts, reward_params, opt_state, key, state.block + 1), block_metrics

    extra = config.outer_env_steps
    env_steps_per_block = config.outer_every * config.batch_size + extra

    def run(state, num_blocks: int):
        """`num_blocks` (static) more blocks from `state`: (state, metrics per
        inner iteration), iterations and env steps counted from the run's start."""
        state, metrics = progress.scan_iterations(block, state, num_blocks, show_progress)
        n = num_blocks * config.outer_every
        metrics = jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), metrics)
        iteration = (state.block - num_blocks) * config.outer_every + jnp.arange(1, n + 1)
        blocks_done = (iteration - 1) // config.outer_every + 1
        # outer steps' extra samples are charged at the end of their block
        metrics["env_steps"] = iteration * config.batch_size + jnp.where(
            iteration % config.outer_every == 0, blocks_done, blocks_done - 1) * extra
        return state, metrics

    def train(key):
        return run(init(key), config.num_blocks)

    return Aligner(config, agent, heuristic, init, block, train, estimate, collect, collect_inner, inner_loss,
                   env_steps_per_block, estimators, es_fitness, run, policy_terms)


def summarize(metrics, final_frac: float = 0.1):
    """Per seed: final return (mean of the last `final_frac` of iterations) and
    area under the curve (mean over all iterations, skipping the first ones
    where no episode has finished yet)."""
    import numpy as np
    returns = np.asarray(metrics["episode_return"], dtype=float)      # [seeds, iterations]
    last = max(int(math.ceil(returns.shape[1] * final_frac)), 1)
    final = np.nanmean(returns[:, -last:], axis=1)
    area = np.nanmean(returns, axis=1)
    return {"final": final, "auc": area}
