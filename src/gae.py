"""Generalised advantage estimation with correct episode ends.

At a step that ends an episode, `next_values` must be the value of the real
final observation (info["final_observation"]), not of the reset observation:
truncated episodes are bootstrapped from it, terminated ones are not.
"""
import jax
import jax.numpy as jnp


def gae(rewards, values, next_values, terminated, done, gamma, lam):
    """All inputs are [T, ...] (time first). Returns (advantages, returns).

    delta_t = r_t + gamma * V(s'_t) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    """
    not_terminated = 1.0 - terminated.astype(jnp.float32)
    not_done = 1.0 - done.astype(jnp.float32)
    deltas = rewards + gamma * next_values * not_terminated - values

    def backward(advantage, inputs):
        delta, carry_on = inputs
        advantage = delta + gamma * lam * carry_on * advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values
