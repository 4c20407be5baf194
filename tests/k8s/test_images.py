"""`make images` (run, with a stand-in for the engine), and the manifests' images and command lines
against what the images build and can run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest

from tests.k8s.dockerfile import (
    FINAL_TARGETS,
    MAKE_SETTINGS,
    PROJECT,
    REGISTRY,
    ROOT,
    SMALL_WRITES,
    STATE_WRITES,
    exec_form,
    image_env,
    image_tag,
    last,
)
from tests.k8s.render import OVERLAYS, containers, rendered, workloads

# ---- make images ----------------------------------------------------------------------------------------


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run make here, free of what an outer `make test REGISTRY=...` would pass down."""
    inherited = {k: v for k, v in os.environ.items() if k not in MAKE_SETTINGS}
    return subprocess.run(
        ["make", "-s", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=inherited if env is None else env,
    )


@cache
def printed_images() -> tuple[str, ...]:
    """What `make images` prints, with no engine to build (DOCKER=false: `false info` fails)."""
    out = make("images", "DOCKER=false")
    assert out.returncode == 0, out.stderr
    return tuple(out.stdout.splitlines())


@pytest.fixture
def fake_docker(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in engine that answers `info`, logs every call, and chatters on stdout like a build does."""
    log = tmp_path / "calls"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho "step 1/9: building"\n')
    docker.chmod(0o755)
    return docker, log


class TestMakeImages:
    def test_it_prints_one_tag_per_target_at_the_pyproject_version(self):
        assert printed_images() == tuple(f"{REGISTRY}/vlmops-{t}:{PROJECT['version']}" for t in FINAL_TARGETS)

    def test_without_an_engine_it_says_so_and_how_to_build(self):
        out = make("images", "DOCKER=false")
        assert "no Docker engine" in out.stderr
        assert (
            f"docker build --platform linux/amd64 --target gpu --build-arg VERSION={PROJECT['version']}" in out.stderr
        )

    def test_it_needs_no_venv(self):
        out = make("images", "DOCKER=false", env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0 and tuple(out.stdout.splitlines()) == printed_images(), out.stderr

    def test_the_registry_can_be_chosen(self):
        out = make("images", "DOCKER=false", "REGISTRY=registry.example.com/team")
        assert out.stdout.split() == [
            f"registry.example.com/team/vlmops-{t}:{PROJECT['version']}" for t in FINAL_TARGETS
        ]

    def test_with_an_engine_it_builds_each_target_and_keeps_stdout_to_the_tags(self, fake_docker):
        docker, log = fake_docker
        out = make("images", f"DOCKER={docker}")
        assert out.returncode == 0, out.stderr
        assert tuple(out.stdout.splitlines()) == printed_images()
        builds = [line for line in log.read_text().splitlines() if line.startswith("build ")]
        assert builds == [
            f"build --platform linux/amd64 --target {t} --build-arg VERSION={PROJECT['version']} "
            f"-t {REGISTRY}/vlmops-{t}:{PROJECT['version']} ."
            for t in FINAL_TARGETS
        ]

    def test_push_pushes_both_tags(self, fake_docker):
        docker, log = fake_docker
        assert make("push", f"DOCKER={docker}").returncode == 0
        pushes = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("push ")]
        assert tuple(pushes) == printed_images()

    def test_push_without_an_engine_fails(self):
        out = make("push", "DOCKER=false")
        assert out.returncode != 0 and "no Docker engine" in out.stderr


# ---- the manifests: their images and command lines ---------------------------------------------------


def all_images(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["image"]] if isinstance(node.get("image"), str) else []
        return found + [i for v in node.values() for i in all_images(v)]
    if isinstance(node, list):
        return [i for v in node for i in all_images(v)]
    return []


def ours(image: str) -> bool:
    return "vlmops" in image


def target_of(image: str) -> str:
    for target in FINAL_TARGETS:
        if image == f"{REGISTRY}/vlmops-{target}:{PROJECT['version']}":
            return target
    pytest.fail(f"{image} is not an image `make images` builds")


def our_containers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w in workloads(rendered(overlay)) for c in containers(w) if ours(c["image"])]


def argv(container: dict[str, Any], target: str) -> list[str]:
    """The command line the container runs: `command` replaces the ENTRYPOINT (tini --), `args` the CMD."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return container.get("args") or exec_form(last(target, "CMD") or "[]")


@cache
def help_exit(program: str, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    path = Path(sys.executable).with_name(program)
    return subprocess.run([str(path), *args, "--help"], capture_output=True, text=True, timeout=120)


def click_accepts(args: list[str]) -> None:
    """Parse a vlmops command line as the CLI would, types and choices included, without running it
    (`--help` is eager: it exits 0 before a bad choice or a bad number is looked at)."""
    from services.cli import main

    ctx = click.Context(main, info_name="vlmops")
    rest = list(args)
    while isinstance(ctx.command, click.Group):
        if not rest or rest[0].startswith("-"):
            raise click.UsageError(f"a command after {ctx.command_path!r} (group options are not checked here)")
        sub = ctx.command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"no command {rest[0]!r} in {ctx.command_path!r}")
        name, rest = rest[0], rest[1:]
        if not isinstance(sub, click.Group):
            sub.make_context(name, rest, parent=ctx)
            return
        ctx = click.Context(sub, info_name=name, parent=ctx)


def mlflow_server_options(script: str) -> list[str]:
    words = shlex.split(script)
    for i in range(len(words) - 2):
        if words[i : i + 3] == ["exec", "mlflow", "server"]:
            rest = words[i + 3 :]
            assert not {";", "&&", "||", "|"} & set(rest), script
            return [w.split("=", 1)[0] for w in rest if w.startswith("-")]
    pytest.fail(f"the script does not `exec mlflow server`: {script}")


def effective_env(container: dict[str, Any], target: str, objects: list[dict[str, Any]]) -> dict[str, str]:
    env = dict(image_env(target))
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


class TestManifests:
    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_every_vlmops_image_is_one_make_images_builds(self, overlay):
        referenced = {i for i in all_images(rendered(overlay)) if ours(i)}
        assert referenced, overlay
        assert referenced <= set(printed_images()), f"{overlay}: {sorted(referenced - set(printed_images()))}"

    def test_both_images_are_used(self):
        used = {i for overlay in OVERLAYS for i in all_images(rendered(overlay)) if ours(i)}
        assert used == set(printed_images())

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_third_party_images_are_pinned_by_a_tag(self, overlay):
        for image in all_images(rendered(overlay)):
            if not ours(image):
                tag = image_tag(image)
                assert tag and tag != "latest", f"{overlay}: {image}"

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_a_container_asks_for_a_gpu_exactly_when_it_runs_the_gpu_image(self, overlay):
        for workload, container in our_containers(overlay):
            gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            on_gpu_image = target_of(container["image"]) == "gpu"
            assert (gpus > 0) == on_gpu_image, f"{overlay}/{workload['metadata']['name']}: {container['image']}"

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_pods_run_as_the_images_user(self, overlay):
        for workload, container in our_containers(overlay):
            user = last(target_of(container["image"]), "USER") or ""
            uid, gid = (int(n) for n in user.split(":"))
            pod = workload["spec"]["template"]["spec"].get("securityContext", {})
            own = {**pod, **container.get("securityContext", {})}
            name = f"{overlay}/{workload['metadata']['name']}"
            assert own.get("runAsUser", uid) == uid and own.get("runAsGroup", gid) == gid, name
            assert pod.get("fsGroup") == gid, f"{name}: the volumes must be writable by the image's group"

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_every_command_line_is_one_the_image_runs(self, overlay):
        for workload, container in our_containers(overlay):
            line = argv(container, target_of(container["image"]))
            name = f"{overlay}/{workload['metadata']['name']}: {line}"
            if line[0] == "vlmops":
                assert "vlmops" in PROJECT["scripts"], name
                out = help_exit("vlmops", tuple(line[1:]))
                assert out.returncode == 0, f"{name}\n{out.stderr}"
                click_accepts(line[1:])
            elif line[:2] == ["sh", "-c"] and len(line) == 3:
                options = mlflow_server_options(line[2])
                out = help_exit("mlflow", ("server",))
                assert out.returncode == 0, out.stderr
                for option in options:
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out.stdout), f"{name}: {option}"
            else:
                pytest.fail(f"{name}: neither a vlmops command nor `sh -c '... exec mlflow server ...'`")

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_what_the_image_writes_is_on_a_writable_volume(self, overlay):
        objects = rendered(overlay)
        for workload, container in our_containers(overlay):
            if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
                continue
            target = target_of(container["image"])
            env = effective_env(container, target, objects)
            mounts = [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts", []) if not m.get("readOnly")]
            keys = [*SMALL_WRITES, "TMPDIR"]
            if argv(container, target)[0] == "vlmops":
                keys += ["VLMOPS_HOME", *STATE_WRITES]
            for key in keys:
                path = PurePosixPath(env.get(key, "/tmp"))
                assert any(path.is_relative_to(m) for m in mounts), (
                    f"{overlay}/{workload['metadata']['name']}: {key}={path} is on the read-only root filesystem"
                )


def test_a_bad_service_name_passes_help_but_not_the_cli_parser():
    """Why the command lines go through click_accepts too: `vlmops serve bogus --help` exits 0."""
    assert help_exit("vlmops", ("serve", "bogus")).returncode == 0
    with pytest.raises(click.UsageError):
        click_accepts(["serve", "bogus", "--port", "3000"])
    with pytest.raises(click.UsageError):
        click_accepts(["serve", "embedding", "--port", "three"])
    with pytest.raises(click.UsageError):
        click_accepts(["worker", "--queue", "celery"])
    click_accepts(["worker", "--queues", "celery"])
    click_accepts(["models", "list", "--json"])
