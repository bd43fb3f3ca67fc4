"""Deterministic evaluation over N whole episodes, vmapped over episodes."""
import jax
import jax.numpy as jnp


def evaluate(env, env_params, policy, key, num_episodes: int, max_steps: int):
    """policy(obs_batch, key) -> action_batch. Returns (returns, lengths), each [num_episodes].

    Runs `max_steps` steps (the episode limit) and counts only the first
    episode of each environment.
    """
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)

    def body(carry, key):
        obs, state, returns, lengths, running = carry
        act_key, step_key = jax.random.split(key)
        action = policy(obs, act_key)
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, num_episodes), state, action, env_params)
        returns = returns + reward * running
        lengths = lengths + running.astype(jnp.int32)
        running = jnp.logical_and(running, jnp.logical_not(jnp.logical_or(terminated, truncated)))
        return (obs, state, returns, lengths, running), None

    init = (obs, state, jnp.zeros(num_episodes), jnp.zeros(num_episodes, jnp.int32), jnp.ones(num_episodes, bool))
    (_, _, returns, lengths, _), _ = jax.lax.scan(body, init, jax.random.split(run_key, max_steps))
    return returns, lengths
