"""A deceptive "hard maze" for a 2-D point robot (registered as "hard-maze").

After the hard maze of Lehman & Stanley (2011), with a geometry of our own:
the unit square, a start at the bottom left and a goal above it, behind a
shelf. The robot that follows the distance to the goal climbs straight up
into the shelf's underside, 0.15 from the goal, and stays there; the way
round leads away from the goal (right, through the gap at the shelf's end),
then along the upper corridor into a second wall that has to be passed over
the top before the goal's pocket opens. Everywhere on that detour is farther
from the goal than the dead end, which is what makes the reward deceptive.

    y
    1 +-------------------------------+
      |          :                    |
      |  pocket  :                    |      walls (line segments, `WALLS`):
      |   (G)    :   upper corridor   |      the outer square,
      |          :                    |      the shelf   (0, .6)-(.75, .6),
   .6 |==========:============        |      the divider (.45, .6)-(.45, .85),
      |    ^ dead end                 |      the ridge   (.55, 0)-(.55, .35)
      |              |                |
      |   (S)        |                |
    0 +-------------------------------+ x
      0                               1

Dynamics: the action in [-1, 1]^2 is the velocity, scaled by `max_speed` per
step. A move that would cross a wall or end closer than `radius` to one is
refused (the robot stays where it is and its velocity becomes 0), so a wall
blocks a move and pushing into it does nothing.

Observation (14 float32): position (2, in [0, 1]), velocity / max_speed (2),
8 range finders at fixed compass angles 0, 45, ..., 315 degrees (distance to
the nearest wall / `sensor_range`, clipped to 1), and the unit vector from
the robot to the goal (2: the "radar" that lures it into the dead end).

Reward: the progress towards the goal, |p - goal| - |p' - goal| per step, so
an episode's return is the closeness gained over the whole episode,
|start - goal| - |final - goal|: the reward of being close at the end. The
episode terminates when the robot is within `goal_radius` of the goal, and is
truncated after `max_steps_in_episode` steps.

Behaviour descriptor: the final position (the first two observation entries
of the episode's last observation), in [0, 1]^2 (`DESCRIPTOR_LOW/HIGH`).

The walls, start and goal are `HardMazeParams` leaves (a level), so another
layout is another params value with the same number of walls.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Box, Environment

# (x0, y0, x1, y1) per wall
WALLS = np.array([
    [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0],   # outer square
    [0.0, 0.6, 0.75, 0.6],     # the shelf: the dead end under the goal
    [0.45, 0.6, 0.45, 0.85],   # the divider: the corridor's approach to the pocket goes over it
    [0.55, 0.0, 0.55, 0.35],   # the ridge: the way right from the start goes above it
], np.float32)
START = (0.15, 0.1)
GOAL = (0.15, 0.75)
DESCRIPTOR_LOW = (0.0, 0.0)
DESCRIPTOR_HIGH = (1.0, 1.0)
NUM_SENSORS = 8
SENSOR_ANGLES = np.arange(NUM_SENSORS, dtype=np.float32) * (2 * np.pi / NUM_SENSORS)


@struct.dataclass
class HardMazeParams:
    walls: jax.Array = struct.field(default_factory=lambda: jnp.asarray(WALLS))
    start: jax.Array = struct.field(default_factory=lambda: jnp.asarray(START, jnp.float32))
    goal: jax.Array = struct.field(default_factory=lambda: jnp.asarray(GOAL, jnp.float32))
    goal_radius: float = 0.05
    max_speed: float = 0.02
    radius: float = 0.01
    sensor_range: float = 0.5
    max_steps_in_episode: int = struct.field(pytree_node=False, default=200)


@struct.dataclass
class HardMazeState:
    pos: jax.Array    # (x, y)
    vel: jax.Array    # last move per step (0 after a refused one)
    time: jax.Array


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def crosses(p, q, walls):
    """Whether the move p -> q crosses each wall [W] (parallel moves never do;
    the `radius` test catches a move along a wall)."""
    a, b = walls[:, :2], walls[:, 2:]
    d, e = q - p, b - a
    denom = _cross(d, e)
    safe = jnp.where(denom == 0, 1.0, denom)
    t = _cross(a - p, e) / safe      # along the move
    s = _cross(a - p, d) / safe      # along the wall
    return (denom != 0) & (t >= 0) & (t <= 1) & (s >= 0) & (s <= 1)


def wall_distance(q, walls):
    """Distance from the point q to each wall segment [W]."""
    a, b = walls[:, :2], walls[:, 2:]
    e = b - a
    along = jnp.clip(jnp.sum((q - a) * e, -1) / jnp.maximum(jnp.sum(e * e, -1), 1e-12), 0.0, 1.0)
    return jnp.linalg.norm(q - (a + along[:, None] * e), axis=-1)


def ranges(p, walls, sensor_range):
    """Distance along each fixed-angle ray to the nearest wall / sensor_range, in [0, 1]."""
    directions = jnp.stack([jnp.cos(SENSOR_ANGLES), jnp.sin(SENSOR_ANGLES)], -1)    # [S, 2]
    a, b = walls[None, :, :2], walls[None, :, 2:]
    d, e = directions[:, None, :] * sensor_range, b - a                              # [S, 1, 2], [1, W, 2]
    denom = _cross(d, e)
    safe = jnp.where(denom == 0, 1.0, denom)
    t = _cross(a - p, e) / safe
    s = _cross(a - p, d) / safe
    hit = (denom != 0) & (t >= 0) & (s >= 0) & (s <= 1)
    return jnp.clip(jnp.min(jnp.where(hit, t, 1.0), axis=1), 0.0, 1.0)


class HardMaze(Environment):
    name = "hard-maze"
    descriptor_low = DESCRIPTOR_LOW
    descriptor_high = DESCRIPTOR_HIGH

    @property
    def default_params(self):
        return HardMazeParams()

    def observe(self, state, params):
        to_goal = params.goal - state.pos
        direction = to_goal / jnp.maximum(jnp.linalg.norm(to_goal), 1e-6)
        return jnp.concatenate([state.pos, state.vel / params.max_speed,
                                ranges(state.pos, params.walls, params.sensor_range), direction]).astype(jnp.float32)

    def reset(self, key, params):
        state = HardMazeState(params.start.astype(jnp.float32), jnp.zeros(2, jnp.float32), jnp.zeros((), jnp.int32))
        return self.observe(state, params), state

    def move(self, pos, action, params):
        """(new position, velocity): the move, or staying put where a wall refuses it."""
        vel = jnp.clip(action, -1.0, 1.0).astype(jnp.float32) * params.max_speed
        target = pos + vel
        blocked = jnp.any(crosses(pos, target, params.walls)) | \
            jnp.any(wall_distance(target, params.walls) < params.radius)
        return jnp.where(blocked, pos, target), jnp.where(blocked, 0.0, vel)

    def step(self, key, state, action, params):
        pos, vel = self.move(state.pos, action, params)
        before = jnp.linalg.norm(state.pos - params.goal)
        after = jnp.linalg.norm(pos - params.goal)
        reward = (before - after).astype(jnp.float32)
        time = state.time + 1
        terminated = after < params.goal_radius
        truncated = (time >= params.max_steps_in_episode) & ~terminated
        done = terminated | truncated
        moved = HardMazeState(pos, vel, time)
        final_obs = self.observe(moved, params)
        start_obs, fresh = self.reset(key, params)
        next_state = jax.tree.map(lambda f, m: jnp.where(done, f, m), fresh, moved)
        # the start's observation depends on params alone (hoisted out of a rollout's loop when they
        # are fixed): one ray cast per step, not a second one on the state after the reset
        next_obs = jnp.where(done, start_obs, final_obs)
        info = {"final_observation": final_obs, "terminated": terminated, "truncated": truncated,
                "discount": 1.0 - terminated.astype(jnp.float32), "goal_reached": terminated}
        return next_obs, next_state, reward, terminated, truncated, info

    def observation_space(self, params):
        low = np.concatenate([[0, 0, -1, -1], np.zeros(NUM_SENSORS), [-1, -1]]).astype(np.float32)
        high = np.concatenate([[1, 1, 1, 1], np.ones(NUM_SENSORS), [1, 1]]).astype(np.float32)
        return Box(jnp.asarray(low), jnp.asarray(high), (4 + NUM_SENSORS + 2,), jnp.float32)

    def action_space(self, params):
        return Box(-1.0, 1.0, (2,), jnp.float32)
