"""The CartPole sizes the PPO comparison runs under, shared by ours and the
peers (imported by benchmarks/ppo_vs_peers.py and by each peer script from
its own virtual environment, so plain Python only).

purejaxrl: PureJaxRL's and CleanRL's CartPole defaults, our published ones.
rejax:     the sizes and learning rate of rejax's own CartPole config
           (configs/gymnax/cartpole.yaml in the rejax repository), under which
           issue 2 quotes its reference speeds; every other setting stays
           PureJaxRL's, so only the amount of work per env step changes.
"""
CONFIGS = {
    "purejaxrl": {"NUM_ENVS": 4, "NUM_STEPS": 128, "NUM_EPOCHS": 4, "NUM_MINIBATCHES": 4, "LR": 2.5e-4},
    "rejax": {"NUM_ENVS": 5, "NUM_STEPS": 100, "NUM_EPOCHS": 5, "NUM_MINIBATCHES": 5, "LR": 7.5e-4},
}

# our config keys for the same settings (run.py --set)
OURS = {"NUM_ENVS": "num_envs", "NUM_STEPS": "num_steps", "NUM_EPOCHS": "num_epochs",
        "NUM_MINIBATCHES": "num_minibatches", "LR": "lr"}
