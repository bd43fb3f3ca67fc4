"""python run.py meta ued --env maze|cartpole-levels|pendulum-levels --method dr|plr|robust_plr|accel|paired

Unsupervised environment design (meta/env_design.py): trains a PPO student on
levels chosen by the method, all seeds vmapped in one program, and writes a
run directory:

    config.yaml        the resolved UEDConfig
    metrics.csv        one row per iteration and seed (training return, buffer statistics, ...)
    held_out.csv       one row per evaluation, seed and held-out level: solve rate and mean return
    held_out.png       held-out solve rate and return over training (mean and spread over seeds)
    buffer_<it>.png    the levels the buffer holds at chosen iterations (seed 0, highest scores first)
    summary.json       final held-out solve rate and return, env steps, timings
"""
import argparse
import dataclasses
import os
import time

from src import config as cfg
from src import experiment
from src.config import ConfigError


def parse(argv):
    p = argparse.ArgumentParser(prog="run.py meta ued", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="level space: maze, cartpole-levels, pendulum-levels")
    p.add_argument("--method", help="dr, plr, robust_plr, accel, paired")
    p.add_argument("--score", help="level score for the buffer: pvl, maxmc, regret (algorithmic regret)")
    p.add_argument("--iterations", type=int, help="student updates (num_iterations)")
    # checkpoints at every held-out evaluation (eval_every iterations); --stop-at counts iterations
    return experiment.core_flags(p).parse_args(argv)


