"""Reward functions and designer heuristics: shaping keeps optimal policies,
blends and learned rewards start where they should and are differentiable."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import heuristics, rewards
from envs.rewards import Transition
from src.config import ConfigError

GAMMA = 0.9


# ----------------------------------------------------------------------------- tabular MDP and value iteration

def random_mdp(seed, states=7, actions=3):
    """A random MDP whose last state is terminal (absorbing, zero reward)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(states) * 0.5, size=(states, actions))          # P[s, a, s']
    R = rng.normal(size=(states, actions, states))                           # R[s, a, s']
    terminal = states - 1
    P[terminal] = 0.0
    P[terminal, :, terminal] = 1.0
    R[terminal] = 0.0
    return P, R, terminal


def value_iteration(P, R, gamma, terminal, iters=2000):
    """Q[s, a] by plain Python/numpy value iteration (the slow reference); the
    terminal state's value is 0."""
    S, A, _ = P.shape
    Q = np.zeros((S, A))
    for _ in range(iters):
        V = Q.max(axis=1)
        V[terminal] = 0.0
        Q = (P * (R + gamma * V[None, None, :])).sum(axis=2)
        Q[terminal] = 0.0
    return Q


def tabular_rewards(reward_fn, reward_params, states, actions, terminal):
    """R'[s, a, s'] from a reward function applied to every (s, a, s') with
    one-hot observations, vmapped (as an agent calls it)."""
    eye = jnp.eye(states, dtype=jnp.float32)
    s, a, s2 = np.meshgrid(np.arange(states), np.arange(actions), np.arange(states), indexing="ij")
    s, a, s2 = s.ravel(), a.ravel(), s2.ravel()
    return s, a, s2, eye, lambda env_r: np.asarray(jax.jit(jax.vmap(reward_fn, in_axes=(None, 0)))(
        reward_params,
        Transition(eye[s], jnp.asarray(a), eye[s2], jnp.asarray(env_r, jnp.float32),
                   jnp.asarray(s2 == terminal), {}))).reshape(states, actions, states)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_potential_shaping_keeps_the_optimal_policy_of_a_random_mdp(seed):
    P, R, terminal = random_mdp(seed)
    S, A, _ = P.shape
    phi = np.random.default_rng(100 + seed).normal(scale=5.0, size=S).astype(np.float32)
    potential = lambda params, obs: jnp.dot(obs, params)  # noqa: E731  (a table on one-hot states)
    shaped_fn = rewards.potential_shaping(potential, GAMMA)
    s, a, s2, _, apply = tabular_rewards(shaped_fn, jnp.asarray(phi), S, A, terminal)
    R_shaped = apply(R[s, a, s2])
    Q = value_iteration(P, R, GAMMA, terminal)
    Q_shaped = value_iteration(P, R_shaped, GAMMA, terminal)
    live = np.arange(S) != terminal
    np.testing.assert_array_equal(Q.argmax(1)[live], Q_shaped.argmax(1)[live])
    # stronger: Q' = Q - Phi(s) (Ng et al. 1999), which needs Phi(terminal) = 0 in F
    np.testing.assert_allclose(Q_shaped[live], (Q - phi[:, None])[live], rtol=1e-4, atol=1e-3)


def test_a_bonus_that_is_not_potential_based_can_change_the_optimal_policy():
    P, R, terminal = random_mdp(0)
    S, A, _ = P.shape
    Q = value_iteration(P, R, GAMMA, terminal)
    state = 0
    worse = int(Q[state].argmin())
    bonus_fn = rewards.naive_sum(
        lambda tr: jnp.where(jnp.logical_and(tr.obs[state] > 0, tr.action == worse), 20.0, 0.0))
    s, a, s2, _, apply = tabular_rewards(bonus_fn, None, S, A, terminal)
    Q_bonus = value_iteration(P, apply(R[s, a, s2]), GAMMA, terminal)
    assert Q.argmax(1)[state] != worse
    assert Q_bonus.argmax(1)[state] == worse


def test_potential_is_zero_at_termination_but_not_at_a_time_out():
    potential = lambda params, obs: obs[0]  # noqa: E731
    fn = rewards.potential_shaping(potential, 0.5)
    tr = Transition(jnp.array([2.0]), 0, jnp.array([4.0]), jnp.float32(1.0), jnp.bool_(False), {})
    assert float(fn(None, tr)) == pytest.approx(1.0 + 0.5 * 4.0 - 2.0)
    assert float(fn(None, tr._replace(terminated=jnp.bool_(True)))) == pytest.approx(1.0 - 2.0)


