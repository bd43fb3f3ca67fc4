"""Bi-level reward alignment: the implicit gradient's pieces against exact
answers, the whole loop on a tiny problem, and bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from meta import reward_alignment as ra
from src.config import ConfigError
from src.networks import ActorCritic
from tests.helpers import TraceCounter, tree_equal


def quadratic_problem(seed=0, n=6, m=3):
    """inner L(theta, phi) = 1/2 theta'A theta - theta'B phi, outer J(theta) = -1/2 |theta - c|^2."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = (q * rng.uniform(0.5, 3.0, size=n)) @ q.T          # SPD, eigenvalues in [0.5, 3]
    B = rng.normal(size=(n, m))
    c = rng.normal(size=n)
    return A, B, c


def test_neumann_series_matches_its_partial_sum_and_converges_to_the_exact_inverse():
    A, _, _ = quadratic_problem()
    v = np.random.default_rng(1).normal(size=A.shape[0])
    hvp = lambda u: jnp.asarray(A, jnp.float32) @ u  # noqa: E731
    alpha = 0.3
    for terms in (1, 5):
        partial = alpha * sum(np.linalg.matrix_power(np.eye(len(v)) - alpha * A, k) @ v for k in range(terms))
        got = ra.neumann_inverse_hvp(hvp, jnp.asarray(v, jnp.float32), alpha, terms)
        np.testing.assert_allclose(got, partial, rtol=1e-4, atol=1e-5)
    exact = np.linalg.solve(A, v)
    got = jax.jit(lambda v: ra.neumann_inverse_hvp(hvp, v, alpha, 300))(jnp.asarray(v, jnp.float32))
    np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-4)
    # five terms are far from the inverse: the damping BARFI relies on is real
    few = ra.neumann_inverse_hvp(hvp, jnp.asarray(v, jnp.float32), alpha, 5)
    assert np.linalg.norm(few - exact) > 0.05 * np.linalg.norm(exact)


def test_implicit_gradient_on_a_quadratic_equals_the_closed_form():
    A, B, c = quadratic_problem()
    phi = np.random.default_rng(2).normal(size=B.shape[1])
    theta_star = np.linalg.solve(A, B @ phi)
    exact = B.T @ np.linalg.solve(A, c - theta_star)        # dJ/dphi
    A32, B32 = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
    inner = lambda th, ph: 0.5 * th["x"] @ A32 @ th["x"] - th["x"] @ B32 @ ph["w"]  # noqa: E731
    theta = {"x": jnp.asarray(theta_star, jnp.float32)}
    outer_grad = {"x": jnp.asarray(c - theta_star, jnp.float32)}
    got = jax.jit(lambda t, p, g: ra.implicit_gradient(inner, t, p, g, 0.3, 300))(
        theta, {"w": jnp.asarray(phi, jnp.float32)}, outer_grad)
    np.testing.assert_allclose(got["w"], exact, rtol=1e-3, atol=1e-4)


def test_implicit_gradient_matches_finite_differences_on_a_nonlinear_problem():
    """theta*(phi) = argmin 1/2 theta'A theta - theta'B phi + sum(log cosh(theta * (1 + phi_0))),
    solved by scipy in float64; J(theta) = -1/2 |theta - c|^2; central differences of J(theta*(phi))."""
    A, B, c = quadratic_problem(3)

    def inner_np(th, ph):
        return 0.5 * th @ A @ th - th @ B @ ph + np.sum(np.log(np.cosh(th * (1.0 + ph[0]))))

    def inner_grad_np(th, ph):
        return A @ th - B @ ph + np.tanh(th * (1.0 + ph[0])) * (1.0 + ph[0])

    def solve(ph):
        res = scipy.optimize.minimize(inner_np, np.zeros(len(c)), args=(ph,), jac=inner_grad_np,
                                      method="BFGS", options={"gtol": 1e-12, "maxiter": 10_000})
        return res.x

    def J(ph):
        th = solve(ph)
        return -0.5 * np.sum((th - c) ** 2)

    phi = np.array([0.3, -0.5, 0.8])
    eps = 1e-5
    fd = np.array([(J(phi + eps * e) - J(phi - eps * e)) / (2 * eps) for e in np.eye(len(phi))])

    A32, B32 = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)

    def inner(th, ph):
        scale = 1.0 + ph[0]
        return 0.5 * th @ A32 @ th - th @ B32 @ ph + jnp.sum(jnp.log(jnp.cosh(th * scale)))

    theta_star = solve(phi)
    got = jax.jit(lambda t, p, g: ra.implicit_gradient(inner, t, p, g, 0.2, 400))(
        jnp.asarray(theta_star, jnp.float32), jnp.asarray(phi, jnp.float32),
        jnp.asarray(c - theta_star, jnp.float32))
    np.testing.assert_allclose(got, fd, rtol=2e-3, atol=2e-4)