def build_config(args):
    from meta.env_design import UEDConfig
    values = cfg.load_yaml(args.config) if args.config else {}
    groove = (args.method or values.get("method")) == "groove"
    for flag, key in (("env", "env"), ("method", "method"), ("score", "score"), ("seeds", "seeds"),
                      ("iterations", "generations" if groove else "num_iterations")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    if groove:   # GROOVE's own config (meta/groove.py): ES over a learned objective
        from meta.groove import GrooveConfig
        return cfg.override(cfg.from_dict(GrooveConfig, values), args.overrides).validate()
    config = cfg.override(cfg.from_dict(UEDConfig, values), args.overrides)
    if not config.buffer_iterations:
        every, n = config.eval_every, config.num_iterations
        config = dataclasses.replace(config, buffer_iterations=tuple(sorted({0, (n // 2) // every * every, n})))
    return config.validate()


def main(argv=None):
    args = parse(argv or [])
    if args.config and not os.path.exists(args.config):
        raise ConfigError(f"no such config file: {args.config}")
    given = any([args.config, args.env, args.method, args.score, args.seeds, args.iterations, args.overrides])
    stored = os.path.join(args.out or "", "config.yaml")
    if args.resume and args.method is None and os.path.exists(stored):   # GROOVE's runs have a config of their own
        args.method = cfg.load_yaml(stored).get("method")
    config = build_config(args)
    from meta.env_design import UEDConfig
    if config.method == "groove":
        from meta.groove import GrooveConfig
        run = experiment.start(args.out, f"ued-{config.env}-groove", config, GrooveConfig, resume=args.resume,
                               given=given, unit="generation")
        return run_groove(run.config.validate(), run, args)
    run = experiment.start(args.out, f"ued-{config.env}-{config.method}", config, UEDConfig, resume=args.resume,
                           given=given)
    config = run.config.validate()
    out = run.path
    every = config.eval_every
    stop_at = experiment.stop_point(config.num_iterations, every, args.stop_at)

    import jax
    import numpy as np

    from meta import env_design
    from src import progress

    ued = env_design.make(config)   # loads the held-out levels: a bad level file stops here
    space = ued.space
    seeds, keys, coin_keys = run_keys(config, config.num_iterations)
    show = not args.no_progress

    def chunk_fn(state, coins):
        def body(state, xs):
            i, coin = xs
            state, metrics = jax.vmap(ued.iteration, in_axes=(0, None))(state, coin)
            if show:
                progress.report(i)
            return state, metrics
        return jax.lax.scan(body, state, (jax.numpy.arange(every), coins))

    init = jax.jit(jax.vmap(ued.init))
    chunk = jax.jit(chunk_fn)
    evaluate = jax.jit(jax.vmap(ued.evaluate))
    steps = config.env_steps_per_iteration(space.max_steps)

    t0 = time.time()
    state, done = run.continue_from(init(keys), config.num_iterations, ("metrics.csv", "held_out.csv"))

    def record_eval(it, state):
        res = jax.device_get(evaluate(state, jax.vmap(lambda k: jax.random.fold_in(k, 1000 + it))(keys)))
        solved = res["solved"].mean(-1)    # [seed, level]
        ret = res["returns"].mean(-1)
        run.append_rows("held_out.csv", [
            {"iteration": it, "env_steps": it * steps["trained"], "seed": int(seeds[s]), "level": name,
             "solve_rate": float(solved[s, li]), "return": float(ret[s, li])}
            for s in range(config.seeds) for li, name in enumerate(space.held_out_names)])

    def picture(it, state):
        path = os.path.join(out, f"buffer_{it:05d}.png")
        seed0 = jax.tree.map(lambda x: x[0], state)
        if seed0.buffer is not None:
            buf = jax.device_get(seed0.buffer)
            order = [i for i in np.argsort(-buf.scores) if buf.filled[i]]
            lv = jax.tree.map(lambda x: x[np.array(order, int)], buf.levels)
            scores = buf.scores[order]
            title = f"{config.method} buffer at iteration {it} (seed {int(seeds[0])}, {len(order)} levels)"
        else:   # DR and PAIRED hold no buffer: show what their generator proposes now
            gen_keys = jax.random.split(jax.random.PRNGKey(it), 16)
            if seed0.adversary is not None:
                lv = jax.vmap(space.adversary_sample, in_axes=(None, 0))(seed0.adversary, gen_keys)[0]
            else:
                lv = jax.vmap(space.sample)(gen_keys)
            lv, scores = jax.device_get(lv), None
            title = f"{config.method}: levels proposed at iteration {it} (seed {int(seeds[0])})"
        plot_levels(space, lv, scores, title, path)

    if done == 0:
        record_eval(0, state)
        if 0 in config.buffer_iterations:
            picture(0, state)
    run.open_logger(args.logger, config.seeds)
    watch = experiment.FiniteWatch(member_axis=1)
    compile_s = None
    with progress.bar(config.num_iterations, desc=f"ued {config.method}", enabled=show, initial=done) as bar:
        while done < stop_at:
            if bar is not None:
                bar.set_offset(done)
            start = time.time()
            state, metrics = chunk(state, coin_keys[done:done + every])
            metrics = jax.device_get(metrics)
            if compile_s is None:
                compile_s = time.time() - start
            rows = []
            for i in range(every):
                it = done + i + 1
                for s in range(config.seeds):
                    row = {"iteration": it, "env_steps": it * steps["trained"],
                           "env_steps_total": it * steps["total"], "seed": int(seeds[s])}
                    row.update({k: float(v[i, s]) for k, v in sorted(metrics.items())})
                    rows.append(row)
            run.append_rows("metrics.csv", rows)
            run.log([{**r, "member": r["seed"] - config.seed} for r in rows])
            watch.check(metrics, state.student.params, done)
            done += every
            record_eval(done, state)
            if done in config.buffer_iterations:
                picture(done, state)
            run.save(state, done)
    run.close()
    wall = time.time() - t0
    if done < config.num_iterations:
        run.write_json("summary.json", {"env": config.env, "method": config.method, "iterations": done,
                                        "complete": False})
        print(f"stopped at iteration {done}; continue with --out {out} --resume")
        return {"complete": False, "iterations": done}

    # the held-out record of the whole run, read back (a resumed run's first part is on disk only)
    held = run.read_rows("held_out.csv")
    its = sorted({int(r["iteration"]) for r in held})
    table = np.zeros((len(its), config.seeds, len(space.held_out_names), 2))
    for r in held:
        table[its.index(int(r["iteration"])), int(r["seed"]) - config.seed,
              space.held_out_names.index(r["level"])] = (r["solve_rate"], r["return"])
    timeline = [(it, table[k, :, :, 0].mean(1), table[k, :, :, 1].mean(1)) for k, it in enumerate(its)]
    plot_timeline(timeline, steps["trained"], space.held_out_names, config, os.path.join(out, "held_out.png"))
    solved = table[-1, :, :, 0]
    per_seed = solved.mean(1)
    # the final student on the training distribution (fresh generator levels,
    # the same for every seed and method): is a held-out failure a failure to
    # learn at all, or to generalise?
    # (config.train_eval_levels > 0; its own compile, ~10 s on 2 cores, so off by default)
    train_fields, train_text = {}, ""
    if config.train_eval_levels:
        train_eval = jax.device_get(jax.jit(jax.vmap(
            lambda s, k: ued.evaluate_training(s, k, config.train_eval_levels), in_axes=(0, None)))(
                state, jax.random.PRNGKey(2027)))
        solvable = train_eval["solvable"][0]
        train_solved = train_eval["solved"][:, solvable].mean(1) if solvable.any() else np.zeros(config.seeds)
        train_fields = {"train_distribution_solve_rate_mean": float(train_solved.mean()),
                        "train_distribution_solve_rate_per_seed": [float(x) for x in train_solved],
                        "train_distribution_levels": config.train_eval_levels,
                        "train_distribution_solvable": float(solvable.mean())}
        train_text = f", training distribution {train_solved.mean():.3f} of solvable levels"
    final_ret = timeline[-1][2]
    summary = {
        "env": config.env, "method": config.method, "score": config.score, "seeds": [int(s) for s in seeds],
        "iterations": config.num_iterations, "complete": True,
        "env_steps_trained": config.num_iterations * steps["trained"],
        "env_steps_total": config.num_iterations * steps["total"],
        "held_out_solve_rate_mean": float(per_seed.mean()), "held_out_solve_rate_std": float(per_seed.std()),
        "held_out_return_mean": float(final_ret.mean()), "held_out_return_std": float(final_ret.std()),
        "held_out_solve_rate_per_level": {n: float(solved[:, i].mean()) for i, n in enumerate(space.held_out_names)},
        "held_out_solve_rate_per_seed": [float(x) for x in per_seed],
        **train_fields, "wall_s": wall, "first_chunk_s_incl_compile": compile_s,
    }
    run.write_json("summary.json", summary)
    print(f"{config.method} on {config.env}: held-out solve rate {per_seed.mean():.3f} ± {per_seed.std():.3f} "
          f"(return {final_ret.mean():.3f} ± {final_ret.std():.3f}){train_text} over {config.seeds} seeds after "
          f"{summary['env_steps_trained']} trained env steps ({summary['env_steps_total']} in all); "
          f"{wall:.0f} s. Run directory: {out}")
    return summary


def run_keys(config, num_steps):
    """The seeds, one key per seed and the per-step keys shared by all seeds
    (the buffer's replay coin flips)."""
    import jax
    import numpy as np

    seeds = config.seed + np.arange(config.seeds)
    keys = jax.vmap(jax.random.PRNGKey)(seeds.astype(np.uint32))
    coin_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 7919), num_steps)
    return seeds, keys, coin_keys


def plot_levels(space, levels, scores, title, path, max_levels=16):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import jax

    num = int(jax.tree.leaves(levels)[0].shape[0])
    if space.kind == "maze":
        from envs.maze import to_rgb
        shown = min(num, max_levels)
        cols = min(shown, 4) or 1
        rows = max(1, -(-shown // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for i in range(shown):
            lv = jax.tree.map(lambda x: x[i], levels)
            ax = axes.ravel()[i]
            ax.imshow(to_rgb(lv), interpolation="nearest")
            ax.set_title(f"score {scores[i]:.3f}" if scores is not None else f"level {i}", fontsize=8)
    else:
        values = np.stack([np.asarray(space.describe(jax.tree.map(lambda x: x[i], levels))) for i in range(num)])
        fig, ax = plt.subplots(figsize=(5, 4))
        sc = ax.scatter(values[:, 0], values[:, 1], c=scores if scores is not None else None, s=12, cmap="viridis")
        if scores is not None:
            fig.colorbar(sc, label="score")
        held = np.stack([np.asarray(space.describe(jax.tree.map(lambda x: x[i], space.held_out)))
                         for i in range(len(space.held_out_names))])
        ax.scatter(held[:, 0], held[:, 1], marker="x", c="red", label="held-out")
        ax.set_xlabel(space.quantities[0])
        ax.set_ylabel(space.quantities[1])
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_timeline(timeline, steps_per_it, names, config, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.array([t[0] * steps_per_it for t in timeline])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, k, label in ((axes[0], 1, "held-out solve rate"), (axes[1], 2, "held-out return")):
        y = np.stack([t[k] for t in timeline])   # [evals, seeds]
        ax.plot(x, y.mean(1), label=f"{config.method} (mean of {y.shape[1]} seeds)")
        ax.fill_between(x, y.min(1), y.max(1), alpha=0.25, label="min-max over seeds")
        ax.set_xlabel("student env steps")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{config.method} on {config.env}: held-out levels {', '.join(names)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_groove(config, run, args):
    """GROOVE (meta/groove.py): generations of ES over a learned objective, the
    level buffer driven by algorithmic regret; held-out levels scored by
    training the ES mean's objective (and PPO-clip) from scratch on each.
    Checkpointed at every evaluation (eval_every generations)."""
    import jax
    import numpy as np

    from meta import groove

    g = groove.make(config)
    space = g.space
    out = run.path
    seeds, keys, coin_keys = run_keys(config, config.generations)
    every = config.eval_every
    stop_at = experiment.stop_point(config.generations, every, args.stop_at, "generations")
    chunk = jax.jit(lambda s, coins: jax.lax.scan(
        lambda s, c: jax.vmap(g.generation, in_axes=(0, None))(s, c), s, coins))
    evaluate = jax.jit(jax.vmap(g.evaluate))
    t0 = time.time()
    state, done = run.continue_from(jax.jit(jax.vmap(g.init))(keys), config.generations, ("metrics.csv", "held_out.csv"))

    def record(gen, state):
        res = jax.device_get(evaluate(state, jax.vmap(lambda k: jax.random.fold_in(k, 1000 + gen))(keys)))
        run.append_rows("held_out.csv", [
            {"generation": gen, "seed": int(seeds[s]), "level": name,
             "solve_rate": float(res["solved"][s, li].mean()), "return": float(res["returns"][s, li].mean()),
             "ppo_clip_solve_rate": float(res["ppo_clip_solved"][s, li].mean()),
             "ppo_clip_return": float(res["ppo_clip_returns"][s, li].mean())}
            for s in range(config.seeds) for li, name in enumerate(space.held_out_names)])

    if done == 0:
        record(0, state)
    while done < stop_at:
        state, metrics = chunk(state, coin_keys[done:done + every])
        metrics = jax.device_get(metrics)
        run.append_rows("metrics.csv", [
            {"generation": done + i + 1, "seed": int(seeds[s]), **{k: float(v[i, s]) for k, v in sorted(metrics.items())}}
            for i in range(every) for s in range(config.seeds)])
        done += every
        record(done, state)
        run.save(state, done)
        if not args.no_progress:
            print(f"generation {done}/{config.generations}: fitness "
                  f"{metrics['fitness_mean'][-1].mean():.1f}, regret {metrics['regret'][-1].mean():.1f}", flush=True)
    wall = time.time() - t0
    if done < config.generations:
        run.write_json("summary.json", {"env": config.env, "method": "groove", "generations": done,
                                        "complete": False})
        print(f"stopped at generation {done}; continue with --out {out} --resume")
        return {"complete": False, "generations": done}
    buf = jax.device_get(jax.tree.map(lambda x: x[0], state.buffer))
    order = [i for i in np.argsort(-buf.scores) if buf.filled[i]]
    plot_levels(space, jax.tree.map(lambda x: x[np.array(order, int)], buf.levels), buf.scores[order],
                f"GROOVE buffer after {config.generations} generations (seed {int(seeds[0])}), "
                "score = algorithmic regret", os.path.join(out, f"buffer_{config.generations:05d}.png"))
    # the last evaluation and generation, read back (a resumed run's first part is on disk only)
    last = [r for r in run.read_rows("held_out.csv") if int(r["generation"]) == done]
    final = [r for r in run.read_rows("metrics.csv") if int(r["generation"]) == done]
    per_seed = {name: np.array([np.mean([r[name] for r in last if r["seed"] == s]) for s in seeds])
                for name in ("solve_rate", "ppo_clip_solve_rate")}
    solved, ref_solved = per_seed["solve_rate"], per_seed["ppo_clip_solve_rate"]
    summary = {"env": config.env, "method": "groove", "seeds": [int(s) for s in seeds],
               "generations": config.generations, "complete": True,
               "held_out_solve_rate_mean": float(solved.mean()), "held_out_solve_rate_std": float(solved.std()),
               "ppo_clip_held_out_solve_rate_mean": float(ref_solved.mean()),
               "final_regret": float(np.mean([r["regret"] for r in final])),
               "final_fitness": float(np.mean([r["fitness_mean"] for r in final])), "wall_s": wall}
    run.write_json("summary.json", summary)
    print(f"groove on {config.env}: learned objective solves {solved.mean():.3f} ± {solved.std():.3f} of held-out "
          f"episodes (PPO-clip {ref_solved.mean():.3f}); final regret {summary['final_regret']:.1f}; "
          f"{wall:.0f} s. Run directory: {out}")
    return summary
