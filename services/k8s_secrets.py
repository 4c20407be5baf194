"""The secret files a Kubernetes overlay's ``secretGenerator`` reads (``vlmops keys k8s-secrets``).

They are written into the overlay's ``secrets/`` folder, which git ignores: no secret value is ever
committed. Each is one Secret key; the manifests mount them as files (``VLMOPS_SECRETS_DIR``), never as
environment variables.

- ``auth-keys``: hash lines of the keys the services accept (``VLMOPS_AUTH__KEYS``);
- ``search.key``, ``worker.key``: the keys search and the workers call the other services with;
- ``admin.key``: the operator's key (``VLMOPS_AUTH__KEY`` of the CLI); it stays on this machine;
- ``postgres-password``, ``catalog-url``, ``mlflow-backend-store-uri``: the bundled PostgreSQL;
- ``broker-url``, ``redis.conf``: the bundled Redis (``requirepass``);
- ``qdrant-api-key``, ``qdrant.yaml``: the bundled Qdrant (``service.api_key``).

Teams on managed services pass their own URLs; the files for the bundled server are still written
(harmless) so every overlay renders from the same set.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from infra.auth import create_key

NAMESPACE = "vlmops"
FILES = (
    "auth-keys",
    "search.key",
    "worker.key",
    "admin.key",
    "postgres-password",
    "catalog-url",
    "mlflow-backend-store-uri",
    "broker-url",
    "redis.conf",
    "qdrant-api-key",
    "qdrant.yaml",
)
# who calls what: search embeds queries (read); the workers run builds on search (admin)
CALLERS = {"search": ("read",), "worker": ("admin",), "admin": ("admin",)}


def _host(service: str, port: int) -> str:
    return f"{service}.{NAMESPACE}.svc.cluster.local:{port}"


@dataclass(frozen=True)
class Managed:
    """URLs of managed services that replace the bundled ones (``None``: the bundled server)."""

    catalog_url: str | None = None
    mlflow_backend_store_uri: str | None = None
    broker_url: str | None = None
    qdrant_api_key: str | None = None


def secret_files(managed: Managed = Managed()) -> dict[str, str]:
    """Fresh random passwords and keys, as the contents of each file in :data:`FILES`."""
    lines, files = [], {}
    for name, scopes in CALLERS.items():
        key, entry = create_key(name, scopes)
        files[f"{name}.key"] = key
        lines.append(entry.line())
    files["auth-keys"] = "\n".join(lines)
    pg = secrets.token_hex(24)
    files["postgres-password"] = pg
    files["catalog-url"] = managed.catalog_url or f"postgresql://vlmops:{pg}@{_host('postgres', 5432)}/vlmops_catalog"
    files["mlflow-backend-store-uri"] = (
        managed.mlflow_backend_store_uri or f"postgresql+psycopg://vlmops:{pg}@{_host('postgres', 5432)}/mlflow"
    )
    redis = secrets.token_hex(24)
    files["broker-url"] = managed.broker_url or f"redis://:{redis}@{_host('redis', 6379)}/0"
    files["redis.conf"] = f"requirepass {redis}\n"
    qdrant = managed.qdrant_api_key or secrets.token_hex(24)
    files["qdrant-api-key"] = qdrant
    files["qdrant.yaml"] = f"service:\n  api_key: {qdrant}\n"
    assert set(files) == set(FILES)
    return files


def write_secret_files(folder: Path, managed: Managed = Managed(), force: bool = False) -> list[Path]:
    """Write :func:`secret_files` into ``folder`` (mode 0600); refuses to overwrite unless ``force``:
    new keys would lock out every caller that has the old ones."""
    existing = [folder / n for n in FILES if (folder / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{folder} already has secrets ({existing[0].name}, ...); --force makes new ones")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, content in secret_files(managed).items():
        path = folder / name
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(content)
        written.append(path)
    return written
