"""envs/finite_mdps.py: the gridworlds' exact transition tables are the
environments' dynamics (Monte Carlo against the tables' rows), and each table
state's observation and index match the environment's."""
import numpy as np
import pytest

from envs import finite_mdps as fm


def _frequencies(name, env, params, states, samples=4000):
    """[state, action, next state index] frequencies of the next observation
    from each of `states` (a batched state) under each action, by Monte Carlo."""
    import jax

    keys = jax.random.split(jax.random.PRNGKey(1), samples)

    @jax.jit
    def next_obs(states):
        def one(state, action):
            return jax.vmap(lambda k: env.step(k, state, action, params)[5]["final_observation"])(keys)
        return jax.vmap(lambda state: jax.vmap(lambda a: one(state, a))(jax.numpy.arange(4)))(states)
    index = fm.state_index(name, next_obs(states))                        # [states, actions, samples]
    size = fm.FINITE_MDPS[name](env, params).P.shape[0]
    return np.stack([[np.bincount(row, minlength=size) / samples for row in per_state] for per_state in index])


@pytest.mark.parametrize("name", ["gridworld/barfi", "gridworld/tomato"])
def test_finite_mdp_tables_are_the_environments_dynamics(name):
    """Monte Carlo from chosen states against the table's rows, with slip and
    drying probabilities large enough that a wrong formula shows (4000 draws:
    a frequency's std is at most 0.008)."""
    import jax.numpy as jnp

    import envs
    from envs import gridworld, tomato

    if name == "gridworld/barfi":
        env, params = envs.make_raw(name, size=3)
        params = params.replace(slip=0.6)
        cells = [(0, 0), (1, 1), (2, 0), (0, 2), (1, 2)]
        states = gridworld.GridState(jnp.array(cells, jnp.int32), jnp.zeros(len(cells), jnp.int32))
        index = [c[0] * 3 + c[1] for c in cells]
    else:
        env, params = envs.make_raw(name)
        params = params.replace(slip=0.5, dry_prob=0.4)
        picks = [(tomato.START_CELL, 0b0000), (0, 0b1011), (tomato.BUCKET_CELL, 0b1111), (5, 0b0110)]
        states = tomato.TomatoState(jnp.array([c for c, _ in picks], jnp.int32),
                                    jnp.array([[(m >> i) & 1 for i in range(4)] for _, m in picks], bool),
                                    jnp.zeros(len(picks), jnp.int32))
        index = [c * 16 + m for c, m in picks]
    mdp = fm.FINITE_MDPS[name](env, params)
    np.testing.assert_allclose(mdp.P.sum(axis=-1), 1.0, atol=1e-5)
    freq = _frequencies(name, env, params, states)
    assert np.max(np.abs(freq - mdp.P[index])) < 0.04


def test_tabulated_observations_are_the_environments():
    """Each table state's observation is what the environment shows in that state."""
    import jax.numpy as jnp

    import envs
    from envs import tomato

    env, params = envs.make_raw("gridworld/tomato")
    mdp = fm.tomato_mdp(env, params)
    for cell, mask in [(0, 0), (tomato.BUCKET_CELL, 0b1010), (15, 0b1111)]:
        state = tomato.TomatoState(jnp.int32(cell), jnp.array([(mask >> i) & 1 for i in range(4)], bool), jnp.int32(0))
        np.testing.assert_array_equal(mdp.obs[cell * 16 + mask], np.asarray(env.observe(state)))
        assert fm.state_index("gridworld/tomato", env.observe(state)) == cell * 16 + mask
    env, params = envs.make_raw("gridworld/barfi", size=4)
    mdp = fm.barfi_mdp(env, params)
    for pos in [(0, 0), (3, 1), (2, 3)]:
        np.testing.assert_array_equal(mdp.obs[pos[0] * 4 + pos[1]], np.asarray(env.observe(jnp.array(pos))))
