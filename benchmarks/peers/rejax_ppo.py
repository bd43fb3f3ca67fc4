"""rejax PPO on gymnax CartPole-v1, used as a peer by benchmarks/ppo_vs_peers.py.

Runs inside benchmarks/peers/.venv-rejax (see setup.sh). Trains N seeds at once
with ``jax.vmap(algo.train)``, timing XLA compilation separately from the
compiled training call, then evaluates each seed's final policy and prints one
JSON line as the last line of stdout.

Hyperparameters are the PureJaxRL/CleanRL CartPole defaults. Differences that
rejax 0.1.3 does not let us remove through its config are listed under
"mismatches" in the JSON (and in the module constants below).
"""

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import rejax  # noqa: E402
from rejax import PPO  # noqa: E402
from rejax.evaluate import evaluate  # noqa: E402

from peer_configs import CONFIGS  # noqa: E402  (this directory is on sys.path)

# defaults; --config replaces the sizes and lr
NUM_ENVS = 4
NUM_STEPS = 128
NUM_EPOCHS = 4
NUM_MINIBATCHES = 4
LR = 2.5e-4
GAMMA = 0.99
GAE_LAMBDA = 0.95
CLIP_EPS = 0.2
ENT_COEF = 0.01
VF_COEF = 0.5
MAX_GRAD_NORM = 0.5
HIDDEN = (64, 64)

# Things rejax 0.1.3 hard-codes that differ from PureJaxRL's PPO.
MISMATCHES = [
    "max_grad_norm feeds optax.clip (element-wise clip of each gradient entry to "
    "+-0.5), not a global-norm clip",
    "actor and critic have separate Adam optimizers (same lr schedule), each "
    "minimising its own loss, instead of one optimizer on the joint loss",
    "Adam eps is optax's default 1e-8 (PureJaxRL uses 1e-5)",
    "Dense layers use flax's default lecun-normal init (PureJaxRL: orthogonal "
    "sqrt(2), 0.01 for the policy head, 1.0 for the value head)",
]


def linear_lr(num_updates: int):
    """PureJaxRL-style annealing: constant within an update, lr*(1 - i/num_updates).

    rejax has no ``anneal_lr`` switch; its ``learning_rate`` is handed to
    ``optax.adam`` unchanged, so an optax schedule is passed instead. Each of
    rejax's two optimizers steps once per minibatch, so the step count advances
    NUM_EPOCHS * NUM_MINIBATCHES times per update.
    """
    steps_per_update = NUM_EPOCHS * NUM_MINIBATCHES

    def schedule(count):
        update = count // steps_per_update
        return LR * (1.0 - update / num_updates)

    return schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1), vmapped")
    ap.add_argument("--total-steps", type=int, default=500_000, help="env steps per seed")
    ap.add_argument("--eval-episodes", type=int, default=128,
                    help="episodes per seed for the final (stochastic) evaluation")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="purejaxrl",
                    help="CartPole sizes and lr (peer_configs.py)")
    args = ap.parse_args()
    globals().update(CONFIGS[args.config])

    batch = NUM_ENVS * NUM_STEPS
    num_updates = args.total_steps // batch
    if num_updates < 1:
        sys.exit(f"--total-steps must be at least {batch}")
    # Same rounding as PureJaxRL: num_updates = total // (envs * steps). Setting
    # eval_freq == total_timesteps makes rejax run a single block of exactly
    # num_updates training iterations with no intermediate evaluations.
    total = num_updates * batch

    algo = PPO.create(
        env="CartPole-v1",
        num_envs=NUM_ENVS,
        num_steps=NUM_STEPS,
        num_epochs=NUM_EPOCHS,
        num_minibatches=NUM_MINIBATCHES,
        learning_rate=linear_lr(num_updates),
        gamma=GAMMA,
        gae_lambda=GAE_LAMBDA,
        clip_eps=CLIP_EPS,
        ent_coef=ENT_COEF,
        vf_coef=VF_COEF,
        max_grad_norm=MAX_GRAD_NORM,
        total_timesteps=total,
        eval_freq=total,
        skip_initial_evaluation=True,
        normalize_observations=False,
        normalize_rewards=False,
        agent_kwargs={"activation": "tanh", "hidden_layer_sizes": HIDDEN},
    )
    # rejax evaluates inside train() after every eval_freq steps; with
    # eval_freq == total that is once, at the end. Swap it for a no-op so the
    # timed call is training only, and evaluate separately below.
    algo = algo.replace(eval_callback=lambda algo, ts, rng: ())

    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds))
    train = jax.jit(jax.vmap(algo.train))

    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ts, _ = compiled(keys)
    jax.block_until_ready(ts)
    train_s = time.perf_counter() - t0

    steps_done = np.asarray(ts.global_step)
    assert np.all(steps_done == total), (steps_done, total)

    # Final policy, sampled (rejax's act() draws from the categorical policy).
    def eval_one(ts_one, key):
        _, returns = evaluate(
            algo.make_act(ts_one), key, algo.env, algo.env_params,
            args.eval_episodes, algo.env_params.max_steps_in_episode,
        )
        return returns.mean()

    t0 = time.perf_counter()
    eval_keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(args.seeds) + 10_000)
    per_seed = np.asarray(jax.jit(jax.vmap(eval_one))(ts, eval_keys))
    eval_s = time.perf_counter() - t0

    from importlib.metadata import version

    result = {
        "peer": "rejax",
        "config": args.config,
        "seeds": args.seeds,
        "total_steps": total,
        "compile_s": round(compile_s, 3),
        "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3),
        "process_s": round(time.perf_counter() - T_PROCESS_START, 3),
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "return_kind": f"stochastic policy, mean of {args.eval_episodes} episodes per seed",
        "env_steps_per_s": args.seeds * total / train_s,
        "versions": {p: version(p) for p in ("rejax", "gymnax", "jax", "jaxlib", "flax", "optax")},
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "mismatches": MISMATCHES,
    }
    assert rejax.__name__ == "rejax"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
