"""Reward functions: reward_fn(reward_params, transition) -> reward.

The agent calls a reward function inside its rollout with traced
`reward_params`, so rewards can be vmapped over and differentiated.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array      # the real next observation (final_observation at episode ends)
    reward: jax.Array        # the environment's reward
    terminated: jax.Array
    info: dict


def env_reward(reward_params, transition: Transition):
    """The environment's own reward; takes no parameters."""
    return transition.reward


def scaled_reward(reward_params, transition: Transition):
    """reward_params["scale"] * env reward + reward_params["shift"]: the simplest learnable reward."""
    return reward_params["scale"] * transition.reward + reward_params["shift"]


# ----------------------------------------------------------------------------
# Shaping, blends and learned rewards. An auxiliary (heuristic) reward is a
# parameter-free function `aux(transition) -> scalar`; a potential is
# `potential(params, obs) -> scalar`. Each builder below returns a reward
# function with the contract above.

primary_reward = env_reward


def shaping_term(potential, potential_params, transition: Transition, gamma):
    """F = gamma * Phi(s') - Phi(s), with Phi(terminal) = 0.

    Only true terminations zero the potential: at a time-out s' is an ordinary
    state, and giving it Phi = 0 would make shaping change the optimal policy
    near the time limit.
    """
    alive = 1.0 - jnp.asarray(transition.terminated, jnp.float32)
    return gamma * alive * potential(potential_params, transition.next_obs) - potential(potential_params, transition.obs)


def potential_shaping(potential, gamma: float = 0.99):
    """r_p + gamma * Phi(s') - Phi(s). `reward_params` are the potential's
    parameters (None for a fixed potential); `gamma` must be the learner's."""
    def reward_fn(reward_params, transition: Transition):
        return transition.reward + shaping_term(potential, reward_params, transition, gamma)
    return reward_fn


def naive_sum(aux):
    """r_p + r_aux: the designer's heuristic simply added (no parameters)."""
    def reward_fn(reward_params, transition: Transition):
        return transition.reward + aux(transition)
    return reward_fn


def weighted_blend(aux):
    """w_p * r_p + w_aux * r_aux with reward_params {"w_p", "w_aux"} (traced,
    so a sweep over blends is a vmap)."""
    def reward_fn(reward_params, transition: Transition):
        return reward_params["w_p"] * transition.reward + reward_params["w_aux"] * aux(transition)
    return reward_fn


def blend_params(w_p=1.0, w_aux=1.0):
    return {"w_p": jnp.float32(w_p), "w_aux": jnp.float32(w_aux)}


# BARFI's learned reward: r_phi(s, a) = phi1(s) + r_p + phi2(s) * r_aux, phi1 and
# phi2 linear heads on the observation, and a learned discount sigmoid(psi).

def init_learned_reward(obs_dim: int, gamma: float = 0.99):
    """phi1 = 0 and phi2 = 1 everywhere (so r_phi = r_p + r_aux), psi = logit(gamma)."""
    zeros = jnp.zeros((obs_dim,), jnp.float32)
    return {"phi1": {"w": zeros, "b": jnp.float32(0.0)},
            "phi2": {"w": zeros, "b": jnp.float32(1.0)},
            "psi": jnp.float32(jnp.log(gamma) - jnp.log1p(-gamma))}


def learned_gamma(reward_params):
    return jax.nn.sigmoid(reward_params["psi"])


def linear_head(head, x):
    return jnp.dot(x, head["w"]) + head["b"]


def learned_reward(aux):
    """r_phi = phi1(s) + r_p + phi2(s) * r_aux; reward_params from init_learned_reward."""
    def reward_fn(reward_params, transition: Transition):
        obs = transition.obs.astype(jnp.float32)
        return (linear_head(reward_params["phi1"], obs) + transition.reward
                + linear_head(reward_params["phi2"], obs) * aux(transition))
    return reward_fn


# A small learned reward network: r = r_p + MLP([s, a, s', r_aux]); the last
# layer starts at zero so training starts from the primary reward.

def init_reward_network(key, obs_dim: int, action_size: int, hidden=(32,)):
    """action_size: the number of discrete actions (one-hot input) or the size
    of a continuous action vector."""
    sizes = [2 * obs_dim + action_size + 1, *hidden, 1]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        last = i == len(sizes) - 2
        w = jnp.zeros((n_in, n_out), jnp.float32) if last else \
            jax.random.normal(sub, (n_in, n_out), jnp.float32) / jnp.sqrt(jnp.float32(n_in))
        layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


def reward_network(action_size: int, discrete: bool, aux=None):
    """r_p + MLP(s, a, s', r_aux) (r_aux = 0 when no heuristic is given)."""
    def reward_fn(reward_params, transition: Transition):
        action = (jax.nn.one_hot(transition.action, action_size) if discrete
                  else jnp.reshape(transition.action, (action_size,)).astype(jnp.float32))
        r_aux = aux(transition) if aux is not None else 0.0
        x = jnp.concatenate([transition.obs.astype(jnp.float32), action,
                             transition.next_obs.astype(jnp.float32), jnp.reshape(r_aux, (1,)).astype(jnp.float32)])
        for layer in reward_params[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return transition.reward + (x @ reward_params[-1]["w"] + reward_params[-1]["b"])[0]
    return reward_fn
