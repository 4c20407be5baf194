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
        invoke(runner, "models", "promote", "m", "1", "--reason", "first")
        assert "1 -> 2" in invoke(runner, "models", "promote", "m", "2")
        listed = json.loads(invoke(runner, "models", "list", "m", "--json"))
        assert [(v["version"], v["aliases"]) for v in listed] == [("1", []), ("2", ["production"])]
        assert listed[0]["dataset_hash"] == "abc" and listed[0]["family"] == "clip"
        assert "2 -> 1" in invoke(runner, "models", "rollback", "m", "--reason", "bad")
        table = invoke(runner, "models", "list")
        assert "production" in table.splitlines()[1] and table.splitlines()[1].split()[1] == "1"

    def test_unknown_version_is_a_clear_error(self, runner: CliRunner, random_clip: ClipModel, tmp_path: Path) -> None:
        random_clip.save(tmp_path / "saved")
        invoke(runner, "models", "register", "m", "--source", str(tmp_path / "saved"))
        from infra.errors import NotFound

        with pytest.raises(NotFound, match="no version '5'"):
            runner.invoke(main, ["models", "promote", "m", "5"], catch_exceptions=False)
