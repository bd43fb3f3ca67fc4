"""Level spaces for environment design.

A level is an `env_params` pytree. A `LevelSpace` bundles one environment
with everything an environment-design loop needs about its levels:

    space = levels.make("maze" | "cartpole-levels" | "pendulum-levels", **kwargs)
    level = space.sample(key)                  # the domain-randomisation generator
    child = space.mutate(key, level)           # a small edit (ACCEL)
    space.held_out_names, space.held_out       # the held-out test set, stacked
    space.solved(returns)                      # per-episode "solved" flags
    adv = space.adversary_init(key)            # PAIRED: a level distribution
    level, logp, ent = space.adversary_sample(adv, key)   # trained by REINFORCE

All functions are pure and jittable; sizes are static per space.

Classic-control levels vary physical constants inside training ranges; the
held-out levels sit at or beyond the ends of those ranges (extremes), so a
learner has to extrapolate.
"""
import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs import maze as maze_lib
from envs.registry import make as make_env
from envs.core import Wrapper
from envs.wrappers import EpisodeStats, FlattenObservation
from src.config import ConfigError


class LevelInState(Wrapper):
    """Carries each environment's level in its state.

    `reset(key, level)` stores the level; `step` uses the stored one and
    ignores the params it is given. So a learner that vmaps one shared
    env_params over its environments (our PPO) trains on a different level per
    environment once its env states are reset with a batch of levels, with no
    change to the learner.
    """

    def reset(self, key, params):
        obs, state = self._env.reset(key, params)
        return obs, (params, state)

    def step(self, key, state, action, params):
        level, inner = state
        obs, inner, reward, terminated, truncated, info = self._env.step(key, inner, action, level)
        return obs, (level, inner), reward, terminated, truncated, info


def wrap(env):
    """The standard wrappers of envs.make with the level kept in the state."""
    return EpisodeStats(LevelInState(env))


class LevelSpace(NamedTuple):
    name: str
    env: object
    template: object                 # one level, the environment's default
    sample: Callable                 # key -> level
    mutate: Callable                 # (key, level) -> level
    is_valid: Callable               # level -> bool
    held_out_names: tuple
    held_out: object                 # levels stacked on a leading axis
    solved: Callable                 # returns -> bool (per episode)
    solvable: Callable               # level -> bool (maze: goal reachable; physics: True)
    max_steps: int                   # episode limit (static)
    adversary_init: Callable         # key -> adversary params (PAIRED)
    adversary_sample: Callable       # (params, key) -> (level, log_prob, entropy)
    describe: Callable               # level -> numpy vector of its varied quantities, for plots
    quantities: tuple                # names of those quantities
    kind: str                        # "maze" or "physics"


SPACES = ("maze", "cartpole-levels", "pendulum-levels")


def make(name: str, **kwargs) -> LevelSpace:
    if name == "maze":
        return maze_space(**kwargs)
    if name == "cartpole-levels":
        return physics_space(CARTPOLE, **kwargs)
    if name == "pendulum-levels":
        return physics_space(PENDULUM, **kwargs)
    raise ConfigError(f"unknown level space {name!r}; valid: {', '.join(SPACES)}")


def stack(levels):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *levels)


def index(levels, i):
    return jax.tree.map(lambda x: x[i], levels)


# ---------------------------------------------------------------- maze

def maze_space(height: int = 9, width: int = 9, max_walls: int = 25, view: int = 5, max_steps: int = 250,
               num_edits: int = 10, data_dir: str | None = None, view_mode: str = "centred") -> LevelSpace:
    """`view_mode: forward` is the jaxued/ACCEL setting (see envs/maze.py);
    `data_dir` None: the held-out sets of `maze.held_out_dirs` (on 13x13
    and larger, the papers' eight mazes and our six)."""
    if not 0 <= max_walls <= height * width - 2:
        raise ConfigError(f"max_walls must be in [0, {height * width - 2}] for a {height}x{width} maze, got {max_walls}")
    if num_edits < 1:
        raise ConfigError(f"num_edits must be >= 1, got {num_edits}")
    env = wrap(FlattenObservation(maze_lib.Maze(height, width, view, max_steps, view_mode)))
    names, held_out = maze_lib.load_held_out(height, width, data_dir)
    n = height * width

    def adversary_init(key):
        # walls start independent with mean density max_walls / (2n): about
        # the domain-randomisation generator's mean wall count
        density = max(max_walls / (2.0 * n), 1e-3)
        return {"walls": jnp.full((n,), np.log(density / (1 - density)), jnp.float32),
                "start": jnp.zeros((n,), jnp.float32), "goal": jnp.zeros((n,), jnp.float32)}

    def adversary_sample(params, key):
        wall_key, start_key, goal_key = jax.random.split(key, 3)
        walls = jax.random.bernoulli(wall_key, jax.nn.sigmoid(params["walls"]))
        start = jax.random.categorical(start_key, params["start"])
        goal_logits = params["goal"].at[start].set(-jnp.inf)
        goal = jax.random.categorical(goal_key, goal_logits)
        lw = jax.nn.log_sigmoid(params["walls"])
        lf = jax.nn.log_sigmoid(-params["walls"])
        logp = (jnp.where(walls, lw, lf).sum() + jax.nn.log_softmax(params["start"])[start]
                + jax.nn.log_softmax(goal_logits)[goal])
        pw = jax.nn.sigmoid(params["walls"])
        ent = (-(pw * lw + (1 - pw) * lf).sum() - (jax.nn.softmax(params["start"]) * jax.nn.log_softmax(params["start"])).sum())
        # start and goal cells are cleared: the sampled mask stays the action
        walls = walls.at[start].set(False).at[goal].set(False)
        # the start direction is not the adversary's to choose: always up
        level = maze_lib.MazeLevel(walls.reshape(height, width), maze_lib._cell(start, width),
                                   maze_lib._cell(goal, width), jnp.zeros((), jnp.int32))
        return level, logp, ent

    def describe(level):
        return np.array([float(np.asarray(level.walls).sum()), float(maze_lib.shortest_path(level))])

    return LevelSpace(
        name="maze", env=env, template=env.default_params,
        sample=lambda key: maze_lib.generate(key, height, width, max_walls),
        mutate=lambda key, level: maze_lib.mutate(key, level, num_edits),
        is_valid=maze_lib.is_valid, held_out_names=tuple(names), held_out=held_out,
        solved=lambda returns: returns > 0.0, solvable=maze_lib.solvable, max_steps=max_steps,
        adversary_init=adversary_init, adversary_sample=adversary_sample,
        describe=describe, quantities=("walls", "shortest path"), kind="maze")


