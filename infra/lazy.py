"""Heavy packages imported on first use, so that a process which only defines a service imports none of them.

``bentoml serve`` imports a service's module twice: in its supervisor, which only reads the service's
definition, and in the worker that loads the model. The model stack (torch, open_clip, transformers, MLflow)
takes about 4 of the supervisor's 6 seconds of CPU, and a pod is ready that much later. Modules on a service's
import path reach those packages through :func:`lazy_module` or import them inside the functions that use them;
``tests/services/test_light_import.py`` holds the line.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "mlflow")


def lazy_module(name: str) -> ModuleType:
    """The top-level package ``name``, executed at its first attribute access (importlib's ``LazyLoader``);
    the package itself when it is already imported."""
    if "." in name:
        raise ValueError(f"{name!r}: only a top-level package can be imported lazily (its parent would load)")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
