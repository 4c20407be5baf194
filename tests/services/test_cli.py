from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.families.clip import ClipModel
from services.cli import main


@pytest.fixture()
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path / "home"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


class TestModelsCommands:
    def test_register_list_promote_rollback(self, runner: CliRunner, tmp_path: Path, random_clip: ClipModel) -> None:
        saved = tmp_path / "saved"
        random_clip.save(saved)
        assert "version 1" in invoke(
            runner, "models", "register", "m", "--source", str(saved), "--tag", "dataset_hash=abc"
        )
        # an open_clip architecture by name (random weights: no download)
        assert "version 2" in invoke(runner, "models", "register", "m", "--source", "vlmops-toy-clip")
        invoke(runner, "models", "promote", "m", "1", "--reason", "first", "--no-reindex")
        # never evaluated against production: the gate refuses, --force overrides and is recorded
        refused = runner.invoke(main, ["models", "promote", "m", "2", "--no-reindex"])
        assert refused.exit_code != 0 and "never scored on the same dataset" in str(refused.exception)
        assert "1 -> 2 (forced)" in invoke(runner, "models", "promote", "m", "2", "--force", "--no-reindex")
        from infra.settings import Settings
        from registry.store import RegistryStore

        last = RegistryStore.from_settings(Settings()).events("m")[-1]
        assert last.forced and last.gate is not None and last.gate["passed"] is False
        listed = json.loads(invoke(runner, "models", "list", "m", "--json"))
        assert [(v["version"], v["aliases"]) for v in listed] == [("1", []), ("2", ["production"])]
        assert listed[0]["dataset_hash"] == "abc" and listed[0]["family"] == "clip"
        assert "2 -> 1" in invoke(runner, "models", "rollback", "m", "--reason", "bad", "--no-reindex")
        table = invoke(runner, "models", "list")
        assert "production" in table.splitlines()[1] and table.splitlines()[1].split()[1] == "1"

    def test_registers_a_transformers_save_pretrained_directory(self, runner: CliRunner, tmp_path: Path) -> None:
        from tests.registry.test_hf_families import tiny

        model = tiny("owlv2", tmp_path / "build")
        model.model.save_pretrained(tmp_path / "plain")
        model.processor.save_pretrained(tmp_path / "plain")
        out = invoke(runner, "models", "register", "g", "--family", "owlv2", "--source", str(tmp_path / "plain"))
        assert "version 1" in out
        listed = json.loads(invoke(runner, "models", "list", "g", "--json"))
        assert listed[0]["family"] == "owlv2" and listed[0]["model_class"] == "Owlv2ForObjectDetection"

    def test_unknown_version_is_a_clear_error(self, runner: CliRunner, random_clip: ClipModel, tmp_path: Path) -> None:
        random_clip.save(tmp_path / "saved")
        invoke(runner, "models", "register", "m", "--source", str(tmp_path / "saved"))
        from infra.errors import NotFound

        with pytest.raises(NotFound, match="no version '5'"):
            runner.invoke(main, ["models", "promote", "m", "5"], catch_exceptions=False)


class TestUp:
    def test_up_starts_the_services_and_ctrl_c_stops_them_all(self, tmp_path: Path, random_clip: ClipModel) -> None:
        import os
        import signal
        import subprocess
        import sys

        import grpc
        import httpx
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from infra.process import free_port, wait_http
        from registry.store import RegistryStore
        from tests.conftest import make_settings
        from tests.registry.test_hf_families import tiny

        home = tmp_path / "home"
        store = RegistryStore.from_settings(make_settings(home))
        store.promote("vlmops-vqa", store.register("vlmops-vqa", tiny("vilt-vqa", tmp_path / "build")).version)
        port, rpc = free_port(), free_port()
        vlmops = str(Path(sys.executable).with_name("vlmops"))
        env = {**os.environ, "VLMOPS_HOME": str(home)}
        cmd = [vlmops, "up", "--services", "embedding,vqa", "--port", str(port), "--grpc-port", str(rpc), "--no-worker"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port + 1}/readyz", 120, proc)
            # the VQA model is in production: ready; no CLIP version yet: embedding is live, not ready
            assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503
            # and so says each one's gRPC health, on the ports it printed
            printed = [proc.stdout.readline() for _ in range(2)] if proc.stdout else []
            assert f"grpc 127.0.0.1:{rpc}" in printed[0] and f"grpc 127.0.0.1:{rpc + 1}" in printed[1]
            for target, status in ((rpc, "NOT_SERVING"), (rpc + 1, "SERVING")):
                with grpc.insecure_channel(f"127.0.0.1:{target}") as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status) == status
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        for p in (port, port + 1):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{p}/livez", timeout=2)


