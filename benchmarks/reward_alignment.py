"""Cost of one BARFI outer step relative to one inner (PPO) iteration.

    python benchmarks/reward_alignment.py --config configs/barfi_cartpole_pid_inverse.yaml \
        --estimators implicit,unrolled,es --out benchmarks/results/reward_alignment_cost.json

Times one seed, jitted, after compiling: the inner iteration is `agent.step`
(num_envs*num_steps transitions and PPO's update); the outer step is the
estimator (its rollout, gradients and, for ES, its inner runs) plus the Adam
step on phi. Each is the median of `--repeats` calls.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_time(fn, repeats):
    import jax
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/barfi_cartpole_pid_inverse.yaml")
    p.add_argument("--estimators", default="implicit,unrolled,es")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import jax
    import optax

    from meta import reward_alignment as ra
    from src import config as cfg

    preset = cfg.load_yaml(args.config)
    preset.pop("method", None)
    base = cfg.from_dict(ra.AlignmentConfig, {**preset, "method": "barfi"})
    results = {"config": args.config, "device": str(jax.devices()[0]), "batch_size": base.batch_size,
               "reuse_rollout": base.reuse_rollout,
               # the implicit estimator's own rollout: none when it reuses PPO's batch
               "outer_rollout_steps": 0 if base.reuse_rollout else base.outer_rollout * base.num_envs,
               "estimators": {}}
    for estimator in args.estimators.split(","):
        config = dataclasses.replace(base, estimator=estimator, seeds=1)
        aligner = ra.make(config)
        state = aligner.init(jax.random.PRNGKey(0))
        hparams = None
        inner = jax.jit(lambda ts, rp: aligner.agent.step(ts, ra.ppo.hparams_from(config.ppo_config()).replace(
            gamma=ra.rewards.learned_gamma(rp)), rp))
        opt = ra.make_outer_optimizer(config.outer_optimizer, config.outer_lr)

        def outer_fn(ts, rp, opt_state, key):
            grad, ts, info = aligner.estimate(ts, rp, hparams, key)
            updates, opt_state = opt.update(jax.tree.map(lambda g: -g, grad), opt_state, rp)
            return ts, optax.apply_updates(rp, updates), opt_state

        outer = jax.jit(outer_fn)
        key = jax.random.PRNGKey(1)
        start = time.perf_counter()
        jax.block_until_ready(inner(state.ts, state.reward_params))
        inner_compile = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(outer(state.ts, state.reward_params, state.opt_state, key))
        outer_compile = time.perf_counter() - start
        inner_s = median_time(lambda: inner(state.ts, state.reward_params), args.repeats)
        outer_s = median_time(lambda: outer(state.ts, state.reward_params, state.opt_state, key), args.repeats)
        results["estimators"][estimator] = {
            "inner_step_ms": round(1e3 * inner_s, 3), "outer_step_ms": round(1e3 * outer_s, 3),
            "outer_over_inner": round(outer_s / inner_s, 3),
            "outer_env_steps": config.outer_env_steps, "inner_env_steps": config.batch_size,
            "compile_s": {"inner": round(inner_compile, 1), "outer": round(outer_compile, 1)},
            "settings": {"neumann_terms": config.neumann_terms, "unroll": config.unroll,
                         "es_pairs": config.es_pairs}}
        print(estimator, results["estimators"][estimator], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
