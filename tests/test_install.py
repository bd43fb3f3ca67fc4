"""Smoke test of a fresh install: every module of ours imports, and one
environment of each family that `run.py envs` lists resets and steps.

A dependency that the lock file forgets (gymnax needs `six` without declaring
it) breaks `import gymnax`, and with it everything; families that no other test
trains on (bsuite, MinAtar, misc) would break unnoticed without this file.
"""
import importlib
import pkgutil
from pathlib import Path

import jax
import numpy as np
import pytest

import envs

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("src", "robustness", "envs", "agents", "meta", "commands")

# One member of every family `run.py envs` prints, in its order.
FAMILY_EXAMPLES = {
    "gymnax classic control": "CartPole-v1",
    "bsuite": "Catch-bsuite",
    "MinAtar": "Breakout-MinAtar",
    "misc": "FourRooms-misc",
    "brax": "brax/inverted_pendulum",
    "probe": "probe/observation",
    "gridworld": "gridworld/barfi",
    "maze": "maze",
    "hard maze": "hard-maze",
}


def our_modules():
    names = []
    for package in PACKAGES:
        names.append(package)
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / package)])]
    return names


def test_every_module_is_found():
    modules = our_modules()
    # a package that pkgutil cannot walk would silently shrink the list below
    for expected in ("robustness.attacks", "envs.registry", "agents.ppo", "agents.sac", "meta.es", "commands.ued"):
        assert expected in modules
    assert len(modules) >= 40


@pytest.mark.parametrize("module", our_modules())
def test_module_imports(module):
    importlib.import_module(module)


def test_the_families_cover_every_name_run_py_lists():
    """Every name `run.py envs` prints (it prints envs.names()) belongs to one of the families above."""
    listed = envs.names()
    assert set(FAMILY_EXAMPLES.values()) <= set(listed)
    suffixes = ("-v0", "-v1", "-bsuite", "-MinAtar", "-misc")
    prefixes = ("brax/", "probe/", "gridworld/")
    strays = [n for n in listed if not (n.endswith(suffixes) or n.startswith(prefixes) or n in ("maze", "hard-maze"))]
    assert not strays, f"names outside every family: {strays}"


@pytest.mark.parametrize("family", list(FAMILY_EXAMPLES))
def test_one_environment_per_family_resets_and_steps(family):
    name = FAMILY_EXAMPLES[family]
    kwargs = {"backend": "spring"} if name.startswith("brax/") else {}
    env, params = envs.make(name, **kwargs)
    action_space = env.action_space(params)
    if name.startswith("brax/"):
        # constructing it imports brax's whole stack; its physics is traced and run
        # by tests/test_envs.py, which is too slow to pay twice
        assert action_space.shape == (1,)
        return
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key, params)
    action = action_space.sample(jax.random.PRNGKey(1))
    step = jax.jit(env.step)
    next_obs, state, reward, terminated, truncated, info = step(key, state, action, params)
    assert next_obs.shape == obs.shape == (envs.obs_size(env, params),)
    assert terminated.dtype == truncated.dtype == np.bool_
    assert np.isfinite(np.asarray(next_obs)).all() and np.isfinite(float(reward))