# ---------------------------------------------------------------- classic control

@dataclasses.dataclass(frozen=True)
class Physics:
    env: str
    fields: tuple            # the varied EnvParams fields
    low: tuple               # training range
    high: tuple
    held_out: dict           # name -> values (extremes)
    solved_at: float         # an episode with at least this return counts as solved
    derived: Callable        # params -> params with dependent constants recomputed


def _cartpole_derived(p):
    return p.replace(total_mass=p.masscart + p.masspole, polemass_length=p.masspole * p.length)


CARTPOLE = Physics(
    env="CartPole-v1", fields=("length", "masspole"), low=(0.25, 0.05), high=(1.0, 0.5),
    held_out={"short_light": (0.1, 0.05), "long": (2.0, 0.1), "heavy": (0.5, 1.0), "long_heavy": (2.0, 1.0),
              "short_heavy": (0.1, 1.0)},
    solved_at=475.0, derived=_cartpole_derived)

PENDULUM = Physics(
    env="Pendulum-v1", fields=("m", "l", "g"), low=(0.5, 0.5, 5.0), high=(1.5, 1.5, 15.0),
    held_out={"heavy": (2.0, 1.0, 10.0), "long": (1.0, 2.0, 10.0), "high_gravity": (1.0, 1.0, 20.0),
              "light_short_low_g": (0.3, 0.3, 3.0), "heavy_long": (1.5, 1.5, 15.0)},
    solved_at=-250.0, derived=lambda p: p)


def physics_space(spec: Physics, mutation_scale: float = 0.1) -> LevelSpace:
    env, default = make_env(spec.env)
    env = wrap(env._env)   # envs.make's wrappers, with LevelInState under EpisodeStats
    # leaves as float32 arrays so levels stack and vmap (gymnax defaults are Python floats)
    template = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32 if isinstance(x, int) else jnp.float32), default)
    low, high = jnp.array(spec.low, jnp.float32), jnp.array(spec.high, jnp.float32)
    d = len(spec.fields)

    def build(values):
        return spec.derived(template.replace(**{f: values[i] for i, f in enumerate(spec.fields)}))

    def values_of(level):
        return jnp.stack([getattr(level, f) for f in spec.fields])

    def sample(key):
        return build(jax.random.uniform(key, (d,), jnp.float32, low, high))

    def mutate(key, level):
        noise = mutation_scale * (high - low) * jax.random.normal(key, (d,))
        return build(jnp.clip(values_of(level) + noise, low, high))

    def is_valid(level):
        v = values_of(level)
        return jnp.all(v > 0)

    def adversary_init(key):
        return {"mean": jnp.zeros((d,), jnp.float32), "log_std": jnp.zeros((d,), jnp.float32)}

    def adversary_sample(params, key):
        z = params["mean"] + jnp.exp(params["log_std"]) * jax.random.normal(key, (d,))
        std = jnp.exp(params["log_std"])
        logp = jnp.sum(-0.5 * ((z - params["mean"]) / std) ** 2 - params["log_std"] - 0.5 * jnp.log(2 * jnp.pi))
        ent = jnp.sum(params["log_std"] + 0.5 * jnp.log(2 * jnp.pi * jnp.e))
        return build(low + (high - low) * jax.nn.sigmoid(z)), logp, ent

    names = tuple(spec.held_out)
    held_out = stack([build(jnp.array(spec.held_out[n], jnp.float32)) for n in names])
    max_steps = int(default.max_steps_in_episode)
    return LevelSpace(
        name=spec.env, env=env, template=template, sample=sample, mutate=mutate, is_valid=is_valid,
        held_out_names=names, held_out=held_out, solved=lambda returns: returns >= spec.solved_at,
        solvable=lambda level: jnp.bool_(True),
        max_steps=max_steps, adversary_init=adversary_init, adversary_sample=adversary_sample,
        describe=lambda level: np.asarray(values_of(level)), quantities=spec.fields, kind="physics")
