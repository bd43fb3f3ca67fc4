"""jaxued 0.0.1's maze under a robust-PLR / ACCEL loop shaped like jaxued's
maze example (examples/maze_plr.py): one update is a `lax.switch` between
new levels (scored and inserted, not trained on), replayed levels (trained on
and rescored) and, for ACCEL, edits of the last replayed batch (scored and
inserted). The environment, level generator, mutator, level buffer
(`LevelSampler`), auto-replay wrapper, recurrent reset wrapper and MaxMC score
are jaxued's; the network, rollout, GAE and PPO update are written here to
the example's structure, sized to match ours (benchmarks/ued_vs_jaxued.py).

Run with the jaxued venv (bash benchmarks/peers/setup.sh jaxued):

    benchmarks/peers/.venv-jaxued/bin/python benchmarks/peers/jaxued_maze.py --method accel \
        --updates 40 --chunk 20 --num-envs 16 --num-steps 128

Prints one JSON line: trained and total env steps per second after compile.

jaxued 0.0.1 calls `jax.tree_map`, which jax 0.10 removed: the name is set to
`jax.tree.map` below, before jaxued is imported (site-packages are untouched).
"""
import argparse
import json
import time

import jax

if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map   # the patch: jaxued 0.0.1 predates jax.tree_map's removal

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training.train_state import TrainState as FlaxTrainState  # noqa: E402
from jaxued.environments import Maze  # noqa: E402
from jaxued.environments.maze import make_level_generator, make_level_mutator_minimax  # noqa: E402
from jaxued.environments.maze.level import Level, prefabs  # noqa: E402
from jaxued.level_sampler import LevelSampler  # noqa: E402
from jaxued.linen import ResetRNN  # noqa: E402
from jaxued.utils import compute_max_returns, max_mc  # noqa: E402
from jaxued.wrappers import AutoReplayWrapper  # noqa: E402

HELD_OUT = ("SixteenRooms", "SixteenRooms2", "Labyrinth", "LabyrinthFlipped", "Labyrinth2", "StandardMaze",
            "StandardMaze2", "StandardMaze3")


class Net(nn.Module):
    """Flattened 5x5x3 view + one-hot direction -> Dense(hidden, tanh) ->
    LSTM(memory) -> actor logits and value: the layer sizes of our
    `RecurrentActorCritic` with hidden [64], memory_size 64."""
    action_dim: int
    hidden: int = 64
    memory: int = 64

    @nn.compact
    def __call__(self, carry, obs, resets):   # [T, B, ...]
        image = obs.image.astype(jnp.float32).reshape(*obs.image.shape[:2], -1)
        x = jnp.concatenate([image, jax.nn.one_hot(obs.agent_dir, 4)], -1)
        x = nn.tanh(nn.Dense(self.hidden, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        carry, h = ResetRNN(nn.OptimizedLSTMCell(features=self.memory))((x, resets), initial_carry=carry)
        logits = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01))(h)
        value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(h)[..., 0]
        return carry, logits, value

    @nn.nowrap
    def initial_carry(self, batch):
        # the LSTM's (c, h), zeros: what OptimizedLSTMCell.initialize_carry and ResetRNN reset to
        return jnp.zeros((batch, self.memory)), jnp.zeros((batch, self.memory))


class State(FlaxTrainState):
    sampler: dict
    update_state: int          # ACCEL: 1 after a replay step (the next is an edit step)
    last_replayed: Level       # the batch an ACCEL edit step mutates
    num_replay: int
    num_new: int
    num_mutate: int