class TestFinetuneCommands:
    def test_datasets_eval_and_the_gate_from_the_command_line(
        self, runner: CliRunner, tmp_path: Path, toy_clip: tuple[ClipModel, dict[str, float]]
    ) -> None:
        from infra.errors import InvalidInput
        from registry.datasets import DatasetError
        from registry.gate import GateRefused

        pairs = tmp_path / "pairs"
        path = invoke(runner, "datasets", "toy", str(pairs), "--n", "48", "--split", "test").strip()
        out = invoke(runner, "datasets", "validate", path)
        assert "48 rows, 48 with a caption" in out and "48 with a label" in out and "content hash" in out

        toy_clip[0].save(tmp_path / "good")
        ClipModel.from_pretrained("vlmops-toy-clip", seed=4).save(tmp_path / "bad")
        invoke(runner, "models", "register", "m", "--source", str(tmp_path / "good"), "--promote")
        invoke(runner, "models", "register", "m", "--source", str(tmp_path / "bad"))
        table = invoke(runner, "eval", "m", "2", "--dataset", path, "--json", str(tmp_path / "r.json"))
        lines = table[table.index("metric ") :].splitlines()
        assert lines[0].split()[:3] == ["metric", "v2", "v1"]
        rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:] if line.strip()}
        assert rows["zero_shot_acc"][1] >= 0.9 > rows["zero_shot_acc"][0]  # the trained one is production
        reports = json.loads((tmp_path / "r.json").read_text())
        assert set(reports) == {"v1", "v2"} and len(reports["v1"]["per_class"]) > 1
        with pytest.raises(GateRefused, match="WORSE"):  # the stored figures are enough for the gate
            runner.invoke(main, ["models", "promote", "m", "2", "--no-reindex"], catch_exceptions=False)

        kept = Path(path).read_text().splitlines()[:3]
        Path(path).write_text("\n".join([*kept, '{"image": "gone.png", "caption": "a red star"}']) + "\n")
        with pytest.raises(DatasetError, match="row 4: image 'gone.png' not found"):
            runner.invoke(main, ["finetune", "--dataset", path, "--no-wait"], catch_exceptions=False)
        with pytest.raises(InvalidInput):
            runner.invoke(main, ["finetune", "--dataset", path, "--lora-r", "0"], catch_exceptions=False)


def test_keys_create_prints_a_key_once_and_the_line_that_accepts_it(runner: CliRunner) -> None:
    from infra.auth import KeyRing, Scope, parse_lines

    out = invoke(runner, "keys", "create", "ingest-bot", "--scope", "read", "--scope", "write")
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))
    line = next(line.split()[-1] for line in out.splitlines() if line.startswith("hash line:"))
    assert key.startswith("vlmops_ingest-bot_") and key not in line
    who = KeyRing(parse_lines(line)).authenticate(f"Bearer {key}")
    assert who.name == "ingest-bot" and who.scope is Scope.write
    again = invoke(runner, "keys", "create", "ingest-bot", "--scope", "read")
    assert key not in again  # a new key every time: none is stored
    bad = runner.invoke(main, ["keys", "create", "ingest-bot", "--scope", "root"])
    assert bad.exit_code != 0 and "root" in bad.output