def test_discounted_returns_and_primary_advantage_against_a_python_loop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(7, 3)).astype(np.float32)
    done = (rng.uniform(size=(7, 3)) < 0.3).astype(np.float32)
    expected = np.zeros_like(rewards)
    for e in range(3):
        g = 0.0
        for t in reversed(range(7)):
            g = rewards[t, e] + 0.9 * (1.0 - done[t, e]) * g
            expected[t, e] = g
    np.testing.assert_allclose(ra.discounted_returns(jnp.asarray(rewards), jnp.asarray(done), 0.9), expected,
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the whole loop, tiny

TINY = ra.AlignmentConfig(env="gridworld/barfi", env_kwargs={"size": 4}, heuristic="gridworld-bad", seeds=2,
                          total_steps=3 * (8 * 8 * 2 + 8 * 4), num_envs=8, num_steps=8, num_epochs=1,
                          num_minibatches=1, hidden=(16,), outer_every=2, outer_rollout=4, warmup=1,
                          outer_lr=0.1)


@pytest.fixture(scope="module")
def tiny_run():
    aligner = ra.make(TINY)
    counted = TraceCounter(aligner.train)
    train = jax.jit(jax.vmap(counted))
    keys = jax.random.split(jax.random.PRNGKey(0), TINY.seeds)
    first = train(keys)
    again = train(keys)
    other = train(jax.random.split(jax.random.PRNGKey(1), TINY.seeds))
    return aligner, counted, first, again, other


def test_barfi_loop_is_one_program_with_reproducible_seeds(tiny_run):
    aligner, counted, first, again, other = tiny_run
    assert counted.count == 1
    assert tree_equal(first, again)
    assert not tree_equal(first[0].reward_params, other[0].reward_params)


def test_barfi_loop_learns_phi_after_warm_up_and_counts_every_env_step(tiny_run):
    aligner, _, (state, metrics), _, _ = tiny_run
    assert TINY.num_blocks == 3 and TINY.num_iterations == 6
    for value in metrics.values():
        assert value.shape == (TINY.seeds, TINY.num_iterations)
    per_block = TINY.outer_every * TINY.batch_size + TINY.outer_rollout * TINY.num_envs
    np.testing.assert_array_equal(metrics["env_steps"][0], [64, 160, 224, 320, 384, 480])
    assert metrics["env_steps"][0, -1] == TINY.num_blocks * per_block == aligner.env_steps_per_block * 3
    # the warm-up block leaves phi at its initial value, later blocks move it
    assert np.allclose(metrics["phi2_mean"][:, :2], 1.0)
    assert not np.allclose(metrics["phi2_mean"][:, -1], 1.0)
    # (a block whose rollout never reaches the goal has a zero primary gradient)
    assert np.all(np.isfinite(metrics["outer_grad_norm"])) and np.all((metrics["outer_grad_norm"] > 0).any(axis=1))
    assert np.all(np.asarray(state.block) == 3)


def test_implicit_estimate_is_the_neumann_formula_on_the_inner_loss():
    """The estimator's gradient equals -(d2L/dphi dtheta) w with w the
    Neumann series of the inner loss's Hessian, recomputed here from
    explicit Hessian matrices on the same rollout."""
    cfg = dataclasses.replace(TINY, env_kwargs={"size": 3}, hidden=(8,), outer_rollout=16)
    aligner = ra.make(cfg)
    state = aligner.init(jax.random.PRNGKey(3))
    key = jax.random.PRNGKey(4)
    grad, _, _ = jax.jit(lambda ts, rp: aligner.estimate(ts, rp, None, key))(state.ts, state.reward_params)
    _, batch = jax.jit(aligner.collect)(state.ts, key)
    from jax.flatten_util import ravel_pytree
    flat_theta, unravel_t = ravel_pytree(state.ts.params)
    flat_phi, unravel_p = ravel_pytree(state.reward_params)
    L = lambda th, ph: aligner.inner_loss(unravel_t(th), unravel_p(ph), batch)  # noqa: E731
    H = np.asarray(jax.jit(jax.hessian(L, argnums=0))(flat_theta, flat_phi), np.float64)
    cross = np.asarray(jax.jit(jax.jacfwd(jax.grad(L, argnums=0), argnums=1))(flat_theta, flat_phi), np.float64)
    logp = lambda th: aligner.agent.network.apply(unravel_t(th), batch.transition.obs, method=ActorCritic.policy)  # noqa: E731
    adv = np.asarray(ra.primary_advantage(batch, cfg.gamma))
    from src.networks import log_prob
    v = np.asarray(jax.jit(jax.grad(lambda th: jnp.mean(log_prob(logp(th), batch.transition.action, True) * adv)))(flat_theta),
                   np.float64)
    alpha = cfg.neumann_alpha
    w = alpha * sum(np.linalg.matrix_power(np.eye(len(v)) - alpha * H, k) @ v for k in range(cfg.neumann_terms))
    expected = -cross.T @ w
    got = ravel_pytree(grad)[0]
    assert np.linalg.norm(expected) > 0
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())


