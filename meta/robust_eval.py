"""A trained run's policies under attack, under dynamics shifts, and with
certified bounds: the numbers `run.py robust` (commands/robust.py) writes.
Each evaluation is one compiled program vmapped over the run's members, the
eps values or budgets, and the episodes."""
import time

from meta import adversary as adv


def train_adversaries(agent, victim, vparams, eps, steps, seed):
    """One learned adversary per (member, eps), all in one vmapped training program."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from agents import ppo

    one = jax.tree.map(lambda x: x[0], vparams)
    config = dataclasses.replace(adv.ADVERSARY_CONFIG,
                                 total_steps=max(int(steps), adv.ADVERSARY_CONFIG.batch_size))
    attack = adv.optimal_attack(agent.env, agent.env_params, victim, one, config)
    hp = ppo.hparams_from(attack.agent.config)
    members = jax.tree.leaves(vparams)[0].shape[0]

    def train(key, vp, e):
        ts, metrics = attack.agent.train(key, hp, env_params=adv.AdversaryParams(agent.env_params, vp, e))
        return adv.adversary_params(ts), metrics["episode_return"][-1]

    keys = jax.random.split(jax.random.PRNGKey(seed + 7), members * len(eps)).reshape(members, len(eps), -1)
    per_eps = jax.vmap(train, in_axes=(0, None, 0))
    params, final = jax.jit(jax.vmap(per_eps, in_axes=(0, 0, None)))(keys, vparams, jnp.asarray(eps, jnp.float32))
    return attack.act, params, final


def attack_table(agent, state, names, eps, threat, *, episodes, seed, pgd_steps=10, pgd_step_scale=2.5,
                 action_bounds=None, adversary_steps=200_000, show_progress=False):
    """Returns under each attack: {name: [members, eps, episodes]} and the
    seconds each took (compile included). One compiled program per attack,
    vmapped over members, eps values and episodes; the learned adversary
    trains one adversary per member and eps first."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from envs.core import episode_limit
    from robustness import attacks
    from src import progress

    victim, to_vparams = adv.victim_of(agent)
    options = dict(step_scale=pgd_step_scale, action_bounds=action_bounds)
    for name in names:   # every refusal (e.g. critic without a critic) before any compiling
        attacks.make_attack(name, threat, victim, pgd_steps, adversary=(lambda p, o: o), **options)
    vparams = jax.vmap(to_vparams)(state)
    max_steps = episode_limit(agent.env, agent.env_params)
    eps_arr = jnp.asarray(eps, jnp.float32)
    key = jax.random.PRNGKey(seed)
    results, timings = {}, {}
    with progress.bar(len(names), desc="attacks", enabled=show_progress) as bar:
        for i, name in enumerate(names):
            t0 = time.perf_counter()
            adv_params, adversary_fn = None, None
            if name == "learned":
                adversary_fn, adv_params, _ = train_adversaries(agent, victim, vparams, eps, adversary_steps,
                                                                seed)
                jax.block_until_ready(adv_params)
            attack = attacks.make_attack(name, threat, victim, pgd_steps, adversary=adversary_fn, **options)

            def evaluate(vp, e, ap):
                return attacks.evaluate(agent.env, agent.env_params, victim, vp, attack, threat, key, e,
                                        episodes, max_steps, adv_params=ap)[0]

            # members x eps x episodes in one program (the learned adversary has one per member and eps)
            ap_axes = None if adv_params is None else 0
            over_eps = jax.vmap(evaluate, in_axes=(None, 0, ap_axes))
            returns = jax.jit(jax.vmap(over_eps, in_axes=(0, None, ap_axes)))(vparams, eps_arr, adv_params)
            returns = np.asarray(jax.block_until_ready(returns))
            timings[name] = time.perf_counter() - t0
            results[name] = returns   # [members, eps, episodes]
            if bar is not None:
                bar.update_to(i + 1)
    return results, timings


def summarise(results, eps):
    import numpy as np

    table = {}
    for name, r in results.items():
        per_member = r.mean(axis=2)                       # [members, eps]
        table[name] = {"mean": per_member.mean(0).tolist(), "std_over_members": per_member.std(0).tolist(),
                       "per_member": per_member.tolist()}
    stacked = np.stack([np.asarray(results[n]).mean(axis=2) for n in results])   # [attacks, members, eps]
    worst = stacked.min(axis=0)     # the strongest attack per member and eps
    table["min_over_attacks"] = {"mean": worst.mean(0).tolist(), "std_over_members": worst.std(0).tolist(),
                                 "per_member": worst.tolist(),
                                 "argmin": [list(results)[int(j)] for j in stacked.mean(1).argmin(0)]}
    return table


