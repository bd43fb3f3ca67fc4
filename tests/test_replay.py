"""The circular replay buffer: writes, wrap-around, uniform sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src import replay

# chi-square critical values at p = 0.001 (a correct sampler fails once in a thousand keys)
CHI2_999 = {9: 27.877, 15: 37.697}


def example():
    return {"obs": jnp.zeros((3,), jnp.float32), "action": jnp.zeros((), jnp.int32)}


def batch(values):
    values = jnp.asarray(values)
    return {"obs": jnp.stack([values, values, values], -1).astype(jnp.float32), "action": values.astype(jnp.int32)}


def test_init_is_empty_with_the_example_shapes():
    buf = replay.init(7, example())
    assert buf.capacity == 7
    assert buf.data["obs"].shape == (7, 3) and buf.data["obs"].dtype == jnp.float32
    assert buf.data["action"].shape == (7,) and buf.data["action"].dtype == jnp.int32
    assert int(buf.size) == 0 and int(buf.position) == 0


def test_add_wraps_around_and_overwrites_the_oldest():
    add = jax.jit(replay.add)
    buf = replay.init(5, example())
    buf = add(buf, batch([0, 1, 2]))
    assert (int(buf.position), int(buf.size)) == (3, 3)
    np.testing.assert_array_equal(buf.data["action"], [0, 1, 2, 0, 0])
    buf = add(buf, batch([3, 4, 5]))           # slots 3, 4, then 0
    assert (int(buf.position), int(buf.size)) == (1, 5)
    np.testing.assert_array_equal(buf.data["action"], [5, 1, 2, 3, 4])
    buf = add(buf, batch([6, 7, 8, 9, 10]))    # a whole capacity from position 1
    assert (int(buf.position), int(buf.size)) == (1, 5)
    np.testing.assert_array_equal(buf.data["action"], [10, 6, 7, 8, 9])
    np.testing.assert_array_equal(buf.data["obs"][:, 1], [10, 6, 7, 8, 9])


def test_add_more_than_capacity_at_once_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        replay.add(replay.init(2, example()), batch([0, 1, 2]))


def test_sample_only_from_the_filled_part():
    buf = replay.add(replay.init(100, example()), batch([7, 8, 9]))
    drawn = replay.sample(buf, jax.random.PRNGKey(0), 1000)
    assert set(np.asarray(drawn["action"]).tolist()) == {7, 8, 9}
    np.testing.assert_array_equal(drawn["obs"][:, 0], drawn["action"])   # leaves stay paired


def chi_square(counts):
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampling_is_uniform_over_a_wrapped_buffer():
    # 16 slots, 21 writes: the buffer has wrapped and holds values 5..20
    buf = replay.init(16, example())
    buf = replay.add(buf, batch(jnp.arange(10)))
    buf = replay.add(buf, batch(jnp.arange(10, 21)))
    drawn = np.asarray(replay.sample(buf, jax.random.PRNGKey(42), 32_000)["action"])
    counts = np.bincount(drawn, minlength=21)
    assert counts[:5].sum() == 0, "overwritten transitions were sampled"
    assert chi_square(counts[5:]) < CHI2_999[15]


def test_sampling_is_uniform_over_a_partly_filled_buffer():
    buf = replay.add(replay.init(64, example()), batch(jnp.arange(10)))
    drawn = np.asarray(replay.sample(buf, jax.random.PRNGKey(7), 20_000)["action"])
    assert chi_square(np.bincount(drawn, minlength=10)) < CHI2_999[9]


def test_the_chi_square_check_can_fail():
    # the statistic the tests use rejects a sampler that favours the newest half
    skewed = np.concatenate([np.arange(16), np.arange(8, 16)])
    counts = np.bincount(np.tile(skewed, 1000), minlength=16)
    assert chi_square(counts) > CHI2_999[15]


def test_buffers_vmap_as_a_population():
    bufs = jax.vmap(lambda _: replay.init(4, example()))(jnp.arange(3))
    new = jax.tree.map(lambda x: jnp.stack([x, x + 1, x + 2]), batch([1, 2]))
    bufs = jax.vmap(replay.add)(bufs, new)
    np.testing.assert_array_equal(bufs.data["action"], [[1, 2, 0, 0], [2, 3, 0, 0], [3, 4, 0, 0]])
    drawn = jax.vmap(replay.sample, in_axes=(0, 0, None))(bufs, jax.random.split(jax.random.PRNGKey(0), 3), 50)
    assert drawn["action"].shape == (3, 50)
    assert set(np.asarray(drawn["action"][2]).tolist()) <= {3, 4}


def test_nbytes():
    assert replay.nbytes(10, example()) == 10 * (3 * 4 + 4)
