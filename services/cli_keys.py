"""``vlmops keys``: API keys for the services (added to ``vlmops`` by ``services.cli``)."""

from __future__ import annotations

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
