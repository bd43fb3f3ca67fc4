"""Progress from inside jitted code.

The compiled program calls `report(iteration)` through `jax.debug.callback`;
the callback feeds whichever bar is active on the host. Because the callback
is one module-level function, a program compiled once keeps reporting to the
bar of whichever run is active now. `report` takes the scan's own counter, which
stays unbatched under vmap, so a population of 2048 runs calls back once per
iteration, not 2048 times.
"""
import contextlib

import jax
import jax.numpy as jnp

_active = None


def _on_iteration(iteration):
    if _active is not None:
        _active.update_to(int(iteration) + 1)


def report(iteration):
    jax.debug.callback(_on_iteration, iteration)


def scan_iterations(iteration, state, num_iterations: int, show_progress: bool):
    """`lax.scan` of `iteration(state) -> (state, metrics)`, `num_iterations`
    (static) times, reporting each finished iteration when asked to."""
    def body(state, i):
        state, metrics = iteration(state)
        if show_progress:
            report(i)
        return state, metrics

    return jax.lax.scan(body, state, jnp.arange(num_iterations))


class _Bar:
    def __init__(self, total, desc, initial):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=total, desc=desc, initial=initial, unit="it", dynamic_ncols=True)
        self._offset = 0

    def set_offset(self, offset):
        self._offset = offset

    def update_to(self, n):
        n = n + self._offset
        if n > self._bar.n:
            self._bar.update(n - self._bar.n)

    def close(self):
        self._bar.close()


@contextlib.contextmanager
def bar(total: int, desc: str = "train", enabled: bool = True, initial: int = 0, offset: int = 0):
    """Show a bar while the body runs; `offset` is added to reported iterations
    (for programs that run a chunk of a longer run)."""
    global _active
    if not enabled:
        yield None
        return
    previous = _active
    _active = _Bar(total, desc, initial)
    _active.set_offset(offset)
    try:
        yield _active
    finally:
        _active.close()
        _active = previous
