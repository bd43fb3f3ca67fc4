"""Proximal policy optimisation as pure functions.

    agent = ppo.make(config)                       # or make(config, env, env_params, reward_fn, objective)
    state, metrics = agent.train(key, hparams)     # one whole run: init + scan(step)
    state, metrics = agent.step(state, hparams)    # one iteration, for outer loops

`memory: gru|lstm` puts a recurrent core between the encoder and the heads
(`RecurrentActorCritic`): its carry lives in the train state and the
rollout, and updates run backpropagation through time over whole rollouts,
minibatches split over environments. `memory: none` (the default) builds the
feed-forward program exactly as without the option.

Hyperparameters (`HParams`) are traced pytree leaves, so a sweep is a vmap;
sizes in `PPOConfig` are static. Metrics are reduced per iteration.
"""
import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

import envs
from agents import base
from envs.rewards import Transition, env_reward
from envs.wrappers import ReferenceLogProb, ReferenceParams, ReferenceState
from src import normalize, xla_cpu
from src.config import ConfigError
from src.gae import gae
from src.networks import (MEMORY_CELLS, ActorCritic, RecurrentActorCritic, entropy, log_prob, mode,
                          policy_without_dots, policy_without_dots_fits, reset_carry, sample, unroll)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    algo: str = "ppo"
    env: str = "CartPole-v1"
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    seeds: int = 8
    total_steps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128
    num_epochs: int = 4
    num_minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    anneal_lr: bool = True
    normalize_obs: bool = False
    normalize_reward: bool = False
    # traced hyperparameters (HParams): the sweepable ones
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    # SA-PPO (state-adversarial regulariser; 0 keeps plain PPO's program):
    # sa_kappa * max over the sa_eps L-inf ball (network input units) of
    # KL(pi(.|s) || pi(.|s+nu)), the max by sa_pgd_steps of PGD; sa_eps ramps
    # linearly from 0 over the first sa_ramp fraction of training
    sa_kappa: float = 0.0
    sa_eps: float = 0.1
    sa_pgd_steps: int = 10
    sa_ramp: float = 0.5
    # a recurrent core between encoder and heads: none, gru or lstm, of
    # memory_size units. Updates then unroll whole rollouts (backpropagation
    # through time) and split minibatches over envs, never over time steps
    memory: str = "none"
    memory_size: int = 64
    # envs 2i and 2i+1 share their reset and transition keys: each pair starts
    # from the same state and meets the same randomness, so the two differ only
    # by the policy's own actions (pairwise preference methods, meta/spo.py)
    paired_envs: bool = False
    # run bookkeeping
    eval_episodes: int = 50
    checkpoint_every: int = 0   # iterations between checkpoints; 0: only at the end

    @property
    def batch_size(self):
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self):
        return self.total_steps // self.batch_size

    def validate(self):
        for name in ("total_steps", "num_envs", "num_steps", "num_epochs", "num_minibatches", "seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.memory not in ("none", *MEMORY_CELLS):
            raise ConfigError(f"memory must be one of none, {', '.join(MEMORY_CELLS)}; got {self.memory!r}")
        if self.recurrent:   # first: its minibatch rule is the stricter one
            self._validate_memory()
        if self.batch_size % self.num_minibatches:
            raise ConfigError(
                f"num_envs*num_steps ({self.num_envs}*{self.num_steps}={self.batch_size}) must be divisible by "
                f"num_minibatches ({self.num_minibatches})")
        if self.total_steps < self.batch_size:
            raise ConfigError(
                f"total_steps ({self.total_steps}) must be at least num_envs*num_steps ({self.batch_size}), "
                "one iteration")
        if self.paired_envs and self.num_envs % 2:
            raise ConfigError(f"paired_envs pairs env 2i with env 2i+1: num_envs must be even, got {self.num_envs}")
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must list positive layer widths, got {self.hidden}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}")
        if self.lr <= 0 or self.clip_eps <= 0 or self.max_grad_norm <= 0:
            raise ConfigError("lr, clip_eps and max_grad_norm must be positive")
        if self.sa_kappa < 0 or self.sa_eps < 0 or self.sa_pgd_steps < 1 or not 0 <= self.sa_ramp <= 1:
            raise ConfigError("SA-PPO needs sa_kappa >= 0, sa_eps >= 0, sa_pgd_steps >= 1 and 0 <= sa_ramp <= 1, "
                              f"got {self.sa_kappa}, {self.sa_eps}, {self.sa_pgd_steps}, {self.sa_ramp}")
        if self.checkpoint_every < 0 or self.eval_episodes < 1:
            raise ConfigError("checkpoint_every must be >= 0 and eval_episodes >= 1")
        return self

    @property
    def recurrent(self):
        return self.memory != "none"

    def _validate_memory(self):
        # A recurrent update unrolls each env's whole rollout from the carry it
        # started with, so a minibatch is a set of envs; a minibatch of
        # shuffled time steps would cut the sequences the core learns from.
        if self.memory_size < 1:
            raise ConfigError(f"memory_size must be >= 1, got {self.memory_size}")
        if self.num_envs % self.num_minibatches:
            fits = [m for m in range(1, self.num_envs + 1) if self.num_envs % m == 0]
            raise ConfigError(
                f"memory={self.memory} splits minibatches over environments (whole-rollout sequences, never "
                f"shuffled time steps): num_envs ({self.num_envs}) must be divisible by num_minibatches "
                f"({self.num_minibatches}); set num_minibatches to one of {fits} or num_envs to a multiple of "
                f"{self.num_minibatches}")
        if self.sa_kappa > 0:
            raise ConfigError(
                f"memory={self.memory} does not combine with SA-PPO (sa_kappa={self.sa_kappa}): its regulariser "
                "perturbs single observations of shuffled time steps, which a recurrent policy does not act on; "
                "set sa_kappa: 0 or memory: none")


