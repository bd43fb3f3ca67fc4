"""QDax's MAP-Elites on the hard maze, for benchmarks/qd_vs_qdax.py.

Runs in the peer venv (benchmarks/peers/.venv-qdax: qdax 0.5.0, jax 0.10.2),
which has neither gymnax nor our package, so the maze's dynamics are written
here again from envs/hard_maze.py's description (same walls, start, goal,
speeds, sensors, 200 steps; qd_vs_qdax.py checks that both give the same
returns and final positions for the same genomes). The policy is the same
14-16-16-2 tanh MLP over the same flat genome layout (flax's ravel order:
per layer, bias then kernel).

The setting matches `meta/qd.py`'s map-elites: the first batch is the origin
genome plus Gaussian noise (QDax's `init` scores it), then each generation
draws `batch` elites uniformly from the filled cells, adds Gaussian noise of
std `sigma` (MixingEmitter, no crossover) and inserts the children into a
grid of 20 x 20 cells over [0, 1]^2 (QDax's Euclidean centroids).

    python qdax_map_elites.py --generations 100 --batch 256 --seed 0 [--scan 10]
    python qdax_map_elites.py --check genomes.npz out.npz     # evaluate given genomes only

Prints one JSON line: seconds for the timed generations (after one warm-up
call that compiles), evaluations per second, coverage, best return, whether
the goal was reached.
"""
import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

WALLS = np.array([
    [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.6, 0.75, 0.6], [0.45, 0.6, 0.45, 0.85], [0.55, 0.0, 0.55, 0.35]], np.float32)
START, GOAL = np.array([0.15, 0.1], np.float32), np.array([0.15, 0.75], np.float32)
GOAL_RADIUS, MAX_SPEED, RADIUS, SENSOR_RANGE, STEPS = 0.05, 0.02, 0.01, 0.5, 200
ANGLES = np.arange(8, dtype=np.float32) * (2 * np.pi / 8)
LAYERS = [(14, 16), (16, 16), (16, 2)]
GENOME = sum(i * o + o for i, o in LAYERS)


def cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def segment_hits(origin, delta, walls):
    """Parameters (t along origin + t * delta, s along each wall) of the line intersections."""
    a, e = walls[..., :2], walls[..., 2:] - walls[..., :2]
    den = cross2(delta, e)
    safe = jnp.where(den == 0, 1.0, den)
    return den != 0, cross2(a - origin, e) / safe, cross2(a - origin, delta) / safe


def maze_step(pos, action):
    walls = jnp.asarray(WALLS)
    vel = jnp.clip(action, -1.0, 1.0) * MAX_SPEED
    target = pos + vel
    ok, t, s = segment_hits(pos, vel, walls)
    crossing = ok & (t >= 0) & (t <= 1) & (s >= 0) & (s <= 1)
    a, e = walls[:, :2], walls[:, 2:] - walls[:, :2]
    along = jnp.clip(jnp.sum((target - a) * e, -1) / jnp.maximum(jnp.sum(e * e, -1), 1e-12), 0.0, 1.0)
    near = jnp.linalg.norm(target - (a + along[:, None] * e), axis=-1) < RADIUS
    blocked = crossing.any() | near.any()
    return jnp.where(blocked, pos, target), jnp.where(blocked, 0.0, vel)


def observe(pos, vel):
    walls = jnp.asarray(WALLS)[None]
    rays = jnp.stack([jnp.cos(ANGLES), jnp.sin(ANGLES)], -1)[:, None, :] * SENSOR_RANGE
    ok, t, s = segment_hits(pos, rays, walls)
    ranges = jnp.clip(jnp.min(jnp.where(ok & (t >= 0) & (s >= 0) & (s <= 1), t, 1.0), axis=1), 0.0, 1.0)
    to_goal = GOAL - pos
    return jnp.concatenate([pos, vel / MAX_SPEED, ranges, to_goal / jnp.maximum(jnp.linalg.norm(to_goal), 1e-6)])


def unpack(genome):
    """[(kernel, bias)] per layer from the flat genome (once per episode, not per step)."""
    layers, i = [], 0
    for fan_in, fan_out in LAYERS:
        bias = genome[i:i + fan_out]
        kernel = genome[i + fan_out:i + fan_out + fan_in * fan_out].reshape(fan_in, fan_out)
        layers.append((kernel, bias))
        i += fan_out + fan_in * fan_out
    return layers


def policy(layers, obs):
    x = obs
    for n, (kernel, bias) in enumerate(layers):
        x = x @ kernel + bias
        if n < len(layers) - 1:
            x = jnp.tanh(x)
    return jnp.tanh(x)


