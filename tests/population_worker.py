"""Subprocess side of tests/test_population.py (JAX's device count and process
group are fixed at start-up, so each layout needs its own process).

    python -m tests.population_worker sharded [ppo]        # XLA_FLAGS gives 2 host devices
    python -m tests.population_worker distributed PORT ID  # one of 2 jax.distributed processes

Prints one JSON line.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

PARAMS_SEED = 0


def problem(members, seeds, width=16):
    k1, k2 = jax.random.split(jax.random.PRNGKey(PARAMS_SEED))
    params = {"w1": jax.random.normal(k1, (members, 8, width)) / 3,
              "w2": jax.random.normal(k2, (members, width)) / 4}
    keys = jax.random.split(jax.random.PRNGKey(1), members * seeds).reshape(members, seeds, 2)
    return params, np.asarray(keys)


def mlp_fitness(params, key):
    """A small network on inputs drawn from the key: depends on both."""
    x = jax.random.normal(key, (32, 8))
    return jnp.tanh(jnp.tanh(x @ params["w1"]) @ params["w2"]).mean()


def ppo_fitness():
    """Final return of a tiny PPO run with a learned drift objective."""
    from agents import ppo
    from meta import learned_objective as lo

    config = ppo.PPOConfig(total_steps=4 * 16 * 3, num_envs=4, num_steps=16, hidden=(8,), num_epochs=1,
                           num_minibatches=2)
    agent = ppo.make(config, objective=lo.learned())
    return lo.inner_fitness(agent, ppo.hparams_from(config), 3)


def sharded(with_ppo=""):
    from src import population

    params, keys = problem(8, 2)
    two = population.make_evaluator(mlp_fitness, 8, 2)
    one = population.make_evaluator(mlp_fitness, 8, 2, mesh=population.population_mesh(8, jax.devices()[:1]))
    out_two = two(params, keys)
    a, b = population.gather(out_two), population.gather(one(params, keys))
    result = {"devices": int(two.mesh.devices.size), "axis_types": [t.name for t in two.mesh.axis_types],
              "shards": len({s.device for s in out_two.addressable_shards}),
              "mlp_equal": bool(np.array_equal(a, b)), "mlp": a.tolist()}
    if not with_ppo:
        return result
    drift = jax.vmap(lambda k: __import__("meta.learned_objective", fromlist=["x"]).init_drift(k, scale=3.0))(
        jax.random.split(jax.random.PRNGKey(3), 4))
    pkeys = keys[:4, :1]
    fit = ppo_fitness()
    p_two = population.evaluate(fit, drift, pkeys, batch_size=1)
    p_one = population.evaluate(fit, drift, pkeys, batch_size=1,
                                mesh=population.population_mesh(4, jax.devices()[:1]))
    return {**result, "ppo_equal": bool(np.array_equal(p_two, p_one, equal_nan=True)),
            "ppo": p_two.ravel().tolist()}


def distributed(port, process_id):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=int(process_id))
    from src import population

    params, keys = problem(8, 2)
    evaluator = population.make_evaluator(mlp_fitness, 8, 2)
    out = evaluator(params, keys)
    local_rows = sum(s.data.shape[0] for s in out.addressable_shards)
    result = population.gather(out)
    info = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": len(jax.devices()), "local_rows": int(local_rows), "mlp": result.tolist()}
    jax.distributed.shutdown()
    return info


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    print(json.dumps({"sharded": sharded, "distributed": distributed}[mode](*rest)))