@struct.dataclass
class HParams:
    lr: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    ent_coef: jax.Array
    vf_coef: jax.Array
    max_grad_norm: jax.Array


HPARAM_NAMES = tuple(f.name for f in dataclasses.fields(HParams))


CONFIG = PPOConfig


def hparams_from(config: PPOConfig) -> HParams:
    return HParams(**{name: jnp.float32(getattr(config, name)) for name in HPARAM_NAMES})


@struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    env_state: object
    obs: jax.Array
    obs_stats: normalize.RunningStats
    return_stats: normalize.RunningStats   # for reward scaling
    discounted_return: jax.Array           # per env, for reward scaling
    key: jax.Array
    iteration: jax.Array
    # the recurrent core's carry per env (memory: gru|lstm), already reset
    # where an episode ended; None (no leaves) without memory
    carry: object = None


class Rollout(NamedTuple):
    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_value: jax.Array   # of next_obs, which is the final observation where an episode ended
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    next_obs: jax.Array
    episode_done: jax.Array
    episode_return: jax.Array
    env_reward: jax.Array   # the environment's own reward, before the reward function
    carry: object = None    # memory: the carry each step acted with (after resets); None (no leaves) without


class PenalisedEnv(NamedTuple):
    """Where a learner penalised against a frozen PPO reference runs.
    env, env_params: what to build its agents with; params(reference) -> the
    env params its programs take, a reference being {"params", "obs_stats"}
    (`meta.reward_model.policy_of`), traced; start(reference TrainState) ->
    its first TrainState, as the reference. For a memory-free reference these
    are the plain env, its params and the identity; `reference_log_prob`
    then scores the transition on its own."""
    env: object
    env_params: object
    params: Callable
    start: Callable
    memory: bool


def penalised_env(ref_agent, env, env_params) -> PenalisedEnv:
    """For a KL penalty to a recurrent reference, which needs log pi_ref(a_t |
    history): the env is `envs.wrappers.ReferenceLogProb`, whose state
    carries the reference's carry through each episode and whose info has
    "reference_log_prob"; the learner starts in the reference's envs with
    the reference's carry, so its log-ratio is 0 on every step before any
    update."""
    config, network = ref_agent.config, ref_agent.network
    if not config.recurrent:
        return PenalisedEnv(env, env_params, lambda reference: env_params, lambda ts: ts, False)

    def reference_step(reference, carry, obs, action):
        x = normalize.normalize(reference["obs_stats"], obs) if config.normalize_obs else obs
        carry, (dist, _) = network.apply(reference["params"], carry, x)
        return log_prob(dist, action, network.discrete), carry

    like = jax.eval_shape(ref_agent.init, jax.random.PRNGKey(0), hparams_from(config))
    like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), {"params": like.params, "obs_stats": like.obs_stats})
    return PenalisedEnv(ReferenceLogProb(env, reference_step, ref_agent.initial_carry),
                        ReferenceParams(env_params, like), lambda reference: ReferenceParams(env_params, reference),
                        lambda ts: ts.replace(env_state=ReferenceState(ts.env_state, ts.obs, ts.carry)), True)


