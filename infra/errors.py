"""Typed exceptions raised by library code and mapped to HTTP / gRPC status codes at the edge."""

from __future__ import annotations


class VlmopsError(Exception):
    """Base of every error vlmops raises on purpose."""

    http_status: int = 500


class InvalidInput(VlmopsError):
    """The caller sent something we cannot use (bad image, empty text, ...)."""

    http_status = 400


class PayloadTooLarge(InvalidInput):
    """An image or a batch over the configured limits."""

    http_status = 413


class NotFound(VlmopsError):
    """An unknown registered model, version, alias or collection."""

    http_status = 404


class ModelFormatError(VlmopsError):
    """A stored model cannot be read (missing files, wrong family)."""

    http_status = 500


class NotReady(VlmopsError):
    """The component has not finished starting."""

    http_status = 503


class Overloaded(VlmopsError):
    """More work is queued than can be answered in time; the caller should retry later."""

    http_status = 503


class DeadlineExceeded(VlmopsError):
    """The caller's deadline passed before the work could start (it never reached the model)."""

    http_status = 504


class Conflict(InvalidInput):
    """The request is valid but clashes with the resource's state (a collection that exists, a build of
    another version already running)."""

    http_status = 409


class Misconfigured(VlmopsError):
    """Settings or stored state that cannot work across machines; the message says how to fix it."""

    http_status = 500


class NotBuilt(Conflict):
    """The collection has no index of the version asked for (no running or shadow build of it)."""
