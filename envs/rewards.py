"""Reward functions: reward_fn(reward_params, transition) -> reward.

The agent calls a reward function inside its rollout with traced
`reward_params`, so rewards can be vmapped over and differentiated.
"""
from typing import NamedTuple

import jax


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
