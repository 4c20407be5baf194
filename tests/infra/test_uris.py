"""Ingest by uri: only under the configured prefixes and hosts, and refused alike whether the target exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.errors import Misconfigured, PayloadTooLarge
from infra.uris import Unreadable, UriDisabled, UriPolicy


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.png").write_bytes(b"inside")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.png").write_bytes(b"outside")
    os.symlink(secret / "s.png", allowed / "link-out.png")
    os.symlink(allowed / "sub" / "a.png", allowed / "link-in.png")
    os.mkfifo(allowed / "fifo.png")  # would block a reader
    (tmp_path / "allowed-sibling").mkdir()
    (tmp_path / "allowed-sibling" / "x.png").write_bytes(b"sibling")
    return {"allowed": allowed, "secret": secret, "root": tmp_path}


def test_reads_under_the_prefix(tree: dict[str, Path]) -> None:
    policy = UriPolicy([str(tree["allowed"])], [])
    assert policy.read(str(tree["allowed"] / "sub" / "a.png"), 100) == b"inside"
    assert policy.read((tree["allowed"] / "sub" / "a.png").as_uri(), 100) == b"inside"
    assert policy.read(str(tree["allowed"] / "link-in.png"), 100) == b"inside"  # a link that stays inside
    with pytest.raises(PayloadTooLarge):
        policy.read(str(tree["allowed"] / "sub" / "a.png"), 3)


def refusal(policy: UriPolicy, uri: str) -> str:
    with pytest.raises(Unreadable) as info:
        policy.read(uri, 1000, "item 0")
    assert info.value.http_status == 404
    return str(info.value).replace(repr(uri[:300]), "<uri>")


def test_everything_outside_is_refused_alike_whether_it_exists_or_not(tree: dict[str, Path]) -> None:
    policy = UriPolicy([str(tree["allowed"])], [])
    allowed, secret, root = tree["allowed"], tree["secret"], tree["root"]
    uris = [
        str(secret / "s.png"),  # exists, outside
        str(secret / "absent.png"),  # missing, outside
        str(allowed / ".." / "secret" / "s.png"),  # '..' out
        str(allowed / "sub" / ".." / ".." / "secret" / "absent.png"),
        str(allowed / "link-out.png"),  # a symlink out
        str(root / "allowed-sibling" / "x.png"),  # a sibling whose name starts like the prefix
        "/etc/passwd",
        "/etc/no-such-file",
        "file:///etc/passwd",
        "file:///etc/no-such-file",
        "file://otherhost/etc/passwd",
        str(allowed / "absent.png"),  # missing, inside
        str(allowed / "sub"),  # a folder
        str(allowed / "fifo.png"),  # not a regular file
        "relative/a.png",
        f"{allowed}/sub/a.png\0",
        "http://127.0.0.1:1/x.png",
        "https://example.com/x.png",
        "s3://bucket/x.png",
        "memory://x.png",
    ]
    answers = {refusal(policy, uri) for uri in uris}
    assert len(answers) == 1, answers


def test_remote_needs_its_origin_listed() -> None:
    policy = UriPolicy([], ["https://images.example.com", "s3://bucket"])
    assert policy.check("https://images.example.com/a/b.png") == "https://images.example.com/a/b.png"
    assert policy.check("https://images.example.com:443/a.png")
    assert policy.check("s3://bucket/key.png") == "s3://bucket/key.png"
    for uri in [
        "http://images.example.com/a.png",  # another scheme
        "https://images.example.com:8443/a.png",  # another port
        "https://images.example.com.evil.net/a.png",
        "https://user@images.example.com/a.png",
        "https://images.example.com/a/../../x.png",
        "https://images.example.com/%2e%2e/x.png",
        "s3://other-bucket/key.png",
        "/etc/passwd",  # no local prefixes at all
    ]:
        with pytest.raises(Unreadable):
            policy.check(uri)


def test_off_by_default_says_so() -> None:
    with pytest.raises(UriDisabled, match="ingest by uri is off") as info:
        UriPolicy([], []).read("/etc/passwd", 100)
    assert info.value.http_status == 400


@pytest.mark.parametrize("origin", ["images.example.com", "https://images.example.com/path", "file:///data"])
def test_a_host_entry_must_be_an_origin(origin: str) -> None:
    with pytest.raises(Misconfigured, match="INGEST_URI_HOSTS"):
        UriPolicy([], [origin])
