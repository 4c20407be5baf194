"""API keys: made, kept as hash lines, checked; scopes ordered; bad configuration named."""

from __future__ import annotations

import pytest

from infra.auth import Forbidden, KeyRing, Scope, Unauthenticated, create_key, parse_line, parse_lines
from infra.errors import InvalidInput, Misconfigured


def test_a_key_is_checked_against_its_hash_line_only() -> None:
    key, entry = create_key("worker", ["admin"])
    line = entry.line()
    assert key.startswith("vlmops_worker_") and len(key) == len("vlmops_worker_") + 48
    assert key not in line and key.rpartition("_")[2] not in line  # the secret is not in the line
    ring = KeyRing(parse_lines(line))
    who = ring.authenticate(f"Bearer {key}")
    assert who.name == "worker" and who.scope is Scope.admin
    assert ring.authenticate(f"bearer   {key}  ").name == "worker"  # scheme case, spaces


def test_two_keys_of_the_same_name_share_nothing() -> None:
    key, _ = create_key("app", ["read"])
    other_key, other = create_key("app", ["read"])
    ring = KeyRing([other])
    with pytest.raises(Unauthenticated, match="not valid"):
        ring.authenticate(f"Bearer {key}")  # same name, another key: the salt and digest differ
    assert ring.authenticate(f"Bearer {other_key}").name == "app"


def test_rotation_two_lines_for_one_name() -> None:
    old, old_entry = create_key("app", ["read"])
    new, new_entry = create_key("app", ["write"])
    ring = KeyRing(parse_lines(f"{old_entry.line()}\n{new_entry.line()}"))
    assert ring.authenticate(f"Bearer {old}").scope is Scope.read
    assert ring.authenticate(f"Bearer {new}").scope is Scope.write
    assert len(ring) == 2


@pytest.mark.parametrize(
    "header, message",
    [
        (None, "needs an API key"),
        ("", "needs an API key"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer vlmops_nobody_00", "not valid"),
        ("Bearer not-even-a-vlmops-key", "not valid"),
    ],
)
def test_missing_or_unknown_keys_are_401(header: str | None, message: str) -> None:
    _, entry = create_key("app", ["read"])
    with pytest.raises(Unauthenticated, match=message) as info:
        KeyRing([entry]).authenticate(header)
    assert info.value.http_status == 401


def test_a_tampered_key_is_refused() -> None:
    key, entry = create_key("app", ["admin"])
    flipped = key[:-1] + ("0" if key[-1] != "0" else "1")
    with pytest.raises(Unauthenticated):
        KeyRing([entry]).authenticate(f"Bearer {flipped}")


def test_scopes_are_ordered_and_the_message_names_the_one_needed() -> None:
    key, entry = create_key("ingester", ["read", "write"])
    who = KeyRing([entry]).authenticate(f"Bearer {key}")
    assert who.scope is Scope.write  # the highest given
    who.require(Scope.read, "search")
    who.require(Scope.write, "ingest")
    with pytest.raises(Forbidden, match="delete_collection needs a key with the 'admin' scope") as info:
        who.require(Scope.admin, "delete_collection")
    assert info.value.http_status == 403


@pytest.mark.parametrize(
    "line, message",
    [
        ("app:read:abcd:ef", "NAME:SCOPES:sha256:SALT:HASH"),
        ("app:read:md5:00:00", "NAME:SCOPES:sha256:SALT:HASH"),
        ("app:root:sha256:00:00", "unknown scope"),
        ("App_1:read:sha256:00:00", "key name"),
        ("app:read:sha256:zz:00", "cannot be read"),
    ],
)
def test_bad_hash_lines_are_named_at_startup(line: str, message: str) -> None:
    with pytest.raises(Misconfigured, match=message):
        parse_line(line)


def test_lines_separated_by_newlines_spaces_or_semicolons() -> None:
    lines = [create_key(f"k{i}", ["read"])[1].line() for i in range(3)]
    assert len(KeyRing(parse_lines(f"{lines[0]}\n  {lines[1]};{lines[2]}\n"))) == 3
    assert len(KeyRing(parse_lines(""))) == 0


@pytest.mark.parametrize("name", ["", "UPPER", "has_underscore", "a:b", "x" * 64])
def test_key_names_are_checked(name: str) -> None:
    with pytest.raises(InvalidInput):
        create_key(name, ["read"])


def test_a_key_needs_a_known_scope() -> None:
    with pytest.raises(InvalidInput, match="unknown scope"):
        create_key("app", ["superuser"])
    with pytest.raises(InvalidInput, match="at least one scope"):
        create_key("app", [])