# ----------------------------------------------------------------------------- every builder on a tiny batch, by hand

# three transitions: an ordinary step, a termination, and a time-out (which is
# not a termination: its s' keeps its potential)
TINY = Transition(obs=jnp.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]]), action=jnp.array([1, 0, 1]),
                  next_obs=jnp.array([[2.0, 0.0], [4.0, 4.0], [-1.0, 2.0]]), reward=jnp.array([1.0, -0.5, 2.0]),
                  terminated=jnp.array([False, True, False]), info={})


def on_tiny(reward_fn, params):
    return np.asarray(jax.jit(jax.vmap(reward_fn, in_axes=(None, 0)))(params, TINY))


def test_potential_shaping_on_a_tiny_batch_by_hand():
    """Phi(p, s) = p . s with p = (0.5, -1): Phi(s) = (-1.5, 1.25, 1.5) and
    Phi(s') = (1, -2, -2.5). With gamma 0.9, F = gamma Phi(s') (1 - terminated) - Phi(s):
    0.9 + 1.5 = 2.4; -1.25 (terminated: Phi(s') counts 0); -2.25 - 1.5 = -3.75."""
    potential = lambda p, obs: jnp.dot(obs, p)  # noqa: E731
    np.testing.assert_allclose(on_tiny(rewards.potential_shaping(potential, 0.9), jnp.array([0.5, -1.0])),
                               [1.0 + 2.4, -0.5 - 1.25, 2.0 - 3.75], rtol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(lambda tr: rewards.shaping_term(potential, jnp.array([0.5, -1.0]), tr, 0.9))(TINY),
        [2.4, -1.25, -3.75], rtol=1e-6)
    # gamma enters only through Phi(s'): with gamma = 0.5, 0.5 + 1.5 = 2; -1.25; -1.25 - 1.5 = -2.75
    np.testing.assert_allclose(on_tiny(rewards.potential_shaping(potential, 0.5), jnp.array([0.5, -1.0])),
                               [3.0, -1.75, -0.75], rtol=1e-6)


def aux_tiny(tr):
    """obs[0] * (+1 for action 1, -1 for action 0): (1, -0.5, 3) on TINY."""
    return tr.obs[0] * (tr.action * 2.0 - 1.0)


def test_sums_blends_and_learned_rewards_on_a_tiny_batch_by_hand():
    np.testing.assert_allclose(on_tiny(rewards.naive_sum(aux_tiny), None), [2.0, -1.0, 5.0], rtol=1e-6)
    # 0.5 r - 2 aux
    np.testing.assert_allclose(on_tiny(rewards.weighted_blend(aux_tiny), rewards.blend_params(0.5, -2.0)),
                               [0.5 - 2.0, -0.25 + 1.0, 1.0 - 6.0], rtol=1e-6)
    # r_phi = phi1(s) + r + phi2(s) aux with phi1(s) = s_0 + 0.5 = (1.5, 1, 3.5), phi2(s) = s_1 - 1 = (1, -2, -1)
    params = {"phi1": {"w": jnp.array([1.0, 0.0]), "b": jnp.float32(0.5)},
              "phi2": {"w": jnp.array([0.0, 1.0]), "b": jnp.float32(-1.0)}, "psi": jnp.float32(0.0)}
    np.testing.assert_allclose(on_tiny(rewards.learned_reward(aux_tiny), params),
                               [1.5 + 1.0 + 1.0, 1.0 - 0.5 + 1.0, 3.5 + 2.0 - 3.0], rtol=1e-6)
    assert float(rewards.learned_gamma(params)) == 0.5
    # a reward network with no hidden layer: r + w . [s, onehot(a), s', aux] + b, w picking
    # s_0 + 2 onehot(a)_1 - aux, b = 0.25: (1 + 2 - 1, 0.5 + 0 + 0.5, 3 + 2 - 3) + 0.25
    net = rewards.init_reward_network(jax.random.PRNGKey(0), 2, 2, hidden=())
    net[-1]["w"] = jnp.array([[1.0], [0.0], [0.0], [2.0], [0.0], [0.0], [-1.0]])
    net[-1]["b"] = jnp.array([0.25])
    np.testing.assert_allclose(on_tiny(rewards.reward_network(2, discrete=True, aux=aux_tiny), net),
                               [1.0 + 2.25, -0.5 + 1.25, 2.0 + 2.25], rtol=1e-6)
    np.testing.assert_allclose(on_tiny(rewards.env_reward, None), [1.0, -0.5, 2.0])
    np.testing.assert_allclose(on_tiny(rewards.scaled_reward, {"scale": 2.0, "shift": -1.0}), [1.0, -2.0, 3.0])


