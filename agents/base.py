"""What every learner shares: the `Agent` record, the episode metrics each
iteration reports, and `run`/`train`/`evaluate` built from `init`, `step`
and `act`. A learner writes only what differs: its state, its update, its
policy."""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from envs.core import episode_limit
from src import progress
from src.evaluate import evaluate as run_evaluation


class Agent(NamedTuple):
    config: object
    env: object
    env_params: object
    network: object
    init: Callable        # (key, hparams, env_params) -> state
    step: Callable        # (state, hparams, reward_params, objective_params, env_params) -> (state, metrics);
    #                       PPO's with_rollout=True also returns the rollout it trained on, as a third output
    run: Callable         # step `num_iterations` (static) times: (state, metrics per iteration)
    train: Callable       # (key, hparams, reward_params, objective_params, env_params) -> (state, metrics)
    act: Callable         # (params, obs, key, deterministic, obs_stats) -> action; with memory (initial_carry
    #                       not None) act(..., carry=c) -> (action, c)
    evaluate: Callable    # (state, key, num_episodes, env_params, deterministic) -> (returns, lengths)
    reset_envs: Callable  # (state, key, env_params_per_env) -> state: every env reset, env i on its own
    #                       params (a batch of levels, leading axis num_envs); the learner's own state kept
    collect: Callable | None = None   # (state, reward_params, env_params, num_steps) -> (state, rollout):
    #                       the current policy run in the state's envs, nothing trained (PPO; None for SAC,
    #                       whose transitions go to its replay buffer and which has no state-value critic)
    log_prob: Callable | None = None  # (params, obs, action, obs_stats) -> log pi(a|s) on raw observations,
    #                       normalised as `act` does (PPO; None for SAC). Meta loops that compare a policy
    #                       with a reference (KL penalties, preference losses) go through it.
    initial_carry: Callable | None = None  # (batch_shape) -> the carry of a policy with memory at an episode's
    #                       start (PPO with memory: gru|lstm); None for a memoryless policy


def episode_metrics(last_return, episode_done, episode_return, iteration, batch_size):
    """The return of the last finished episode per env, averaged over the envs
    that have finished one (NaN until the first episode ends); how many
    episodes ended in this iteration and their mean return; env steps so far."""
    finished = episode_done.sum()
    return dict(
        episode_return=jnp.nanmean(last_return),
        episodes_finished=finished,
        finished_return=jnp.where(finished > 0, (episode_return * episode_done).sum() / jnp.maximum(finished, 1),
                                  jnp.nan),
        env_steps=iteration * batch_size,
    )


def evaluate_with_memory(env, env_params, policy, initial_carry, key, num_episodes: int, max_steps: int):
    """`src.evaluate.evaluate` for a policy with memory: policy(obs_batch,
    key, carry) -> (action_batch, carry), the carry starting from
    `initial_carry((num_episodes,))` and reset where an episode ended. The
    same keys and the same count: `max_steps` steps, the first episode of
    each environment."""
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)
    fresh = initial_carry((num_episodes,))

    def body(carry, key):
        obs, state, core, returns, lengths, running = carry
        act_key, step_key = jax.random.split(key)
        action, core = policy(obs, act_key, core)
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, num_episodes), state, action, env_params)
        returns = returns + reward * running
        lengths = lengths + running.astype(jnp.int32)
        done = jnp.logical_or(terminated, truncated)
        core = jax.tree.map(lambda c, f: jnp.where(done.reshape(done.shape + (1,) * (c.ndim - 1)), f, c),
                            core, fresh)
        running = jnp.logical_and(running, jnp.logical_not(done))
        return (obs, state, core, returns, lengths, running), None

    init = (obs, state, fresh, jnp.zeros(num_episodes), jnp.zeros(num_episodes, jnp.int32),
            jnp.ones(num_episodes, bool))
    (_, _, _, returns, lengths, _), _ = jax.lax.scan(body, init, jax.random.split(run_key, max_steps))
    return returns, lengths


def assemble(config, env, env_params, network, init, step, act, reset_envs, num_iterations: int,
             eval_episodes: int, show_progress: bool = False, collect=None, log_prob=None,
             initial_carry=None) -> Agent:
    """The Agent of a learner given its `init`, `step` and `act`
    (`initial_carry` given: a policy with memory, see `Agent`)."""

    def run(state, hparams, reward_params=None, objective_params=None, env_params=env_params,
            num_iterations=num_iterations):
        """`num_iterations` (static) iterations of `step` from `state`."""
        return progress.scan_iterations(lambda s: step(s, hparams, reward_params, objective_params, env_params),
                                        state, num_iterations, show_progress)

    def train(key, hparams, reward_params=None, objective_params=None, env_params=env_params):
        """One whole training run."""
        state = init(key, hparams, env_params)
        return run(state, hparams, reward_params, objective_params, env_params)

    def evaluate(state, key, num_episodes=eval_episodes, env_params=env_params, deterministic=True):
        """Returns (returns, lengths) of `num_episodes` whole episodes (a
        policy with memory starts each from a fresh carry)."""
        if initial_carry is not None:
            policy = lambda obs, k, c: act(state.params, obs, k, deterministic, state.obs_stats, carry=c)  # noqa: E731
            return evaluate_with_memory(env, env_params, policy, initial_carry, key, num_episodes,
                                        episode_limit(env, env_params))
        policy = lambda obs, k: act(state.params, obs, k, deterministic, state.obs_stats)  # noqa: E731
        return run_evaluation(env, env_params, policy, key, num_episodes, episode_limit(env, env_params))

    return Agent(config, env, env_params, network, init, step, run, train, act, evaluate, reset_envs, collect,
                 log_prob, initial_carry)
