import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents import ppo
from agents import objectives as lo
from src.config import ConfigError


def random_inputs(key, n=512):
    k1, k2 = jax.random.split(key)
    ratio = jnp.exp(0.5 * jax.random.normal(k1, (n,)))
    advantage = 2.0 * jax.random.normal(k2, (n,))
    return ratio, advantage


@pytest.mark.parametrize("temporal", [False, True])
def test_learned_drift_is_nonnegative_and_zero_at_ratio_one_for_random_params(temporal):
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    ratio, advantage = random_inputs(jax.random.PRNGKey(1))
    progress = 0.37 if temporal else None
    log_lifetime = lo.lifetime_feature(500) if temporal else None

    def check(key):
        # large weights so the network is far from any initialisation
        params = lo.init_drift(key, temporal, scale=5.0)
        d = lo.drift(params, ratio, advantage, progress, log_lifetime)
        d_one = lo.drift(params, jnp.ones_like(ratio), advantage, progress, log_lifetime)
        return d, d_one

    d, d_one = jax.jit(jax.vmap(check))(keys)
    assert d.shape == (16, 512)
    assert bool((d >= 0).all())
    assert bool((d_one == 0).all())
    assert bool((d > 0).any())   # not trivially zero everywhere


def test_learned_objective_has_ppo_gradient_at_ratio_one():
    # at r = 1 the drift is flat, so d loss / d r = -A, as for PPO-clip
    params = lo.init_drift(jax.random.PRNGKey(2), scale=3.0)
    advantage = jnp.array([-2.0, -0.5, 0.3, 1.7])
    grad = jax.jit(jax.vmap(jax.grad(lambda r, a: lo.learned()(params, r, a, 0.5)), in_axes=(None, 0)))(
        1.0, advantage)
    np.testing.assert_allclose(grad, -advantage, rtol=1e-6)


def dpo_reference(r, a, alpha=2.0, beta=0.6):
    if a >= 0:
        x = (r - 1.0) * a
        return max(0.0, x - alpha * math.tanh(x / alpha))
    x = math.log(r) * a
    return max(0.0, x - beta * math.tanh(x / beta))


def test_dpo_drift_matches_its_formula():
    ratio, advantage = random_inputs(jax.random.PRNGKey(3), 256)
    got = np.asarray(lo.dpo_drift(ratio, advantage))
    want = np.array([dpo_reference(float(r), float(a)) for r, a in zip(np.asarray(ratio), np.asarray(advantage))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # the objective is -(rA - D), with the published alpha/beta as defaults
    loss = lo.dpo(lo.dpo_params(), ratio, advantage, 0.0)
    np.testing.assert_allclose(loss, -(ratio * advantage - got), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lo.dpo(jnp.float32(0.2), ratio, advantage, 0.0), loss)
    # other alpha/beta really change it
    other = lo.dpo({"alpha": 0.5, "beta": 0.3}, ratio, advantage, 0.0)
    assert not np.allclose(other, loss)


def test_ppo_clip_as_drift_equals_agents_ppo_clip():
    ratio, advantage = random_inputs(jax.random.PRNGKey(4))
    np.testing.assert_allclose(lo.ppo_clip(0.2, ratio, advantage, 0.0),
                               ppo.ppo_clip(0.2, ratio, advantage, 0.0), rtol=1e-6, atol=1e-6)


def test_ppo_clip_as_drift_matches_hand_computation():
    """The drift form against a case-by-case reference (not against agents/ppo.py,
    which could carry the same mistake): a positive advantage gains nothing from
    r above 1 + eps, a negative one nothing from r below 1 - eps."""
    eps = 0.2
    ratio = np.array([0.5, 0.9, 1.0, 1.1, 1.5] * 2, np.float32)
    advantage = np.array([2.0] * 5 + [-1.0] * 5, np.float32)
    want_loss, want_drift, want_grad = [], [], []
    for r, a in zip(ratio.tolist(), advantage.tolist()):
        kept = min(r, 1 + eps) if a >= 0 else max(r, 1 - eps)
        want_loss.append(-kept * a)
        want_drift.append(r * a - kept * a)
        want_grad.append(-a if kept == r else 0.0)
    # e.g. r = 1.5, A = 2: drift (1.5 - 1.2) * 2 = 0.6; r = 0.5, A = -1: drift (0.5 - 0.8) * -1 = 0.3
    np.testing.assert_allclose([want_drift[4], want_drift[5]], [0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(lo.ppo_clip_drift(jnp.asarray(ratio), jnp.asarray(advantage), eps), want_drift,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lo.ppo_clip(eps, jnp.asarray(ratio), jnp.asarray(advantage), 0.0), want_loss,
                               rtol=1e-5, atol=1e-6)
    grad = jax.vmap(jax.grad(lo.ppo_clip, argnums=1), in_axes=(None, 0, 0, None))(
        jnp.float32(eps), jnp.asarray(ratio), jnp.asarray(advantage), 0.0)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)


def test_drift_fitted_to_ppo_clip_approximates_it():
    params, losses = lo.fit_to_ppo_clip(jax.random.PRNGKey(5), steps=600)
    assert losses[-1] < 0.1 * losses[0]
    ratio, advantage = random_inputs(jax.random.PRNGKey(6))
    ratio = ratio ** 0.6   # log-std 0.3, the range PPO's ratios live in and the fit covers
    err = jnp.abs(lo.drift(params, ratio, advantage) - lo.ppo_clip_drift(ratio, advantage)).mean()
    assert float(err) < 0.02


def test_objectives_by_name_and_bad_names(tmp_path):
    assert lo.make("ppo").fn is lo.ppo_clip
    assert lo.make("dpo").params["alpha"] == 2.0
    with pytest.raises(ConfigError, match="unknown objective 'clip'.*ppo, dpo, learned, temporal"):
        lo.make("clip")
    with pytest.raises(ConfigError, match="number of iterations"):
        lo.make("temporal")
    with pytest.raises(ConfigError, match="ppo, dpo or learned:RUN_DIR"):
        lo.from_spec("learned:", 10)
    with pytest.raises(ConfigError, match="no objective.json"):
        lo.from_spec(f"learned:{tmp_path}", 10)


def test_saved_objective_loads_back(tmp_path):
    params = lo.init_drift(jax.random.PRNGKey(7), temporal=True)
    lo.save(str(tmp_path), "temporal", params)
    obj = lo.from_spec(f"learned:{tmp_path}", 100)
    assert obj.kind == "temporal"
    ratio, advantage = random_inputs(jax.random.PRNGKey(8), 64)
    np.testing.assert_array_equal(obj.fn(obj.params, ratio, advantage, 0.5),
                                  lo.learned(100)(params, ratio, advantage, 0.5))
    assert os.path.isdir(tmp_path / "objective")


def test_fitness_window_final_is_the_last_tenth_and_auc_the_whole_curve():
    assert lo.fitness_window("final", 48) == 4 and lo.fitness_window("final", 5) == 1
    assert lo.fitness_window("auc", 48) == 48
    curve = {"episode_return": jnp.array([10.0, jnp.nan, 30.0, 50.0])}
    assert float(lo.final_return(curve, lo.fitness_window("auc", 4))) == 30.0   # NaN (no finished episode) skipped
    assert float(lo.final_return(curve, lo.fitness_window("final", 4))) == 50.0
    with pytest.raises(ConfigError, match="unknown fitness 'last'; choose one of final, auc"):
        lo.fitness_window("last", 48)
