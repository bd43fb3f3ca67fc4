"""One environment API over gymnax, brax and our own environments."""
import importlib
import importlib.util
import sys
import types


class _ImportedOnFirstUse(types.ModuleType):
    """Stands in sys.modules for a module until one of its attributes is read.

    gymnax imports seaborn (pong) and matplotlib.pyplot (catch, rooms, ...) at
    module level but only uses them to render; importing them eagerly costs
    about 1.5 s of every process's start-up. The first attribute read imports
    the real module, which from then on is what `import` returns.
    """

    def __getattr__(self, attr):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def _defer_import(name):
    if name in sys.modules or importlib.util.find_spec(name.partition(".")[0]) is None:
        return
    sys.modules[name] = _ImportedOnFirstUse(name)


_defer_import("seaborn")
_defer_import("matplotlib.pyplot")

from envs.core import Box, Discrete, Environment, Wrapper, action_dim, is_discrete, obs_size
from envs.registry import UnknownEnvironment, check_name, make, make_raw, names, wrap
from envs.rewards import Transition, env_reward

__all__ = ["Box", "Discrete", "Environment", "Wrapper", "action_dim", "is_discrete", "obs_size",
           "make", "make_raw", "names", "wrap", "check_name", "UnknownEnvironment", "Transition", "env_reward"]
