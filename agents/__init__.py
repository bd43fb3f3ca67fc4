"""The learners, and a trained run's members loaded back from its directory."""
import os


def algorithms():
    from agents import ppo, sac
    return {"ppo": ppo, "sac": sac}


def load_run(run_dir, need_checkpoint=False):
    """(module, config, members) of a `train` run directory."""
    from src import config as cfg
    from src import rundir

    if not os.path.exists(os.path.join(run_dir, "config.yaml")):
        raise cfg.ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    if need_checkpoint and not os.path.isdir(os.path.join(run_dir, "checkpoint")):
        raise cfg.ConfigError(f"{run_dir} has no checkpoint (no {os.path.join(run_dir, 'checkpoint')}/): "
                              "train it to the end (or to a --stop-at) first")
    data = cfg.load_yaml(os.path.join(run_dir, "config.yaml"))
    modules = algorithms()
    module = modules.get(data.get("algo", "ppo"))
    if module is None:
        raise cfg.ConfigError(f"{run_dir}: unknown algorithm {data.get('algo')!r}; known: {', '.join(modules)}")
    return module, cfg.from_dict(module.CONFIG, data).validate(), rundir.read_members(run_dir)


def member_keys(members):
    import jax
    import jax.numpy as jnp
    return jax.vmap(jax.random.PRNGKey)(jnp.array([m["seed"] for m in members], jnp.uint32))


def stacked_hparams(module, config, members):
    """The members' traced hyperparameters, stacked: swept values where a member has them, else the config's."""
    import jax.numpy as jnp

    base = module.hparams_from(config)
    columns = {name: jnp.array([m["hparams"].get(name, float(getattr(config, name))) for m in members],
                               jnp.float32) for name in module.HPARAM_NAMES}
    return base.replace(**columns)


def restore_members(run_dir, module, agent, config, members, like=None):
    """The members' train states from RUN_DIR/checkpoint (into `like`, or the
    shapes of a fresh init traced without compiling)."""
    import jax

    from src import checkpoint

    if like is None:
        like = jax.eval_shape(jax.vmap(agent.init), member_keys(members), stacked_hparams(module, config, members))
    return checkpoint.restore(os.path.join(run_dir, "checkpoint"), like)