def reference_log_prob(ref_agent, reference, transition):
    """log pi_ref(a|.) of a transition's action: from the environment for a
    recurrent reference (`penalised_env`), else on the transition itself."""
    if "reference_log_prob" in transition.info:   # static: which environment the learner runs in
        return transition.info["reference_log_prob"]
    return ref_agent.log_prob(reference["params"], transition.obs, transition.action, reference["obs_stats"])


def ppo_clip(clip_eps, ratio, advantage, progress):
    """The default objective: per-sample clipped surrogate loss (to minimise)."""
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -jnp.minimum(ratio * advantage, clipped * advantage)


def normalize_advantages(advantage):
    """Zero mean, unit (population) standard deviation over the minibatch; the
    1e-8 keeps a constant advantage finite."""
    return (advantage - advantage.mean()) / (advantage.std() + 1e-8)


def clipped_value_loss(value, old_value, target, clip_eps):
    """Half the squared error to the target, the worse of the new value and the
    value kept within clip_eps of the one the rollout was collected with: the
    critic gains nothing by moving further than that in one update."""
    value_clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum((value - target) ** 2, (value_clipped - target) ** 2).mean()


def ppo_losses(objective, objective_params, new_log_prob, old_log_prob, value, old_value, advantage, target,
               ent, hparams, progress_frac):
    """PPO's loss (to minimise) from the network's outputs on a minibatch:
    objective + vf_coef * value loss - ent_coef * entropy (the bonus is
    subtracted, so descent raises the entropy). `ent` is the per-sample policy
    entropy. Returns (total, metrics)."""
    ratio = jnp.exp(new_log_prob - old_log_prob)
    advantage = normalize_advantages(advantage)
    policy_loss = objective(objective_params, ratio, advantage, progress_frac).mean()
    value_loss = clipped_value_loss(value, old_value, target, hparams.clip_eps)
    ent = ent.mean()
    total = policy_loss + hparams.vf_coef * value_loss - hparams.ent_coef * ent
    aux = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent,
           "approx_kl": ((ratio - 1.0) - jnp.log(ratio)).mean(),
           "clip_frac": (jnp.abs(ratio - 1.0) > hparams.clip_eps).mean()}
    return total, aux


