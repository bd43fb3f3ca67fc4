"""envs.make(name, **kwargs) -> (env, env_params) and envs.names()."""
import difflib

import gymnax

from envs.brax_env import BRAX_ENVS, BraxEnv
from envs.core import Box
from envs.gridworld import GRIDWORLDS, GridWorld
from envs.gymnax_env import GymnaxEnv
from envs.probes import PROBES, ProbeEnv
from src.config import ConfigError
from envs.wrappers import ClipAction, EpisodeStats, FlattenObservation

GYMNAX_ENVS = tuple(gymnax.registered_envs)


def names() -> list[str]:
    """Every environment `make` accepts."""
    return [*GYMNAX_ENVS, *(f"brax/{n}" for n in BRAX_ENVS), *(f"probe/{p}" for p in PROBES),
            *(f"gridworld/{g}" for g in GRIDWORLDS), "maze"]


class UnknownEnvironment(ConfigError):
    pass


def _unknown(name: str) -> UnknownEnvironment:
    close = difflib.get_close_matches(name, names(), n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownEnvironment(f"unknown environment {name!r}.{hint} Known environments: {', '.join(names())}")


def check_name(name: str) -> None:
    """Raise UnknownEnvironment (naming the closest match) unless `name` is registered."""
    if name not in names():
        raise _unknown(name)


def make_raw(name: str, **kwargs):
    """The bare environment, without our standard wrappers."""
    if name in GYMNAX_ENVS:
        env = GymnaxEnv(name, **kwargs)
    elif name.startswith("brax/") and name[5:] in BRAX_ENVS:
        env = BraxEnv(name[5:], **kwargs)
    elif name.startswith("probe/") and name[6:] in PROBES:
        if kwargs:
            raise ConfigError(f"probe environments take no options, got {sorted(kwargs)}")
        env = ProbeEnv(name[6:])
    elif name.startswith("gridworld/") and name[10:] in GRIDWORLDS:
        env = GridWorld(**kwargs)
    elif name == "maze":   # level = env_params (envs/maze.py); kwargs height, width, view, max_steps
        from envs.maze import Maze
        env = Maze(**kwargs)
    else:
        raise _unknown(name)
    return env, env.default_params


def make(name: str, **kwargs):
    """An environment with flat float32 observations, episode statistics, and
    (for continuous actions) clipping to the action box."""
    env, params = make_raw(name, **kwargs)
    env = FlattenObservation(env)
    if isinstance(env.action_space(params), Box):
        env = ClipAction(env)
    env = EpisodeStats(env)
    return env, params
