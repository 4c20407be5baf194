from services.proto.vlmops.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaptionItem(_message.Message):
    __slots__ = ("image", "model_version", "max_new_tokens", "num_beams")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model_version: str
    max_new_tokens: int
    num_beams: int
    def __init__(self, image: _Optional[bytes] = ..., model_version: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ...) -> None: ...

class CaptionRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CaptionItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CaptionItem, _Mapping]]] = ...) -> None: ...

class CaptionResult(_message.Message):
    __slots__ = ("caption", "model")
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    caption: str
    model: _common_pb2.ModelRef
    def __init__(self, caption: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class CaptionResponse(_message.Message):
    __slots__ = ("captions",)
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedCompositeFieldContainer[CaptionResult]
    def __init__(self, captions: _Optional[_Iterable[_Union[CaptionResult, _Mapping]]] = ...) -> None: ...
