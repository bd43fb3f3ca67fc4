"""EPIC and STARC against brute-force sums on small random MDPs; invariance to
potential shaping and positive scaling; the sampled EPIC against the exact one;
normalised regret against enumerating every deterministic policy."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import reward_distances as rd
from envs import rewards
from envs.rewards import Transition

GAMMA = 0.9
STATES, ACTIONS = 5, 3


def random_mdp(seed, states=STATES, actions=ACTIONS):
    """Dense random dynamics and a Gaussian reward over (s, a, s'); no terminal state."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(states) * 0.5, size=(states, actions))
    R = rng.normal(size=(states, actions, states))
    return P, R


# jitted once for the module: every MDP here has the same shapes, so each compiles once
epic = jax.jit(rd.epic_distance)
starc = jax.jit(rd.starc_distance)
regret = jax.jit(rd.normalised_regret)


# ----------------------------------------------------------------------------- brute-force references

def epic_reference(R, gamma, d_s=None, d_a=None, d_t=None):
    """EPIC by explicit sums over s, a, s' in Python loops, in float64."""
    S, A, _ = R.shape
    d_s = np.full(S, 1 / S) if d_s is None else d_s
    d_a = np.full(A, 1 / A) if d_a is None else d_a
    d_t = np.full((S, A, S), 1 / (S * A * S)) if d_t is None else d_t / d_t.sum()

    def mean_from(x):          # E[R(x, A, S')]
        return sum(d_a[a] * d_s[t] * R[x, a, t] for a in range(A) for t in range(S))

    constant = sum(d_s[x] * mean_from(x) for x in range(S))
    C = np.zeros_like(R)
    for s, a, t in itertools.product(range(S), range(A), range(S)):
        C[s, a, t] = R[s, a, t] + gamma * mean_from(t) - mean_from(s) - gamma * constant
    return C


def pearson_distance_reference(C1, C2, d_t=None):
    w = np.ones_like(C1) if d_t is None else d_t
    w = w / w.sum()
    m1, m2 = (w * C1).sum(), (w * C2).sum()
    cov = (w * (C1 - m1) * (C2 - m2)).sum()
    rho = cov / np.sqrt((w * (C1 - m1) ** 2).sum() * (w * (C2 - m2) ** 2).sum())
    return np.sqrt(max(1 - rho, 0.0) / 2)


def policy_evaluation_reference(P, R, gamma, policy, sweeps=400):
    """V^pi by repeated Bellman backups written as loops (0.9^400 ~ 5e-19)."""
    S, A, _ = P.shape
    V = np.zeros(S)
    for _ in range(sweeps):
        V = np.array([sum(policy[s, a] * P[s, a, t] * (R[s, a, t] + gamma * V[t])
                          for a in range(A) for t in range(S)) for s in range(S)])
    return V


def starc_reference(P, R1, R2, gamma, policy=None):
    S, A, _ = P.shape
    policy = np.full((S, A), 1 / A) if policy is None else policy

    def canonical(R):
        V = policy_evaluation_reference(P, R, gamma, policy)
        C = np.zeros_like(R)
        for s, a, t in itertools.product(range(S), range(A), range(S)):
            C[s, a, t] = sum(P[s, a, u] * (R[s, a, u] + gamma * V[u]) for u in range(S)) - V[s]
        return C

    def normalised(C):
        norm = np.sqrt((C ** 2).mean())
        return C / norm if norm > 0 else C

    return 0.5 * np.sqrt(((normalised(canonical(R1)) - normalised(canonical(R2))) ** 2).mean())


def regret_by_enumeration(P, R_proxy, R_true, gamma):
    """Normalised regret with best and worst found among all A^S deterministic
    policies (exact linear solves), and pi_proxy from numpy value iteration."""
    S, A, _ = P.shape
    values = {}
    for actions in itertools.product(range(A), repeat=S):
        idx = np.arange(S), np.array(actions)
        V = np.linalg.solve(np.eye(S) - gamma * P[idx], (P[idx] * R_true[idx]).sum(-1))
        values[actions] = V.mean()
    Q = np.zeros((S, A))
    for _ in range(1000):
        Q = (P * (R_proxy + gamma * Q.max(1)[None, None, :])).sum(2)
    best, worst = max(values.values()), min(values.values())
    return (best - values[tuple(Q.argmax(1))]) / (best - worst)


# ----------------------------------------------------------------------------- tabular rewards via the agent contract

def one_hot_transitions(states=STATES, actions=ACTIONS):
    s, a, t = (x.ravel() for x in np.meshgrid(np.arange(states), np.arange(actions), np.arange(states),
                                              indexing="ij"))
    eye = jnp.eye(states, dtype=jnp.float32)
    return s, a, t, eye


def potential_shaped(R, phi, gamma):
    """R + gamma Phi(s') - Phi(s) built by envs.rewards.potential_shaping on
    one-hot observations (no transition terminates)."""
    s, a, t, eye = one_hot_transitions(*R.shape[:2])
    fn = rewards.potential_shaping(lambda params, obs: jnp.dot(obs, params), gamma)
    batch = Transition(eye[s], jnp.asarray(a), eye[t], jnp.asarray(R[s, a, t], jnp.float32),
                       jnp.zeros(len(s), bool), {})
    return np.asarray(jax.vmap(fn, in_axes=(None, 0))(jnp.asarray(phi, jnp.float32), batch)).reshape(R.shape)


def table_reward(table, transition):
    """A tabular reward as reward_fn(reward_params=table, transition) on one-hot observations."""
    return transition.obs @ table[:, transition.action, :] @ transition.next_obs


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_epic_matches_brute_force_sums(seed):
    P, R1 = random_mdp(seed)
    R2 = 0.5 * R1 + np.random.default_rng(50 + seed).normal(size=R1.shape)
    np.testing.assert_allclose(rd.epic_canonicalize(R1, GAMMA), epic_reference(R1, GAMMA), rtol=1e-5, atol=1e-5)
    expected = pearson_distance_reference(epic_reference(R1, GAMMA), epic_reference(R2, GAMMA))
    assert float(epic(R1, R2, GAMMA)) == pytest.approx(expected, abs=1e-5)


def test_epic_with_non_uniform_coverage_matches_brute_force_sums():
    P, R1 = random_mdp(3)
    rng = np.random.default_rng(3)
    R2 = rng.normal(size=R1.shape)
    d_s, d_a, d_t = rng.dirichlet(np.ones(STATES)), rng.dirichlet(np.ones(ACTIONS)), rng.random(R1.shape)
    C1, C2 = epic_reference(R1, GAMMA, d_s, d_a, d_t), epic_reference(R2, GAMMA, d_s, d_a, d_t)
    np.testing.assert_allclose(rd.epic_canonicalize(R1, GAMMA, d_s, d_a), C1, rtol=1e-5, atol=1e-5)
    assert float(epic(R1, R2, GAMMA, d_s, d_a, d_t)) == pytest.approx(pearson_distance_reference(C1, C2, d_t),
                                                                      abs=1e-5)
    # the coverage matters: the same pair under uniform coverage is another number
    assert abs(float(epic(R1, R2, GAMMA)) - float(epic(R1, R2, GAMMA, d_s, d_a, d_t))) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_starc_matches_brute_force_sums(seed):
    P, R1 = random_mdp(seed)
    R2 = 0.5 * R1 + np.random.default_rng(50 + seed).normal(size=R1.shape)
    assert float(starc(P, R1, R2, GAMMA)) == pytest.approx(starc_reference(P, R1, R2, GAMMA), abs=1e-5)
    # another fixed policy for the levelling: still exact, and a different number
    policy = np.random.default_rng(seed).dirichlet(np.ones(ACTIONS), size=STATES)
    with_policy = float(starc(P, R1, R2, GAMMA, policy))
    assert with_policy == pytest.approx(starc_reference(P, R1, R2, GAMMA, policy), abs=1e-5)


def test_policy_values_and_levelled_reward_by_hand():
    """One state, one action, reward 1 on the self-loop: V = 1 / (1 - gamma) = 10,
    so c = 1 - 10 + 0.9 * 10 = 0 (a constant reward is shaping of zero)."""
    P, R = np.ones((1, 1, 1)), np.ones((1, 1, 1))
    value, levelled = jax.jit(lambda P, R: (rd.policy_values(P, R, GAMMA, jnp.ones((1, 1))),
                                            rd.starc_canonicalize(P, R, GAMMA)))(P, R)
    assert float(value[0]) == pytest.approx(10.0, rel=1e-6)
    assert float(levelled[0, 0, 0]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_normalised_regret_matches_enumerating_every_policy(seed):
    P, R_true = random_mdp(seed)
    R_proxy = R_true + 1.5 * np.random.default_rng(70 + seed).normal(size=R_true.shape)
    expected = regret_by_enumeration(P, R_proxy, R_true, GAMMA)
    assert 0.0 < expected < 1.0   # a case where the proxy's optimum is neither best nor worst
    assert float(regret(P, R_proxy, R_true, GAMMA)) == pytest.approx(expected, abs=1e-4)
    assert float(regret(P, R_true, R_true, GAMMA)) == pytest.approx(0.0, abs=1e-6)
    assert float(regret(P, -R_true, R_true, GAMMA)) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- invariances and extremes

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_potential_shaping_and_positive_scaling_give_distance_zero(seed):
    P, R = random_mdp(seed)
    rng = np.random.default_rng(90 + seed)
    phi = rng.normal(scale=5.0, size=STATES)
    shaped = potential_shaped(R, phi, GAMMA)
    assert np.abs(shaped - R).max() > 1.0                   # the shaping is large, not a no-op
    scale = float(np.exp(rng.uniform(np.log(0.1), np.log(10.0))))
    for other in (shaped, scale * R, scale * shaped):
        assert float(epic(R, other, GAMMA)) < 1e-4
        assert float(starc(P, R, other, GAMMA)) < 1e-4
    # the naive baseline is fooled by shaping, which is why the canonicalisations exist
    assert float(rd.naive_distance(R, shaped)) > 0.1
    # and a genuinely different reward is far under both
    other = rng.normal(size=R.shape)
    assert float(epic(R, other, GAMMA)) > 0.3
    assert float(starc(P, R, other, GAMMA)) > 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_opposite_reward_is_at_distance_one(seed):
    P, R = random_mdp(seed)
    shaped = potential_shaped(R, np.random.default_rng(seed).normal(scale=3.0, size=STATES), GAMMA)
    assert float(epic(R, -R, GAMMA)) == pytest.approx(1.0, abs=1e-6)
    assert float(epic(R, -2.0 * shaped, GAMMA)) == pytest.approx(1.0, abs=1e-5)
    assert float(starc(P, R, -R, GAMMA)) == pytest.approx(1.0, abs=1e-6)


def test_the_zero_reward_normalises_to_zero():
    P, R = random_mdp(0)
    zero = np.zeros_like(R)
    shaping_only = potential_shaped(zero, np.random.default_rng(0).normal(scale=5.0, size=STATES), GAMMA)
    np.testing.assert_array_equal(rd.starc_normalize(rd.starc_canonicalize(P, zero, GAMMA)), 0.0)
    np.testing.assert_array_equal(rd.starc_normalize(zero), 0.0)
    # zero against a reward: the unit vector's half-norm; zero against shaped zero: 0
    assert float(starc(P, zero, R, GAMMA)) == pytest.approx(0.5, abs=1e-6)
    assert float(starc(P, zero, shaping_only, GAMMA)) == 0.0
    # EPIC: a constant canonical reward is uncorrelated with everything (rho = 0) but itself
    assert float(epic(zero, R, GAMMA)) == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert float(epic(shaping_only, zero, GAMMA)) == 0.0
    assert np.isfinite(float(regret(P, R, zero, GAMMA))) and float(regret(P, R, zero, GAMMA)) == 0.0


def test_starc_ignores_rewards_on_impossible_transitions_and_epic_does_not():
    """STARC levels with the dynamics, so a change on transitions P never makes
    (and which no policy can notice) is no change; EPIC's canonicalisation does
    not see the dynamics."""
    P, R = random_mdp(4)
    P[:, :, 0] = 0.0                                  # state 0 is never entered
    P /= P.sum(-1, keepdims=True)
    changed = R.copy()
    changed[:, :, 0] += np.random.default_rng(4).normal(scale=3.0, size=(STATES, ACTIONS))
    assert float(starc(P, R, changed, GAMMA)) < 1e-4
    assert float(epic(R, changed, GAMMA)) > 0.1


def test_distances_vmap_over_mdps_and_rewards():
    mdps = [random_mdp(seed) for seed in range(4)]
    P = jnp.asarray(np.stack([m[0] for m in mdps]), jnp.float32)
    R1 = jnp.asarray(np.stack([m[1] for m in mdps]), jnp.float32)
    R2 = jnp.flip(R1, 0)
    batched = jax.jit(jax.vmap(lambda p, a, b: jnp.stack([rd.epic_distance(a, b, GAMMA),
                                                           rd.starc_distance(p, a, b, GAMMA),
                                                           rd.normalised_regret(p, a, b, GAMMA)])))(P, R1, R2)
    one_by_one = np.array([[epic(a, b, GAMMA), starc(p, a, b, GAMMA), regret(p, a, b, GAMMA)]
                           for p, a, b in zip(P, R1, R2)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- sampled EPIC

# Sample sizes: whole multiples of the enumerations (75 transitions, 15 (x, u)
# pairs), so the enumeration test reuses the random tests' compiled program.
N_TRANSITIONS, N_CANON = 27 * STATES * ACTIONS * STATES, 17 * STATES * ACTIONS


@pytest.fixture(scope="module")
def sampled_pair():
    """Two correlated tabular rewards, their exact EPIC (uniform coverage), and
    a jitted sampled EPIC on one-hot observations."""
    _, R1 = random_mdp(5)
    R2 = 0.6 * R1 + 0.8 * np.random.default_rng(5).normal(size=R1.shape)
    sampled = jax.jit(lambda t1, t2, transitions, canon_obs, canon_actions: rd.sampled_epic_distance(
        table_reward, t1, table_reward, t2, GAMMA, transitions, canon_obs, canon_actions))
    return jnp.asarray(R1, jnp.float32), jnp.asarray(R2, jnp.float32), float(epic(R1, R2, GAMMA)), sampled


def random_samples(seed):
    """D_S uniform over the one-hot states, D_A uniform over actions, and the
    Pearson coverage D_S x D_A x D_S: what product_coverage draws."""
    rng = np.random.default_rng(seed)
    eye = np.eye(STATES, dtype=np.float32)
    transitions = (eye[rng.integers(0, STATES, N_TRANSITIONS)], rng.integers(0, ACTIONS, N_TRANSITIONS),
                   eye[rng.integers(0, STATES, N_TRANSITIONS)])
    return transitions, eye[rng.integers(0, STATES, N_CANON)], rng.integers(0, ACTIONS, N_CANON)


def test_sampled_epic_on_an_enumeration_is_the_exact_one(sampled_pair):
    """With every (s, a, s') as transitions and every (x, u) pair as the
    canonicalisation's samples (each repeated equally often), the sample means
    are the exact expectations; the constant pairs x_m with every (u_m', x_m'),
    so it is exact too."""
    t1, t2, exact, sampled = sampled_pair
    s, a, t, eye = one_hot_transitions()
    x, u = (v.ravel() for v in np.meshgrid(np.arange(STATES), np.arange(ACTIONS), indexing="ij"))
    repeat = lambda v, n: np.tile(np.asarray(v), (n,) + (1,) * (np.ndim(v) - 1))  # noqa: E731
    transitions = (repeat(eye[s], 27), repeat(a, 27), repeat(eye[t], 27))
    assert float(sampled(t1, t2, transitions, repeat(eye[x], 17), repeat(u, 17))) == pytest.approx(exact, abs=1e-5)


def test_sampled_epic_approaches_the_exact_one(sampled_pair):
    """N = 2025 transitions, M = 255 canonicalisation samples. The Pearson
    estimate's sd is about (1 - rho^2) / sqrt(N) (rho = 1 - 2 d^2 = 0.6 here),
    which the delta method turns into about 0.008 on d; measured over 30 seeds
    the sd was 0.010 with a bias under 0.002. One draw is asked to be within
    0.05 (5 sd), the mean of 8 within 0.02 (about 5.5 sd of that mean)."""
    t1, t2, exact, sampled = sampled_pair
    draws = np.array([float(sampled(t1, t2, *random_samples(seed))) for seed in range(8)])
    assert np.abs(draws - exact).max() < 0.05
    assert abs(draws.mean() - exact) < 0.02
    # shaping cancels exactly in the sample means too, so invariance holds in every draw
    phi = np.random.default_rng(6).normal(scale=5.0, size=STATES)
    shaped = jnp.asarray(3.0 * potential_shaped(np.asarray(t1), phi, GAMMA), jnp.float32)
    assert float(sampled(t1, shaped, *random_samples(0))) < 1e-3
    assert float(sampled(t1, -t1, *random_samples(1))) == pytest.approx(1.0, abs=1e-5)


def test_action_and_transition_samplers_draw_from_their_supports():
    @jax.jit     # one compiled program instead of a dispatch (and compile) per random op
    def draw(key):
        k_discrete, k_box, k_transitions = jax.random.split(key, 3)
        return (rd.sample_actions(k_discrete, envs.Discrete(ACTIONS), 300),
                rd.sample_actions(k_box, envs.Box(-2.0, 2.0, (2,)), 300),
                rd.product_coverage(k_transitions, jnp.eye(STATES), jnp.arange(ACTIONS), 300))

    actions, box, (obs, acts, next_obs) = jax.tree.map(np.asarray, draw(jax.random.PRNGKey(0)))
    assert set(actions.tolist()) == set(range(ACTIONS))
    assert box.shape == (300, 2) and box.min() >= -2.0 and box.max() <= 2.0 and box.std() > 0.5
    assert obs.shape == next_obs.shape == (300, STATES) and acts.shape == (300,)
    assert set(acts.tolist()) == set(range(ACTIONS))
    assert not np.array_equal(obs, next_obs)       # s and s' are drawn independently


def test_sampled_epic_passes_the_environment_reward_to_the_reward_model():
    """A reward model that adds to the environment's reward sees env_reward's
    value on sampled transitions, and 0 without one."""
    eye = jnp.eye(STATES, dtype=jnp.float32)
    obs, actions, next_obs = eye[jnp.array([0, 1])], jnp.array([2, 0]), eye[jnp.array([3, 4])]
    plus_env = lambda params, tr: tr.reward + params * tr.obs[0]  # noqa: E731
    without = rd.rewards_on(plus_env, 2.0, obs, actions, next_obs)
    with_env = rd.rewards_on(plus_env, 2.0, obs, actions, next_obs,
                             env_reward=lambda o, a, o2: jnp.argmax(o2).astype(jnp.float32))
    np.testing.assert_allclose(without, [2.0, 0.0])
    np.testing.assert_allclose(with_env, [5.0, 4.0])
