"""Soft actor-critic as pure functions, for continuous and discrete actions.

    agent = sac.make(config)                       # or make(config, env, env_params, reward_fn)
    state, metrics = agent.train(key, hparams)     # one whole run: init + scan(step)
    state, metrics = agent.step(state, hparams)    # one iteration, for outer loops

One iteration: `num_steps` steps of `num_envs` environments (the transitions go
into a replay buffer held in the train state), then `num_updates` gradient
steps, each on a fresh uniform minibatch of `sgd_batch_size` transitions.
`updates_per_step` is the update-to-data ratio: gradient steps per collected
transition, so 0.25 with num_envs*num_steps = 4 is one update per iteration.

Continuous actions: tanh-squashed Gaussian policy scaled to the action box.
Log-probabilities and entropies are measured in the squashed [-1, 1] space
(the box's constant scale Jacobian is left out), so the default target
entropy -|A| means the same for any box. Discrete actions: softmax policy,
expectations over all actions, target entropy target_entropy_scale*log|A|.
Both: twin Q-networks with Polyak-averaged target copies, the temperature
learned through log(alpha). Bootstraps through truncation, not termination.

Hyperparameters (`HParams`) are traced pytree leaves, so a sweep is a vmap;
sizes in `SACConfig` are static. Metrics are reduced per iteration.
"""
import dataclasses
import math
import os
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

import envs
from agents import base
from envs.rewards import Transition, env_reward
from src import normalize, replay
from src.config import ConfigError
from src.networks import MLP

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
MEMORY_FRACTION = 0.5   # preflight refuses replay buffers above this share of memory


