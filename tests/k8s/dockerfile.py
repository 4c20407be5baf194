"""Reading what an image build would use, without a Docker engine: the Dockerfile's stages (parsed),
.dockerignore, and the lock files against pyproject.toml and the installed environment."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
CUDA_LOCK = ROOT / "requirements-cuda.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REGISTRY = "ghcr.io/vlmops"
FINAL_TARGETS = ("cpu", "gpu")
TMP, STATE = PurePosixPath("/tmp"), PurePosixPath("/var/lib/vlmops")
# where any process of the image may write, /tmp, which every pod mounts (importing torchvision creates
# the inductor cache folder: a process that cannot fails at import) ...
SMALL_WRITES = (
    "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "BENTOML_HOME", "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
)  # fmt: skip
# ... and where vlmops processes download models, VLMOPS_HOME
STATE_WRITES = ("HF_HOME", "TORCH_HOME")
MAKE_SETTINGS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REGISTRY", "VERSION", "DOCKER")
CUDA_ONLY_NAME = re.compile(r"^(nvidia-|cuda-|triton$)")
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT",
}  # fmt: skip


# ---- the Dockerfile, stage by stage --------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  # an image reference or the name of an earlier stage
    parent: str | None  # that earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


@cache
def stages() -> dict[str, Stage]:
    parsed: dict[str, Stage] = {}
    current: Stage | None = None
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            words = value.split()
            if len(words) != 3 or words[1].upper() != "AS":
                pytest.fail(f"every stage is named (FROM image AS name): {item['content'].strip()}")
            if words[2] in parsed:
                pytest.fail(f"two stages named {words[2]}")
            parent = words[0] if words[0] in parsed else None  # a stage's own name is not yet one
            current = parsed[words[2]] = Stage(name=words[2], base=words[0], parent=parent)
        elif current is None:
            if instruction != "ARG":
                pytest.fail(f"{instruction} before the first FROM")
        else:
            current.instructions.append((instruction, value))
    return parsed


def chain(name: str) -> list[Stage]:
    """The stage and the stages it is built on, the root (an image, not a stage) last."""
    out = [stages()[name]]
    while out[-1].parent is not None:
        out.append(stages()[out[-1].parent])
    return out


def root_image(name: str) -> str:
    return chain(name)[-1].base


def last(name: str, instruction: str) -> str | None:
    """What an instruction is in effect in the stage (the latest one, inherited from the stages below)."""
    for stage in chain(name):
        found = stage.values(instruction)
        if found:
            return found[-1]
    return None


def pairs(value: str) -> dict[str, str]:
    """KEY=VALUE pairs of an ENV or LABEL instruction (the legacy `ENV KEY VALUE` form too)."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in reversed(chain(name)):
        for value in stage.values("ENV"):
            env.update(pairs(value))
    return env


def commands(name: str) -> list[str]:
    """Each shell command of the stage's own RUN instructions, `&&` and `;` chains split apart."""
    out = []
    for value in stages()[name].values("RUN"):
        script = re.sub(r"^(--\S+\s+)+", "", value)
        out += [c.strip() for c in re.split(r"&&|;|\|\|", script) if c.strip()]
    return out


def venv_stage(target: str) -> str:
    """The stage the target copies its /opt/vlmops/venv from."""
    for value in stages()[target].values("COPY"):
        words = value.split()
        if words[0].startswith("--from=") and words[1:] == ["/opt/vlmops/venv", "/opt/vlmops/venv"]:
            return words[0].removeprefix("--from=")
    pytest.fail(f"{target} copies no venv from a builder stage")


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(w, str) for w in parsed), value
    return parsed


def image_tag(reference: str) -> str | None:
    """The tag of an image reference (None without one); a digest counts as a pin too."""
    if "@sha256:" in reference:
        return reference.split("@", 1)[1]
    last_part = reference.rsplit("/", 1)[-1]
    return last_part.split(":", 1)[1] if ":" in last_part else None


# ---- .dockerignore ------------------------------------------------------------------------------------


@cache
def ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").strip("/")))
    return rules


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern excludes a path when it matches the path or a folder above it; `*` stays
    within one name, `**` spans any number of them."""
    regex = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def dockerignored(path: str) -> bool:
    ignored = False
    for negated, pattern in ignore_rules():
        if _matches(pattern, path.strip("/")):
            ignored = not negated
    return ignored


# ---- requirements.lock --------------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~,]+)", line)
        assert match, f"{path.name}: not a `name==version` pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = match[2]
    return pins


def runtime_requirements() -> list[Requirement]:
    """pyproject's dependencies and those of the extra the images install (s3), not the dev tools."""
    return [Requirement(r) for r in [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["s3"]]]


def installed_closure(roots: list[Requirement], cut: Callable[[str, str], bool] | None = None) -> dict[str, str]:
    """Every installed distribution these requirements reach here (extras followed, markers evaluated for
    this platform), with its version; ``cut(parent, child)`` drops an edge of the graph."""
    versions: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(r.name), extra) for r in roots for extra in ("", *r.extras)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # not installed here (the s3 extra): its pins are checked against pyproject only
        versions[name] = dist.version
        for line in dist.requires or []:
            dep = Requirement(line)
            child = canonicalize_name(dep.name)
            if dep.marker is not None and not dep.marker.evaluate({"extra": extra}):
                continue
            if cut is None or not cut(name, child):
                todo += [(child, e) for e in ("", *dep.extras)]
    return versions


def torch_cuda_edge(parent: str, child: str) -> bool:
    return parent == "torch" and bool(CUDA_ONLY_NAME.match(child))
