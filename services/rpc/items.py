"""gRPC request items made into the services' own item classes (``services.items``): the same
validation, limits and batches as HTTP items, with the context that marks them as gRPC's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from pydantic import BaseModel, TypeAdapter, ValidationError

from infra.errors import InvalidInput, PayloadTooLarge
from services.items import GRPC
from services.rpc.edge import validation_message


def check_count(n: int, limit: int, stream: str | None = None) -> None:
    if n == 0:
        raise InvalidInput("send at least one item")
    if n > limit:
        more = f"; send more with {stream}" if stream else ""
        raise PayloadTooLarge(f"{n} items in one call, over the limit of {limit}{more}")


def optional(message: Message, *names: str) -> dict[str, Any]:
    """The proto3 ``optional`` fields the client set (unset ones keep the item class's defaults)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def version_of(message: Message) -> str | None:
    return message.model_version if message.HasField("model_version") else None  # type: ignore[attr-defined]


class Items:
    """``validate(rows)``: a list of ``item`` validated in one pass, as gRPC's."""

    def __init__(self, item: type[BaseModel]) -> None:
        self.adapter: TypeAdapter[list[Any]] = TypeAdapter(list[item])  # type: ignore[valid-type]

    def validate(self, rows: Sequence[dict[str, Any]], offset: int = 0) -> list[Any]:
        """``offset``: the index of ``rows[0]`` in the call (error messages name the item)."""
        try:
            return self.adapter.validate_python(rows, context=GRPC)
        except ValidationError as exc:
            raise InvalidInput(validation_message(exc, "items.", offset)) from exc
