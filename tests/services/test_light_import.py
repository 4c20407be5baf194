"""A service's module is what ``bentoml serve`` imports in its supervisor, which only reads the service's
definition: the model stack (torch, open_clip, transformers, MLflow) must load in the worker alone. Measured on
2 cores: the embedding service was live 13.8 s after its start with the stack in both processes, 8.6 s with it
in the worker only (supervisor CPU 6.0 s against 1.0 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.lazy import HEAVY, lazy_module
from infra.process import SERVICES

PROBE = """
import json, sys
module = __import__(sys.argv[1].split(":")[0], fromlist=["_"])
getattr(module, sys.argv[1].split(":")[1])  # the service class bentoml looks up
loaded = [m for m, mod in list(sys.modules.items()) if type(mod).__name__ != "_LazyModule"]  # a lazy one: not yet
print(json.dumps(sorted(m for m in loaded if m.split(".")[0] in sys.argv[2].split(","))))
"""


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_a_service_module_defines_its_service_without_the_model_stack(name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, SERVICES[name], ",".join(HEAVY)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_lazy_module_loads_at_its_first_attribute() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from infra.lazy import lazy_module; m = lazy_module('mlflow');"
            "before = 'mlflow.exceptions' in sys.modules;"
            "print(before, m.exceptions.MlflowException.__name__, 'mlflow.exceptions' in sys.modules,"
            " type(m).__name__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "MlflowException", "True", "module"]


def test_a_submodule_or_a_missing_package_is_refused() -> None:
    with pytest.raises(ValueError, match="top-level"):
        lazy_module("mlflow.exceptions")
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        lazy_module("no_such_package")