# ----------------------------------------------------------------------------- blends and learned rewards

def batch_of_transitions(seed, n=32, obs_dim=4):
    rng = np.random.default_rng(seed)
    return Transition(jnp.asarray(rng.normal(size=(n, obs_dim)), jnp.float32), jnp.asarray(rng.integers(0, 2, n)),
                      jnp.asarray(rng.normal(size=(n, obs_dim)), jnp.float32),
                      jnp.asarray(rng.normal(size=n), jnp.float32), jnp.zeros((n,), bool), {})


def aux_first(tr):
    return tr.obs[0] * (tr.action * 2.0 - 1.0)


def test_blends_and_learned_reward_start_at_the_naive_sum():
    batch = batch_of_transitions(0)
    apply = lambda fn, params: jax.jit(jax.vmap(fn, in_axes=(None, 0)))(params, batch)  # noqa: E731
    expected = batch.reward + jax.jit(jax.vmap(aux_first))(batch)
    np.testing.assert_allclose(apply(rewards.naive_sum(aux_first), None), expected, rtol=1e-6)
    blend = rewards.weighted_blend(aux_first)
    np.testing.assert_allclose(apply(blend, rewards.blend_params(1.0, 1.0)), expected, rtol=1e-6)
    params = rewards.init_learned_reward(4)
    np.testing.assert_allclose(apply(rewards.learned_reward(aux_first), params), expected, rtol=1e-6)
    assert float(rewards.learned_gamma(params)) == pytest.approx(0.99, abs=1e-6)
    np.testing.assert_allclose(apply(blend, rewards.blend_params(0.5, 0.0)), 0.5 * batch.reward, rtol=1e-6)


def test_learned_reward_gradient_matches_its_closed_form_and_vmaps_over_params():
    batch = batch_of_transitions(1)
    fn = rewards.learned_reward(aux_first)
    params = rewards.init_learned_reward(4)
    total = lambda p: jax.vmap(fn, in_axes=(None, 0))(p, batch).sum()  # noqa: E731
    grads = jax.jit(jax.grad(total))(params)
    aux = jax.vmap(aux_first)(batch)
    # d/dw1 sum(phi1(s)) = sum(s); d/dw2 sum(phi2(s) * aux) = sum(s * aux)
    np.testing.assert_allclose(grads["phi1"]["w"], batch.obs.sum(0), rtol=1e-5)
    np.testing.assert_allclose(grads["phi2"]["w"], (batch.obs * aux[:, None]).sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["phi2"]["b"], aux.sum(), rtol=1e-5)
    # a population of reward parameters is a vmap
    stacked = jax.tree.map(lambda x: jnp.stack([x, x + 1.0]), params)
    out = jax.jit(jax.vmap(lambda p: jax.vmap(fn, in_axes=(None, 0))(p, batch)))(stacked)
    assert out.shape == (2, 32) and not np.allclose(out[0], out[1])


def test_reward_network_starts_at_the_primary_reward_and_has_gradients():
    batch = batch_of_transitions(2)
    params = rewards.init_reward_network(jax.random.PRNGKey(0), 4, 2, hidden=(8,))
    fn = rewards.reward_network(2, discrete=True, aux=aux_first)
    out = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(params, batch)
    np.testing.assert_allclose(out, batch.reward, rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: jax.vmap(fn, in_axes=(None, 0))(p, batch).sum()))(params)
    assert float(jnp.abs(grads[-1]["w"]).sum()) > 0


# ----------------------------------------------------------------------------- heuristics

def test_pid_heuristic_controller_balances_cartpole_and_its_inverse_does_not():
    env, params = envs.make("CartPole-v1")

    def episode(key, inverse):
        obs, state = env.reset(key, params)

        def body(carry, k):
            obs, state, total, alive = carry
            action = heuristics.pid_action(obs)
            action = jnp.where(inverse, 1 - action, action)
            obs, state, r, term, trunc, _ = env.step(k, state, action, params)
            return (obs, state, total + r * alive, alive * (1.0 - jnp.logical_or(term, trunc))), None

        (_, _, total, _), _ = jax.lax.scan(body, (obs, state, 0.0, 1.0), jax.random.split(key, 500))
        return total

    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    good = jax.jit(jax.vmap(lambda k: episode(k, False)))(keys)
    bad = jax.jit(jax.vmap(lambda k: episode(k, True)))(keys)
    assert np.all(np.asarray(good) == 500.0)
    assert np.all(np.asarray(bad) < 30.0)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "MountainCar-v0", "Pendulum-v1", "gridworld/barfi"])