def certify(agent, state, budgets, threat, *, sigma, thresholds, alpha, return_range, episodes, seed,
            pgd_steps=10, pgd_step_scale=2.5, action_bounds=None):
    """Noisy episodes -> certified lower bound per budget; and the smoothed
    policy's return under a PGD attack with the same total L2 budget."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from envs.core import episode_limit
    from robustness import attacks, certificates

    lo, hi = return_range
    certificates.check(sigma, budgets, thresholds, alpha, lo, hi)
    victim, to_vparams = adv.victim_of(agent)
    vparams = jax.vmap(to_vparams)(state)
    max_steps = episode_limit(agent.env, agent.env_params)
    key = jax.random.PRNGKey(seed)
    clean = attacks.make_attack("random", threat, victim)
    budget_threat = dataclasses.replace(threat, norm="l2", budget="episode")
    pgd = attacks.make_attack("pgd", budget_threat, victim, pgd_steps, step_scale=pgd_step_scale,
                              action_bounds=action_bounds)
    sigma_ = jnp.float32(sigma)

    def noisy(vp):
        return attacks.evaluate(agent.env, agent.env_params, victim, vp, clean, threat, key, 0.0,
                                episodes, max_steps, noise_sigma=sigma_)[0]

    def attacked(vp, b):
        return attacks.evaluate(agent.env, agent.env_params, victim, vp, pgd, budget_threat,
                                jax.random.fold_in(key, 1), b, episodes, max_steps, noise_sigma=sigma_)[0]

    b_arr = jnp.asarray(budgets, jnp.float32)
    t0 = time.perf_counter()
    noisy_returns = jax.jit(jax.vmap(noisy))(vparams)                                   # [members, episodes]
    bounds = jax.jit(jax.vmap(jax.vmap(
        lambda r, b: certificates.certified_return(r, sigma_, b, lo, hi, thresholds, alpha),
        in_axes=(None, 0)), in_axes=(0, None)))(noisy_returns, b_arr)                  # [members, budgets]
    under_attack = jax.jit(jax.vmap(jax.vmap(attacked, in_axes=(None, 0)), in_axes=(0, None)))(vparams, b_arr)
    bounds, under_attack = np.asarray(bounds), np.asarray(under_attack).mean(-1)
    noisy_returns = np.asarray(noisy_returns)
    seconds = time.perf_counter() - t0
    return {"sigma": sigma, "budgets": budgets, "alpha": alpha, "thresholds": thresholds,
            "return_range": [lo, hi], "episodes": episodes, "units": threat.units,
            "smoothed_return": noisy_returns.mean(1).tolist(),
            "certified": bounds.tolist(), "pgd_attacked": under_attack.tolist(),
            "certified_mean": bounds.mean(0).tolist(), "pgd_attacked_mean": under_attack.mean(0).tolist(),
            "bound_below_attacked": bool((bounds <= under_attack + 1e-6).all()), "seconds": seconds}


def shift_table(agent, state, name, factors, *, episodes, seed):
    """Clean deterministic return with one physical parameter scaled: members x factors x episodes in one program."""
    import jax
    import numpy as np

    from envs import perturbations
    from envs.core import episode_limit
    from src.evaluate import evaluate as run_evaluation
    from agents.base import evaluate_with_memory

    levels = perturbations.shifted_levels(agent.env_params, name, factors)
    key = jax.random.PRNGKey(seed)
    max_steps = episode_limit(agent.env, agent.env_params)   # static: the levels' own copy is traced

    def evaluate(ts, level):
        if agent.initial_carry is not None:   # memory: each episode from a fresh carry
            policy = lambda obs, k, c: agent.act(ts.params, obs, k, True, ts.obs_stats, carry=c)  # noqa: E731
            return evaluate_with_memory(agent.env, level, policy, agent.initial_carry, key, episodes, max_steps)[0]
        policy = lambda obs, k: agent.act(ts.params, obs, k, True, ts.obs_stats)  # noqa: E731
        return run_evaluation(agent.env, level, policy, key, episodes, max_steps)[0]

    returns = np.asarray(jax.jit(jax.vmap(jax.vmap(evaluate, in_axes=(None, 0)), in_axes=(0, None)))(state, levels))
    per_member = returns.mean(-1)
    return {"param": name, "factors": factors, "episodes": episodes,
            "mean": per_member.mean(0).tolist(), "std_over_members": per_member.std(0).tolist(),
            "per_member": per_member.tolist()}
