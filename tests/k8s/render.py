"""Render the Kustomize overlays as a cluster would get them: in a copy of k8s/ with freshly written
secret files (the real ones are git-ignored), through the kubectl on the PATH."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.k8s_secrets import write_secret_files

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu-dev", "gpu-prod", "managed")
SECRET_OVERLAYS = ("cpu-dev", "gpu-prod")  # the ones with a secretGenerator (managed builds on gpu-prod)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not on the PATH (it renders the overlays with its built-in kustomize)")
    return path


@cache
def tree() -> Path:
    """A copy of k8s/ with secret files of its own."""
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="vlmops-k8s-")) / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
    for overlay in SECRET_OVERLAYS:
        write_secret_files(copy / "overlays" / overlay / "secrets")
    return copy


def render_dir(folder: Path) -> str:
    out = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return out.stdout


@cache
def rendered_text(overlay: str) -> str:
    return render_dir(tree() / "overlays" / overlay)


def rendered(overlay: str) -> list[dict[str, Any]]:
    """Every object of the overlay, as dicts."""
    return [doc for doc in yaml.safe_load_all(rendered_text(overlay)) if doc]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]