# ----------------------------------------------------------------------------- the reused (inner) rollout

def test_collect_inner_replays_the_batch_ppo_trains_on():
    """The outer step's reused batch is PPO's own next batch: replayed from the
    same TrainState it ends in exactly the env states `agent.step` ends in, with
    as many finished episodes, iteration after iteration."""
    cfg = dataclasses.replace(TINY, heuristic="gridworld-good", reuse_rollout=True)
    aligner = ra.make(cfg)
    state = aligner.init(jax.random.PRNGKey(0))
    hparams = ra.ppo.hparams_from(cfg.ppo_config())

    @jax.jit
    def replay_then_step(ts):
        after, batch = aligner.collect_inner(ts)
        ts_next, metrics = aligner.agent.step(ts, hparams, state.reward_params)
        return after, batch, ts_next, metrics

    ts, finished = state.ts, 0
    for _ in range(4):
        after, batch, ts_next, metrics = replay_then_step(ts)
        assert batch.done.shape == (cfg.num_steps, cfg.num_envs)
        for a, b in zip(jax.tree.leaves((after.env_state, after.obs)), jax.tree.leaves((ts_next.env_state,
                                                                                        ts_next.obs))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(batch.done.sum()) == int(metrics["episodes_finished"])
        finished += int(metrics["episodes_finished"])
        ts = ts_next
    assert finished > 0


def test_reused_rollout_costs_no_env_steps_and_leaves_the_learner_state_alone():
    cfg = dataclasses.replace(TINY, reuse_rollout=True)
    assert cfg.outer_env_steps == 0 and TINY.outer_env_steps == TINY.outer_rollout * TINY.num_envs
    assert cfg.num_iterations == dataclasses.replace(cfg, method="primary").num_iterations
    aligner = ra.make(cfg)
    assert aligner.env_steps_per_block == cfg.outer_every * cfg.batch_size
    state = aligner.init(jax.random.PRNGKey(1))
    # the gradient is the separate-rollout estimator's on the very batch PPO collects next
    separate = ra.make(dataclasses.replace(cfg, reuse_rollout=False, outer_rollout=cfg.num_steps))
    _, rollout_key = jax.random.split(state.ts.key)

    @jax.jit
    def both(ts, rp):
        return aligner.estimate(ts, rp, None, jax.random.PRNGKey(2)), separate.estimate(ts, rp, None, rollout_key)

    (grad, ts, _), (expected, _, _) = both(state.ts, state.reward_params)
    assert tree_equal(ts, state.ts)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_normalized_outer_optimizer_is_scale_free_and_moves_along_the_gradient():
    """One global scale: a gradient and 1000 times it give the same step, of
    length outer_lr, along the ascent direction (updates are applied to -grad);
    unlike Adam, a coordinate with a 1000x smaller gradient moves 1000x less."""
    opt = ra.make_outer_optimizer("normalized", 0.1)
    params = {"w": jnp.zeros(3), "b": jnp.float32(0.0)}
    grad = {"w": jnp.array([3e-3, 0.0, 4e-6]), "b": jnp.float32(-4e-3)}
    steps = []
    for scale in (1.0, 1000.0):
        minus = jax.tree.map(lambda g: -scale * g, grad)
        update, _ = opt.update(minus, opt.init(params), params)
        steps.append(np.concatenate([np.ravel(update["b"]), np.asarray(update["w"])]))
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-5)
    np.testing.assert_allclose(steps[0], 0.1 * np.array([-4e-3, 3e-3, 0.0, 4e-6]) / 5e-3, rtol=1e-4, atol=1e-9)
    adam_step, _ = ra.make_outer_optimizer("adam", 0.1).update(jax.tree.map(jnp.negative, grad),
                                                               optax.adam(0.1).init(params), params)
    assert abs(float(adam_step["w"][2])) > 0.05       # Adam: ~outer_lr whatever the gradient's size
    zero, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    assert all(float(jnp.abs(z).max()) == 0.0 for z in jax.tree.leaves(zero))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("changes, message", [
    ({"heuristic": "gridworld-worse"}, "unknown heuristic 'gridworld-worse'.*Did you mean"),
    ({"heuristic": "cartpole-pid"}, "'cartpole-pid' is for CartPole-v1, not gridworld/barfi.*gridworld-good"),
    ({"estimator": "hypergradient"}, "unknown outer-gradient estimator 'hypergradient'; choose one of implicit, "
                                     "unrolled, es"),
    ({"method": "shaped"}, "unknown method 'shaped'; choose one of barfi, naive, pbrs, primary"),
    ({"env": "GridWorld"}, "unknown environment 'GridWorld'"),
    ({"unroll": 5, "outer_every": 2}, "unroll .* at most outer_every"),
    ({"outer_optimizer": "sgd"}, "unknown outer_optimizer 'sgd'; choose one of adam, normalized"),
    ({"env": "brax/halfcheetah", "heuristic": "halfcheetah-control-cost", "method": "pbrs"},
     "has no potential, so method 'pbrs' cannot use it"),
])
def test_bad_input_fails_before_compiling_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        ra.make(dataclasses.replace(TINY, **changes))


