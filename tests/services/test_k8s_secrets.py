"""`vlmops keys k8s-secrets`: the files an overlay's secretGenerator reads, and the settings a pod reads
back from them once Kubernetes mounts them (VLMOPS_SECRETS_DIR)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.auth import KeyRing, Scope, parse_lines
from infra.settings import Settings
from services.cli import main
from services.k8s_secrets import FILES, Managed, secret_files


def test_the_keys_work_and_the_passwords_agree(tmp_path: Path) -> None:
    files = secret_files()
    ring = KeyRing(parse_lines(files["auth-keys"]))
    assert ring.authenticate(f"Bearer {files['search.key']}").scope == Scope.read
    assert ring.authenticate(f"Bearer {files['worker.key']}").scope == Scope.admin
    assert ring.authenticate(f"Bearer {files['admin.key']}").name == "admin"
    pg = files["postgres-password"]
    assert len(pg) == 48 and f":{pg}@postgres.vlmops.svc.cluster.local:5432/" in files["catalog-url"]
    assert f":{pg}@" in files["mlflow-backend-store-uri"]
    redis = re.fullmatch(r"requirepass (\w+)\n", files["redis.conf"]).group(1)
    assert files["broker-url"] == f"redis://:{redis}@redis.vlmops.svc.cluster.local:6379/0"
    assert files["qdrant.yaml"] == f"service:\n  api_key: {files['qdrant-api-key']}\n"
    again = secret_files()
    assert all(again[k] != files[k] for k in ("postgres-password", "qdrant-api-key", "search.key"))


def test_managed_urls_replace_the_bundled_ones() -> None:
    files = secret_files(Managed(catalog_url="postgresql://u:p@db.example.com/cat", qdrant_api_key="qk"))
    assert files["catalog-url"] == "postgresql://u:p@db.example.com/cat"
    assert files["qdrant-api-key"] == "qk" and "api_key: qk" in files["qdrant.yaml"]
    assert "postgres.vlmops.svc" in files["mlflow-backend-store-uri"]  # not given: still the bundled one


def test_the_command_writes_private_files_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "k8s-secrets", str(tmp_path)])
    assert first.exit_code == 0, first.output
    folder = tmp_path / "secrets"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert all((folder / n).stat().st_mode & 0o077 == 0 for n in FILES)
    key = (folder / "admin.key").read_text()
    again = runner.invoke(main, ["keys", "k8s-secrets", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output
    assert (folder / "admin.key").read_text() == key
    forced = runner.invoke(main, ["keys", "k8s-secrets", str(tmp_path), "--force"])
    assert forced.exit_code == 0 and (folder / "admin.key").read_text() != key


def _mount_like_kubelet(folder: Path, files: dict[str, str]) -> None:
    """A Secret volume as the kubelet writes it: the files in a timestamped folder, reached through the
    symlink ..data, and each name a symlink into it."""
    stamped = folder / "..2026_12_01_10_00_00.123456789"
    stamped.mkdir(parents=True)
    for name, content in files.items():
        (stamped / name).write_text(content)
    (folder / "..data").symlink_to(stamped.name)
    for name in files:
        (folder / name).symlink_to(f"..data/{name}")


def test_a_pod_reads_its_settings_from_the_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = secret_files()
    mounted = {
        "VLMOPS_AUTH__KEYS": files["auth-keys"],
        "VLMOPS_AUTH__KEY": files["search.key"],
        "VLMOPS_CATALOG_URL": files["catalog-url"],
        "VLMOPS_BROKER_URL": files["broker-url"],
        "VLMOPS_QDRANT_API_KEY": files["qdrant-api-key"],
    }
    _mount_like_kubelet(tmp_path / "secrets", mounted)
    for name in [*mounted, "VLMOPS_AUTH__DISABLED"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLMOPS_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("VLMOPS_AUTH__AUDIT_LOG", "/tmp/audit.log")
    settings = Settings()
    assert settings.auth.keys.get_secret_value() == files["auth-keys"]
    assert settings.auth.key is not None and settings.auth.key.get_secret_value() == files["search.key"]
    assert settings.auth.audit_log == "/tmp/audit.log"  # the environment still counts beside the files
    assert settings.catalog_url == files["catalog-url"] and settings.broker_url == files["broker-url"]
    assert settings.qdrant_api_key is not None and settings.qdrant_api_key.get_secret_value() == files["qdrant-api-key"]
    assert "search.key" not in repr(settings) and files["search.key"] not in repr(settings)
    monkeypatch.setenv("VLMOPS_CATALOG_URL", "postgresql://env@h/db")
    assert Settings().catalog_url == "postgresql://env@h/db"  # the environment wins over a file


def test_a_missing_secrets_folder_is_an_error_not_a_silent_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMOPS_SECRETS_DIR", "/nonexistent/secrets")
    with pytest.raises(Exception, match="secrets"):
        Settings()
    monkeypatch.delenv("VLMOPS_SECRETS_DIR")
    assert Settings().auth.keys.get_secret_value() == os.environ.get("VLMOPS_AUTH__KEYS", "")
