"""Designer heuristics: auxiliary rewards a designer might write, good and misleading.

Each heuristic is an auxiliary reward `aux(transition) -> scalar` (no
parameters) for one environment, plus a state potential `potential(params,
obs)` used when the same knowledge is given as potential-based shaping
(None where the heuristic only makes sense per action). `good` says whether
adding the heuristic to the primary reward is meant to help.

    h = heuristics.get("cartpole-pid-inverse", "CartPole-v1")
    reward_fn = rewards.naive_sum(h.aux)
"""
import difflib
import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp

from src.config import ConfigError


class Heuristic(NamedTuple):
    name: str
    env: str
    good: bool
    aux: Callable
    potential: Optional[Callable]
    description: str


# ---------------------------------------------------------------- CartPole-v1
# obs = (x, x_dot, theta, theta_dot); action 1 pushes right. This PD law on
# angle and position balances the pole for the full 500 steps (tested).

def _pid_signal(obs):
    x, x_dot, theta, theta_dot = obs[..., 0], obs[..., 1], obs[..., 2], obs[..., 3]
    return theta + 0.5 * theta_dot + 0.05 * x + 0.1 * x_dot


def pid_action(obs):
    return (_pid_signal(obs) > 0).astype(jnp.int32)


def _pid_match(tr):
    return jnp.where(tr.action == pid_action(tr.obs), 1.0, -1.0)


def _cartpole_pid(tr):
    return _pid_match(tr)


def _cartpole_pid_inverse(tr):
    return -_pid_match(tr)


def _pid_potential(sign):
    return lambda params, obs: -sign * jnp.abs(_pid_signal(obs))


# ------------------------------------------------------------- MountainCar-v0
# obs = (position, velocity); actions 0 left, 1 none, 2 right; r_p = -1 per step.

def _height(position):
    return 0.55 + 0.45 * jnp.sin(3.0 * position)   # in [0.1, 1]


def _bang_bang(tr):
    push = tr.action.astype(jnp.float32) - 1.0      # -1, 0, +1
    return jnp.where(push * tr.obs[..., 1] > 0, 1.0, 0.0)


def _height_bonus(tr):
    # 2*height > 1 high on either slope: standing high pays more than the -1
    # per step, so an agent can farm it instead of finishing
    return 2.0 * _height(tr.next_obs[..., 0])


def _energy(params, obs):
    return 0.5 * (obs[..., 1] / 0.07) ** 2 + _height(obs[..., 0])


def _height_potential(params, obs):
    return 2.0 * _height(obs[..., 0])


# ---------------------------------------------------------------- Pendulum-v1
# obs = (cos theta, sin theta, theta_dot); upright at cos theta = 1.

def _upright(tr):
    return tr.next_obs[..., 0]


def _spin(tr):
    return jnp.abs(tr.next_obs[..., 2]) / 8.0


def _upright_potential(params, obs):
    return obs[..., 0]


def _spin_potential(params, obs):
    return jnp.abs(obs[..., 2]) / 8.0


# ----------------------------------------------------------- gridworld/barfi
# obs is the one-hot cell of a size x size grid (envs/gridworld.py); goal in
# the corner (size-1, size-1), distractor in the corner (size-1, 0).

def _cell(obs):
    size = int(round(math.sqrt(obs.shape[-1])))
    index = jnp.argmax(obs, axis=-1)
    return index // size, index % size, size


def _goal_distance(obs):
    x, y, size = _cell(obs)
    return ((size - 1 - x) + (size - 1 - y)).astype(jnp.float32)


def _on_distractor(obs):
    x, y, size = _cell(obs)
    return jnp.logical_and(x == size - 1, y == 0).astype(jnp.float32)


def _grid_progress(tr):
    return 0.1 * (_goal_distance(tr.obs) - _goal_distance(tr.next_obs))


def _grid_distractor(tr):
    return 0.2 * _on_distractor(tr.next_obs)


def _progress_potential(params, obs):
    return -0.1 * _goal_distance(obs)


def _distractor_potential(params, obs):
    return 0.2 * _on_distractor(obs)


# ------------------------------------------------------------ brax/halfcheetah

def _control_cost(tr):
    return -0.1 * jnp.sum(jnp.square(tr.action), axis=-1)


def _control_bonus(tr):
    return 0.1 * jnp.sum(jnp.square(tr.action), axis=-1)


HEURISTICS = {h.name: h for h in (
    Heuristic("cartpole-pid", "CartPole-v1", True, _cartpole_pid, _pid_potential(1.0),
              "+1 for matching a PD controller's action, -1 otherwise"),
    Heuristic("cartpole-pid-inverse", "CartPole-v1", False, _cartpole_pid_inverse, _pid_potential(-1.0),
              "-1 for matching the PD controller, +1 otherwise (misleading)"),
    Heuristic("mountaincar-bang-bang", "MountainCar-v0", True, _bang_bang, _energy,
              "+1 for pushing along the velocity"),
    Heuristic("mountaincar-height", "MountainCar-v0", False, _height_bonus, _height_potential,
              "a bonus for height that can be farmed on either slope (misleading)"),
    Heuristic("pendulum-upright", "Pendulum-v1", True, _upright, _upright_potential,
              "cos(theta): a bonus for being upright"),
    Heuristic("pendulum-spin", "Pendulum-v1", False, _spin, _spin_potential,
              "|theta_dot|/8: a bonus for spinning (misleading)"),
    Heuristic("gridworld-good", "gridworld/barfi", True, _grid_progress, _progress_potential,
              "+0.1 per step of progress towards the goal (Manhattan distance)"),
    Heuristic("gridworld-bad", "gridworld/barfi", False, _grid_distractor, _distractor_potential,
              "+0.2 per step on the distractor cell, farmable (misleading)"),
    Heuristic("halfcheetah-control-cost", "brax/halfcheetah", True, _control_cost, None,
              "-0.1 * |a|^2, the control cost"),
    Heuristic("halfcheetah-control-bonus", "brax/halfcheetah", False, _control_bonus, None,
              "+0.1 * |a|^2, rewarding effort (misleading)"),
)}


def names_for(env: str) -> list[str]:
    return [n for n, h in HEURISTICS.items() if h.env == env]


def get(name: str, env: str) -> Heuristic:
    """The heuristic `name`, checked to be one for `env` (ConfigError otherwise)."""
    if name not in HEURISTICS:
        close = difflib.get_close_matches(name, list(HEURISTICS), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown heuristic {name!r}.{hint} Known heuristics: {', '.join(HEURISTICS)}")
    heuristic = HEURISTICS[name]
    if heuristic.env != env:
        valid = names_for(env)
        choices = f"heuristics for {env}: {', '.join(valid)}" if valid else f"no heuristic is defined for {env}"
        raise ConfigError(f"heuristic {name!r} is for {heuristic.env}, not {env}; {choices}")
    return heuristic
