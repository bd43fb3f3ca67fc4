"""evorl's PBT driving PPO on gymnax CartPole-v1, sized like our preset
configs/pbt_ppo_cartpole_anneal.yaml (population 16, 4 envs x 128 steps per
PPO iteration, exploit/explore every 4 iterations, 12 rounds = 24,576 env
steps per member, explore lr / entropy coefficient / clip epsilon).

Runs inside benchmarks/peers/.venv-evorl (bash benchmarks/peers/setup.sh evorl);
benchmarks/pbt_vs_evorl.py starts it and reads the JSON line it prints last.

evorl's PBT (evorl.algorithms.meta.pbt_workflow.PBTWorkflowTemplate) brings the
loop, the truncation selection and the multiplicative perturbation; its shipped
PPO subclasses tune either lr alone (pbt.PBTWorkflow) or the loss weights, clip
and discounts (pbt_param_ppo.PBTParamPPOWorkflow), neither our three. The small
subclass below tunes exactly ours on evorl's ParamPPOWorkflow, through the same
two hooks evorl's own subclasses use (an optax.inject_hyperparams learning
rate, as pbt.PBTWorkflow does; hp_state / agent extra_state, as
PBTParamPPOWorkflow does).

Mismatches with ours (also written into the JSON under "mismatches"):
- fitness: evorl evaluates every member (eval episodes, extra env steps not
  counted below) after every ready interval and ranks on that; ours ranks on
  training-episode returns over the interval.
- explore: evorl multiplies by U(1-0.2, 1+0.2) and clips to the search space;
  ours multiplies by 0.8 or 1.2, or (p=0.25) redraws from the prior.
- truncation: both replace the bottom quarter by random top-quarter members
  (evorl copies the parent's whole workflow state incl. optimizer moments and
  env state).
- no learning-rate annealing in evorl's PPO (ours anneals each member's lr
  linearly to 0; the preset's `anneal_lr: true`).
- evorl's ParamPPO uses envpool-style autoreset; minibatches of 128 = 4
  minibatches of the 512-step batch, 4 epochs, grad clip 0.5, gamma 0.99,
  GAE 0.95, value weight 0.5, advantage normalisation, separate [64, 64]
  actor and critic (as ours), but ReLU hidden layers (evorl's ParamPPO MLP
  has no activation option; ours uses tanh).
- final score: the best member's mean return over 20 deterministic
  evaluation episodes at the end (as ours).
"""
import argparse
import json
import os
import sys
import time

# the same two host devices our run uses (src/population.py), so the
# population is sharded the same way over the 2 cores
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

# evorl-jax 0.1.1 calls jax.shard_map(..., check_rep=False); jax 0.10 renamed that
# argument check_vma. Translate it before evorl imports the name (the same kind
# of shim as the jaxued peer's jax.tree_map); nothing else of evorl is touched.
_shard_map = jax.shard_map


def _shard_map_check_rep(f=None, /, *, check_rep=None, **kwargs):
    if check_rep is not None:
        kwargs.setdefault("check_vma", check_rep)
    return _shard_map(f, **kwargs) if f is not None else _shard_map(**kwargs)


jax.shard_map = _shard_map_check_rep

from evorl.algorithms.meta.pbt_utils import log_uniform_init, uniform_init  # noqa: E402
from evorl.algorithms.meta.pbt_workflow import PBTOptState, PBTWorkflowTemplate  # noqa: E402
from evorl.types import PyTreeDict, State  # noqa: E402