@dataclasses.dataclass(frozen=True)
class SACConfig:
    algo: str = "sac"
    env: str = "Pendulum-v1"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    seeds: int = 4
    total_steps: int = 100_000
    num_envs: int = 1
    num_steps: int = 1              # steps of each env per iteration
    updates_per_step: float = 1.0   # gradient steps per collected transition (UTD ratio)
    buffer_size: int = 100_000      # transitions, shared by all envs of one run
    sgd_batch_size: int = 256       # minibatch of one gradient step
    learning_starts: int = 1_000    # env steps of uniform random actions before learning
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    normalize_obs: bool = False
    learn_alpha: bool = True
    target_entropy: Optional[float] = None   # continuous only; None: -|A|
    # traced hyperparameters (HParams): the sweepable ones
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 1.0
    target_entropy_scale: float = 0.5   # discrete only: target entropy = scale * log|A|
    # run bookkeeping
    eval_episodes: int = 50
    checkpoint_every: int = 0   # iterations between checkpoints; 0: only at the end

    @property
    def batch_size(self):
        """Environment steps per iteration (what run.py counts)."""
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self):
        return self.total_steps // self.batch_size

    @property
    def num_updates(self):
        """Gradient steps per iteration."""
        return int(round(self.updates_per_step * self.batch_size))

    def validate(self):
        for name in ("total_steps", "num_envs", "num_steps", "buffer_size", "sgd_batch_size", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.buffer_size < self.sgd_batch_size:
            raise ConfigError(f"buffer_size ({self.buffer_size}) must be at least sgd_batch_size "
                              f"({self.sgd_batch_size}), the minibatch of one gradient step")
        if self.buffer_size < self.num_envs:
            raise ConfigError(f"buffer_size ({self.buffer_size}) must hold at least one step of all "
                              f"num_envs ({self.num_envs}) environments")
        if self.total_steps < self.batch_size:
            raise ConfigError(f"total_steps ({self.total_steps}) must be at least num_envs*num_steps "
                              f"({self.num_envs}*{self.num_steps}={self.batch_size}), one iteration")
        if not self.updates_per_step > 0:
            raise ConfigError(f"updates_per_step must be positive, got {self.updates_per_step}")
        exact = self.updates_per_step * self.batch_size
        if abs(exact - round(exact)) > 1e-6 or round(exact) < 1:
            raise ConfigError(
                f"updates_per_step*num_envs*num_steps ({self.updates_per_step}*{self.batch_size}={exact:g}) must "
                "be a whole number >= 1 of gradient steps per iteration; raise num_steps for a fractional ratio")
        if not 0 <= self.learning_starts < self.total_steps:
            raise ConfigError(f"learning_starts must be in 0..total_steps-1 ({self.total_steps - 1}), "
                              f"got {self.learning_starts}")
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must list positive layer widths, got {self.hidden}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"need 0 < gamma <= 1, got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"need 0 < tau <= 1 (Polyak step towards the online critic), got {self.tau}")
        if self.lr <= 0 or self.init_alpha <= 0:
            raise ConfigError(f"lr and init_alpha must be positive, got {self.lr}, {self.init_alpha}")
        if not 0.0 <= self.target_entropy_scale <= 1.0:
            raise ConfigError(f"target_entropy_scale must be in [0, 1] (a fraction of log|A|), "
                              f"got {self.target_entropy_scale}")
        if self.target_entropy is not None and (isinstance(self.target_entropy, bool)
                                                or not isinstance(self.target_entropy, (int, float))):
            raise ConfigError(f"target_entropy must be a number or null (-|A|), got {self.target_entropy!r}")
        if self.checkpoint_every < 0 or self.eval_episodes < 1:
            raise ConfigError("checkpoint_every must be >= 0 and eval_episodes >= 1")
        return self


@struct.dataclass
class HParams:
    lr: jax.Array
    gamma: jax.Array
    tau: jax.Array
    init_alpha: jax.Array
    target_entropy_scale: jax.Array


HPARAM_NAMES = tuple(f.name for f in dataclasses.fields(HParams))


CONFIG = SACConfig


def hparams_from(config: SACConfig) -> HParams:
    return HParams(**{name: jnp.float32(getattr(config, name)) for name in HPARAM_NAMES})


# ----------------------------------------------------------------------------- networks


class Actor(nn.Module):
    """Discrete: logits. Continuous: (mean, log_std) of the pre-tanh Gaussian."""

    action_dim: int
    discrete: bool
    hidden: tuple = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs):
        if self.discrete:
            return MLP(self.hidden, self.action_dim, self.activation, kernel_init="lecun")(obs)
        out = MLP(self.hidden, 2 * self.action_dim, self.activation, kernel_init="lecun")(obs)
        mean, raw = jnp.split(out, 2, axis=-1)
        # squash log_std smoothly into [LOG_STD_MIN, LOG_STD_MAX]
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std


class TwinQ(nn.Module):
    """Two independent Q-networks, stacked on a leading axis of size 2.
    Discrete: Q(obs) -> [2, ..., |A|]. Continuous: Q(obs, action) -> [2, ...]."""

    outputs: int
    hidden: tuple = (256, 256)
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs, action=None):
        x = obs if action is None else jnp.concatenate([obs, action], axis=-1)
        qs = jnp.stack([MLP(self.hidden, self.outputs, self.activation, kernel_init="lecun")(x) for _ in range(2)])
        return qs if action is None else qs[..., 0]


def squashed_sample(key, mean, log_std):
    """tanh(u), u ~ N(mean, std): the action in [-1, 1] and its log-density
    there (change of variables: log N(u) - sum log(1 - tanh(u)^2))."""
    noise = jax.random.normal(key, mean.shape)
    u = mean + jnp.exp(log_std) * noise
    gaussian = jnp.sum(-0.5 * noise**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
    log_det = jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), gaussian - log_det


# ----------------------------------------------------------------------------- pure pieces (tested alone)

