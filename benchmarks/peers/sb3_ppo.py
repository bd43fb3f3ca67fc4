"""Stable-Baselines3 PPO on gymnasium CartPole-v1, used as a peer by benchmarks/ppo_vs_peers.py.

Runs inside benchmarks/peers/.venv-sb3 (see setup.sh). Seeds run one after the
other (SB3 has no batched-seed mode); train time is the sum of the
``model.learn`` calls. Prints one JSON line as the last line of stdout.

SB3 runs at a few thousand env steps/s on CPU, so the benchmark gives it fewer
steps than the JAX runs and compares throughput (env steps/s), not return.
"""

import time

T_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import stable_baselines3  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

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
HIDDEN = [64, 64]

# Differences from PureJaxRL's PPO that remain.
MISMATCHES = [
    "SB3 bootstraps the value of time-limit truncations (step 500), as ours does "
    "(gymnax 1.0 reports them apart); rejax on gymnax 0.0.9 sees one done flag and "
    "treats them as terminations",
]


def linear_lr(num_updates: int):
    """lr * (1 - i/num_updates) during update i, as in PureJaxRL.

    SB3 calls the schedule with progress_remaining = 1 - (i+1)/num_updates
    (it advances progress after collecting the rollout, before training on it),
    so one update's worth of progress is added back.
    """

    def schedule(progress_remaining: float) -> float:
        return LR * min(1.0, progress_remaining + 1.0 / num_updates)

    return schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1), run sequentially")
    ap.add_argument("--total-steps", type=int, default=50_000, help="env steps per seed")
    ap.add_argument("--eval-episodes", type=int, default=20,
                    help="episodes per seed for the final (stochastic) evaluation")
    ap.add_argument("--no-vf-clip", action="store_true",
                    help="disable value clipping (SB3's default; PureJaxRL clips with clip_eps)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (0: torch's default). With 2 threads on a 2-core "
                         "machine that has any other load, SB3 slows down 10-20x; 1 is robust and "
                         "about as fast on these tiny MLPs")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="purejaxrl",
                    help="CartPole sizes and lr (peer_configs.py)")
    args = ap.parse_args()
    globals().update(CONFIGS[args.config])
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)

    batch = NUM_ENVS * NUM_STEPS
    num_updates = args.total_steps // batch
    if num_updates < 1:
        raise SystemExit(f"--total-steps must be at least {batch}")
    total = num_updates * batch  # SB3 would otherwise round up to whole rollouts

    setup_s = train_s = eval_s = 0.0
    per_seed = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        env = make_vec_env("CartPole-v1", n_envs=NUM_ENVS, seed=seed)
        model = PPO(
            "MlpPolicy",
            env,
            learning_rate=linear_lr(num_updates),
            n_steps=NUM_STEPS,
            batch_size=batch // NUM_MINIBATCHES,
            n_epochs=NUM_EPOCHS,
            gamma=GAMMA,
            gae_lambda=GAE_LAMBDA,
            clip_range=CLIP_EPS,
            clip_range_vf=None if args.no_vf_clip else CLIP_EPS,
            normalize_advantage=True,
            ent_coef=ENT_COEF,
            vf_coef=VF_COEF,
            max_grad_norm=MAX_GRAD_NORM,
            policy_kwargs={
                "net_arch": {"pi": HIDDEN, "vf": HIDDEN},
                "activation_fn": torch.nn.Tanh,
                "ortho_init": True,
            },
            seed=seed,
            device="cpu",
            verbose=0,
        )
        setup_s += time.perf_counter() - t0

        t0 = time.perf_counter()
        model.learn(total_timesteps=total, progress_bar=False)
        train_s += time.perf_counter() - t0
        assert model.num_timesteps == total, (model.num_timesteps, total)

        t0 = time.perf_counter()
        eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=10_000 + seed)
        mean_ret, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=False
        )
        eval_s += time.perf_counter() - t0
        per_seed.append(float(mean_ret))
        env.close()
        eval_env.close()

    per_seed = np.asarray(per_seed)
    mismatches = list(MISMATCHES)
    if args.no_vf_clip:
        mismatches.append("value clipping disabled (--no-vf-clip)")
    result = {
        "peer": "sb3",
        "config": args.config,
        "seeds": args.seeds,
        "total_steps": total,
        "compile_s": 0.0,
        "setup_s": round(setup_s, 3),
        "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3),
        "process_s": round(time.perf_counter() - T_PROCESS_START, 3),
        "final_return_mean": float(per_seed.mean()),
        "final_return_std": float(per_seed.std()),
        "final_return_per_seed": [float(x) for x in per_seed],
        "return_kind": f"stochastic policy, mean of {args.eval_episodes} episodes per seed",
        "env_steps_per_s": args.seeds * total / train_s,
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "mismatches": mismatches,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