def build(args):
    env = AutoReplayWrapper(Maze(max_height=13, max_width=13, agent_view_size=5, normalize_obs=True))
    env_params = env.default_params.replace(max_steps_in_episode=args.max_steps) \
        if hasattr(env.default_params, "replace") else env.default_params
    generate = make_level_generator(13, 13, args.walls)
    mutate = make_level_mutator_minimax(100)
    sampler = LevelSampler(capacity=args.capacity, replay_prob=args.replay_prob, staleness_coeff=0.3,
                           minimum_fill_ratio=0.5, prioritization="rank",
                           prioritization_params={"temperature": 0.3}, duplicate_check=False)
    net = Net(env.action_space(env_params).n, args.hidden, args.memory)
    B, T = args.num_envs, args.num_steps
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    reset_envs = jax.vmap(env.reset_to_level, in_axes=(0, 0, None))

    def rollout(rng, params, levels):
        """Reset every env on its level, T steps of the sampled policy with
        the carry reset where an episode ended."""
        rng, rng_reset = jax.random.split(rng)
        obs, env_state = reset_envs(jax.random.split(rng_reset, B), levels, env_params)
        carry0 = net.initial_carry(B)

        def step(c, _):
            rng, carry, obs, env_state, last_done = c
            rng, rng_a, rng_s = jax.random.split(rng, 3)
            carry, logits, value = net.apply(params, carry, jax.tree.map(lambda x: x[None], obs), last_done[None])
            action = jax.random.categorical(rng_a, logits[0])
            logp = jax.nn.log_softmax(logits[0])[jnp.arange(B), action]
            next_obs, env_state, reward, done, _ = step_envs(jax.random.split(rng_s, B), env_state, action,
                                                            env_params)
            return (rng, carry, next_obs, env_state, done), (obs, action, reward, done, logp, value[0], last_done)

        init = (rng, carry0, obs, env_state, jnp.zeros(B, bool))
        (rng, carry, last_obs, _, last_done), traj = jax.lax.scan(step, init, None, T)
        _, _, last_value = net.apply(params, carry, jax.tree.map(lambda x: x[None], last_obs), last_done[None])
        return carry0, traj, last_value[0]

    def gae(rewards, values, dones, last_value):
        def back(c, x):
            adv, next_value = c
            r, v, d = x
            delta = r + args.gamma * next_value * (1 - d) - v
            adv = delta + args.gamma * args.gae_lambda * (1 - d) * adv
            return (adv, v), adv
        _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), (rewards, values, dones),
                              reverse=True)
        return adv, adv + values

    def scores_of(traj, last_value):
        obs, action, reward, done, logp, value, resets = traj
        max_returns = compute_max_returns(done, reward)
        return max_mc(done, value, max_returns), max_returns

    def ppo_update(ts, rng, carry0, traj, last_value):
        obs, action, reward, done, logp, value, resets = traj
        adv, target = gae(reward, value, done.astype(jnp.float32), last_value)

        def loss_fn(params, batch):
            c0, o, a, lp, v, rs, ad, tg = batch
            _, logits, new_v = net.apply(params, c0, o, rs)
            new_lp = jnp.take_along_axis(jax.nn.log_softmax(logits), a[..., None], -1)[..., 0]
            ratio = jnp.exp(new_lp - lp)
            ad = (ad - ad.mean()) / (ad.std() + 1e-8)
            pg = -jnp.minimum(ratio * ad, jnp.clip(ratio, 0.8, 1.2) * ad).mean()
            v_clip = v + jnp.clip(new_v - v, -0.2, 0.2)
            vf = 0.5 * jnp.maximum((new_v - tg) ** 2, (v_clip - tg) ** 2).mean()
            ent = -(jax.nn.softmax(logits) * jax.nn.log_softmax(logits)).sum(-1).mean()
            return pg + 0.5 * vf - args.ent_coef * ent

        def epoch(ts, rng):
            perm = jax.random.permutation(rng, B)
            mb = args.num_minibatches

            def split_envs(x, axis):
                x = jnp.take(x, perm, axis=axis)
                if axis == 0:
                    return x.reshape(mb, B // mb, *x.shape[1:])
                return jnp.swapaxes(x.reshape(x.shape[0], mb, B // mb, *x.shape[2:]), 0, 1)

            batches = (jax.tree.map(lambda x: split_envs(x, 0), carry0),
                       jax.tree.map(lambda x: split_envs(x, 1), obs),
                       *(split_envs(x, 1) for x in (action, logp, value, resets, adv, target)))

            def minibatch(ts, batch):
                grads = jax.grad(loss_fn)(ts.params, batch)
                return ts.apply_gradients(grads=grads), None
            ts, _ = jax.lax.scan(minibatch, ts, batches)
            return ts, None

        ts, _ = jax.lax.scan(epoch, ts, jax.random.split(rng, args.num_epochs))
        return ts

    def on_new(rng, ts):
        rng_levels, rng_roll = jax.random.split(rng)
        levels = jax.vmap(generate)(jax.random.split(rng_levels, B))
        _, traj, last_value = rollout(rng_roll, ts.params, levels)
        scores, max_returns = scores_of(traj, last_value)
        sampler, _ = sampler_.insert_batch(ts.sampler, levels, scores, {"max_return": max_returns})
        return ts.replace(sampler=sampler, update_state=0, num_new=ts.num_new + 1)

    def on_replay(rng, ts):
        rng_levels, rng_roll, rng_update = jax.random.split(rng, 3)
        sampler, (idx, levels) = sampler_.sample_replay_levels(ts.sampler, rng_levels, B)
        carry0, traj, last_value = rollout(rng_roll, ts.params, levels)
        scores, max_returns = scores_of(traj, last_value)
        max_returns = jnp.maximum(sampler_.get_levels_extra(sampler, idx)["max_return"], max_returns)
        sampler = sampler_.update_batch(sampler, idx, scores, {"max_return": max_returns})
        ts = ppo_update(ts, rng_update, carry0, traj, last_value)
        return ts.replace(sampler=sampler, update_state=1, last_replayed=levels, num_replay=ts.num_replay + 1)

    def on_mutate(rng, ts):
        rng_edit, rng_roll = jax.random.split(rng)
        children = jax.vmap(mutate, in_axes=(0, 0, None))(jax.random.split(rng_edit, B), ts.last_replayed,
                                                          args.num_edits)
        _, traj, last_value = rollout(rng_roll, ts.params, children)
        scores, max_returns = scores_of(traj, last_value)
        sampler, _ = sampler_.insert_batch(ts.sampler, children, scores, {"max_return": max_returns})
        return ts.replace(sampler=sampler, update_state=0, num_mutate=ts.num_mutate + 1)

    sampler_ = sampler

    def train_step(carry, _):
        rng, ts = carry
        rng, rng_coin, rng_step = jax.random.split(rng, 3)
        replay = sampler_.sample_replay_decision(ts.sampler, rng_coin).astype(jnp.int32)
        branch = (1 - ts.update_state) * replay + 2 * ts.update_state if args.method == "accel" else replay
        ts = jax.lax.switch(branch, [on_new, on_replay, on_mutate], rng_step, ts)
        return (rng, ts), None

    def init(rng):
        rng_net, rng_level = jax.random.split(rng)
        template = generate(rng_level)
        obs, _ = env.reset_to_level(rng_level, template, env_params)
        obs = jax.tree.map(lambda x: jnp.broadcast_to(x, (1, B, *jnp.shape(x))), obs)
        params = net.init(rng_net, net.initial_carry(B), obs, jnp.zeros((1, B), bool))
        tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(args.lr, eps=1e-5))
        levels = jax.vmap(generate)(jax.random.split(rng_level, B))
        return State.create(apply_fn=net.apply, params=params, tx=tx,
                            sampler=sampler_.initialize(template, {"max_return": -jnp.inf}), update_state=0,
                            last_replayed=levels, num_replay=0, num_new=0, num_mutate=0)

    def evaluate(rng, params, episodes):
        """Held-out solve rate on the papers' eight mazes, `episodes` each."""
        levels = Level.stack([Level.from_str(prefabs[n]) for n in HELD_OUT])
        levels = jax.tree.map(lambda x: jnp.repeat(x, episodes, 0), levels)
        n = len(HELD_OUT) * episodes
        obs, env_state = reset_envs(jax.random.split(rng, n), levels, env_params)

        def step(c, rng):
            carry, obs, env_state, running, solved = c
            rng_a, rng_s = jax.random.split(rng)
            carry, logits, _ = net.apply(params, carry, jax.tree.map(lambda x: x[None], obs), jnp.zeros((1, n), bool))
            action = jax.random.categorical(rng_a, logits[0])
            obs, env_state, reward, done, _ = step_envs(jax.random.split(rng_s, n), env_state, action, env_params)
            solved = solved | (running & (reward > 0))
            return (carry, obs, env_state, running & ~done, solved), None

        init = (net.initial_carry(n), obs, env_state, jnp.ones(n, bool), jnp.zeros(n, bool))
        (_, _, _, _, solved), _ = jax.lax.scan(step, init, jax.random.split(rng, args.max_steps))
        return solved.reshape(len(HELD_OUT), episodes).mean(1)

    return init, train_step, evaluate


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=("robust_plr", "accel"), default="accel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates", type=int, default=40, help="timed updates (after one compiled chunk)")
    p.add_argument("--chunk", type=int, default=20, help="updates per compiled call")
    p.add_argument("--warmup-chunks", type=int, default=1, help="untimed chunks first (the first compiles; "
                   "they also fill the buffer past the replay threshold)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-steps", type=int, default=128)
    p.add_argument("--num-epochs", type=int, default=4)
    p.add_argument("--num-minibatches", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--memory", type=int, default=64)
    p.add_argument("--walls", type=int, default=25)
    p.add_argument("--max-steps", type=int, default=250)
    p.add_argument("--capacity", type=int, default=1000)
    p.add_argument("--replay-prob", type=float, default=0.8)
    p.add_argument("--num-edits", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.995)
    p.add_argument("--gae-lambda", type=float, default=0.98)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--eval-episodes", type=int, default=0, help="held-out episodes per maze at the end (0: none)")
    args = p.parse_args(argv)
    if args.updates % args.chunk:
        p.error("--updates must be a multiple of --chunk")
    init, train_step, evaluate = build(args)
    chunk = jax.jit(lambda c: jax.lax.scan(train_step, c, None, args.chunk)[0])
    rng = jax.random.PRNGKey(args.seed)
    t0 = time.perf_counter()
    carry = (rng, jax.jit(init)(rng))
    carry = jax.block_until_ready(chunk(carry))
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup_chunks - 1):
        carry = jax.block_until_ready(chunk(carry))
    start_counts = [int(carry[1].num_replay), int(carry[1].num_new), int(carry[1].num_mutate)]
    t0 = time.perf_counter()
    for _ in range(args.updates // args.chunk):
        carry = chunk(carry)
    carry = jax.block_until_ready(carry)
    wall = time.perf_counter() - t0
    ts = carry[1]
    replay, new, mut = (int(ts.num_replay) - start_counts[0], int(ts.num_new) - start_counts[1],
                        int(ts.num_mutate) - start_counts[2])
    batch = args.num_envs * args.num_steps
    out = {"peer": "jaxued 0.0.1", "method": args.method, "jax": jax.__version__, "updates": args.updates,
           "buffer_size": int(ts.sampler["size"]),
           "replay_updates": replay, "new_updates": new, "mutate_updates": mut,
           "trained_env_steps": replay * batch, "env_steps": (replay + new + mut) * batch, "wall_s": wall,
           "first_chunk_s_incl_compile": compile_s,
           "trained_steps_per_s": replay * batch / wall, "env_steps_per_s": (replay + new + mut) * batch / wall}
    if args.eval_episodes:
        solved = np.asarray(jax.jit(evaluate, static_argnums=2)(jax.random.PRNGKey(1), ts.params, args.eval_episodes))
        out["held_out_solve_rate"] = float(solved.mean())
        out["held_out_per_level"] = dict(zip(HELD_OUT, map(float, solved)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
