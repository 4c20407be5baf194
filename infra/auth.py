"""API keys with scopes: how keys are made, how their hash lines are read, and how a presented key is
checked (in constant time).

A key is ``vlmops_<name>_<48 hex digits>``: 192 random bits after the name of its holder. The server
keeps only its *hash line* (``VLMOPS_AUTH__KEYS``, one line per key, from a Secret)::

    <name>:<scope>[,<scope>...]:sha256:<salt hex>:<sha256(salt + key) hex>

Why salted SHA-256 and not a slow KDF: the secret is 192 random bits, not a password a person chose,
so no dictionary helps an attacker who has the hash line, and a slow hash would only cost every request
(the aim is under 2 % of a service's throughput). The salt keeps two deployments' lines for the same
key apart. Two lines may share a name (a rotation: old and new key both valid for a while).

Scopes: ``read`` (embed, classify, caption, answer, ground, search, list), ``write`` (ingest, create
collections), ``admin`` (delete collections, builds, reindex). Each implies the ones below it: an
``admin`` key can also write and read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from infra.errors import InvalidInput, Misconfigured, VlmopsError

PREFIX = "vlmops_"
NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_DUMMY = hashlib.sha256(b"no such key").digest()


class Scope(IntEnum):
    """Ordered: a key with a scope has every scope below it."""

    read = 1
    write = 2
    admin = 3

    @classmethod
    def parse(cls, name: str) -> Scope:
        try:
            return cls[name.strip().lower()]
        except KeyError:
            raise InvalidInput(f"unknown scope {name!r} (known: read, write, admin)") from None


class Unauthenticated(VlmopsError):
    """No key, an ill-formed one, or one this service does not know."""

    http_status = 401


class Forbidden(VlmopsError):
    """A known key without the scope the operation needs."""

    http_status = 403


@dataclass(frozen=True)
class Principal:
    """Who called: the key's name and its highest scope."""

    name: str
    scope: Scope

    def require(self, needed: Scope, operation: str) -> None:
        if self.scope < needed:
            raise Forbidden(
                f"{operation} needs a key with the {needed.name!r} scope; key {self.name!r} has {self.scope.name!r}"
            )


@dataclass(frozen=True)
class KeyEntry:
    name: str
    scope: Scope
    salt: bytes
    digest: bytes

    def line(self) -> str:
        return f"{self.name}:{self.scope.name}:sha256:{self.salt.hex()}:{self.digest.hex()}"


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInput(f"key name {name!r}: use 1 to 63 of a-z, 0-9, '.' and '-', starting with a letter or digit")
    return name


def create_key(name: str, scopes: Iterable[Scope | str]) -> tuple[str, KeyEntry]:
    """A new key (shown once) and the entry whose :meth:`KeyEntry.line` the server keeps."""
    check_name(name)
    granted = [s if isinstance(s, Scope) else Scope.parse(s) for s in scopes]
    if not granted:
        raise InvalidInput("give at least one scope")
    key = f"{PREFIX}{name}_{secrets.token_hex(24)}"
    salt = secrets.token_bytes(16)
    return key, KeyEntry(name, max(granted), salt, _digest(salt, key))


def parse_line(line: str) -> KeyEntry:
    parts = line.strip().split(":")
    if len(parts) != 5 or parts[2] != "sha256":
        raise Misconfigured(
            "VLMOPS_AUTH__KEYS: each line is NAME:SCOPES:sha256:SALT:HASH (from `vlmops keys create`); "
            f"got {len(parts)} fields in a line starting {line.strip()[:12]!r}"
        )
    name, scopes, _, salt, digest = parts
    try:
        return KeyEntry(
            check_name(name), max(Scope.parse(s) for s in scopes.split(",")), bytes.fromhex(salt), bytes.fromhex(digest)
        )
    except (InvalidInput, ValueError) as exc:
        raise Misconfigured(f"VLMOPS_AUTH__KEYS: the line of key {name!r} cannot be read: {exc}") from exc


def parse_lines(text: str) -> list[KeyEntry]:
    """Hash lines separated by newlines, spaces or ';' (one environment variable holds them all)."""
    return [parse_line(line) for line in re.split(r"[\s;]+", text) if line.strip()]


class KeyRing:
    """The keys a service accepts, by name."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self.by_name: dict[str, list[KeyEntry]] = {}
        for entry in entries:
            self.by_name.setdefault(entry.name, []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_name.values())

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <key>`` header value; :class:`Unauthenticated`
        when it is missing, ill-formed or unknown (one message for the last two)."""
        if not authorization:
            raise Unauthenticated("this operation needs an API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("send the API key as 'Authorization: Bearer <key>'")
        name = key[len(PREFIX) :].rpartition("_")[0] if key.startswith(PREFIX) else ""
        entries = self.by_name.get(name)
        if not entries:
            hmac.compare_digest(_DUMMY, _digest(b"", key))  # the same work as for a known name
            raise Unauthenticated("the API key is not valid for this service")
        for entry in entries:
            if hmac.compare_digest(entry.digest, _digest(entry.salt, key)):
                return Principal(entry.name, entry.scope)
        raise Unauthenticated("the API key is not valid for this service")
