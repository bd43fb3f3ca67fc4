import numpy as np

from src import normalize


def test_running_stats_match_numpy_over_batches():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(10, 64, 3)).astype(np.float32)
    stats = normalize.init((3,))
    for batch in data:
        stats = normalize.update(stats, batch)
    flat = data.reshape(-1, 3)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, flat.var(0), rtol=1e-3)
    z = normalize.normalize(stats, flat)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
