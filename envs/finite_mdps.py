"""The gridworlds as finite MDPs: their exact transition tables.

`FINITE_MDPS[name](env, params)` gives a `FiniteMDP`: the observation of
every state and P[s, a, s'], written out from the environment's documented
dynamics (envs/gridworld.py, envs/tomato.py). Exact reward distances (EPIC,
STARC, regret in envs/reward_distances.py) need these tables;
`state_index` maps the environment's observations back to table states
(tests/test_finite_mdps.py checks the tables against the environments by
Monte Carlo). Both are continuing MDPs: the time limit is not in the
observation, so it is left out.
"""
from typing import NamedTuple

import numpy as np

from envs import gridworld
from envs import tomato as T


class FiniteMDP(NamedTuple):
    obs: object     # [S, obs_dim]: the observation of each state
    P: object       # [S, A, S]: P(s' | s, a), rows summing to 1


def barfi_mdp(env, params) -> FiniteMDP:
    """envs/gridworld.py's dynamics as a table: state = cell (index x * size + y,
    as its one-hot observation); the chosen move, or with probability `slip`
    a uniformly random one; walls keep the agent in place. The episodic task
    as a continuing MDP: from the goal cell every action leads to the start
    cell (the reset). The time limit is not in the observation, so it is left out."""
    n = env.size
    moves = np.asarray(gridworld.MOVES)
    index = lambda x, y: x * n + y  # noqa: E731
    move = np.zeros((n * n, len(moves), n * n))
    for x in range(n):
        for y in range(n):
            for a, (dx, dy) in enumerate(moves):
                move[index(x, y), a, index(min(max(x + dx, 0), n - 1), min(max(y + dy, 0), n - 1))] = 1.0
    slip = float(params.slip)
    P = (1.0 - slip) * move + slip * move.mean(axis=1, keepdims=True)
    goal, start = index(*np.asarray(env.goal)), index(*np.asarray(env.start))
    P[goal] = 0.0
    P[goal, :, start] = 1.0
    return FiniteMDP(np.eye(n * n, dtype=np.float32), P.astype(np.float32))


def tomato_mdp(env, params) -> FiniteMDP:
    """envs/tomato.py's dynamics as a table: state = (cell, watered mask),
    index cell * 2^T + mask (bit i: tomato i watered). The move as in
    barfi_mdp; then the tomato on the new cell (if any) is watered and every
    other watered tomato dries with probability `dry_prob`, independently.
    Episodes end only by the time limit, which is not in the observation."""
    cells, tomatoes = T.NUM_CELLS, T.NUM_TOMATOES
    masks = 2 ** tomatoes
    bits = (np.arange(masks)[:, None] >> np.arange(tomatoes)) & 1               # [masks, T]
    dry, slip = float(params.dry_prob), float(params.slip)
    # Q[c', m, m']: the watered mask after the step, given the cell it ends on
    Q = np.ones((cells, masks, masks))
    for c in range(cells):
        for i, tomato_cell in enumerate(T.TOMATO_CELLS):
            before, after = bits[:, i][:, None], bits[:, i][None, :]
            if tomato_cell == c:
                q = (after == 1).astype(float) * np.ones_like(before)
            else:
                q = np.where(before == 1, np.where(after == 1, 1.0 - dry, dry), (after == 0).astype(float))
            Q[c] *= q
    actions = len(T.MOVES)
    chosen = (1.0 - slip) * np.eye(actions) + slip / actions                      # [a, effective a]
    P = np.zeros((cells, masks, actions, cells, masks))
    for c in range(cells):
        for a in range(actions):
            for b in range(actions):
                c2 = T.NEXT_CELL[c, b]
                P[c, :, a, c2, :] += chosen[a, b] * Q[c2]
    obs = np.concatenate([np.repeat(np.eye(cells), masks, axis=0), np.tile(bits, (cells, 1))], axis=1)
    return FiniteMDP(obs.astype(np.float32), P.reshape(cells * masks, actions, cells * masks).astype(np.float32))


FINITE_MDPS = {"gridworld/barfi": barfi_mdp, "gridworld/tomato": tomato_mdp}


def state_index(name: str, obs):
    """The FiniteMDP state index of observations [..., obs_dim] (numpy)."""
    obs = np.asarray(obs)
    if name == "gridworld/barfi":
        return np.argmax(obs, axis=-1)
    mask = (obs[..., T.NUM_CELLS:] > 0.5).astype(int) @ (2 ** np.arange(T.NUM_TOMATOES))
    return np.argmax(obs[..., :T.NUM_CELLS], axis=-1) * 2 ** T.NUM_TOMATOES + mask