def polyak_update(target, online, tau):
    """target <- (1 - tau) * target + tau * online, leaf by leaf."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


def temperature_loss(log_alpha, entropy, target_entropy):
    """Loss for log(alpha): its gradient entropy - target is negative while the
    policy's entropy is below the target (so descent raises alpha) and zero at
    entropy == target."""
    return log_alpha * (jax.lax.stop_gradient(entropy) - target_entropy)


def soft_value_discrete(next_logp, next_qs, alpha):
    """V(s') = sum_a pi(a|s') (min_i Q_i(s', a) - alpha log pi(a|s')): the exact
    expectation over the actions. `next_logp` [..., |A|] is log pi, `next_qs`
    [2, ..., |A|] the twin target critics; the smaller of the two curbs the
    overestimation a max over noisy estimates builds up."""
    next_q = next_qs.min(axis=0)
    return jnp.sum(jnp.exp(next_logp) * (next_q - alpha * next_logp), axis=-1)


def soft_value_continuous(next_qs, next_logp, alpha):
    """V(s') ~ min_i Q_i(s', a') - alpha log pi(a'|s') for one sampled a' ~ pi(.|s')."""
    return next_qs.min(axis=0) - alpha * next_logp


def soft_q_target(reward, terminated, gamma, next_v):
    """r + gamma (1 - terminated) V(s'): termination cuts the bootstrap, truncation
    does not (the buffer stores terminated only)."""
    return reward + gamma * (1.0 - terminated) * next_v


def q_of_actions(qs, action):
    """Discrete: the twin critics' [2, B, |A|] values at the taken actions [B] -> [2, B]."""
    return jnp.take_along_axis(qs, action.astype(jnp.int32)[None, :, None], axis=-1)[..., 0]


def critic_loss_of(q, target):
    """Half the squared error of each critic [2, B] to the shared target [B],
    averaged over the batch and summed over the twins."""
    return 0.5 * jnp.sum(jnp.mean((q - target[None]) ** 2, axis=-1))


def actor_loss_discrete(logp, qs, alpha):
    """E_s sum_a pi(a|s) (alpha log pi(a|s) - min_i Q_i(s, a)), to minimise: descent
    moves probability towards high Q and keeps entropy. The critics are constants
    here. Returns (loss, the policy's mean entropy)."""
    probs = jnp.exp(logp)
    q = jax.lax.stop_gradient(qs.min(axis=0))
    loss = jnp.sum(probs * (alpha * logp - q), axis=-1).mean()
    ent = -jnp.sum(probs * logp, axis=-1).mean()
    return loss, ent


def actor_loss_continuous(logp, qs, alpha):
    """E_s [alpha log pi(a|s) - min_i Q_i(s, a)] for reparameterised a ~ pi(.|s),
    to minimise: descent moves the actions up the critics' slope (the critics'
    own parameters are not updated by it). `logp` [B], `qs` [2, B] at those
    actions. Returns (loss, the entropy estimate -mean log pi)."""
    q = qs.min(axis=0)
    loss = (alpha * logp - q).mean()
    ent = -logp.mean()
    return loss, ent


# ----------------------------------------------------------------------------- agent

class Stored(NamedTuple):
    """One replay transition. Observations raw (normalised when sampled, with
    the current statistics); continuous actions in the squashed [-1, 1] space."""
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array     # the real next observation (final_observation at episode ends)
    terminated: jax.Array   # float32: 1 cuts the bootstrap; truncation does not


@struct.dataclass
class TrainState:
    params: dict            # {"actor", "critic", "log_alpha"}
    target_params: dict     # Polyak-averaged copy of params["critic"]
    opt_state: dict         # one Adam state per entry of params
    buffer: replay.Buffer
    env_state: object
    obs: jax.Array
    obs_stats: normalize.RunningStats
    key: jax.Array
    iteration: jax.Array


def _spaces(config, env=None, env_params=None):
    if env is None:
        env, env_params = envs.make(config.env, **config.env_kwargs)
    discrete = envs.is_discrete(env, env_params)
    return env, env_params, discrete, envs.obs_size(env, env_params), envs.action_dim(env, env_params)


def transition_bytes(obs_dim: int, action_size: int) -> int:
    """float32/int32 obs, action, reward, next_obs, terminated."""
    return 4 * (2 * obs_dim + action_size + 2)


def preflight(config: SACConfig, num_members: int) -> str:
    """Replay memory of a population, checked before anything compiles."""
    config = config.validate()
    _, _, discrete, obs_dim, act_dim = _spaces(config)
    per = transition_bytes(obs_dim, 1 if discrete else act_dim)
    total = num_members * config.buffer_size * per
    where, available = "host memory", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            where, available = f"{jax.devices()[0].device_kind} memory", int(stats["bytes_limit"])
    except Exception:   # backends without memory statistics
        pass
    message = (f"replay buffers: {num_members} runs x {config.buffer_size:,} transitions x {per} B = "
               f"{total / 2**20:,.1f} MiB ({100 * total / available:.2g}% of {available / 2**30:,.1f} GiB {where})")
    if total > MEMORY_FRACTION * available:
        raise ConfigError(f"{message}: more than {MEMORY_FRACTION:.0%} of {where}; lower buffer_size "
                          "or the number of runs (seeds x sweep settings)")
    return message


def make(config: SACConfig, env=None, env_params=None, reward_fn=env_reward, objective=None,
         show_progress: bool = False) -> base.Agent:
    """Build the agent's pure functions. `reward_fn(reward_params, transition)`
    gives the reward stored in the buffer. SAC has no pluggable objective:
    `objective_params` is accepted by step/run/train for a uniform interface
    and ignored; passing an `objective` is an error."""
    if objective is not None:
        raise ValueError("SAC has no pluggable policy objective (that is PPO's); pass objective=None")
    config = config.validate()
    env, env_params, discrete, obs_dim, act_dim = _spaces(config, env, env_params)
    if discrete and config.target_entropy is not None:
        raise ConfigError(f"{config.env} has discrete actions: set target_entropy_scale (a fraction of "
                          "log|A|), not target_entropy")
    if discrete:
        target_entropy_of = lambda hp: hp.target_entropy_scale * math.log(act_dim)  # noqa: E731
        low = high = None
    else:
        space = env.action_space(env_params)
        low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), (act_dim,))
        high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), (act_dim,))
        if not (np.isfinite(np.asarray(low)).all() and np.isfinite(np.asarray(high)).all()):
            raise ConfigError(f"{config.env}: SAC squashes actions into a bounded box; the action space "
                              f"bounds are {low}, {high}")
        target = -float(act_dim) if config.target_entropy is None else float(config.target_entropy)
        target_entropy_of = lambda hp: jnp.float32(target)  # noqa: E731

    actor = Actor(act_dim, discrete, tuple(config.hidden), config.activation)
    critic = TwinQ(act_dim if discrete else 1, tuple(config.hidden), config.activation)
    num_envs, num_steps, num_updates = config.num_envs, config.num_steps, config.num_updates
    batch = config.sgd_batch_size
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    rewards_of = jax.vmap(reward_fn, in_axes=(None, 0))
    adam = optax.scale_by_adam()   # the learning rate is applied by hand: it is traced

    def norm_obs(stats, obs):
        return normalize.normalize(stats, obs) if config.normalize_obs else obs

    def to_env(action):
        """Squashed [-1, 1] action -> the environment's box."""
        return action if discrete else low + 0.5 * (action + 1.0) * (high - low)

    def policy_sample(actor_params, obs, key):
        """A stochastic action: an index, or a squashed action in [-1, 1]."""
        if discrete:
            logits = actor.apply(actor_params, obs)
            return jax.random.categorical(key, logits)
        mean, log_std = actor.apply(actor_params, obs)
        return squashed_sample(key, mean, log_std)[0]

    def init(key, hparams, env_params=env_params):
        actor_key, critic_key, env_key, key = jax.random.split(key, 4)
        dummy_obs = jnp.zeros((obs_dim,), jnp.float32)
        dummy_action = jnp.zeros((), jnp.int32) if discrete else jnp.zeros((act_dim,), jnp.float32)
        critic_params = critic.init(critic_key, dummy_obs, None if discrete else dummy_action)
        params = {"actor": actor.init(actor_key, dummy_obs), "critic": critic_params,
                  "log_alpha": jnp.log(hparams.init_alpha).astype(jnp.float32)}
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(env_key, num_envs), env_params)
        example = Stored(dummy_obs, dummy_action, jnp.zeros((), jnp.float32), dummy_obs, jnp.zeros((), jnp.float32))
        return TrainState(
            params=params,
            target_params=jax.tree.map(jnp.copy, critic_params),
            opt_state={k: adam.init(v) for k, v in params.items()},
            buffer=replay.init(config.buffer_size, example),
            env_state=env_state,
            obs=obs,
            obs_stats=normalize.init((obs_dim,)),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
        )

    def collect(ts, reward_params, env_params):
        def env_step(carry, _):
            env_state, obs, obs_stats, buffer, key, env_steps = carry
            key, act_key, random_key, env_key = jax.random.split(key, 4)
            policy_action = policy_sample(ts.params["actor"], norm_obs(obs_stats, obs), act_key)
            if discrete:
                random_action = jax.random.randint(random_key, (num_envs,), 0, act_dim)
            else:
                random_action = jax.random.uniform(random_key, (num_envs, act_dim), minval=-1.0, maxval=1.0)
            action = jnp.where(env_steps < config.learning_starts, random_action, policy_action)
            env_action = to_env(action)
            next_obs, env_state, env_rew, terminated, truncated, info = step_envs(
                jax.random.split(env_key, num_envs), env_state, env_action, env_params)
            final_obs = info["final_observation"]
            reward = rewards_of(reward_params, Transition(obs, env_action, final_obs, env_rew, terminated, info))
            buffer = replay.add(buffer, Stored(obs, action, reward.astype(jnp.float32), final_obs,
                                               terminated.astype(jnp.float32)))
            if config.normalize_obs:
                obs_stats = normalize.update(obs_stats, next_obs)
            out = (info["episode_done"], info["episode_return"])
            return (env_state, next_obs, obs_stats, buffer, key, env_steps + num_envs), out

        env_steps = ts.iteration * config.batch_size
        (env_state, obs, obs_stats, buffer, key, _), (done, ep_return) = jax.lax.scan(
            env_step, (ts.env_state, ts.obs, ts.obs_stats, ts.buffer, ts.key, env_steps), None, num_steps)
        return ts.replace(env_state=env_state, obs=obs, obs_stats=obs_stats, buffer=buffer, key=key), done, ep_return

    def critic_loss(critic_params, params, target_params, data, hparams, key):
        alpha = jnp.exp(params["log_alpha"])
        if discrete:
            logits = actor.apply(params["actor"], data.next_obs)
            next_logp = jax.nn.log_softmax(logits)
            next_v = soft_value_discrete(next_logp, critic.apply(target_params, data.next_obs), alpha)
        else:
            mean, log_std = actor.apply(params["actor"], data.next_obs)
            next_action, next_logp = squashed_sample(key, mean, log_std)
            next_v = soft_value_continuous(critic.apply(target_params, data.next_obs, next_action), next_logp, alpha)
        target = jax.lax.stop_gradient(soft_q_target(data.reward, data.terminated, hparams.gamma, next_v))
        if discrete:
            q = q_of_actions(critic.apply(critic_params, data.obs), data.action)
        else:
            q = critic.apply(critic_params, data.obs, data.action)
        loss = critic_loss_of(q, target)
        return loss, q.mean()

    def actor_loss(actor_params, params, data, key):
        alpha = jnp.exp(params["log_alpha"])
        if discrete:
            logp = jax.nn.log_softmax(actor.apply(actor_params, data.obs))
            return actor_loss_discrete(logp, critic.apply(params["critic"], data.obs), alpha)
        mean, log_std = actor.apply(actor_params, data.obs)
        action, logp = squashed_sample(key, mean, log_std)
        return actor_loss_continuous(logp, critic.apply(params["critic"], data.obs, action), alpha)

    def apply_adam(name, grads, params, opt_state, lr):
        updates, state = adam.update(grads, opt_state[name], params[name])
        new = optax.apply_updates(params[name], jax.tree.map(lambda u: -lr * u, updates))
        return {**params, name: new}, {**opt_state, name: state}

    def gradient_step(carry, key, buffer, obs_stats, hparams):
        params, target_params, opt_state = carry
        sample_key, next_key, pi_key = jax.random.split(key, 3)
        data = replay.sample(buffer, sample_key, batch)
        data = data._replace(obs=norm_obs(obs_stats, data.obs), next_obs=norm_obs(obs_stats, data.next_obs))

        (q_loss, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            params["critic"], params, target_params, data, hparams, next_key)
        params, opt_state = apply_adam("critic", grads, params, opt_state, hparams.lr)

        (pi_loss, ent), grads = jax.value_and_grad(actor_loss, has_aux=True)(params["actor"], params, data, pi_key)
        params, opt_state = apply_adam("actor", grads, params, opt_state, hparams.lr)

        alpha_loss, grad = jax.value_and_grad(temperature_loss)(params["log_alpha"], ent, target_entropy_of(hparams))
        if config.learn_alpha:
            params, opt_state = apply_adam("log_alpha", grad, params, opt_state, hparams.lr)

        target_params = polyak_update(target_params, params["critic"], hparams.tau)
        metrics = {"q_loss": q_loss, "q_mean": q_mean, "actor_loss": pi_loss, "alpha_loss": alpha_loss,
                   "entropy": ent, "alpha": jnp.exp(params["log_alpha"])}
        return (params, target_params, opt_state), metrics

    metric_names = ("q_loss", "q_mean", "actor_loss", "alpha_loss", "entropy", "alpha")

    def learn(ts, hparams):
        def updates(carry, key):
            (params, target_params, opt_state), metrics = jax.lax.scan(
                lambda c, k: gradient_step(c, k, ts.buffer, ts.obs_stats, hparams), carry,
                jax.random.split(key, num_updates))
            return (params, target_params, opt_state), {k: v.mean() for k, v in metrics.items()}

        def skip(carry, key):
            return carry, {k: jnp.float32(jnp.nan) for k in metric_names}

        key, update_key = jax.random.split(ts.key)
        ready = (ts.iteration + 1) * config.batch_size >= max(config.learning_starts, 1)
        (params, target_params, opt_state), metrics = jax.lax.cond(
            ready, updates, skip, (ts.params, ts.target_params, ts.opt_state), update_key)
        return ts.replace(params=params, target_params=target_params, opt_state=opt_state, key=key), metrics

    def step(ts, hparams, reward_params=None, objective_params=None, env_params=env_params):
        """One iteration: num_envs*num_steps env steps into the buffer, then num_updates gradient steps."""
        ts, done, ep_return = collect(ts, reward_params, env_params)
        ts, metrics = learn(ts, hparams)
        ts = ts.replace(iteration=ts.iteration + 1)
        metrics.update(base.episode_metrics(ts.env_state.last_return, done, ep_return, ts.iteration,
                                            config.batch_size))
        return ts, metrics

    def act(params, obs, key, deterministic=False, obs_stats=None):
        """Actions in the environment's own space; `params` is TrainState.params."""
        if config.normalize_obs:
            obs = normalize.normalize(obs_stats, obs)
        out = actor.apply(params["actor"], obs)
        if discrete:
            return jnp.argmax(out, axis=-1) if deterministic else jax.random.categorical(key, out)
        mean, log_std = out
        return to_env(jnp.tanh(mean) if deterministic else squashed_sample(key, mean, log_std)[0])

    def reset_envs(ts, key, env_params_per_env):
        """Every env reset on its own params (leading axis num_envs: a batch of levels)."""
        obs, env_state = jax.vmap(env.reset)(jax.random.split(key, num_envs), env_params_per_env)
        return ts.replace(env_state=env_state, obs=obs)

    return base.assemble(config, env, env_params, {"actor": actor, "critic": critic}, init, step, act, reset_envs,
                         config.num_iterations, config.eval_episodes, show_progress)
