"""Subprocess side of tests/test_population.py and of the run.py tests (JAX's
device count, process group and compilation cache are fixed at start-up, so
each setting needs its own process).

    python -m tests.population_worker sharded [ppo]        # XLA_FLAGS gives 2 host devices
    python -m tests.population_worker distributed PORT ID  # one of 2 jax.distributed processes
    python -m tests.population_worker train OUT ARGS...    # run.py train sharded vs one device
    python -m tests.population_worker cli STEPS_JSON       # run.py calls in turn, one process
    python -m tests.population_worker steps STEPS_JSON     # the same, each step's exit code and error kept

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


def free_port():
    """A port free on this machine now, for a jax.distributed coordinator."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlp_fitness(params, key):
    """A small network on inputs drawn from the key: depends on both."""
    x = jax.random.normal(key, (32, 8))
    return jnp.tanh(jnp.tanh(x @ params["w1"]) @ params["w2"]).mean()


def ppo_fitness():
    """Final return of a tiny PPO run with a learned drift objective."""
    from agents import ppo
    from agents import objectives as lo

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
    drift = jax.vmap(lambda k: __import__("agents.objectives", fromlist=["x"]).init_drift(k, scale=3.0))(
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


def train(out, *args):
    """`run.py train ARGS --out OUT` as run.py runs it, its population sharded
    over this process's host devices (XLA_FLAGS gives 2), against the same
    population as run.py would run it on one device: the whole training
    program jitted on device 0 alone (runs_per_device = every member, as
    run.py passes with one device). Asserts here that the run really used 2
    devices; returns both results."""
    import contextlib
    import io

    import run   # sets run.py's XLA flags; the device count given in XLA_FLAGS stays
    from src import population, rundir

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = run.main(["train", *args, "--out", out])
    members = rundir.read_members(out)
    sharding = population.member_sharding(len(members))
    assert jax.device_count() == 2, jax.devices()
    assert sharding.mesh.devices.size == 2, sharding
    assert f"{len(members)} runs" in printed.getvalue() and "2 device(s)" in printed.getvalue(), printed.getvalue()

    module, config, _ = run.load_run(out)
    agent = module.make(config, runs_per_device=len(members))
    one = jax.devices()[0]
    keys = jax.device_put(run.member_keys(members), one)
    hparams = jax.device_put(run.stacked_hparams(module, config, members), one)
    _, metrics = jax.jit(jax.vmap(lambda k, hp: agent.train(k, hp, None, None)))(keys, hparams)
    assert all(leaf.devices() == {one} for leaf in jax.tree.leaves(metrics))
    metrics = jax.device_get(metrics)
    rows = rundir.read_metrics(out)
    names = sorted(k for k in metrics if k != "env_steps")
    sharded = {k: [r[k] for r in rows] for k in names}
    # metrics.csv lists iteration-major, member-minor: the same order as metrics[k].T
    single = {k: np.asarray(metrics[k], np.float64).T.ravel().tolist() for k in names}
    return {"summary_final_returns": summary["final_returns"], "printed": printed.getvalue(),
            "devices": int(sharding.mesh.devices.size), "members": len(members),
            "sharded": sharded, "single": single}


def cli(steps_json):
    """run.py's entry point (`run.main(argv)`) for each argv of a JSON list,
    in turn, in this process, each preceded by the line `=== run.py ARGV`;
    a step ["copy", SRC, DST] copies a directory. With JAX_COMPILATION_CACHE_DIR
    set the calls share their compiled programs (a program is compiled once,
    then loaded), which a run that resumes from disk cannot tell apart from
    a new process."""
    import shutil

    import run
    steps = json.loads(steps_json)
    for step in steps:
        if step[0] == "copy":
            shutil.copytree(step[1], step[2])
            continue
        print("=== run.py " + " ".join(step), flush=True)
        run.main(step)
    print("=== end", flush=True)
    return {"steps": len(steps)}


def steps(steps_json):
    """run.py's entry point for each argv of a JSON list, in turn, in this
    process (the multi-host tests give every step the same --coordinator
    flags: the process joins its group once). A step that stops with an
    error does not end the list: {"code", "error"} per step, the last line of
    stderr as the error, and this process's CPU seconds."""
    import contextlib
    import io
    import resource

    import run
    results = []
    for argv in json.loads(steps_json):
        print("=== run.py " + " ".join(argv), flush=True)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                run.main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
        lines = err.getvalue().strip().splitlines()
        results.append({"code": code, "error": lines[-1] if lines else ""})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"steps": results, "cpu_s": usage.ru_utime + usage.ru_stime,
            "processes": jax.process_count() if jax.distributed.is_initialized() else 1}


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    print(json.dumps({"sharded": sharded, "distributed": distributed, "train": train, "cli": cli,
                      "steps": steps}[mode](*rest)))