def test_command_rejects_bad_input_before_compiling(tmp_path):
    from commands import reward_alignment as cmd
    with pytest.raises(ConfigError, match="unknown method 'bar'"):
        cmd.main(["--method", "primary,bar", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="is for CartPole-v1, not Pendulum-v1"):
        cmd.main(["--env", "Pendulum-v1", "--heuristic", "cartpole-pid", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="unknown config key 'outer_lrr'"):
        cmd.main(["--set", "outer_lrr=0.1", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- reproduction (slow)

def final_returns(config):
    aligner = ra.make(config)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), config.seeds)
    _, metrics = jax.jit(jax.vmap(aligner.train))(keys)
    return ra.summarize(jax.tree.map(np.asarray, metrics))


@pytest.mark.slow
def test_barfi_recovers_from_the_bad_gridworld_heuristic_where_naive_summing_fails():
    """configs/barfi_gridworld_bad.yaml, 10 seeds: BARFI's final primary return
    is >= 90% of r_p-only's; naive r_p + r_aux is below r_p-only by more than
    the seeds' standard error."""
    from src import config as cfg
    preset = cfg.load_yaml("configs/barfi_gridworld_bad.yaml")
    preset.pop("method", None)
    base = cfg.from_dict(ra.AlignmentConfig, preset)
    result = {m: final_returns(dataclasses.replace(base, method=m)) for m in ("primary", "naive", "barfi")}
    primary = result["primary"]["final"].mean()
    assert result["barfi"]["final"].mean() >= 0.9 * primary
    naive = result["naive"]["final"]
    se = np.sqrt(naive.var(ddof=1) / len(naive) + result["primary"]["final"].var(ddof=1) / len(naive))
    assert primary - naive.mean() > max(se, 1e-6)


@pytest.mark.slow
def test_barfi_area_with_the_good_gridworld_heuristic_is_at_least_r_p_only():
    """configs/barfi_gridworld_good.yaml, 10 seeds: with the outer gradient on
    PPO's own batches (no extra env steps), BARFI's area under the primary-return
    curve is at least r_p-only's (0.949 vs 0.947 when recorded: by the mean,
    not by more than a standard error)."""
    from src import config as cfg
    preset = cfg.load_yaml("configs/barfi_gridworld_good.yaml")
    preset.pop("method", None)
    base = cfg.from_dict(ra.AlignmentConfig, preset)
    assert base.reuse_rollout and base.outer_env_steps == 0
    result = {m: final_returns(dataclasses.replace(base, method=m)) for m in ("primary", "barfi")}
    assert result["barfi"]["auc"].mean() >= result["primary"]["auc"].mean()
