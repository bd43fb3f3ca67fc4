"""`imitation`'s preference comparisons (PyTorch + Stable-Baselines3) on Pendulum-v1:
the public peer of issue 19's learned-reward pipeline.

Runs inside benchmarks/peers/.venv-imitation (build it with
`bash benchmarks/peers/setup.sh imitation`). One seed per process:

    benchmarks/peers/.venv-imitation/bin/python benchmarks/peers/imitation_prefs.py \\
        --pairs 1000 --segment-len 25 --label-noise 0.25 --temperature 1 --seed 0 \\
        --total-timesteps 100000 --out /tmp/imitation_seed0.json

What runs (imitation 1.0.1's documented components; settings not named on
the command line are those of imitation's own train_preference_comparisons
script except where said below; the JSON's "settings" lists them all):
- Reward model: BasicRewardNet over (s, a, s') (use_next_state=True; imitation's
  default is (s, a)), hidden (64, 64) like ours (imitation's default is (32, 32)),
  RunningNorm on its input and a NormalizedRewardNet (RunningNorm) on the
  reward the agent sees, as in imitation's script. Trained by
  PreferenceModel + CrossEntropyRewardLoss (Bradley-Terry, noise_prob 0,
  undiscounted) with BasicRewardTrainer (AdamW lr 1e-3, batch 32, 3 epochs per
  round, `--initial-epoch-multiplier` x that on the initial round).
  `--initial-epoch-multiplier` (4) and `--exploration-frac` (0.05) default to
  imitation's own tuned Pendulum tutorial; its script's values are 200 and 0,
  and 200 overfits the initial pairs when 25% of labels are flipped.
- Pairs: PreferenceComparisons, online: fragments are cut (RandomFragmenter,
  inside one episode) from the agent's own rollouts; 10% of the pairs before
  any RL (from the untrained agent), the rest over `--iterations` rounds on
  imitation's "hyperbolic" query schedule.
- Labels: SyntheticGatherer on Pendulum's own reward (gold), Bradley-Terry at
  `--temperature` (P(first) = sigmoid((G1 - G2) / T), G = undiscounted segment
  return), sampled as 0/1. imitation has no label-noise option, so
  `NoisyGatherer` below flips each sampled label with probability
  `--label-noise`, as envs/preferences.py does.
- Agent: SB3 PPO on the learned reward with rl-zoo's tuned Pendulum-v1
  hyperparameters (4 envs, n_steps 1024, batch 64, gamma 0.9, gae_lambda 0.95,
  10 epochs, lr 1e-3, clip 0.2, ent 0, gSDE with sample freq 4).
- Evaluation: the final agent, deterministic, 10 episodes of Pendulum's own
  reward (gold). Reward-model accuracy on held-out pairs: fresh pairs cut
  from the final agent's stochastic rollouts and from uniform-random-action
  rollouts, labelled by the same noisy oracle; accuracy is given against the
  noisy label and against the gold preference sign(G1 - G2) (ties count
  half, as in envs/reward_models.accuracy).
- `--true-reward-baseline` also trains the same PPO on the gold reward for
  as many env steps as the agent above took (a check that the RL budget
  suffices); its time is not in wall_s.
- imitation trains the agent once after each of its num_iterations + 1
  rounds of preferences (the initial round included), total_timesteps /
  num_iterations steps each, and SB3 rounds each up to whole rollouts of
  4 x 1024 steps, so the agent takes more env steps than --total-timesteps:
  settings.rl_env_steps_actual.

Wall time: total (process start to results, without the true-reward
baseline), and the training loop split into
RL (PPO on the learned reward, including the reward net's inference at every
env step), preference data (trajectory sampling, fragmenting, labelling) and
reward-model training. torch runs on one thread.
"""

import time

T_PROCESS_START = time.perf_counter()
CPU_PROCESS_START = time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from imitation.algorithms import preference_comparisons as pc  # noqa: E402
from imitation.data import rollout  # noqa: E402
from imitation.rewards import reward_nets  # noqa: E402
from imitation.util import networks  # noqa: E402
from imitation.util import util as imit_util  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

T_IMPORTED = time.perf_counter()
LOAD_AT_START = list(os.getloadavg())

ENV_ID = "Pendulum-v1"

# rl-zoo's tuned PPO hyperparameters for Pendulum-v1 (n_envs 4).
N_ENVS = 4
PPO_KWARGS = dict(
    n_steps=1024,
    batch_size=64,
    gae_lambda=0.95,
    gamma=0.9,
    n_epochs=10,
    ent_coef=0.0,
    learning_rate=1e-3,
    clip_range=0.2,
    use_sde=True,
    sde_sample_freq=4,
)

