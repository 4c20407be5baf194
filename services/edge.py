"""The edge: typed vlmops errors become BentoML exceptions (HTTP status codes) here and nowhere else."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import ParamSpec, TypeVar

from bentoml.exceptions import BentoMLException

from infra.errors import InvalidInput, VlmopsError

P = ParamSpec("P")
R = TypeVar("R")


def to_http(exc: VlmopsError) -> BentoMLException:
    return BentoMLException(str(exc), error_code=HTTPStatus(exc.http_status))


@contextmanager
def http_errors() -> Iterator[None]:
    """Re-raise vlmops errors as BentoML exceptions carrying their HTTP status."""
    try:
        yield
    except VlmopsError as exc:
        raise to_http(exc) from exc


def validating(fn: Callable[P, R]) -> Callable[P, R]:
    """For pydantic validators: a plain 400 becomes a ValueError (pydantic reports the field and the
    message); other statuses (404, 413) leave pydantic as BentoML exceptions with their own code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except InvalidInput as exc:
            if exc.http_status == 400:
                raise ValueError(str(exc)) from exc
            raise to_http(exc) from exc
        except VlmopsError as exc:
            raise to_http(exc) from exc

    return wrapper
