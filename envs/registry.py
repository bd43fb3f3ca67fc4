"""envs.make(name, **kwargs) -> (env, env_params) and envs.names()."""
import difflib
import sys

import gymnax
import jax
from gymnax.environments.environment import Environment as GymnaxEnvironment

from envs.brax_env import BRAX_ENVS, BraxEnv
from envs.core import Box, Environment
from envs.gridworld import GRIDWORLDS, GridWorld
from envs.gymnax_env import GymnaxEnv
from envs.probes import PROBES, ProbeEnv
from src.config import ConfigError
from envs.wrappers import ClipAction, EpisodeStats, FlattenObservation

GYMNAX_ENVS = tuple(gymnax.registered_envs)


def names() -> list[str]:
    """Every environment `make` accepts."""
    return [*GYMNAX_ENVS, *(f"brax/{n}" for n in BRAX_ENVS), *(f"probe/{p}" for p in PROBES),
            *(f"gridworld/{g}" for g in GRIDWORLDS), "gridworld/tomato", "maze", "hard-maze"]


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
    elif name == "gridworld/tomato":   # envs/tomato.py: gold reward, and the farmable proxy tomato_proxy
        from envs.tomato import Tomato
        env = Tomato(**kwargs)
    elif name == "maze":   # level = env_params (envs/maze.py); kwargs height, width, view, max_steps
        from envs.maze import Maze
        env = Maze(**kwargs)
    elif name == "hard-maze":   # envs/hard_maze.py: deceptive point-robot maze (quality-diversity, meta/qd.py)
        if kwargs:
            raise ConfigError(f"hard-maze takes no options (its layout is HardMazeParams), got {sorted(kwargs)}")
        from envs.hard_maze import HardMaze
        env = HardMaze()
    else:
        raise _unknown(name)
    return env, env.default_params


def make(name: str, **kwargs):
    """An environment with flat float32 observations, episode statistics, and
    (for continuous actions) clipping to the action box."""
    env, params = make_raw(name, **kwargs)
    return _standard_wrappers(env, params), params


def _standard_wrappers(env, params):
    env = FlattenObservation(env)
    if isinstance(env.action_space(params), Box):
        env = ClipAction(env)
    return EpisodeStats(env)


def wrap(env, params=None, episode_length: int = 1000):
    """Bring your own environment: `(env, params)` that every learner and loop
    of this codebase accepts, as `envs.make` returns them.

    `env` may be
    - a gymnax-1.0 environment (a subclass of
      `gymnax.environments.environment.Environment`, or what `gymnax.make`
      returns); `params` defaults to its `default_params`;
    - a brax environment (`brax.envs.Env`); it runs `episode_length` steps at most;
    - an environment of this codebase's API (`envs.Environment`, whose `step`
      returns `obs, state, reward, terminated, truncated, info` with
      `info["final_observation"]` and resets by itself).
    One reset and one step are traced (not compiled) to check the API, so a
    mistake shows here and not deep inside a learner's program."""
    if isinstance(env, EpisodeStats):
        raise ConfigError("this environment is already wrapped (envs.make and envs.wrap return wrapped ones)")
    if isinstance(env, GymnaxEnvironment):
        env = GymnaxEnv.of(env, params)
    elif _is_brax(env):
        if params is not None:
            raise ConfigError("a brax environment takes no params (its physics is fixed when it is built)")
        env = BraxEnv.of(env, episode_length)
    elif not isinstance(env, Environment):
        raise ConfigError(f"envs.wrap takes a gymnax-1.0 environment, a brax environment or an envs.Environment, "
                          f"got {type(env).__name__}")
    params = env.default_params if params is None else params
    _check_api(env, params)
    return _standard_wrappers(env, params), params


def _is_brax(env):
    brax = sys.modules.get("brax.envs.base")   # a brax environment means brax is already imported
    return brax is not None and isinstance(env, brax.Env)


def _check_api(env, params):
    key = jax.random.PRNGKey(0)
    try:
        obs, state = jax.eval_shape(env.reset, key, params)
        action = jax.eval_shape(env.action_space(params).sample, key)
        out = jax.eval_shape(env.step, key, state, action, params)
    except Exception as error:   # noqa: BLE001  (any failure to trace is the user's to read)
        raise ConfigError(f"{type(env).__name__}: reset or step failed on a sampled action: {error}") from error
    if not (isinstance(out, tuple) and len(out) == 6):
        raise ConfigError(f"{type(env).__name__}.step must return (obs, state, reward, terminated, truncated, info), "
                          f"got {type(out).__name__} of length {len(out) if isinstance(out, tuple) else '?'}")
    info = out[5]
    if not isinstance(info, dict) or "final_observation" not in info:
        raise ConfigError(f"{type(env).__name__}.step must reset by itself and put the last observation of an "
                          f"ended episode in info['final_observation'] (gymnax 1.0's Environment.step does both)")
    if info["final_observation"].shape != out[0].shape:
        raise ConfigError(f"info['final_observation'] has shape {info['final_observation'].shape}, the observation "
                          f"{out[0].shape}")