MISMATCHES = [
    "fitness: evorl ranks on per-member evaluation episodes run after every ready interval "
    "(extra env steps, not counted in env_steps); ours ranks on training-episode returns",
    "explore: evorl multiplies by U(0.8, 1.2) and clips to the search space; ours multiplies by 0.8 or 1.2 "
    "or redraws from the prior with p=0.25",
    "lr annealing: evorl's PPO has none; ours anneals each member's lr linearly to 0 (preset anneal_lr: true)",
    "evorl's PBT copies the parent's whole workflow state (optimizer moments, env state); "
    "ours copies params, optimizer state and hyperparameters",
    "network: evorl's ParamPPO MLP uses ReLU (no option); ours tanh. Otherwise the same PPO sizes "
    "(4 epochs x 4 minibatches of 128, grad clip 0.5, gamma 0.99, GAE 0.95, value weight 0.5, "
    "advantage normalisation, separate [64, 64] actor and critic)",
]


class PBTLrEntClipPPOWorkflow(PBTWorkflowTemplate):
    """PBT over (lr, ent_coef, clip_eps) of evorl's ParamPPOWorkflow."""

    @classmethod
    def name(cls):
        return "PBT-LrEntClipPPO"

    def _customize_optimizer(self) -> None:
        # lr becomes state (inject_hyperparams) so each member can carry its own;
        # the clip keeps ParamPPO's chain(clip_by_global_norm, adam)
        self.workflow.optimizer = optax.chain(
            optax.clip_by_global_norm(self.config.target_workflow.optimizer.grad_clip_norm),
            optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
                learning_rate=self.config.search_space.lr.low),
        )

    def _setup_pop_and_pbt_optimizer(self, key: chex.PRNGKey):
        s, n = self.config.search_space, self.config.pop_size
        k1, k2, k3 = jax.random.split(key, 3)
        # the same priors as ours (meta/pbt.py DEFAULT_PRIORS for ppo)
        pop = PyTreeDict(lr=log_uniform_init(s.lr, k1, n), ent_coef=log_uniform_init(s.ent_coef, k2, n),
                         clip_epsilon=uniform_init(s.clip_epsilon, k3, n))
        return pop, PBTOptState()

    def apply_hyperparams_to_workflow_state(self, workflow_state: State, hyperparams):
        clip_state, inject_state = workflow_state.opt_state
        lr = jnp.asarray(hyperparams.lr, inject_state.hyperparams["learning_rate"].dtype)
        # a fresh dict: evorl's state may be shared with the parent member
        inject_state = inject_state._replace(hyperparams={**inject_state.hyperparams, "learning_rate": lr})
        agent_state = workflow_state.agent_state
        agent_state = agent_state.replace(
            extra_state=agent_state.extra_state.replace(clip_epsilon=hyperparams.clip_epsilon))
        # evorl's loss adds entropy_loss_weight * entropy, so a bonus is a negative weight
        hp_state = workflow_state.hp_state.replace(entropy_loss_weight=-hyperparams.ent_coef)
        return workflow_state.replace(opt_state=(clip_state, inject_state), agent_state=agent_state,
                                      hp_state=hp_state)


