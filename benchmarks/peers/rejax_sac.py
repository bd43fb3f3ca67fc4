"""rejax SAC on gymnax Pendulum-v1, the peer of benchmarks/sac_vs_rejax.py.

Runs inside benchmarks/peers/.venv-rejax (see setup.sh). Trains N seeds at once
with ``jax.vmap(algo.train)`` and prints one JSON line as the last line of
stdout. Two modes:

  timing (default): no evaluation inside training; compile and train timed
      apart, then each seed's final policy is evaluated.
  --curve-every K:  rejax's own eval callback every K env steps (sampled
      policy, --eval-episodes episodes), for the learning curve.

The config is the one in configs/sac_pendulum.yaml, mapped onto rejax's names.
"""

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from rejax import SAC  # noqa: E402
from rejax.evaluate import evaluate  # noqa: E402

CONFIG = dict(
    env="Pendulum-v1",
    num_envs=1,
    num_epochs=1,            # gradient steps per iteration = per env step (UTD 1)
    buffer_size=10_000,
    fill_buffer=1_000,
    batch_size=256,
    learning_rate=1e-3,
    gamma=0.99,
    polyak=0.98,             # tau 0.02
    normalize_observations=True,
    agent_kwargs={"activation": "relu", "hidden_layer_sizes": (64, 64)},
)

MISMATCHES = [
    "rejax clips each gradient entry (optax.clip with max_grad_norm=inf: no clip); ours has no clip either",
    "rejax uses flax default init and log_std range (-10, 2); ours flax default init and (-5, 2)",
    "rejax's eval samples from the policy; ours is evaluated the same way here (sampled)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--total-steps", type=int, default=20_000)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--curve-every", type=int, default=0, help="env steps between evaluations (0: timing mode)")
    args = ap.parse_args()

    every = args.curve_every or args.total_steps

    def eval_callback(algo, ts, rng):
        if not args.curve_every:
            return ()
        _, returns = evaluate(algo.make_act(ts), rng, algo.env, algo.env_params, args.eval_episodes,
                              algo.env_params.max_steps_in_episode)
        return returns.mean()

    algo = SAC.create(total_timesteps=args.total_steps, eval_freq=every, skip_initial_evaluation=True,
                      **CONFIG)
    algo = algo.replace(eval_callback=eval_callback)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds))
    train = jax.jit(jax.vmap(algo.train))

    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts, curve = compiled(keys)
    jax.block_until_ready(ts)
    train_s = time.perf_counter() - t0

    def eval_one(ts_one, key):
        _, returns = evaluate(algo.make_act(ts_one), key, algo.env, algo.env_params, args.eval_episodes,
                              algo.env_params.max_steps_in_episode)
        return returns.mean()

    eval_keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds) + 10_000)
    per_seed = np.asarray(jax.jit(jax.vmap(eval_one))(ts, eval_keys))

    from importlib.metadata import version
    result = {
        "peer": "rejax",
        "seeds": args.seeds,
        "total_steps": int(np.asarray(ts.global_step)[0]),
        "compile_s": round(compile_s, 3),
        "train_s": round(train_s, 3),
        "process_s": round(time.perf_counter() - T_PROCESS_START, 3),
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "env_steps_per_s": args.seeds * args.total_steps / train_s,
        "versions": {p: version(p) for p in ("rejax", "gymnax", "jax", "flax", "optax")},
        "cpu_count": os.cpu_count(),
        "mismatches": MISMATCHES,
    }
    if args.curve_every:
        curve = np.asarray(curve)   # (seeds, evaluations)
        result["curve_steps"] = [every * (i + 1) for i in range(curve.shape[1])]
        result["curve_mean"] = curve.mean(0).tolist()
        result["curve_std"] = curve.std(0).tolist()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