def episode(genome):
    """(return, final position, reached): the first episode, as envs/hard_maze.py scores it."""
    layers = unpack(genome)

    def body(carry, _):
        pos, vel, done, total, final, reached = carry
        new_pos, new_vel = maze_step(pos, policy(layers, observe(pos, vel)))
        reward = jnp.linalg.norm(pos - GOAL) - jnp.linalg.norm(new_pos - GOAL)
        at_goal = jnp.linalg.norm(new_pos - GOAL) < GOAL_RADIUS
        live = ~done
        total = total + jnp.where(live, reward, 0.0)
        final = jnp.where(live, new_pos, final)
        reached = reached | (live & at_goal)
        return (new_pos, new_vel, done | at_goal, total, final, reached), None

    zero = jnp.zeros((), jnp.float32)
    carry = (jnp.asarray(START), jnp.zeros(2, jnp.float32), jnp.zeros((), bool), zero, jnp.asarray(START),
             jnp.zeros((), bool))
    (_, _, _, total, final, reached), _ = jax.lax.scan(body, carry, None, length=STEPS)
    return total, final, reached


def scoring(genotypes, key):
    total, final, reached = jax.vmap(episode)(genotypes)
    return total, final, {"reached": reached}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--grid", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scan", type=int, default=0, help="generations per jitted lax.scan chunk (0: one jitted update per generation)")
    p.add_argument("--check", nargs=2, metavar=("GENOMES_NPZ", "OUT_NPZ"))
    args = p.parse_args()

    if args.check:
        genomes = np.load(args.check[0])["genomes"]
        total, final, reached = jax.jit(jax.vmap(episode))(jnp.asarray(genomes))
        np.savez(args.check[1], fitness=np.asarray(total), descriptor=np.asarray(final), reached=np.asarray(reached))
        return 0

    from qdax.core.containers.mapelites_repertoire import compute_euclidean_centroids
    from qdax.core.emitters.standard_emitters import MixingEmitter
    from qdax.core.map_elites import MAPElites
    from qdax.utils.metrics import default_qd_metrics

    def mutate(genotypes, key):
        return genotypes + args.sigma * jax.random.normal(key, genotypes.shape, genotypes.dtype)

    emitter = MixingEmitter(mutation_fn=mutate, variation_fn=lambda a, b, k: a, variation_percentage=0.0,
                            batch_size=args.batch)
    map_elites = MAPElites(scoring_function=scoring, emitter=emitter,
                           metrics_function=lambda r: default_qd_metrics(r, qd_offset=-1.0))
    centroids = compute_euclidean_centroids(grid_shape=(args.grid, args.grid), minval=0.0, maxval=1.0)
    key = jax.random.PRNGKey(args.seed)
    key, origin_key, noise_key, init_key = jax.random.split(key, 4)
    scale = np.concatenate([np.concatenate([np.zeros(o), np.full(i * o, 1 / np.sqrt(i))]) for i, o in LAYERS])
    origin = jax.random.normal(origin_key, (GENOME,)) * scale
    first = origin + args.sigma * jax.random.normal(noise_key, (args.batch, GENOME))

    t0 = time.perf_counter()
    repertoire, emitter_state, _ = jax.jit(map_elites.init)(first, centroids, init_key)
    jax.block_until_ready(repertoire)
    init_seconds = time.perf_counter() - t0

    if args.scan:
        chunk = jax.jit(lambda carry: jax.lax.scan(map_elites.scan_update, carry, None, length=args.scan))
        step, per_call = chunk, args.scan
    else:
        update = jax.jit(map_elites.scan_update)
        step, per_call = (lambda carry: update(carry, None)), 1
    carry = (repertoire, emitter_state, key)
    t0 = time.perf_counter()
    carry, metrics = step(carry)        # warm-up: compiles
    jax.block_until_ready(carry)
    compile_seconds = time.perf_counter() - t0
    done = 1 + per_call
    t0 = time.perf_counter()
    while done + per_call <= args.generations:
        carry, metrics = step(carry)
        jax.block_until_ready(metrics)  # a per-generation sync, as a logging loop has
        done += per_call
    seconds = time.perf_counter() - t0
    timed = done - 1 - per_call
    repertoire = carry[0]
    fitnesses = np.asarray(repertoire.fitnesses)
    filled = np.isfinite(fitnesses)
    best = repertoire.genotypes[int(np.argmax(np.where(filled, fitnesses, -np.inf)))]
    _, _, reached = jax.jit(episode)(best)
    print(json.dumps({
        "peer": "qdax", "qdax": __import__("importlib.metadata").metadata.version("qdax"), "jax": jax.__version__,
        "devices": jax.device_count(), "generations": done, "timed_generations": timed, "batch": args.batch,
        "scan": args.scan, "init_seconds": init_seconds, "compile_seconds": compile_seconds, "seconds": seconds,
        "evaluations_per_second": timed * args.batch / seconds if timed else None,
        "coverage": float(filled.mean()), "best_fitness": float(fitnesses[filled].max()),
        "best_reached_goal": bool(reached)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
