"""``vlmops keys``: API keys for the services (added to ``vlmops`` by ``services.cli``)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def keys() -> None:
    """API keys: make one for a caller (the server keeps only its hash line)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["read", "write", "admin"]),
    help="read: embed, caption, answer, ground, search, list; write: + ingest, create; admin: + delete, builds",
)
def keys_create(name: str, scopes: tuple[str, ...]) -> None:
    """Print a new key for NAME (once: it is not stored) and the hash line the services keep.

    Give the key to the caller (VLMOPS_AUTH__KEY for vlmops' own processes); add the hash line to
    VLMOPS_AUTH__KEYS of every service it calls (one line per key, from a Secret)."""
    from infra.auth import create_key

    key, entry = create_key(name, scopes)
    click.echo(f"key:       {key}")
    click.echo(f"hash line: {entry.line()}")
    click.echo("the key is shown once; the services need only the hash line", err=True)


@keys.command("k8s-secrets")
@click.argument("overlay", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="replace existing secrets (every caller needs the new keys)")
@click.option("--catalog-url", default=None, help="a managed PostgreSQL for the catalog (postgresql://...)")
@click.option("--mlflow-backend-store-uri", default=None, help="a managed PostgreSQL for the MLflow server")
@click.option("--broker-url", default=None, help="a managed Redis (rediss://:password@host:6379/0)")
@click.option("--qdrant-api-key", default=None, help="the API key of a managed Qdrant")
def keys_k8s_secrets(
    overlay: Path,
    force: bool,
    catalog_url: str | None,
    mlflow_backend_store_uri: str | None,
    broker_url: str | None,
    qdrant_api_key: str | None,
) -> None:
    """Write fresh keys and passwords into OVERLAY/secrets/, the files its secretGenerator reads (git
    ignores them). The operator's admin key is OVERLAY/secrets/admin.key."""
    from services.k8s_secrets import Managed, write_secret_files

    managed = Managed(catalog_url, mlflow_backend_store_uri, broker_url, qdrant_api_key)
    try:
        written = write_secret_files(overlay / "secrets", managed, force=force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(written)} files under {overlay / 'secrets'} (mode 0600, ignored by git)")
    click.echo(f"your admin key: {overlay / 'secrets' / 'admin.key'} (export VLMOPS_AUTH__KEY=$(cat ...))")
