"""One environment API over gymnax, brax and our own environments."""
from envs.core import Box, Discrete, Environment, Wrapper, action_dim, is_discrete, obs_size
from envs.registry import UnknownEnvironment, check_name, make, make_raw, names
from envs.rewards import Transition, env_reward

__all__ = ["Box", "Discrete", "Environment", "Wrapper", "action_dim", "is_discrete", "obs_size",
           "make", "make_raw", "names", "check_name", "UnknownEnvironment", "Transition", "env_reward"]
