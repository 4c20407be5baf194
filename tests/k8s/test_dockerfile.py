"""The Dockerfile, .dockerignore and the lock files, checked as far as they can be without a Docker
engine (none runs here). What only a real build shows (the base tags exist, the apt packages install,
the CPU wheels download) is asserted by the Dockerfile's own build steps."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser
from packaging.utils import canonicalize_name

from tests.k8s.dockerfile import (
    CUDA_LOCK,
    CUDA_ONLY_NAME,
    DOCKERFILE,
    FINAL_TARGETS,
    INSTRUCTIONS,
    LOCK,
    PROJECT,
    PYPROJECT,
    ROOT,
    SMALL_WRITES,
    STATE,
    STATE_WRITES,
    TMP,
    commands,
    dockerignored,
    exec_form,
    image_env,
    image_tag,
    installed_closure,
    last,
    pairs,
    read_lock,
    root_image,
    runtime_requirements,
    stages,
    torch_cuda_edge,
    venv_stage,
)


class TestDockerfile:
    def test_it_parses_into_known_instructions_with_valid_exec_forms(self):
        structure = DockerfileParser(path=str(DOCKERFILE)).structure
        assert structure, "the Dockerfile is empty"
        for item in structure:
            assert item["instruction"] in INSTRUCTIONS, f"line {item['startline'] + 1}: {item['content']}"
            if item["instruction"] in ("CMD", "ENTRYPOINT") and item["value"].lstrip().startswith("["):
                exec_form(item["value"])

    def test_the_final_targets_are_cpu_on_debian_slim_and_gpu_on_nvidia_cuda(self):
        assert set(FINAL_TARGETS) <= set(stages())
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", root_image("cpu")), root_image("cpu")
        assert root_image("gpu").startswith("nvidia/cuda:"), root_image("gpu")
        assert root_image("gpu").endswith("-ubuntu24.04"), "bookworm-built CPython needs a glibc at least as new"

    def test_the_gpu_target_runs_the_same_cpython_as_the_cpu_target(self):
        copies = [v.split() for v in stages()["gpu"].values("COPY") if v.startswith("--from=")]
        python_from = [w[0].removeprefix("--from=") for w in copies if w[1:] == ["/usr/local/", "/usr/local/"]]
        assert python_from, "gpu copies no CPython into /usr/local"
        assert root_image(python_from[0]) == root_image("cpu")
        # and the venv it runs was built on that CPython, at the same path
        assert root_image(venv_stage("gpu")) == root_image("cpu")

    def test_every_base_image_is_pinned_by_a_tag(self):
        copied = [v.split()[0] for st in stages().values() for v in st.values("COPY") if v.startswith("--from=")]
        external = [st.base for st in stages().values() if st.parent is None]
        external += [c.removeprefix("--from=") for c in copied if c.removeprefix("--from=") not in stages()]
        assert external
        for image in external:
            if image == "scratch":
                continue
            tag = image_tag(image)
            assert tag, f"{image} has no tag"
            assert tag != "latest", image

    @pytest.mark.parametrize("target", FINAL_TARGETS)
    def test_the_final_stages_run_as_a_high_numeric_uid(self, target):
        user = last(target, "USER")
        assert user and re.fullmatch(r"\d+:\d+", user), f"{target}: USER {user!r} (numeric uid:gid)"
        uid, gid = (int(n) for n in user.split(":"))
        assert uid >= 10000 and gid >= 10000, user

    @pytest.mark.parametrize("target", FINAL_TARGETS)
    def test_tini_is_the_entrypoint_and_the_cli_the_default_command(self, target):
        entrypoint, cmd = last(target, "ENTRYPOINT"), last(target, "CMD")
        assert entrypoint and cmd, target
        assert exec_form(entrypoint)[0].endswith("/tini") and exec_form(entrypoint)[1:] == ["--"]
        assert exec_form(cmd) == ["vlmops", "--help"]
        assert any("apt-get install" in c and " tini" in c for c in commands(target)), "tini is installed"

    def test_every_pip_install_is_constrained_by_the_lock(self):
        installs = [c for name in stages() for c in commands(name) if re.search(r"\bpip install\b", c)]
        assert installs
        for command in installs:
            assert re.search(r"(--constraint|-c)[ =]requirements\.lock\b", command), command

    @pytest.mark.parametrize("target", FINAL_TARGETS)
    def test_the_project_is_installed_non_editable_with_its_s3_extra(self, target):
        installs = [c for c in commands(venv_stage(target)) if re.search(r"\bpip install\b", c)]
        project = [c for c in installs if re.search(r"""(^|\s)["']?\.\[s3\]["']?(\s|$)""", c)]
        assert project, f"{venv_stage(target)} does not pip install '.[s3]'"
        assert not any(re.search(r"(\s-e\s|--editable)", c) for c in project)

    def test_cpu_takes_torch_from_the_cpu_index_and_gpu_the_cuda_build_with_its_own_pins(self):
        cpu, gpu = stages()[venv_stage("cpu")], stages()[venv_stage("gpu")]
        cpu_text = " ".join(v for _, v in cpu.instructions)
        assert "https://download.pytorch.org/whl/cpu" in cpu_text and "+cpu" in cpu_text
        assert "requirements-cuda.lock" not in cpu_text
        gpu_installs = [c for c in commands(gpu.name) if "pip install" in c]
        assert gpu_installs and all("--constraint requirements-cuda.lock" in c for c in gpu_installs)
        assert not any("download.pytorch.org/whl/cpu" in v for _, v in gpu.instructions)

    def test_nothing_but_the_package_sources_and_the_locks_is_copied_in(self):
        packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
        allowed = {"pyproject.toml", "README.md", "requirements.lock", "requirements-cuda.lock", *packages}
        for stage in stages().values():
            for instruction, value in stage.instructions:
                if instruction == "ADD":
                    pytest.fail(f"ADD in {stage.name} (COPY only: no URLs, no archives): {value}")
                if instruction != "COPY" or value.startswith("--from="):
                    continue
                *sources, _ = shlex.split(value)
                for source in sources:
                    assert source.rstrip("/") in allowed, f"{stage.name} copies {source}"
                    assert (ROOT / source).exists(), source
                    assert not dockerignored(source), f"{source} is copied but .dockerignore leaves it out"

    def test_no_step_downloads_weights(self):
        fetch = re.compile(r"from_pretrained|hf_hub_download|snapshot_download|huggingface-cli|create_model|wget|curl")
        for name in stages():
            for command in commands(name):
                assert not fetch.search(command), f"{name}: {command}"

    @pytest.mark.parametrize("target", FINAL_TARGETS)
    def test_every_folder_written_at_run_time_is_tmp_or_vlmops_home(self, target):
        env = image_env(target)
        assert env["VLMOPS_HOME"] == str(STATE)
        assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
        for key in SMALL_WRITES:
            assert PurePosixPath(env[key]).is_relative_to(TMP), f"{key}={env[key]}"
        for key in STATE_WRITES:
            assert PurePosixPath(env[key]).is_relative_to(STATE), f"{key}={env[key]}"
        assert env["PATH"].startswith("/opt/vlmops/venv/bin:")
        workdir = PurePosixPath(last(target, "WORKDIR") or "/")
        assert not workdir.is_relative_to(TMP) and not workdir.is_relative_to(STATE), (
            "bentoml serve puts the working directory on sys.path: not a writable one"
        )

    def test_both_targets_set_the_same_environment(self):
        assert image_env("cpu") == image_env("gpu")

    @pytest.mark.parametrize("target", FINAL_TARGETS)
    def test_the_images_say_where_they_come_from_and_their_version(self, target):
        labels: dict[str, str] = {}
        for value in stages()[target].values("LABEL"):
            labels.update(pairs(value))
        assert labels["org.opencontainers.image.source"]
        assert labels["org.opencontainers.image.version"] == "${VERSION}"
        assert any(v.split("=")[0] == "VERSION" for v in stages()[target].values("ARG"))


class TestDockerignore:
    @pytest.mark.parametrize(
        "path",
        [
            "tests/k8s/test_images.py",
            "bench/embedding.py",
            "k8s/base/kustomization.yaml",
            "k8s/overlays/gpu-prod/secrets/admin.key",
            ".venv/bin/python",
            ".venv-k8s/bin/python",
            ".vlmops/mlflow.db",
            ".git/HEAD",
            ".pytest_cache/v/cache/nodeids",
            "services/__pycache__/cli.cpython-311.pyc",
            "registry/configs/finetuned.safetensors",
            "registry/families/weights.pt",
            "vlmops.egg-info/PKG-INFO",
            "mlruns/0/meta.yaml",
        ],
    )
    def test_it_keeps_tests_state_weights_and_secrets_out_of_the_build(self, path):
        assert dockerignored(path)

    @pytest.mark.parametrize(
        "path", ["pyproject.toml", "README.md", "requirements.lock", "services/cli.py", "registry/configs/x.json"]
    )
    def test_it_sends_what_the_wheel_is_built_from(self, path):
        assert not dockerignored(path)


class TestLock:
    def test_the_locks_are_plain_pins_without_the_project_itself(self):
        lock, cuda = read_lock(LOCK), read_lock(CUDA_LOCK)
        assert canonicalize_name(PROJECT["name"]) not in lock | cuda
        assert not set(lock) & set(cuda), "a package pinned in both files"

    def test_every_dependency_of_pyproject_is_pinned_at_a_version_it_allows(self):
        lock = read_lock(LOCK)
        for req in runtime_requirements():
            name = canonicalize_name(req.name)
            assert name in lock, f"{name} is in pyproject.toml but not in requirements.lock (run `make lock`)"
            assert req.specifier.contains(lock[name], prereleases=True), f"{req} but the lock pins {lock[name]}"
            for spec in req.specifier:
                if spec.operator == "==":
                    assert lock[name] == spec.version, f"{req}: the lock pins {lock[name]}"

    def test_the_lock_pins_what_this_environment_runs(self):
        lock = read_lock(LOCK) | read_lock(CUDA_LOCK)
        closure = installed_closure(runtime_requirements())
        assert {"torch", "torchvision", "bentoml", "mlflow", "transformers", "numpy"} <= set(closure)
        missing = sorted(set(closure) - set(lock))
        assert not missing, f"installed runtime dependencies the lock lacks: {missing} (run `make lock`)"
        differ = {n: (v, lock[n]) for n, v in closure.items() if lock[n] != v}
        assert not differ, f"installed here vs locked: {differ}"

    def test_the_cuda_lock_holds_exactly_what_only_the_cuda_build_of_torch_pulls_in(self):
        everything = installed_closure(runtime_requirements())
        if not any(CUDA_ONLY_NAME.match(n) for n in everything):
            pytest.skip("torch here is not PyPI's CUDA build (the one the gpu target installs)")
        without_cuda = installed_closure(runtime_requirements(), cut=torch_cuda_edge)
        cuda = read_lock(CUDA_LOCK)
        assert "triton" in cuda and any(n.startswith("nvidia-") for n in cuda)
        assert set(cuda) == set(everything) - set(without_cuda)
        # what the CPU build needs stays in the main lock, nvidia-ml-py (BentoML's GPU metrics) among it
        assert set(without_cuda) <= set(read_lock(LOCK))
