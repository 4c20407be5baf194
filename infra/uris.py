"""Which ``uri`` an ingest may name, and reading it: nothing outside what an operator allowed.

Local paths (or ``file://`` URIs) are read only under ``VLMOPS_SEARCH__INGEST_URI_PREFIXES``, after
the path is resolved (symlinks, ``..``). Remote URIs are read only from the origins in
``VLMOPS_SEARCH__INGEST_URI_HOSTS`` (``https://images.example.com``, ``s3://bucket``); HTTP is fetched
without following redirects. Both empty (the default): ingest by uri is off.

A refused uri and a missing one get the same answer (:class:`Unreadable`, one message), so a caller
cannot learn which files exist on the server.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import fsspec
import httpx

from infra.errors import InvalidInput, Misconfigured, NotFound, PayloadTooLarge

LOCAL_SCHEMES = ("", "file")


class Unreadable(NotFound):
    """Outside the allowed prefixes and hosts, or nothing there: one answer for both."""


class UriDisabled(InvalidInput):
    """Ingest by uri is off on this deployment."""


def unreadable(uri: str, what: str) -> Unreadable:
    """The one answer for a uri outside what is allowed and for one with nothing there."""
    return Unreadable(f"{what}: nothing readable at {uri[:300]!r} (missing, or outside the allowed prefixes)")


def _origin(scheme: str, host: str, port: int | None) -> str:
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


class UriPolicy:
    def __init__(self, prefixes: Iterable[str], hosts: Iterable[str]) -> None:
        self.prefixes = [Path(os.path.realpath(self._local_path(p))) for p in prefixes if p.strip()]
        self.hosts: set[str] = set()
        for entry in hosts:
            parts = urlsplit(entry.strip().rstrip("/"))
            if not parts.scheme or parts.scheme in LOCAL_SCHEMES or not parts.hostname or parts.path:
                raise Misconfigured(
                    f"VLMOPS_SEARCH__INGEST_URI_HOSTS: {entry!r} is not an origin like https://host or s3://bucket"
                )
            self.hosts.add(_origin(parts.scheme, parts.hostname, parts.port))

    @property
    def enabled(self) -> bool:
        return bool(self.prefixes or self.hosts)

    @staticmethod
    def _local_path(uri: str) -> str:
        parts = urlsplit(uri)
        return unquote(parts.path) if parts.scheme == "file" else uri

    def check(self, uri: str, what: str = "uri") -> str:
        """The resolved path or the URL to read; :class:`Unreadable` when ``uri`` is not allowed."""
        if not self.enabled:
            raise UriDisabled(
                f"{what}: ingest by uri is off on this service (VLMOPS_SEARCH__INGEST_URI_PREFIXES and "
                "VLMOPS_SEARCH__INGEST_URI_HOSTS are empty); send the image itself"
            )
        refused = unreadable(uri, what)
        try:
            parts = urlsplit(uri)
            if parts.scheme in LOCAL_SCHEMES:
                if "\0" in uri or (parts.scheme == "file" and parts.netloc not in ("", "localhost")):
                    raise refused
                path = Path(os.path.realpath(self._local_path(uri)))
                if not any(path.is_relative_to(p) for p in self.prefixes):
                    raise refused
                return str(path)
            if parts.username or parts.password or not parts.hostname:
                raise refused
            if _origin(parts.scheme, parts.hostname, parts.port) not in self.hosts:
                raise refused
            if ".." in unquote(parts.path).split("/"):
                raise refused
        except ValueError as exc:  # an unparseable URL (a bad port, ...)
            raise refused from exc
        return uri

    def read(self, uri: str, max_bytes: int, what: str = "uri") -> bytes:
        """The bytes behind an allowed ``uri``, at most ``max_bytes`` (413 over it)."""
        target = self.check(uri, what)
        refused = unreadable(uri, what)
        try:
            if target.startswith(("http://", "https://")):
                data = _read_http(target, max_bytes)
            elif "://" in target:
                fs, path = fsspec.core.url_to_fs(target)
                with fs.open(path, "rb") as src:
                    data = bytes(src.read(max_bytes + 1))
            else:
                # no blocking on a FIFO, and only a regular file (not a device, a folder or a socket)
                fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as src:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise refused
                    data = src.read(max_bytes + 1)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            raise refused from exc
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"{what}: {uri[:300]!r} is over the limit of {max_bytes} bytes")
        return data


def _read_http(url: str, max_bytes: int) -> bytes:
    with httpx.Client(follow_redirects=False, timeout=30.0) as http, http.stream("GET", url) as resp:
        if resp.status_code != 200:
            raise OSError(f"HTTP {resp.status_code}")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            chunks.append(chunk)
            if size > max_bytes:
                break
        return b"".join(chunks)