def make_config(pop_size, num_envs, rollout_length, ready, rounds, fitness_episodes, eval_episodes):
    batch = num_envs * rollout_length
    return OmegaConf.create({
        "env": {"env_type": "gymnax", "env_name": "CartPole-v1", "max_episode_steps": 500},
        "pop_size": pop_size,
        "workflow_steps_per_iter": ready,
        "warmup_steps": 0,           # exploit/explore from the first round on, as ours
        "num_iters": rounds,
        "bottom_ratio": 0.25,
        "top_ratio": 0.25,
        "perturb_factor": {"lr": 0.2, "ent_coef": 0.2, "clip_epsilon": 0.2},
        "search_space": {"lr": {"low": 3e-5, "high": 3e-3},
                         "ent_coef": {"low": 1e-4, "high": 0.1},
                         "clip_epsilon": {"low": 0.05, "high": 0.5}},
        "num_eval_envs": eval_episodes,
        "eval_episodes": eval_episodes,
        "eval_interval": rounds,
        "checkpoint": {"enable": False},
        "target_workflow": {
            "workflow_cls": "evorl.algorithms.meta.pbt_ppo.param_ppo.ParamPPOWorkflow",
            "num_envs": num_envs,
            "normalize_obs": False,
            "rollout_length": rollout_length,
            "discount": 0.99,
            "gae_lambda": 0.95,
            "clip_epsilon": 0.2,
            "minibatch_size": batch // 4,
            "reuse_rollout_epochs": 4,
            "total_timesteps": batch * ready * rounds,
            "num_eval_envs": fitness_episodes,
            "eval_episodes": fitness_episodes,
            "eval_interval": rounds,
            "loss_weights": {"actor_loss": 1.0, "critic_loss": 0.5, "actor_entropy": -0.01},
            "optimizer": {"lr": 2.5e-4, "grad_clip_norm": 0.5},
            "agent_network": {"actor_hidden_layer_sizes": [64, 64], "critic_hidden_layer_sizes": [64, 64]},
        },
    })


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--rollout-length", type=int, default=128)
    p.add_argument("--ready", type=int, default=4)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--fitness-episodes", type=int, default=4,
                   help="evaluation episodes per member behind each exploit step (evorl's fitness)")
    p.add_argument("--eval-episodes", type=int, default=20, help="final evaluation episodes per member")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    config = make_config(args.population, args.num_envs, args.rollout_length, args.ready, args.rounds,
                         args.fitness_episodes, args.eval_episodes)
    wf = PBTLrEntClipPPOWorkflow.build_from_config(config, enable_jit=True)
    steps_per_round = args.population * args.ready * args.num_envs * args.rollout_length

    t0 = time.perf_counter()
    state = wf.setup(jax.random.PRNGKey(args.seed))
    _, state = wf.step(state)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0     # setup + compile + the first round

    t1 = time.perf_counter()
    fitness_lengths = []   # [members] mean fitness-episode length per timed round (stays on device until the end)
    for _ in range(args.rounds - 1):
        metrics, state = wf.step(state)
        fitness_lengths.append(metrics.pop_episode_lengths)
    jax.block_until_ready(state)
    train = time.perf_counter() - t1
    # env steps of the fitness evaluations inside the timed rounds: evorl's
    # evaluator steps until every episode is done (while_loop), so these are real
    fitness_steps = float(np.sum([np.asarray(x) for x in fitness_lengths]) * args.fitness_episodes)

    t2 = time.perf_counter()
    eval_metrics, state = wf.evaluate(state)
    returns = np.asarray(eval_metrics.pop_episode_returns)
    final_eval_s = time.perf_counter() - t2
    pop = {k: np.asarray(v).tolist() for k, v in state.pop.items()}
    best = int(np.argmax(returns))

    out = {
        "peer": "evorl",
        "evorl_version": __import__("importlib.metadata").metadata.version("evorl-jax"),
        "jax_version": jax.__version__,
        "devices": len(jax.devices()),
        "population": args.population,
        "env_steps_per_member": args.ready * args.num_envs * args.rollout_length * args.rounds,
        "env_steps_total": steps_per_round * args.rounds,
        # evorl's own per-member counter of training env steps (a member that was
        # overwritten inherits its parent's count, so all equal the schedule's)
        "evorl_sampled_timesteps_per_member": np.asarray(state.pop_workflow_state.metrics.sampled_timesteps).tolist(),
        "seconds": {"setup_compile_and_first_round": first, "train_after_first_round": train,
                    "final_eval": final_eval_s},
        "env_steps_per_s_excl_compile": steps_per_round * (args.rounds - 1) / train,
        "fitness_eval_env_steps_in_timed_rounds": fitness_steps,
        "env_steps_per_s_excl_compile_incl_fitness_eval": (steps_per_round * (args.rounds - 1) + fitness_steps) / train,
        "best_eval_return": float(returns[best]),
        "population_eval_mean": float(returns.mean()),
        "eval_returns": returns.tolist(),
        "best_member_hparams": {k: v[best] for k, v in pop.items()},
        "last_round_fitness": np.asarray(metrics.pop_episode_returns).tolist(),
        "mismatches": MISMATCHES,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
