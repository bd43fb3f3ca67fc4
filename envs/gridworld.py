"""A BARFI-style gridworld: a goal, and cells that auxiliary rewards point at.

The agent starts in the corner (0, 0) of a size x size grid; reaching the
goal in the opposite corner (size-1, size-1) gives the primary reward 1 and
ends the episode. Episodes are cut at `max_steps`. With probability `slip`
the chosen move is replaced by a random one. The observation is the one-hot
position, so a linear head on it (the learned reward's phi1, phi2) is a table.

The designer heuristics for it live in envs/heuristics.py: a good one (progress
towards the goal) and a bad one (a bonus for standing on the `distractor`
cell, the corner (size-1, 0), which an agent can farm by pushing into walls).
"""
import jax
import jax.numpy as jnp
from flax import struct

from envs.core import Box, Discrete, Environment

# right, up, left, down as (dx, dy)
MOVES = jnp.array([[1, 0], [0, 1], [-1, 0], [0, -1]], jnp.int32)


@struct.dataclass
class GridParams:
    max_steps_in_episode: int = struct.field(pytree_node=False, default=30)
    slip: float = 0.1
    goal_reward: float = 1.0


@struct.dataclass
class GridState:
    pos: jax.Array    # (x, y) int32
    time: jax.Array


class GridWorld(Environment):
    def __init__(self, size: int = 6):
        if size < 3:
            from src.config import ConfigError
            raise ConfigError(f"gridworld size must be >= 3, got {size}")
        self.size = size
        self.name = "gridworld/barfi"
        self.start = jnp.array([0, 0], jnp.int32)
        self.goal = jnp.array([size - 1, size - 1], jnp.int32)
        self.distractor = jnp.array([size - 1, 0], jnp.int32)

    @property
    def default_params(self):
        return GridParams()

    def index(self, pos):
        return pos[..., 0] * self.size + pos[..., 1]

    def observe(self, pos):
        return jax.nn.one_hot(self.index(pos), self.size * self.size, dtype=jnp.float32)

    def position(self, obs):
        """The (x, y) cell of a one-hot observation (works on batches)."""
        index = jnp.argmax(obs, axis=-1)
        return jnp.stack([index // self.size, index % self.size], axis=-1)

    def reset(self, key, params):
        state = GridState(self.start, jnp.zeros((), jnp.int32))
        return self.observe(state.pos), state

    def step(self, key, state, action, params):
        slip_key, move_key = jax.random.split(key)
        slipped = jax.random.uniform(slip_key) < params.slip
        action = jnp.where(slipped, jax.random.randint(move_key, (), 0, 4), action)
        pos = jnp.clip(state.pos + MOVES[action], 0, self.size - 1)
        time = state.time + 1
        terminated = jnp.all(pos == self.goal)
        truncated = jnp.logical_and(time >= params.max_steps_in_episode, jnp.logical_not(terminated))
        reward = jnp.where(terminated, params.goal_reward, 0.0).astype(jnp.float32)
        final_obs = self.observe(pos)
        done = jnp.logical_or(terminated, truncated)
        next_state = GridState(jnp.where(done, self.start, pos), jnp.where(done, 0, time))
        info = {"final_observation": final_obs, "terminated": terminated, "truncated": truncated,
                "discount": 1.0 - terminated.astype(jnp.float32)}
        return self.observe(next_state.pos), next_state, reward, terminated, truncated, info

    def observation_space(self, params):
        return Box(0.0, 1.0, (self.size * self.size,), jnp.float32)

    def action_space(self, params):
        return Discrete(4)


GRIDWORLDS = ("barfi",)
