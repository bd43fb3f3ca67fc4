"""A partially observed maze in JAX whose level is its `env_params`.

A level (`MazeLevel`) is a wall grid [height, width] plus a start cell, a
start direction and a goal cell. Cells outside the grid count as walls. Two
views (static, per environment):

    centred  (default) the 5x5 (by default) window centred on the agent, two
             channels (wall, goal), flattened; 4 actions: move up/right/down/
             left. The start direction is unused.
    forward  the jaxued/ACCEL (MiniGrid) setting: the 5x5 window in front of
             the agent, rotated with it (the agent in the middle of the last
             row, looking up the window), two channels (wall, goal),
             flattened, then the one-hot of the agent's direction; 3 actions:
             turn left, turn right, move forward (jaxued's first three; its
             other four do nothing in its maze). Reaching the goal ends the episode with reward
1 - 0.9 * t / max_steps (t the number of steps taken), as in MiniGrid; an
episode that runs out of steps is truncated with reward 0. Sizes (grid, view,
step limit) are static and fixed per environment; levels of one environment
stack and vmap.

Besides the environment: a random generator with a wall budget, a mutator by
wall edits, a reachability check by flood fill (plain JAX, jittable), and the
plain-text level format of the held-out mazes in envs/data/mazes/:

    #  wall      .  free      G  goal
    S  start (facing up)      ^ > v <  start facing up, right, down, left

one row of the grid per line (blank lines and lines starting with ';' are
ignored). A level smaller than the environment is placed in the top-left
corner and the rest is filled with walls.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.core import Box, Discrete, Environment
from src.config import ConfigError

# up, right, down, left as (row, col) moves; a direction is an index into it
MOVES = jnp.array([[-1, 0], [0, 1], [1, 0], [0, -1]], jnp.int32)
START_CHARS = {"S": 0, "^": 0, ">": 1, "v": 2, "<": 3}
VIEWS = ("centred", "forward")
TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2
DATA_DIR = os.path.join(os.path.dirname(__file__), "data", "mazes")


@struct.dataclass
class MazeLevel:
    walls: jax.Array   # bool [height, width]
    start: jax.Array   # int32 [2] (row, col)
    goal: jax.Array    # int32 [2]
    start_dir: jax.Array   # int32 [], an index into MOVES (read by the forward view only)


@struct.dataclass
class MazeState:
    pos: jax.Array     # int32 [2]
    time: jax.Array    # int32 []
    dir: jax.Array     # int32 [] (constant in the centred view)


class Maze(Environment):
    def __init__(self, height: int = 9, width: int = 9, view: int = 5, max_steps: int = 250,
                 view_mode: str = "centred"):
        if height < 2 or width < 2:
            raise ConfigError(f"a maze needs height and width >= 2, got {height}x{width}")
        if view < 1 or view % 2 == 0:
            raise ConfigError(f"the view must be an odd number of cells >= 1, got {view}")
        if max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        if view_mode not in VIEWS:
            raise ConfigError(f"view_mode must be one of {', '.join(VIEWS)}, got {view_mode!r}")
        self.height, self.width, self.view, self.max_steps = height, width, view, max_steps
        self.forward = view_mode == "forward"
        self.horizon = max_steps   # read by envs.core.episode_limit
        self.name = f"maze/{height}x{width}"

    @property
    def default_params(self):
        """An empty room, start top-left, goal bottom-right."""
        return MazeLevel(jnp.zeros((self.height, self.width), bool), jnp.array([0, 0], jnp.int32),
                         jnp.array([self.height - 1, self.width - 1], jnp.int32), jnp.zeros((), jnp.int32))

    def observe(self, level, pos, direction=None):
        if self.forward:
            return self.observe_forward(level, pos, direction)
        r = self.view // 2
        walls = jnp.pad(level.walls, r, constant_values=True).astype(jnp.float32)
        goal = jnp.zeros((self.height, self.width), jnp.float32).at[level.goal[0], level.goal[1]].set(1.0)
        goal = jnp.pad(goal, r)
        grid = jnp.stack([walls, goal], axis=-1)
        window = jax.lax.dynamic_slice(grid, (pos[0], pos[1], 0), (self.view, self.view, 2))
        return window.reshape(-1)

    def observe_forward(self, level, pos, direction):
        """The view x view cells ahead: row 0 the farthest (view - 1 cells
        ahead), the last row the agent's own, columns from its left to its
        right; then the one-hot direction. A gather of view^2 cells."""
        r = self.view // 2
        ahead = MOVES[direction]
        right = MOVES[(direction + 1) % 4]
        dist = jnp.arange(self.view - 1, -1, -1)          # rows: farthest first
        side = jnp.arange(-r, r + 1)                      # columns: left to right
        cells = pos + dist[:, None, None] * ahead + side[None, :, None] * right   # [view, view, 2]
        inside = ((cells >= 0) & (cells < jnp.array([self.height, self.width]))).all(-1)
        rc = jnp.clip(cells, 0, jnp.array([self.height - 1, self.width - 1]))
        walls = jnp.where(inside, level.walls[rc[..., 0], rc[..., 1]], True)
        goal = inside & (rc == level.goal).all(-1)
        window = jnp.stack([walls, goal], axis=-1).astype(jnp.float32).reshape(-1)
        return jnp.concatenate([window, jax.nn.one_hot(direction, 4, dtype=jnp.float32)])

    def reset(self, key, params):
        state = MazeState(params.start.astype(jnp.int32), jnp.zeros((), jnp.int32),
                          jnp.asarray(params.start_dir, jnp.int32))
        return self.observe(params, state.pos, state.dir), state

    def step(self, key, state, action, params):
        if self.forward:   # turn left / turn right / forward
            direction = (state.dir + jnp.where(action == TURN_RIGHT, 1, 0) - jnp.where(action == TURN_LEFT, 1, 0)) % 4
            target = state.pos + jnp.where(action == FORWARD, 1, 0) * MOVES[direction]
        else:
            direction = state.dir
            target = state.pos + MOVES[action]
        inside = jnp.all((target >= 0) & (target < jnp.array([self.height, self.width])))
        clipped = jnp.clip(target, 0, jnp.array([self.height - 1, self.width - 1]))
        free = inside & ~params.walls[clipped[0], clipped[1]]
        pos = jnp.where(free, target, state.pos)
        time = state.time + 1
        terminated = jnp.all(pos == params.goal)
        truncated = ~terminated & (time >= self.max_steps)
        reward = jnp.where(terminated, 1.0 - 0.9 * time / self.max_steps, 0.0).astype(jnp.float32)
        final_obs = self.observe(params, pos, direction)
        done = terminated | truncated
        reset_obs, reset_state = self.reset(key, params)
        new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), reset_state, MazeState(pos, time, direction))
        obs = jnp.where(done, reset_obs, final_obs)
        info = {"final_observation": final_obs, "terminated": terminated, "truncated": truncated,
                "discount": 1.0 - terminated.astype(jnp.float32)}
        return obs, new_state, reward, terminated, truncated, info

    def observation_space(self, params):
        return Box(0.0, 1.0, (self.view * self.view * 2 + 4 * self.forward,), jnp.float32)

    def action_space(self, params):
        return Discrete(3 if self.forward else 4)


# ---------------------------------------------------------------- level tools

def reachable(level: MazeLevel) -> jax.Array:
    """bool [height, width]: the free cells reachable from the start (flood fill)."""
    free = ~level.walls
    seen = jnp.zeros_like(free).at[level.start[0], level.start[1]].set(True) & free

    def grow(carry):
        seen, _ = carry
        padded = jnp.pad(seen, 1)
        neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        new = (seen | neighbours) & free
        return new, jnp.any(new != seen)

    seen, _ = jax.lax.while_loop(lambda c: c[1], grow, (seen, jnp.bool_(True)))
    return seen


def solvable(level: MazeLevel) -> jax.Array:
    """True when the goal can be reached from the start."""
    return reachable(level)[level.goal[0], level.goal[1]] & is_valid(level)


def is_valid(level: MazeLevel) -> jax.Array:
    """Start and goal inside the grid, on free cells, and distinct."""
    h, w = level.walls.shape
    inside = lambda p: (p[0] >= 0) & (p[0] < h) & (p[1] >= 0) & (p[1] < w)  # noqa: E731
    s = jnp.clip(level.start, 0, jnp.array([h - 1, w - 1]))
    g = jnp.clip(level.goal, 0, jnp.array([h - 1, w - 1]))
    return (inside(level.start) & inside(level.goal) & ~level.walls[s[0], s[1]] & ~level.walls[g[0], g[1]]
            & jnp.any(level.start != level.goal))


def _cell(index, width):
    return jnp.stack([index // width, index % width]).astype(jnp.int32)


def generate(key, height: int, width: int, max_walls: int) -> MazeLevel:
    """Domain randomisation: a uniform number of walls in [0, max_walls] at
    distinct random cells, then start and goal on distinct free cells and a
    uniform start direction. The goal need not be reachable (as in the
    PLR/ACCEL maze generator)."""
    n = height * width
    count_key, wall_key, start_key, goal_key = jax.random.split(key, 4)
    num_walls = jax.random.randint(count_key, (), 0, max_walls + 1)
    order = jax.random.permutation(wall_key, n)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n))
    walls = rank < num_walls
    # start and goal go on free cells; with at most n - 2 walls there are two
    free = ~walls
    start = jax.random.choice(start_key, n, p=free / free.sum())
    free_goal = free.at[start].set(False)
    goal = jax.random.choice(goal_key, n, p=free_goal / free_goal.sum())
    # the direction's key is folded in, so the other draws are those of the
    # generator before levels had a direction (same walls, start and goal per key)
    start_dir = jax.random.randint(jax.random.fold_in(key, 4), (), 0, 4)
    return MazeLevel(walls.reshape(height, width), _cell(start, width), _cell(goal, width), start_dir)


def mutate(key, level: MazeLevel, num_edits: int) -> MazeLevel:
    """ACCEL's edits: each flips one random cell between wall and free (never
    the start or goal cell); with probability 1/(num_edits+1) per edit the
    goal moves to a random free cell instead. The result is always valid."""
    h, w = level.walls.shape

    def edit(level, key):
        kind_key, cell_key, goal_key = jax.random.split(key, 3)
        move_goal = jax.random.uniform(kind_key) < 1.0 / (num_edits + 1)
        flat = level.walls.reshape(-1)
        protected = jnp.zeros(h * w, bool).at[level.start[0] * w + level.start[1]].set(True)
        protected = protected.at[level.goal[0] * w + level.goal[1]].set(True)
        flip = jax.random.randint(cell_key, (), 0, h * w)
        flipped = jnp.where(protected[flip], flat, flat.at[flip].set(~flat[flip]))
        free = ~flat & ~protected
        goal_idx = jax.random.choice(goal_key, h * w, p=free / jnp.maximum(free.sum(), 1))
        new_goal = jnp.where(free.any(), _cell(goal_idx, w), level.goal)
        walls = jnp.where(move_goal, flat, flipped).reshape(h, w)
        goal = jnp.where(move_goal, new_goal, level.goal)
        return MazeLevel(walls, level.start, goal, level.start_dir), None

    level, _ = jax.lax.scan(edit, level, jax.random.split(key, num_edits))
    return level


def shortest_path(level) -> int:
    """Breadth-first search in Python (the slow reference; -1 if unreachable)."""
    walls = np.asarray(level.walls)
    h, w = walls.shape
    start, goal = tuple(int(v) for v in level.start), tuple(int(v) for v in level.goal)
    frontier, dist = [start], {start: 0}
    while frontier:
        nxt = []
        for r, c in frontier:
            if (r, c) == goal:
                return dist[(r, c)]
            for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1)):
                q = (r + dr, c + dc)
                if 0 <= q[0] < h and 0 <= q[1] < w and not walls[q] and q not in dist:
                    dist[q] = dist[(r, c)] + 1
                    nxt.append(q)
        frontier = nxt
    return -1


# ---------------------------------------------------------------- text levels

def parse_level(text: str, height: int, width: int, source: str = "<string>") -> MazeLevel:
    """A level from the text format above; ConfigError names the file and line
    of any problem, including a goal that cannot be reached."""
    rows = [(i + 1, line.rstrip("\n").strip()) for i, line in enumerate(text.splitlines())]
    rows = [(n, line) for n, line in rows if line and not line.startswith(";")]
    if not rows:
        raise ConfigError(f"{source}: no maze rows (use '#' wall, '.' free, 'S' start, 'G' goal)")
    if len(rows) > height or any(len(line) > width for _, line in rows):
        raise ConfigError(f"{source}: the maze is {len(rows)}x{max(len(l) for _, l in rows)}, larger than "
                          f"the environment's {height}x{width}; set the level space's height and width "
                          f"(space_kwargs) to at least that, or use a data_dir of {height}x{width} mazes")
    walls = np.ones((height, width), bool)
    start, goal, start_dir = [], [], 0
    first_width = len(rows[0][1])
    for r, (lineno, line) in enumerate(rows):
        if len(line) != first_width:
            raise ConfigError(f"{source}:{lineno}: row has {len(line)} cells, the first row has {first_width}")
        for c, ch in enumerate(line):
            if ch not in "#.G" and ch not in START_CHARS:
                raise ConfigError(f"{source}:{lineno}: unknown cell {ch!r} at column {c + 1}; "
                                  "valid cells: '#' wall, '.' free, 'S' start (or '^', '>', 'v', '<': start "
                                  "facing up, right, down, left), 'G' goal")
            walls[r, c] = ch == "#"
            if ch in START_CHARS:
                start.append((r, c))
                start_dir = START_CHARS[ch]
            if ch == "G":
                goal.append((r, c))
    if len(start) != 1 or len(goal) != 1:
        raise ConfigError(f"{source}: a maze needs exactly one 'S' and one 'G', found {len(start)} and {len(goal)}")
    level = MazeLevel(jnp.asarray(walls), jnp.array(start[0], jnp.int32), jnp.array(goal[0], jnp.int32),
                      jnp.asarray(start_dir, jnp.int32))
    if shortest_path(level) < 0:
        raise ConfigError(f"{source}: the goal at row {goal[0][0] + 1}, column {goal[0][1] + 1} cannot be reached "
                          "from the start")
    return level


def load_level(path: str, height: int, width: int) -> MazeLevel:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read maze file {path}: {e.strerror}") from None
    return parse_level(text, height, width, source=path)


def held_out_names(data_dir: str = DATA_DIR) -> list[str]:
    return sorted(f[:-4] for f in os.listdir(data_dir) if f.endswith(".txt"))


def held_out_dirs(height: int, width: int) -> list[str]:
    """The default held-out sets for a grid: our six 9x9 mazes, and on grids
    of at least 13x13 the PLR/ACCEL papers' eight 13x13 mazes as well
    (envs/data/mazes/13x13/); smaller mazes sit in the top-left corner."""
    dirs = [DATA_DIR]
    if height >= 13 and width >= 13:
        dirs.append(os.path.join(DATA_DIR, "13x13"))
    return dirs


def load_held_out(height: int, width: int, data_dir: str | list[str] | None = None):
    """(names, stacked MazeLevel) of every held-out maze in `data_dir` (a
    folder or a list of them; None: `held_out_dirs`)."""
    dirs = held_out_dirs(height, width) if data_dir is None else [data_dir] if isinstance(data_dir, str) else data_dir
    names, levels = [], []
    for d in dirs:
        for n in held_out_names(d):
            if n in names:
                raise ConfigError(f"two held-out mazes named {n!r} (in {', '.join(dirs)})")
            names.append(n)
            levels.append(load_level(os.path.join(d, n + ".txt"), height, width))
    return names, jax.tree.map(lambda *xs: jnp.stack(xs), *levels)


def to_rgb(level) -> np.ndarray:
    """[height, width, 3] float image: walls dark, start blue, goal green."""
    walls = np.asarray(level.walls)
    img = np.where(walls[..., None], 0.15, 0.95) * np.ones(3)
    img[tuple(np.asarray(level.start))] = (0.2, 0.4, 1.0)
    img[tuple(np.asarray(level.goal))] = (0.1, 0.8, 0.2)
    return img