def unscaled_adam(max_grad_norm):
    """PPO's optimiser without its step size (the update multiplies by the
    learning rate): a global-norm clip, then Adam. eps_root keeps sqrt(v)
    differentiable where a gradient entry is exactly zero (d sqrt/dv is inf
    at 0): outer loops that differentiate through `step` get NaN without it;
    1e-12 moves no update measurably. Its state is TrainState.opt_state's,
    so a loop that trains a PPO state otherwise (DNO) continues it."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.scale_by_adam(eps=1e-5, eps_root=1e-12))


def make(config: PPOConfig, env=None, env_params=None, reward_fn=env_reward, objective=ppo_clip,
         show_progress: bool = False, runs_per_device: int | None = None, extra_loss=None,
         rollout_reward=None, advantage_fn=None) -> base.Agent:
    """Build the agent's pure functions. `objective(objective_params, ratio,
    advantage, progress)` returns per-sample policy losses; when a call passes
    objective_params=None, PPO-clip's clip_eps hyperparameter is used.

    `runs_per_device`: how many runs one device's program will vmap together
    (run.py passes its members per device). Given, on CPU under run.py's
    XLA setting (`src/xla_cpu.py`), and small enough, the rollout's policy is
    evaluated without dots so that the rollout loop compiles into one kernel.
    None keeps the dots: a large vmapped population's rollout stays op by op,
    where the dot form is the faster one.

    `extra_loss(policy, params, obs, key, progress_frac, discrete) -> (loss,
    metrics)` is added to every minibatch's loss (with a key of its own per
    minibatch); config's `sa_kappa > 0` builds SA-PPO's regulariser
    (`robustness/sappo.py`) when none is given.

    `rollout_reward(reward_params, rollout) -> [num_steps, num_envs]` replaces
    the rollout's rewards once the whole rollout is collected (after
    `reward_fn`'s per-step rewards, which it can read in `rollout.reward`):
    rewards that compare trajectories with each other, such as SPO's win
    rate of a segment against the batch's other segments, are not functions
    of one transition.

    `advantage_fn(reward_params, rollout, advantages) -> [num_steps,
    num_envs]` replaces GAE's advantages in the policy loss (the critic still
    regresses on GAE's targets): P3O's pairwise, trajectory-level advantage
    (meta/spo.py) needs no critic.

    With `memory: gru|lstm` the network is a `RecurrentActorCritic`: `act`
    takes and returns the carry (`act(..., carry=c) -> (action, c)`; start
    from `initial_carry(batch_shape)` and reset it where an episode ended),
    `evaluate` resets it at every episode's start, and `log_prob` (single
    transitions, no history) refuses."""
    config = config.validate()
    if config.recurrent and extra_loss is not None:
        raise ConfigError(f"memory={config.memory}: extra_loss terms act on single observations of shuffled time "
                          "steps, which a recurrent policy does not; use memory: none")
    if extra_loss is None and config.sa_kappa > 0:
        from robustness import sappo
        extra_loss = sappo.regulariser(config.sa_kappa, config.sa_eps, config.sa_pgd_steps, config.sa_ramp)
    if env is None:
        env, env_params = envs.make(config.env, **config.env_kwargs)
    discrete = envs.is_discrete(env, env_params)
    if config.recurrent:
        network = RecurrentActorCritic(envs.action_dim(env, env_params), discrete, tuple(config.hidden),
                                       config.activation, config.memory, config.memory_size)
    else:
        network = ActorCritic(envs.action_dim(env, env_params), discrete, tuple(config.hidden), config.activation)
    obs_dim = envs.obs_size(env, env_params)
    num_envs, num_steps = config.num_envs, config.num_steps
    num_iterations = config.num_iterations
    minibatch_size = config.batch_size // config.num_minibatches
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    # Without dots the rollout loop can become one XLA:CPU kernel, which is
    # faster; where the loop stays op by op, the dot form is the faster one
    if (not config.recurrent and runs_per_device is not None and jax.default_backend() == "cpu"
            and xla_cpu.small_loop_bytes() >= xla_cpu.SMALL_LOOP_BYTES
            and policy_without_dots_fits(runs_per_device * num_envs, obs_dim, config.hidden,
                                         envs.action_dim(env, env_params))):
        policy = functools.partial(policy_without_dots, network)
    else:
        policy = functools.partial(network.apply, method=ActorCritic.policy)
    rewards_of = jax.vmap(reward_fn, in_axes=(None, 0))

    def optimizer(hparams):
        # Built per call from traced hparams; its state's structure does not
        # depend on them, so one compiled program serves a whole sweep.
        return unscaled_adam(hparams.max_grad_norm)

    def norm_obs(stats, obs):
        return normalize.normalize(stats, obs) if config.normalize_obs else obs

    def env_keys(key):
        keys = jax.random.split(key, num_envs)
        return jnp.repeat(keys[::2], 2, axis=0) if config.paired_envs else keys

    def init(key, hparams, env_params=env_params):
        net_key, env_key, key = jax.random.split(key, 3)
        if config.recurrent:
            params = network.init(net_key, network.initial_carry(), jnp.zeros((obs_dim,), jnp.float32))
        else:
            params = network.init(net_key, jnp.zeros((obs_dim,), jnp.float32))
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(env_keys(env_key), env_params)
        return TrainState(
            params=params,
            opt_state=optimizer(hparams).init(ravel_pytree(params)[0]),
            env_state=env_state,
            obs=obs,
            obs_stats=normalize.init((obs_dim,)),
            return_stats=normalize.init(()),
            discounted_return=jnp.zeros((num_envs,), jnp.float32),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
            carry=network.initial_carry((num_envs,)) if config.recurrent else None,
        )

    def reset_envs(ts, key, env_params_per_env):
        """Every env reset on its own params (leading axis num_envs: a batch of
        levels); the reward scaler's running discounted return restarts."""
        obs, env_state = jax.vmap(env.reset)(env_keys(key), env_params_per_env)
        ts = ts.replace(env_state=env_state, obs=obs, discounted_return=jnp.zeros_like(ts.discounted_return))
        return ts.replace(carry=network.initial_carry((num_envs,))) if config.recurrent else ts

    def collect(ts, reward_params=None, env_params=env_params, num_steps=num_steps, update_obs_stats=True):
        """`num_steps` (static) steps of the current policy in the state's envs,
        nothing trained: the state's envs, observations, observation statistics
        and key move on. With the default length this is exactly the batch the
        next `step` from the same state would collect and train on.
        `update_obs_stats=False` (static) keeps the observation statistics
        fixed, so the policy acting is exactly the state's: evaluations that
        compare it with a frozen reference (KL) need that."""
        def transition(env_state, obs, obs_in, obs_stats, dist, keys):
            action = sample(keys[0], dist, discrete)
            next_obs, env_state, env_rew, terminated, truncated, info = step_envs(
                keys[1:], env_state, action, env_params)
            final_obs = info["final_observation"]
            logp = log_prob(dist, action, discrete)
            # the acting policy's log-probability, for rewards that penalise divergence from a reference
            reward = rewards_of(reward_params, Transition(obs, action, final_obs, env_rew, terminated,
                                                          {**info, "log_prob": logp}))
            step = Rollout(obs_in, action, logp, None, None, reward, terminated,
                           jnp.logical_or(terminated, truncated), norm_obs(obs_stats, final_obs),
                           info["episode_done"], info["episode_return"], env_rew)
            if config.normalize_obs and update_obs_stats:
                obs_stats = normalize.update(obs_stats, next_obs)
            return env_state, next_obs, obs_stats, step

        def env_step(carry, keys):
            env_state, obs, obs_stats = carry
            obs_in = norm_obs(obs_stats, obs)
            env_state, next_obs, obs_stats, step = transition(env_state, obs, obs_in, obs_stats,
                                                              policy(ts.params, obs_in), keys)
            return (env_state, next_obs, obs_stats), step

        def recurrent_env_step(carry, keys):
            env_state, obs, obs_stats, core = carry
            obs_in = norm_obs(obs_stats, obs)
            next_core, (dist, value) = network.apply(ts.params, core, obs_in)
            env_state, next_obs, obs_stats, step = transition(env_state, obs, obs_in, obs_stats, dist, keys)
            # the next step's carry starts afresh where this step ended an episode;
            # the carry before that reset is the one the final observation follows
            fresh = reset_carry(next_core, network.initial_carry((num_envs,)), step.done)
            return (env_state, next_obs, obs_stats, fresh), (step._replace(value=value, carry=core), next_core)

        # all of the rollout's keys in one split, outside the loop: per-step
        # splitting is a measurable share of a CPU rollout
        key, rollout_key = jax.random.split(ts.key)
        keys = jax.random.split(rollout_key, num_steps * (num_envs + 1))
        keys = keys.reshape(num_steps, num_envs + 1, *keys.shape[1:])
        if config.paired_envs:   # static: without pairs the program is unchanged
            keys = jnp.concatenate([keys[:, :1], jnp.repeat(keys[:, 1::2], 2, axis=1)], axis=1)
        if config.recurrent:
            (env_state, obs, obs_stats, core), (rollout, next_cores) = jax.lax.scan(
                recurrent_env_step, (ts.env_state, ts.obs, ts.obs_stats, ts.carry), keys)
            # the value of each step's next (final) observation, one core step on
            # from that step's carry, for every step at once after the loop
            _, (_, next_value) = network.apply(ts.params, next_cores, rollout.next_obs)
            rollout = rollout._replace(next_value=next_value)
            ts = ts.replace(carry=core)
        else:
            (env_state, obs, obs_stats), rollout = jax.lax.scan(env_step, (ts.env_state, ts.obs, ts.obs_stats), keys)
            # The critic runs once on the whole rollout instead of inside the loop
            # (the same values: the parameters do not change during a rollout),
            # with the truncated episodes' final observations for bootstrapping
            value, next_value = network.apply(ts.params, jnp.stack([rollout.obs, rollout.next_obs]),
                                              method=ActorCritic.value)
            rollout = rollout._replace(value=value, next_value=next_value)
        if rollout_reward is not None:   # static: without one the program is unchanged
            rollout = rollout._replace(reward=rollout_reward(reward_params, rollout).astype(rollout.reward.dtype))
        return ts.replace(env_state=env_state, obs=obs, obs_stats=obs_stats, key=key), rollout

    def scale_rewards(ts, rollout, hparams):
        def accumulate(discounted, step):
            reward, done = step
            discounted = discounted * hparams.gamma + reward
            return discounted * (1.0 - done), discounted

        discounted, returns = jax.lax.scan(
            accumulate, ts.discounted_return, (rollout.reward, rollout.done.astype(jnp.float32)))
        stats = normalize.update(ts.return_stats, returns)
        return ts.replace(return_stats=stats, discounted_return=discounted), normalize.scale(stats, rollout.reward)

    def loss_fn(flat_params, unravel, batch, hparams, objective_params, progress_frac):
        obs, action, old_log_prob, old_value, advantage, target = batch[:6]
        dist, value = network.apply(unravel(flat_params), obs)
        total, aux = ppo_losses(objective, objective_params, log_prob(dist, action, discrete), old_log_prob, value,
                                old_value, advantage, target, entropy(dist, discrete), hparams, progress_frac)
        if extra_loss is not None:   # static: plain PPO compiles the same program as without one
            policy = lambda p, x: network.apply(p, x, method=ActorCritic.policy)  # noqa: E731
            extra, extra_aux = extra_loss(policy, unravel(flat_params), obs, batch[6], progress_frac, discrete)
            total = total + extra
            aux.update(extra_aux)
        return total, aux

    def recurrent_loss_fn(flat_params, unravel, batch, hparams, objective_params, progress_frac):
        """PPO's loss on a minibatch of whole env sequences, by backpropagation
        through time from the carries the rollout started with."""
        core, obs, starts, action, old_log_prob, old_value, advantage, target = batch
        dist, value = unroll(network, unravel(flat_params), core, obs, starts)
        return ppo_losses(objective, objective_params, log_prob(dist, action, discrete), old_log_prob, value,
                          old_value, advantage, target, entropy(dist, discrete), hparams, progress_frac)

    def env_minibatches(rollout, advantages, targets):
        """(minibatches(key) -> [num_minibatches, ...] batches): the envs
        shuffled and split, each keeping its whole rollout in time order."""
        envs_per_batch = num_envs // config.num_minibatches
        # an env's carry resets at step t where its step t - 1 ended an episode;
        # the rollout's first carry is already reset
        starts = jnp.concatenate([jnp.zeros_like(rollout.done[:1]), rollout.done[:-1]])
        sequences = (rollout.obs, starts, rollout.action, rollout.log_prob, rollout.value, advantages, targets)
        first_core = jax.tree.map(lambda c: c[0], rollout.carry)

        def minibatches(key):
            order = jax.random.permutation(key, num_envs)
            cores = jax.tree.map(
                lambda c: c[order].reshape(config.num_minibatches, envs_per_batch, *c.shape[1:]), first_core)
            seqs = jax.tree.map(lambda x: jnp.swapaxes(x[:, order].reshape(
                num_steps, config.num_minibatches, envs_per_batch, *x.shape[2:]), 0, 1), sequences)
            return (cores, *seqs)
        return minibatches

    def step(ts, hparams, reward_params=None, objective_params=None, env_params=env_params, with_rollout=False):
        """One iteration: collect num_envs*num_steps transitions, then update.
        `with_rollout` (static): also return the rollout it trained on, as a
        third output, for outer loops that score or differentiate through it."""
        if objective_params is None:
            objective_params = hparams.clip_eps
        ts, rollout = collect(ts, reward_params, env_params)
        rewards = rollout.reward
        if config.normalize_reward:
            ts, rewards = scale_rewards(ts, rollout, hparams)
        advantages, targets = gae(rewards, rollout.value, rollout.next_value, rollout.terminated, rollout.done,
                                  hparams.gamma, hparams.gae_lambda)
        if advantage_fn is not None:   # static: without one the program is unchanged
            advantages = advantage_fn(reward_params, rollout, advantages).astype(advantages.dtype)
        progress_frac = ts.iteration.astype(jnp.float32) / num_iterations
        lr = hparams.lr * (1.0 - progress_frac) if config.anneal_lr else hparams.lr
        tx = optimizer(hparams)
        if config.recurrent:
            loss, minibatches = recurrent_loss_fn, env_minibatches(rollout, advantages, targets)
        else:
            loss = loss_fn
            flat = jax.tree.map(lambda x: x.reshape(num_steps * num_envs, *x.shape[2:]),
                                (rollout.obs, rollout.action, rollout.log_prob, rollout.value, advantages, targets))

        # The update works on one flat parameter vector: Adam and the global-norm
        # clip then run as a few fused ops instead of a dozen per layer, which
        # is most of an iteration's cost for small networks on CPU.
        flat_params, unravel = ravel_pytree(ts.params)

        def minibatch_update(carry, batch):
            params, opt_state = carry
            grads, aux = jax.grad(loss, has_aux=True)(
                params, unravel, batch, hparams, objective_params, progress_frac)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (params - lr * updates, opt_state), aux

        def epoch(carry, key):
            if config.recurrent:
                return jax.lax.scan(minibatch_update, carry, minibatches(key))
            order = jax.random.permutation(key, num_steps * num_envs)
            batches = jax.tree.map(
                lambda x: x[order].reshape(config.num_minibatches, minibatch_size, *x.shape[1:]), flat)
            if extra_loss is not None:   # its own randomness (SA-PPO's PGD starts), one key per minibatch
                batches = (*batches, jax.random.split(jax.random.fold_in(key, 1), config.num_minibatches))
            return jax.lax.scan(minibatch_update, carry, batches)

        key, epoch_key = jax.random.split(ts.key)
        (flat_params, opt_state), aux = jax.lax.scan(
            epoch, (flat_params, ts.opt_state), jax.random.split(epoch_key, config.num_epochs))
        ts = ts.replace(params=unravel(flat_params), opt_state=opt_state, key=key, iteration=ts.iteration + 1)

        metrics = {k: v.mean() for k, v in aux.items()}
        metrics.update(base.episode_metrics(ts.env_state.last_return, rollout.episode_done, rollout.episode_return,
                                            ts.iteration, config.batch_size))
        if with_rollout:
            return ts, metrics, rollout
        return ts, metrics

    def policy_on_raw(params, obs, obs_stats):
        if config.normalize_obs:
            obs = normalize.normalize(obs_stats, obs)
        return network.apply(params, obs, method=ActorCritic.policy)

    def act(params, obs, key, deterministic=False, obs_stats=None, carry=None):
        """The action for raw `obs`; with memory, `carry` is required and
        `(action, carry)` is returned (the caller resets it at episode starts)."""
        if not config.recurrent:
            dist = policy_on_raw(params, obs, obs_stats)
            return mode(dist, discrete) if deterministic else sample(key, dist, discrete)
        if carry is None:
            raise ConfigError(f"this policy has memory ({config.memory}): act needs carry= (start from "
                              "agent.initial_carry(batch_shape), reset it where an episode ended) and returns "
                              "(action, carry)")
        if config.normalize_obs:
            obs = normalize.normalize(obs_stats, obs)
        carry, (dist, _) = network.apply(params, carry, obs)
        return (mode(dist, discrete) if deterministic else sample(key, dist, discrete)), carry

    def policy_log_prob(params, obs, action, obs_stats=None):
        if config.recurrent:
            raise ConfigError(f"this policy has memory ({config.memory}): log pi(a|s) of a single transition is "
                              "not defined without its history; unroll the network over the trajectory "
                              "(networks.unroll), or for a KL penalty to a recurrent reference run the learner in "
                              "ppo.penalised_env's environment")
        return log_prob(policy_on_raw(params, obs, obs_stats), action, discrete)

    return base.assemble(config, env, env_params, network, init, step, act, reset_envs, num_iterations,
                         config.eval_episodes, show_progress, collect=collect, log_prob=policy_log_prob,
                         initial_carry=network.initial_carry if config.recurrent else None)
