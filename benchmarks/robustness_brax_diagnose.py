"""Why do PGD and MAD take little from a continuous-action victim? A diagnosis
on the states of clean episodes, then returns under each attack variant.

    python benchmarks/robustness_brax_diagnose.py RUN_DIR --eps 0.1,0.2 --episodes 10 --out FILE.json

RUN_DIR is a `run.py train` directory of a PPO victim with continuous actions
(e.g. configs/ppo_brax_inverted_pendulum.yaml). Threat model: L-inf ball in
normalised observation units, per step (what `run.py robust` uses by default).

Part 1, one step (on --states states per member, drawn from clean
deterministic episodes):
  - how often the clean action mean lies outside the action box (the
    environment clips it);
  - for each variant: the mean change of the unclipped mean |mu' - mu|, the
    mean change of the action the environment receives |clip mu' - clip mu|,
    and the share of the first that survives clipping;
  - `oracle` (1-D actions only): the largest change of the clipped action any
    perturbation in the ball can make at that state (PGD on +mu and on -mu,
    the better of the two). A one-step deviation attack (PGD, MAD) cannot do
    better than this at any state.
Part 2, returns: deterministic episodes under each variant (members x eps x
episodes in one program per variant).

Variants: the library's attacks with their defaults and with other step
counts/sizes (pgd_K{10,50}_s{1,2.5}; s is the step in units of eps/K),
`mad`, the clipped-distribution objectives (`*_clipped`: make_attack's
action_bounds), the critic attack, random; and two diagnostics that are not
the published attacks: `oracle` (above, per step) and `oppose` (per step,
push every action component against the sign of the clean clipped action).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LIBRARY = ("random", "pgd_K10_s2.5", "pgd_K50_s2.5", "pgd_K10_s1", "pgd_K50_s1", "mad", "pgd_clipped",
           "pgd_K50_clipped", "mad_clipped", "critic")
DIAGNOSTIC = ("oracle", "oppose")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--variants", default=",".join(LIBRARY + DIAGNOSTIC))
    p.add_argument("--eps", default="0.1,0.2")
    p.add_argument("--episodes", type=int, default=10, help="attacked episodes per member and eps")
    p.add_argument("--clean-episodes", type=int, default=4, help="clean episodes per member to draw states from")
    p.add_argument("--states", type=int, default=1000, help="states per member for the one-step part")
    p.add_argument("--max-steps", type=int, default=0, help="episode cap (0: the env's limit)")
    p.add_argument("--no-returns", action="store_true", help="only the one-step part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results")
    return p.parse_args(argv)


def load(run_dir):
    import jax

    import agents
    from meta import adversary as adv

    module, config, members = agents.load_run(run_dir, need_checkpoint=True)
    agent = module.make(config)
    state = agents.restore_members(run_dir, module, agent, config, members)
    victim, to_vparams = adv.victim_of(agent)
    if victim.discrete:
        raise SystemExit("this diagnosis is for continuous-action victims")
    return agent, victim, jax.vmap(to_vparams)(state), config


def variant_attack(name, victim, bounds, threat):
    """attack(key, vparams, x, eps, adv_params=None, raw_obs=None) -> delta."""
    import jax
    import jax.numpy as jnp

    from robustness import attacks

    low, high = bounds
    if name in ("random", "critic", "mad"):
        return attacks.make_attack(name, threat, victim, 10)
    if name.startswith("pgd_K") and not name.endswith("clipped"):
        k, s = name[5:].split("_s")
        return attacks.make_attack("pgd", threat, victim, int(k), step_scale=float(s))
    if name.endswith("clipped"):
        base = name.split("_")[0]
        steps = int(name.split("_K")[1].split("_")[0]) if "_K" in name else 10
        return attacks.make_attack(base, threat, victim, steps, action_bounds=bounds)

    def mean_of(vp, y):
        return victim.policy(vp, y)[0]

    if name == "oppose":
        def attack(key, vp, x, eps, adv_params=None, raw_obs=None):
            direction = -jnp.sign(jnp.clip(jax.lax.stop_gradient(mean_of(vp, x)), low, high))
            return attacks.pgd_maximise(lambda y: jnp.sum(direction * mean_of(vp, y), -1), key, x, eps,
                                        threat.norm, 20)
        return attack
    if name == "oracle":
        def attack(key, vp, x, eps, adv_params=None, raw_obs=None):
            clean = jnp.clip(mean_of(vp, x), low, high)
            up_key, down_key = jax.random.split(key)
            up = attacks.pgd_maximise(lambda y: jnp.sum(mean_of(vp, y), -1), up_key, x, eps, threat.norm, 20)
            down = attacks.pgd_maximise(lambda y: -jnp.sum(mean_of(vp, y), -1), down_key, x, eps, threat.norm, 20)
            gain = lambda d: jnp.sum(jnp.abs(jnp.clip(mean_of(vp, x + d), low, high) - clean), -1)  # noqa: E731
            return jnp.where((gain(up) >= gain(down))[..., None], up, down)
        return attack
    raise SystemExit(f"unknown variant {name!r}; known: {', '.join(LIBRARY + DIAGNOSTIC)}")


def clean_states(agent, victim, vparams, key, episodes, max_steps):
    """Normalised observations, clean means and alive masks of deterministic
    episodes: [members, steps, episodes, ...]."""
    import jax
    import jax.numpy as jnp

    env, params = agent.env, agent.env_params

    def one(vp):
        reset_key, run_key = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, episodes), params)

        def body(carry, k):
            obs, state, running, ret = carry
            x = victim.normalize(vp, obs)
            mean = victim.policy(vp, x)[0]
            obs, state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k, episodes), state, mean, params)
            ret = ret + reward * running
            return (obs, state, running & ~(term | trunc), ret), (x, mean, running)

        init = (obs, state, jnp.ones(episodes, bool), jnp.zeros(episodes))
        (_, _, _, ret), out = jax.lax.scan(body, init, jax.random.split(run_key, max_steps))
        return out, ret

    return jax.jit(jax.vmap(one))(vparams)


def main(argv=None):
    args = parse(argv)
    from src import population
    population.use_all_cpu_cores()   # as run.py: its checkpoints are restored onto the same devices
    import jax
    import jax.numpy as jnp
    import numpy as np

    from envs.core import episode_limit
    from robustness import attacks

    agent, victim, vparams, config = load(args.run_dir)
    space = agent.env.action_space(agent.env_params)
    bounds = (jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32))
    threat = attacks.ThreatModel()
    eps = [float(e) for e in args.eps.split(",")]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    max_steps = args.max_steps or episode_limit(agent.env, agent.env_params)
    key = jax.random.PRNGKey(args.seed)
    members = jax.tree.leaves(vparams)[0].shape[0]
    result = {"run_dir": args.run_dir, "env": config.env, "members": members, "eps": eps,
              "episodes": args.episodes, "states_per_member": args.states, "max_steps": max_steps,
              "action_low": np.asarray(space.low).tolist(), "action_high": np.asarray(space.high).tolist()}

    # ---- part 1: states of clean episodes
    t0 = time.perf_counter()
    (xs, means, alive), clean_return = clean_states(agent, victim, vparams, jax.random.fold_in(key, 1),
                                                    args.clean_episodes, max_steps)
    xs, means, alive = np.asarray(xs), np.asarray(means), np.asarray(alive)
    rng = np.random.default_rng(args.seed)
    picked_x, picked_mu = [], []
    for m in range(members):
        t, e = np.nonzero(alive[m])
        i = rng.choice(len(t), size=min(args.states, len(t)), replace=len(t) < args.states)
        picked_x.append(xs[m, t[i], e[i]])
        picked_mu.append(means[m, t[i], e[i]])
    picked_x, picked_mu = jnp.asarray(np.stack(picked_x)), np.stack(picked_mu)     # [members, states, ...]
    low, high = np.asarray(bounds[0]), np.asarray(bounds[1])
    outside = (picked_mu < low) | (picked_mu > high)
    log_std = np.asarray(jax.vmap(lambda vp, x: victim.policy(vp, x)[1])(vparams, picked_x[:, :1]))[:, 0]
    result["clean"] = {"return_per_member": np.asarray(clean_return).mean(1).tolist(),
                       "frac_mean_outside_box": float(outside.mean()),
                       "frac_mean_outside_box_per_member": outside.mean(axis=(1, 2)).tolist(),
                       "abs_mean_quantiles_10_50_90_99": np.quantile(np.abs(picked_mu), [0.1, 0.5, 0.9, 0.99]).tolist(),
                       "std_per_member": np.exp(log_std).tolist(), "seconds": time.perf_counter() - t0}
    print("clean:", json.dumps(result["clean"]), flush=True)

    one_step = {}
    for name in names:
        attack = variant_attack(name, victim, bounds, threat)

        def per_state(vp, x, k, e):
            d = attack(k, vp, x, e)
            mu, mu_adv = victim.policy(vp, x)[0], victim.policy(vp, x + d)[0]
            raw = jnp.sum(jnp.abs(mu_adv - mu), -1)
            env = jnp.sum(jnp.abs(jnp.clip(mu_adv, *bounds) - jnp.clip(mu, *bounds)), -1)
            return raw, env

        def per_member(vp, xs_m, e):
            keys = jax.random.split(jax.random.fold_in(key, 2), xs_m.shape[0])
            return jax.vmap(per_state, in_axes=(None, 0, 0, None))(vp, xs_m, keys, e)

        program = jax.jit(jax.vmap(jax.vmap(per_member, in_axes=(0, 0, None)), in_axes=(None, None, 0)))
        t0 = time.perf_counter()
        raw, env_dev = program(vparams, picked_x, jnp.asarray(eps, jnp.float32))   # [eps, members, states]
        raw, env_dev = np.asarray(raw), np.asarray(env_dev)
        one_step[name] = {"mean_abs_dmu": raw.mean(axis=(1, 2)).tolist(),
                          "mean_abs_d_env_action": env_dev.mean(axis=(1, 2)).tolist(),
                          "share_surviving_clip": (env_dev.sum(axis=(1, 2)) / np.maximum(raw.sum(axis=(1, 2)), 1e-12)).tolist(),
                          "frac_states_losing_half": ((env_dev < 0.5 * raw).mean(axis=(1, 2))).tolist(),
                          "seconds": time.perf_counter() - t0}
        print(f"one-step {name}: " + json.dumps({k: [round(v, 4) for v in vs] if isinstance(vs, list) else round(vs, 1)
                                                 for k, vs in one_step[name].items()}), flush=True)
    result["one_step"] = one_step

    # ---- part 2: returns
    if not args.no_returns:
        returns = {}
        for name in names:
            attack = variant_attack(name, victim, bounds, threat)

            def run_one(vp, e):
                return attacks.evaluate(agent.env, agent.env_params, victim, vp, attack, threat,
                                        jax.random.fold_in(key, 3), e, args.episodes, max_steps)[0]

            t0 = time.perf_counter()
            r = np.asarray(jax.jit(jax.vmap(jax.vmap(run_one, in_axes=(None, 0)), in_axes=(0, None)))(
                vparams, jnp.asarray(eps, jnp.float32)))     # [members, eps, episodes]
            per_member = r.mean(-1)
            returns[name] = {"mean": per_member.mean(0).tolist(), "std_over_members": per_member.std(0).tolist(),
                             "per_member": per_member.tolist(), "seconds": time.perf_counter() - t0}
            print(f"returns {name}: " + ", ".join(f"eps {e:g}: {m:.1f} ± {s:.1f}" for e, m, s in
                                                 zip(eps, returns[name]["mean"], returns[name]["std_over_members"]))
                  + f"  ({returns[name]['seconds']:.0f} s)", flush=True)
        result["returns"] = returns
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
