"""Observation attacks: the ball, the policy's input, closed-form worst cases,
ordering on a trained CartPole victim, determinism, one trace per attack, bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from agents import ppo
from envs.core import episode_limit
from meta import adversary as adv
from src import attacks, normalize
from src.config import ConfigError
from src.networks import ActorCritic
from tests.helpers import TraceCounter, tree_equal

OBS_ATTACKS = ("random", "fgsm", "pgd", "critic", "mad")


def mlp_victim(discrete, obs_dim=4, actions=2, normalize_obs=True):
    """A randomly initialised actor-critic with non-trivial observation statistics."""
    net = ActorCritic(actions, discrete, (16, 16))
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((obs_dim,)))
    stats = normalize.update(normalize.init((obs_dim,)), 3.0 * jax.random.normal(jax.random.PRNGKey(1), (64, obs_dim)) + 1.0)
    victim = attacks.Victim(
        policy=lambda vp, x: net.apply(vp["params"], x, method=ActorCritic.policy),
        value=lambda vp, x: net.apply(vp["params"], x, method=ActorCritic.value),
        normalize=(lambda vp, o: normalize.normalize(vp["obs_stats"], o)) if normalize_obs else (lambda vp, o: o),
        discrete=discrete)
    return victim, {"params": params, "obs_stats": stats}


@pytest.mark.parametrize("discrete,norm,units", [(True, "linf", "normalised"), (False, "l2", "raw")])
def test_perturbation_stays_in_the_ball_and_reaches_the_policy_input(discrete, norm, units):
    victim, vp = mlp_victim(discrete)
    threat = attacks.ThreatModel(norm=norm, units=units)
    obs = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (32, 4))
    eps = 0.3
    size = (lambda d: jnp.abs(d).max(-1)) if norm == "linf" else (lambda d: jnp.linalg.norm(d, axis=-1))
    keys = jax.random.split(jax.random.PRNGKey(3), 32)

    @jax.jit
    def all_attacks(keys, obs):   # one program for the five attacks: one compilation
        return {name: jax.vmap(lambda k, o: attacks.attacked_action(
            attacks.make_attack(name, threat, victim, steps=5), threat, victim, vp, k, o, eps))(keys, obs)
            for name in OBS_ATTACKS}

    outputs = all_attacks(keys, obs)
    for name in OBS_ATTACKS:
        action, delta, net_input = outputs[name]
        assert float(size(delta).max()) <= eps * (1 + 1e-5), name
        if name != "random":   # the optimisers push to the boundary of the ball for most inputs
            assert float(jnp.median(size(delta))) > 0.5 * eps, name
        expected = (victim.normalize(vp, obs) + delta) if units == "normalised" else victim.normalize(vp, obs + delta)
        np.testing.assert_allclose(net_input, expected, rtol=1e-6, atol=1e-6)
        dist = victim.policy(vp, net_input)
        np.testing.assert_array_equal(action, jnp.argmax(dist, -1) if discrete else dist[0])
        clean = jax.vmap(lambda o: victim.policy(vp, victim.normalize(vp, o)))(obs)
        assert not np.allclose(clean if discrete else clean[0], dist if discrete else dist[0]), name


def linear_discrete(w, b):
    return attacks.Victim(policy=lambda vp, x: x @ w + b, value=lambda vp, x: x @ w[:, 0],
                          normalize=lambda vp, o: o, discrete=True)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_and_pgd_find_the_closed_form_worst_perturbation_of_a_linear_policy(norm):
    # two actions with logits x @ w + b: the clean action a* loses most when
    # (w_other - w_a*) . delta is largest: eps*sign(d) (L-inf) or eps*d/|d| (L2)
    w = jnp.array([[1.0, -2.0], [0.5, 0.3], [-1.5, 1.0], [0.2, 0.9]])
    victim = linear_discrete(w, jnp.zeros(2))
    threat = attacks.ThreatModel(norm=norm)
    obs = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    clean_action = jnp.argmax(obs @ w, -1)
    d = jnp.where(clean_action[:, None] == 0, (w[:, 1] - w[:, 0])[None], (w[:, 0] - w[:, 1])[None])
    eps = 0.25
    worst = eps * jnp.sign(d) if norm == "linf" else eps * d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    keys = jax.random.split(jax.random.PRNGKey(1), 16)
    for name in ("fgsm", "pgd"):
        attack = attacks.make_attack(name, threat, victim, steps=20)
        delta = jax.vmap(lambda k, x: attack(k, None, x, eps))(keys, obs)
        if name == "fgsm" or norm == "linf":   # exactly the corner / the point on the sphere
            np.testing.assert_allclose(delta, worst, atol=1e-5, err_msg=name)
        else:   # projected L2 steps approach it geometrically from the random start
            gain, best = jnp.sum(delta * d, -1), jnp.sum(worst * d, -1)
            assert float((gain / best).min()) >= 0.95 and float((gain / best).mean()) >= 0.98, name
    # the critic attack on V(x) = x . w[:, 0] moves against its gradient
    critic = attacks.make_attack("critic", threat, victim, steps=20)
    delta = jax.vmap(lambda k, x: critic(k, None, x, eps))(keys, obs)
    v = w[:, 0]
    best = -eps * jnp.sign(v) if norm == "linf" else -eps * v / jnp.linalg.norm(v)
    if norm == "linf":
        np.testing.assert_allclose(delta, jnp.broadcast_to(best, delta.shape), atol=1e-6)
    else:
        assert float((delta @ v).max()) <= 0.95 * float(best @ v)


def test_pgd_and_mad_find_the_top_singular_direction_of_a_linear_gaussian_policy():
    # mean = A x, fixed std: both objectives are |A delta|^2 / (2 std^2), whose
    # max over the L2 ball is eps * (largest singular value of A); FGSM's first
    # gradient (at delta ~ 0) carries no information here, PGD's iterations do
    a = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3]])
    victim = attacks.Victim(policy=lambda vp, x: (x @ a.T, jnp.zeros(2) - 0.5), value=None,
                            normalize=lambda vp, o: o, discrete=False)
    threat = attacks.ThreatModel(norm="l2")
    s1 = float(jnp.linalg.svd(a, compute_uv=False)[0])
    obs = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    eps = 0.2
    for name in ("pgd", "mad"):
        attack = attacks.make_attack(name, threat, victim, steps=30)
        delta = jax.vmap(lambda k, x: attack(k, None, x, eps))(jax.random.split(jax.random.PRNGKey(1), 8), obs)
        gain = jnp.linalg.norm(delta @ a.T, axis=-1)
        ratio = gain / (eps * s1)   # a random direction averages about 0.7 here
        assert float(ratio.min()) >= 0.95 and float(ratio.mean()) >= 0.98, name
        assert float(gain.max()) <= eps * s1 * (1 + 1e-4)


def test_kl_matches_closed_forms():
    p, q = jnp.array([0.3, -1.0, 2.0]), jnp.array([1.0, 0.0, -0.5])
    pp, qq = jax.nn.softmax(p), jax.nn.softmax(q)
    np.testing.assert_allclose(attacks.kl(p, q, True), np.sum(pp * np.log(pp / qq)), rtol=1e-5)
    (m1, l1), (m2, l2) = (jnp.array([0.1, 1.0]), jnp.array([0.0, -1.0])), (jnp.array([0.5, 0.0]), jnp.array([0.3, 0.2]))
    s1, s2 = np.exp(l1), np.exp(l2)
    expected = np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5)
    np.testing.assert_allclose(attacks.kl((m1, l1), (m2, l2), False), expected, rtol=1e-5)


def test_clipped_kl_and_deviation_match_quadrature_and_the_gaussian_inside_the_box():
    from scipy import integrate, stats
    cases = [(0.3, -1.0, -0.2, -0.5), (1.4, -1.2, 0.7, -1.2), (-2.0, 0.0, 0.5, -0.3), (0.0, -3.0, 0.1, -3.0)]
    for mp, lp, mq, lq in cases:   # KL of the clipped distributions: two point masses and the density between
        p, q = stats.norm(mp, np.exp(lp)), stats.norm(mq, np.exp(lq))
        atoms = p.cdf(-1) * np.log(p.cdf(-1) / q.cdf(-1)) + p.sf(1) * np.log(p.sf(1) / q.sf(1))
        inner = integrate.quad(lambda a: p.pdf(a) * (p.logpdf(a) - q.logpdf(a)), -1, 1, points=[mp, mq], limit=200)[0]
        got = attacks.clipped_kl((jnp.array([mp]), jnp.array([lp])), (jnp.array([mq]), jnp.array([lq])), -1.0, 1.0)
        np.testing.assert_allclose(float(got), atoms + inner, rtol=1e-4)
    p = (jnp.array([0.1, 1.0]), jnp.array([0.0, -1.0]))
    q = (jnp.array([0.5, 0.0]), jnp.array([0.3, 0.2]))
    np.testing.assert_allclose(attacks.clipped_kl(p, q, -jnp.inf, jnp.inf), attacks.kl(p, q, False), rtol=1e-5)
    # the deviation objective: the Gaussian one for a clean mean inside the box,
    # minus the log of the perturbed mass beyond the bound for a clipped clean mean
    np.testing.assert_allclose(attacks.clipped_action_deviation(p, q, -2.0, 2.0),
                               attacks.action_deviation(p, q, False), rtol=1e-6)
    at_bound = attacks.clipped_action_deviation((jnp.array([1.5]), jnp.array([-1.0])),
                                                (jnp.array([0.8]), jnp.array([-1.0])), -1.0, 1.0)
    np.testing.assert_allclose(float(at_bound), -np.log(stats.norm(0.8, np.exp(-1.0)).sf(1.0)), rtol=1e-5)


def test_on_a_saturated_policy_only_the_clipped_objectives_change_the_clipped_action():
    # mean(x) = 1.1 + u + u^2 / 2 with u = x . w: the clean action (u = 0) is
    # beyond the bound 1 and clipped. Over the L-inf ball u ranges over
    # [-a, a], a = eps |w|_1; the unclipped Gaussian objectives grow faster
    # upwards (a + a^2/2 > a - a^2/2), where the clipped action stays 1; the
    # clipped objectives must come down to 1.1 - a + a^2/2 instead. (Both
    # corners are local maxima of the unclipped objectives, so from a random
    # start the old attacks still come down on about half the states.) The
    # std (0.05) is small next to the box, as for a trained policy: the KL of
    # the clipped distributions then weighs the clipped action's move most.
    w = jnp.array([0.5, -1.0, 0.25])
    victim = attacks.Victim(policy=lambda vp, x: ((1.1 + x @ w + 0.5 * (x @ w) ** 2)[..., None],
                                                  jnp.full(x.shape[:-1] + (1,), -3.0)),
                            value=None, normalize=lambda vp, o: o, discrete=False)
    n = 256
    obs = jax.random.normal(jax.random.PRNGKey(0), (n, 3))
    obs = obs - (obs @ w)[:, None] * w / jnp.dot(w, w)     # u = 0: every clean mean is 1.1
    eps = 0.3
    a = eps * float(jnp.abs(w).sum())
    best = 1.0 - (1.1 - a + 0.5 * a**2)                     # the largest change of the clipped action
    threat = attacks.ThreatModel()
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    bounds = (jnp.array([-1.0]), jnp.array([1.0]))

    def clipped_change(name, action_bounds):
        attack = attacks.make_attack(name, threat, victim, steps=10, action_bounds=action_bounds)
        delta = jax.vmap(lambda k, x: attack(k, None, x, eps))(keys, obs)
        mean = victim.policy(None, obs + delta)[0][:, 0]
        return 1.0 - jnp.clip(mean, -1.0, 1.0)

    for name in ("pgd", "fgsm", "mad"):
        unclipped = clipped_change(name, None)
        assert float((unclipped < 1e-6).mean()) > 0.3 and float(unclipped.mean()) < 0.7 * best, name
    for name in ("pgd", "fgsm"):   # minus the log of the mass beyond the bound: one way, into the box
        change = clipped_change(name, bounds)
        assert float(change.min()) >= 0.95 * best and float(change.max()) <= best + 1e-5, (name, change, best)
    # the clipped KL ranks the two corners the other way round from the
    # Gaussian KL; but it also grows upwards (the clean policy's little mass
    # inside the box is squeezed), so PGD's local ascent on it still goes up
    # from about half the random starts
    clean = (jnp.array([1.1]), jnp.array([-3.0]))
    up, down = (jnp.array([1.1 + a + 0.5 * a**2]), jnp.array([-3.0])), (jnp.array([1.1 - a + 0.5 * a**2]), jnp.array([-3.0]))
    assert attacks.kl(clean, up, False) > attacks.kl(clean, down, False)
    assert attacks.clipped_kl(clean, down, *bounds) > 2 * attacks.clipped_kl(clean, up, *bounds)
    mad = clipped_change("mad", bounds)
    assert float(mad.mean()) > float(clipped_change("mad", None).mean()) - 0.1 * best
    with pytest.raises(ConfigError, match="action_bounds"):
        attacks.make_attack("pgd", threat, linear_discrete(jnp.ones((4, 2)), jnp.zeros(2)), action_bounds=bounds)
    with pytest.raises(ConfigError, match="step scale"):
        attacks.make_attack("pgd", threat, victim, step_scale=0.0)


def test_bad_threat_models_and_attacks_fail_clearly():
    victim = linear_discrete(jnp.ones((4, 2)), jnp.zeros(2))
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'.*random, fgsm, pgd"):
        attacks.make_attack("pgdd", attacks.ThreatModel(), victim)
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        attacks.check_eps([0.1, -0.01])
    with pytest.raises(ConfigError, match="no state-value critic"):
        attacks.make_attack("critic", attacks.ThreatModel(), victim._replace(value=None))
    with pytest.raises(ConfigError, match="norm must be one of linf, l2"):
        attacks.ThreatModel(norm="l1").validate()
    with pytest.raises(ConfigError, match="total L2"):
        attacks.ThreatModel(budget="episode").validate()
    with pytest.raises(ConfigError, match="dynamics"):
        attacks.ThreatModel(target="dynamics").validate()
    with pytest.raises(ConfigError, match="discrete"):
        attacks.make_attack("random", attacks.ThreatModel(target="action"), victim)


def test_per_episode_budget_is_never_exceeded():
    env, params = envs.make("CartPole-v1")
    victim, vp = mlp_victim(True)
    threat = attacks.ThreatModel(norm="l2", budget="episode")
    attack = attacks.make_attack("pgd", threat, victim, steps=3)
    counted = TraceCounter(lambda e: attacks.evaluate(env, params, victim, vp, attack, threat, jax.random.PRNGKey(0),
                                                      e, 4, 40, with_spent=True))
    run = jax.jit(counted)
    returns, _, spent = run(0.7)
    assert float(spent.max()) <= 0.7**2 * (1 + 1e-4)
    assert float(spent.min()) > 0.5 * 0.7**2   # and PGD does spend it
    # same seed, same numbers; another budget, other numbers (one compiled program)
    again, _, spent_again = run(0.7)
    assert tree_equal((returns, spent), (again, spent_again))
    assert not tree_equal(spent, run(0.3)[2])
    assert counted.count == 1


# ----------------------------------------------------------------------------- a trained CartPole victim

VICTIM = ppo.PPOConfig(total_steps=4 * 128 * 200, num_envs=4, num_steps=128, hidden=(64, 64))
SEEDS = 3
EPS = (0.0, 0.1, 0.2, 0.4)


@pytest.fixture(scope="module")
def trained():   # used by slow tests only: training a victim costs ~40 s on a shared 2-core CPU
    agent = ppo.make(VICTIM)
    hp = ppo.hparams_from(VICTIM)
    states, _ = jax.jit(jax.vmap(agent.train, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), SEEDS), hp)
    victim, to_vparams = adv.victim_of(agent)
    return agent, victim, jax.vmap(to_vparams)(states)


def attack_program(trained, name, key=jax.random.PRNGKey(5), episodes=16, wrap=lambda f: f):
    """One jitted program: members x eps x episodes for one attack."""
    agent, victim, vparams = trained
    threat = attacks.ThreatModel()
    attack = attacks.make_attack(name, threat, victim, steps=10)

    def run(vp, e):
        return attacks.evaluate(agent.env, agent.env_params, victim, vp, attack, threat, key, e, episodes,
                                episode_limit(agent.env, agent.env_params))[0]

    program = jax.jit(wrap(jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))))
    return lambda eps: np.asarray(program(vparams, jnp.asarray(eps, jnp.float32)))   # [seeds, eps, episodes]


@pytest.mark.slow
def test_on_a_trained_cartpole_victim_pgd_le_fgsm_le_random_and_return_falls_with_eps(trained):
    means = {name: attack_program(trained, name)(EPS).mean(axis=(0, 2)) for name in ("random", "fgsm", "pgd")}
    assert means["random"][0] > 300, means          # the victim has learned something to lose
    # at the largest eps both attacks topple the pole within ~15 steps; PGD may
    # then trail FGSM by a step in one of the 48 episodes (15.56 vs 15.54 on
    # 2026-11-27): allow 1% of the clean return, far below any real gap
    tol = 0.01 * means["random"][0]
    for i in range(len(EPS)):
        assert means["pgd"][i] <= means["fgsm"][i] + tol and means["fgsm"][i] <= means["random"][i] + 1e-3, \
            (EPS[i], means)
    for name in ("fgsm", "pgd"):
        assert np.all(np.diff(means[name]) <= 1e-3), (name, means[name])
    assert means["pgd"][-1] < 0.5 * means["pgd"][0], means   # a strong attack loses most of the return


@pytest.mark.slow
def test_same_seed_same_numbers_and_one_trace_for_all_eps(trained):
    counter = None

    def wrap(fn):
        nonlocal counter
        counter = TraceCounter(fn)
        return counter

    program = attack_program(trained, "mad", episodes=4, wrap=wrap)
    a, b, c = program((0.05, 0.1)), program((0.2, 0.3)), program((0.05, 0.1))
    assert counter.count == 1
    assert tree_equal(a, c) and not tree_equal(a, b)