# imitation's train_preference_comparisons defaults that we keep.
REWARD_TRAINER_KWARGS = dict(epochs=3, batch_size=32, lr=1e-3)
INITIAL_COMPARISON_FRAC = 0.1
TRANSITION_OVERSAMPLING = 1.0
QUERY_SCHEDULE = "hyperbolic"
# Defaults of --initial-epoch-multiplier and --exploration-frac: the values of
# imitation's own Pendulum tutorial (docs/tutorials/5_train_preference_comparisons,
# tuned by its authors). Its train_preference_comparisons script uses 200 and 0.0.
TUTORIAL_INITIAL_EPOCH_MULTIPLIER = 4.0
TUTORIAL_EXPLORATION_FRAC = 0.05


class Clock:
    """Accumulated seconds per phase."""

    def __init__(self):
        self.seconds = {}

    def add(self, phase, seconds):
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class NoisyGatherer(pc.PreferenceGatherer):
    """imitation's SyntheticGatherer (Bradley-Terry at a temperature, labels
    sampled as 0/1), then each label flipped with probability `label_noise`.
    Counts the labels it gives and how many agree with the gold preference."""

    def __init__(self, temperature, label_noise, rng, clock, custom_logger=None):
        super().__init__(custom_logger=custom_logger)
        self.base = pc.SyntheticGatherer(temperature=temperature, sample=True, rng=rng,
                                         custom_logger=self.logger)
        self.label_noise = float(label_noise)
        self.rng = rng
        self.clock = clock
        self.count = 0
        self.flipped = 0
        self.agree_gold = 0.0

    @property
    def logger(self):
        return self._logger

    @logger.setter
    def logger(self, value):
        self._logger = value
        if hasattr(self, "base"):
            self.base.logger = value

    def __call__(self, fragment_pairs):
        start = time.perf_counter()
        labels = np.asarray(self.base(fragment_pairs), dtype=np.float32)
        flip = self.rng.random(len(labels)) < self.label_noise
        labels = np.where(flip, 1.0 - labels, labels).astype(np.float32)
        r1, r2 = self.base._reward_sums(fragment_pairs)
        gold = 0.5 * (1.0 + np.sign(r1 - r2))
        self.count += len(labels)
        self.flipped += int(flip.sum())
        self.agree_gold += float(np.sum(labels * gold + (1 - labels) * (1 - gold)))
        self.clock.add("label", time.perf_counter() - start)
        return labels


class TimedFragmenter(pc.RandomFragmenter):
    def __init__(self, clock, **kwargs):
        super().__init__(**kwargs)
        self.clock = clock

    def __call__(self, trajectories, fragment_length, num_pairs):
        start = time.perf_counter()
        out = super().__call__(trajectories, fragment_length, num_pairs)
        self.clock.add("fragment", time.perf_counter() - start)
        return out