def test_every_heuristic_gives_finite_rewards_on_its_environment(env_name):
    env, params = envs.make(env_name)
    key = jax.random.PRNGKey(0)
    obs, state = jax.jit(env.reset)(key, params)
    action = env.action_space(params).sample(key)
    _, _, reward, term, _, info = jax.jit(env.step)(key, state, action, params)
    tr = Transition(obs, action, info["final_observation"], reward, term, info)
    names = heuristics.names_for(env_name)
    assert {h.good for h in map(heuristics.HEURISTICS.get, names)} == {True, False}
    for name in names:
        h = heuristics.get(name, env_name)
        assert np.isfinite(float(h.aux(tr)))
        if h.potential is not None:
            assert np.isfinite(float(h.potential(None, obs)))


def test_gridworld_heuristics_point_where_they_should():
    env, params = envs.make("gridworld/barfi")
    grid = env.unwrapped
    cell = lambda x, y: grid.observe(jnp.array([x, y]))  # noqa: E731
    good = heuristics.get("gridworld-good", "gridworld/barfi").aux
    bad = heuristics.get("gridworld-bad", "gridworld/barfi").aux
    towards = Transition(cell(0, 0), 0, cell(1, 0), 0.0, False, {})
    away = Transition(cell(1, 0), 2, cell(0, 0), 0.0, False, {})
    assert float(good(towards)) > 0 > float(good(away))
    corner = grid.size - 1
    farm = Transition(cell(corner, 0), 0, cell(corner, 0), 0.0, False, {})
    assert float(bad(farm)) > 0 and float(bad(towards)) == 0


def tr_of(obs, action, next_obs=None):
    obs = jnp.asarray(obs, jnp.float32)
    return Transition(obs, jnp.asarray(action), obs if next_obs is None else jnp.asarray(next_obs, jnp.float32),
                      jnp.float32(0.0), jnp.bool_(False), {})


def test_every_heuristic_against_its_formula_by_hand():
    """Each aux reward and potential on hand-picked transitions, numbers
    worked out from the descriptions (not from the code)."""
    import math
    h = lambda name: heuristics.HEURISTICS[name]  # noqa: E731
    aux = lambda name, *a: float(h(name).aux(tr_of(*a)))  # noqa: E731
    pot = lambda name, obs: float(h(name).potential(None, jnp.asarray(obs, jnp.float32)))  # noqa: E731
    # CartPole: PD signal theta + 0.5 theta_dot + 0.05 x + 0.1 x_dot
    #   = 0.05 + 0.05 + 0.005 - 0.02 = 0.085 > 0: push right
    right = [0.1, -0.2, 0.05, 0.1]
    left = [0.0, 0.0, -0.1, 0.0]                             # signal -0.1: push left
    assert int(heuristics.pid_action(jnp.asarray(right))) == 1 and int(heuristics.pid_action(jnp.asarray(left))) == 0
    assert [aux("cartpole-pid", right, a) for a in (0, 1)] == [-1.0, 1.0]
    assert [aux("cartpole-pid", left, a) for a in (0, 1)] == [1.0, -1.0]
    assert [aux("cartpole-pid-inverse", right, a) for a in (0, 1)] == [1.0, -1.0]
    assert pot("cartpole-pid", right) == pytest.approx(-0.085, abs=1e-6)
    assert pot("cartpole-pid-inverse", right) == pytest.approx(0.085, abs=1e-6)
    # MountainCar: +1 for pushing (action 0 left, 2 right) along the velocity
    assert [aux("mountaincar-bang-bang", [-0.5, 0.02], a) for a in (0, 1, 2)] == [0.0, 0.0, 1.0]
    assert [aux("mountaincar-bang-bang", [-0.5, -0.02], a) for a in (0, 1, 2)] == [1.0, 0.0, 0.0]
    height = lambda x: 0.55 + 0.45 * math.sin(3 * x)  # noqa: E731
    assert aux("mountaincar-height", [-0.5, 0.0], 1, [0.5, 0.0]) == pytest.approx(2 * height(0.5), abs=1e-5)
    assert pot("mountaincar-bang-bang", [-0.5, 0.035]) == pytest.approx(0.5 * 0.5 ** 2 + height(-0.5), abs=1e-5)
    assert pot("mountaincar-height", [0.3, 0.01]) == pytest.approx(2 * height(0.3), abs=1e-5)
    # Pendulum (cos, sin, theta_dot): upright = cos of the next state, spin = |theta_dot| / 8
    assert aux("pendulum-upright", [-1, 0, 2], [0.0], [0.6, 0.8, -4.0]) == pytest.approx(0.6)
    assert aux("pendulum-spin", [-1, 0, 2], [0.0], [0.6, 0.8, -4.0]) == pytest.approx(0.5)
    assert pot("pendulum-upright", [-1.0, 0.0, 2.0]) == -1.0 and pot("pendulum-spin", [-1.0, 0.0, 2.0]) == 0.25
    # gridworld 6 x 6, goal (5, 5), distractor (5, 0): Manhattan distance from (0, 0) is 10, from (1, 0) 9
    env, _ = envs.make("gridworld/barfi")
    cell = lambda x, y: np.asarray(env.unwrapped.observe(jnp.array([x, y])))  # noqa: E731
    assert env.unwrapped.size == 6
    assert aux("gridworld-good", cell(0, 0), 0, cell(1, 0)) == pytest.approx(0.1)
    assert aux("gridworld-good", cell(1, 0), 2, cell(0, 0)) == pytest.approx(-0.1)
    assert pot("gridworld-good", cell(0, 0)) == pytest.approx(-1.0) and pot("gridworld-good", cell(5, 5)) == 0.0
    assert aux("gridworld-bad", cell(4, 0), 0, cell(5, 0)) == pytest.approx(0.2)
    assert aux("gridworld-bad", cell(5, 0), 0, cell(4, 0)) == 0.0
    assert pot("gridworld-bad", cell(5, 0)) == pytest.approx(0.2) and pot("gridworld-bad", cell(0, 5)) == 0.0
    # halfcheetah: -+0.1 |a|^2 with |a|^2 = 1 + 4 + 0.25
    assert aux("halfcheetah-control-cost", [0.0], [1.0, -2.0, 0.5]) == pytest.approx(-0.525)
    assert aux("halfcheetah-control-bonus", [0.0], [1.0, -2.0, 0.5]) == pytest.approx(0.525)
    assert {n: x.good for n, x in heuristics.HEURISTICS.items()} == {
        "cartpole-pid": True, "cartpole-pid-inverse": False, "mountaincar-bang-bang": True,
        "mountaincar-height": False, "pendulum-upright": True, "pendulum-spin": False, "gridworld-good": True,
        "gridworld-bad": False, "halfcheetah-control-cost": True, "halfcheetah-control-bonus": False}