class TimedRewardTrainer(pc.BasicRewardTrainer):
    def __init__(self, clock, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def train(self, dataset, epoch_multiplier=1.0):
        start = time.perf_counter()
        super().train(dataset, epoch_multiplier)
        self.clock.add("reward_model_train", time.perf_counter() - start)


class TimedAgentTrainer(pc.AgentTrainer):
    def __init__(self, clock, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def train(self, steps, **kwargs):
        start = time.perf_counter()
        super().train(steps, **kwargs)
        self.clock.add("rl_train", time.perf_counter() - start)

    def sample(self, steps):
        start = time.perf_counter()
        out = super().sample(steps)
        self.clock.add("sample_trajectories", time.perf_counter() - start)
        return out


def make_ppo(venv, seed):
    return PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **PPO_KWARGS)


def gold_return(policy, seed, episodes):
    """Mean and std of the undiscounted gold return of the deterministic policy."""
    env = imit_util.make_vec_env(ENV_ID, rng=np.random.default_rng(10_000 + seed), n_envs=1)
    returns, _ = evaluate_policy(policy, env, n_eval_episodes=episodes, deterministic=True,
                                 return_episode_rewards=True, warn=False)
    env.close()
    returns = np.asarray(returns, dtype=np.float64)
    return {"mean": float(returns.mean()), "std": float(returns.std()),
            "episodes": [float(r) for r in returns]}


def held_out_accuracy(reward_net, policy, seed, args, num_pairs):
    """Reward-model accuracy on fresh pairs (never trained on), from the final
    agent's stochastic rollouts and from uniform-random actions."""
    out = {}
    for k, (source, pol) in enumerate((("final_agent", policy), ("random_actions", None))):
        rng = np.random.default_rng(20_000 + 2 * seed + k)
        venv = imit_util.make_vec_env(ENV_ID, rng=rng, n_envs=N_ENVS)
        trajs = rollout.generate_trajectories(
            pol, venv, rollout.make_sample_until(min_timesteps=2 * num_pairs * args.segment_len),
            rng=rng, deterministic_policy=False)
        venv.close()
        frags = pc.RandomFragmenter(rng=rng, warning_threshold=0)(trajs, args.segment_len, num_pairs)
        clock = Clock()
        gatherer = NoisyGatherer(args.temperature, args.label_noise, rng, clock)
        labels = gatherer(frags)
        g1, g2 = gatherer.base._reward_sums(frags)
        gold = 0.5 * (1.0 + np.sign(g1 - g2))

        def model_return(frag):
            dones = np.zeros(len(frag.acts), dtype=bool)
            return float(np.sum(reward_net.predict(frag.obs[:-1], frag.acts, frag.obs[1:], dones)))

        m1 = np.array([model_return(f1) for f1, _ in frags])
        m2 = np.array([model_return(f2) for _, f2 in frags])
        pred = 0.5 * (1.0 + np.sign(m1 - m2))

        def agree(target):
            return float(np.mean(pred * target + (1 - pred) * (1 - target)))

        out[source] = {"pairs": int(num_pairs), "accuracy_vs_label": agree(labels),
                       "accuracy_vs_gold": agree(gold),
                       "label_agreement_with_gold": float(np.mean(labels * gold + (1 - labels) * (1 - gold)))}
    return out


def train_on_true_reward(seed, steps, eval_episodes):
    """The same PPO on Pendulum's own reward, same step budget: a check that
    the budget can learn Pendulum at all."""
    torch.manual_seed(seed)
    venv = imit_util.make_vec_env(ENV_ID, rng=np.random.default_rng(seed), n_envs=N_ENVS)
    agent = make_ppo(venv, seed)
    start = time.perf_counter()
    agent.learn(total_timesteps=steps)
    seconds = time.perf_counter() - start
    result = {"timesteps": int(agent.num_timesteps), "wall_s": seconds,
              "gold_return": gold_return(agent, seed, eval_episodes)}
    venv.close()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000, help="total comparisons (imitation's total_comparisons)")
    ap.add_argument("--segment-len", type=int, default=25, help="imitation's fragment_length")
    ap.add_argument("--label-noise", type=float, default=0.25, help="probability of flipping each sampled label")
    ap.add_argument("--temperature", type=float, default=1.0, help="Bradley-Terry temperature of the gold oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-timesteps", type=int, default=100_000,
                    help="PPO steps on the learned reward (imitation's total_timesteps)")
    ap.add_argument("--iterations", type=int, default=5, help="imitation's num_iterations (its script's default: 5)")
    ap.add_argument("--reward-hidden", type=str, default="64,64", help="reward MLP hidden sizes")
    ap.add_argument("--initial-epoch-multiplier", type=float, default=TUTORIAL_INITIAL_EPOCH_MULTIPLIER,
                    help="reward-model epochs on the initial pairs, x the 3 of later rounds (imitation's "
                         "Pendulum tutorial: 4; its script and class default: 200)")
    ap.add_argument("--exploration-frac", type=float, default=TUTORIAL_EXPLORATION_FRAC,
                    help="fraction of sampled transitions from a policy mixing in random actions "
                         "(imitation's Pendulum tutorial: 0.05; its script: 0.0)")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--held-out-pairs", type=int, default=500, help="per source; 0 skips the accuracy check")
    ap.add_argument("--true-reward-baseline", action="store_true",
                    help="also train the same PPO on the gold reward for the same number of steps")
    ap.add_argument("--out", type=str, default=None, help="write the JSON here (it is also printed)")
    args = ap.parse_args()
    if not 0.0 <= args.label_noise <= 0.5:
        ap.error("--label-noise must be in [0, 0.5]")
    if args.temperature < 0:
        ap.error("--temperature must be >= 0")

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    hidden = tuple(int(h) for h in args.reward_hidden.split(",") if h)

    clock = Clock()
    venv = imit_util.make_vec_env(ENV_ID, rng=rng, n_envs=N_ENVS)
    base_net = reward_nets.BasicRewardNet(
        venv.observation_space, venv.action_space, use_state=True, use_action=True,
        use_next_state=True, use_done=False, hid_sizes=hidden,
        normalize_input_layer=networks.RunningNorm)
    reward_net = reward_nets.NormalizedRewardNet(base_net, networks.RunningNorm)

    preference_model = pc.PreferenceModel(reward_net)
    reward_trainer = TimedRewardTrainer(clock, preference_model, loss=pc.CrossEntropyRewardLoss(),
                                        rng=rng, **REWARD_TRAINER_KWARGS)
    fragmenter = TimedFragmenter(clock, rng=rng, warning_threshold=0)
    gatherer = NoisyGatherer(args.temperature, args.label_noise, rng, clock)
    agent = make_ppo(venv, args.seed)
    trajectory_generator = TimedAgentTrainer(clock, algorithm=agent, reward_fn=reward_net, venv=venv,
                                             exploration_frac=args.exploration_frac, rng=rng)
    algo = pc.PreferenceComparisons(
        trajectory_generator, reward_net, num_iterations=args.iterations, fragmenter=fragmenter,
        preference_gatherer=gatherer, reward_trainer=reward_trainer, fragment_length=args.segment_len,
        transition_oversampling=TRANSITION_OVERSAMPLING, initial_comparison_frac=INITIAL_COMPARISON_FRAC,
        initial_epoch_multiplier=args.initial_epoch_multiplier, query_schedule=QUERY_SCHEDULE,
        allow_variable_horizon=False)

    t0 = time.perf_counter()
    stats = algo.train(total_timesteps=args.total_timesteps, total_comparisons=args.pairs)
    train_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    gold = gold_return(agent, args.seed, args.eval_episodes)
    eval_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    accuracy = (held_out_accuracy(reward_net, agent, args.seed, args, args.held_out_pairs)
                if args.held_out_pairs > 0 else None)
    accuracy_s = time.perf_counter() - t2

    total_s = time.perf_counter() - T_PROCESS_START
    total_cpu_s = time.process_time() - CPU_PROCESS_START
    load_after = os.getloadavg()
    baseline = None
    if args.true_reward_baseline:
        # as many PPO steps as the agent above actually took (imitation trains it
        # num_iterations + 1 times, so that is more than --total-timesteps)
        baseline = train_on_true_reward(args.seed, int(agent.num_timesteps), args.eval_episodes)

    sec = clock.seconds
    preference_s = (sec.get("sample_trajectories", 0.0) + sec.get("fragment", 0.0)
                    + sec.get("label", 0.0) + sec.get("reward_model_train", 0.0))
    result = {
        "peer": "imitation.algorithms.preference_comparisons.PreferenceComparisons",
        "env": ENV_ID,
        "seed": args.seed,
        "settings": {
            "pairs": args.pairs, "pairs_labelled": gatherer.count,
            "segment_len": args.segment_len, "label_noise": args.label_noise,
            "temperature": args.temperature, "total_timesteps": args.total_timesteps,
            "rl_env_steps_actual": int(agent.num_timesteps),
            "iterations": args.iterations, "initial_comparison_frac": INITIAL_COMPARISON_FRAC,
            "initial_epoch_multiplier": args.initial_epoch_multiplier, "query_schedule": QUERY_SCHEDULE,
            "transition_oversampling": TRANSITION_OVERSAMPLING, "exploration_frac": args.exploration_frac,
            "reward_net": {"class": "NormalizedRewardNet(BasicRewardNet)", "inputs": "(s, a, s')",
                           "hidden": list(hidden), "input_norm": "RunningNorm", "output_norm": "RunningNorm"},
            "reward_trainer": dict(REWARD_TRAINER_KWARGS, optimizer="AdamW", loss="Bradley-Terry cross-entropy",
                                   noise_prob_in_loss=0.0),
            "labelling": "SyntheticGatherer (Bradley-Terry on undiscounted gold segment return / T, "
                         "sampled 0/1) + flip with probability label_noise (wrapper in this script)",
            "ppo": dict(PPO_KWARGS, n_envs=N_ENVS, policy="MlpPolicy"),
            "eval_episodes": args.eval_episodes,
        },
        "gold_return": gold,
        "labels": {"count": gatherer.count, "flipped": gatherer.flipped,
                   "agreement_with_gold": gatherer.agree_gold / max(gatherer.count, 1)},
        "reward_model_final_train": {"loss": stats["reward_loss"], "accuracy_vs_label": stats["reward_accuracy"]},
        "held_out_accuracy": accuracy,
        "wall_s": {
            "total": total_s,
            "imports": T_IMPORTED - T_PROCESS_START,
            "train_loop": train_s,
            "rl_train": sec.get("rl_train", 0.0),
            "preference_and_reward_model": preference_s,
            "sample_trajectories": sec.get("sample_trajectories", 0.0),
            "fragment": sec.get("fragment", 0.0),
            "label": sec.get("label", 0.0),
            "reward_model_train": sec.get("reward_model_train", 0.0),
            "train_loop_other": train_s - sec.get("rl_train", 0.0) - preference_s,
            "gold_eval": eval_s,
            "held_out_accuracy": accuracy_s,
        },
        # CPU seconds of this process over the same span as wall_s.total: less
        # sensitive than wall time to other work on a shared machine
        "cpu_s_total": total_cpu_s,
        "true_reward_baseline": baseline,
        "versions": {p: version(p) for p in ("imitation", "stable_baselines3", "torch", "gymnasium", "numpy")},
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": _cpu_model(), "cpus": os.cpu_count(),
                    "loadavg_1_5_15_at_start": LOAD_AT_START, "loadavg_1_5_15_at_end": list(load_after)},
    }
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps(result))


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