def test_heuristic_potential_shaping_at_the_goal_by_hand():
    """gridworld-good as potential-based shaping, gamma 0.9. Phi = -0.1 x
    distance to the goal (5, 5): -0.3 at (4, 3), -0.2 at (4, 4). A step
    (4, 3) -> (4, 4) earns 0.9 * -0.2 + 0.3 = 0.12; the terminating step
    (4, 4) -> goal earns -Phi(s) = 0.2. Phi(goal) = 0 would hide a missing
    terminal mask, so the same potential + 1 is shaped too: 0.9 * 0.8 - 0.7
    = 0.02, and -0.8 at the goal (0.1 without the mask)."""
    env, _ = envs.make("gridworld/barfi")
    cell = lambda x, y: env.unwrapped.observe(jnp.array([x, y]))  # noqa: E731
    good = heuristics.get("gridworld-good", "gridworld/barfi").potential
    shifted = lambda p, obs: good(p, obs) + 1.0  # noqa: E731
    batch = Transition(jnp.stack([cell(4, 3), cell(4, 4)]), jnp.array([1, 0]), jnp.stack([cell(4, 4), cell(5, 5)]),
                       jnp.zeros(2), jnp.array([False, True]), {})

    def shaped(phi):
        return np.asarray(jax.vmap(rewards.potential_shaping(phi, 0.9), in_axes=(None, 0))(None, batch))

    np.testing.assert_allclose(shaped(good), [0.12, 0.2], rtol=1e-5)
    np.testing.assert_allclose(shaped(shifted), [0.02, -0.8], rtol=1e-4)


def test_unknown_heuristic_and_heuristic_for_another_env_fail_clearly():
    with pytest.raises(ConfigError, match="unknown heuristic 'cartpole-pd'.*Did you mean 'cartpole-pid'"):
        heuristics.get("cartpole-pd", "CartPole-v1")
    with pytest.raises(ConfigError, match="'pendulum-spin' is for Pendulum-v1, not CartPole-v1.*cartpole-pid"):
        heuristics.get("pendulum-spin", "CartPole-v1")
    with pytest.raises(ConfigError, match="no heuristic is defined for Acrobot-v1"):
        heuristics.get("cartpole-pid", "Acrobot-v1")
