from services.proto.vlmops.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextItem(_message.Message):
    __slots__ = ("text", "model_version")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    model_version: str
    def __init__(self, text: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ImageItem(_message.Message):
    __slots__ = ("image", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    model_version: str
    def __init__(self, image: _Optional[bytes] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassifyItem(_message.Message):
    __slots__ = ("image", "labels", "templates", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    labels: _containers.RepeatedScalarFieldContainer[str]
    templates: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, image: _Optional[bytes] = ..., labels: _Optional[_Iterable[str]] = ..., templates: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TextItem]
    def __init__(self, items: _Optional[_Iterable[_Union[TextItem, _Mapping]]] = ...) -> None: ...

class EmbedImageRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ImageItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ImageItem, _Mapping]]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClassifyItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ClassifyItem, _Mapping]]] = ...) -> None: ...

class TextEmbedding(_message.Message):
    __slots__ = ("vector", "dim", "model", "truncated")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    dim: int
    model: _common_pb2.ModelRef
    truncated: bool
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., dim: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ImageEmbedding(_message.Message):
    __slots__ = ("vector", "dim", "model")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    dim: int
    model: _common_pb2.ModelRef
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., dim: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("labels", "probs", "top_label", "model")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    probs: _containers.RepeatedScalarFieldContainer[float]
    top_label: str
    model: _common_pb2.ModelRef
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., probs: _Optional[_Iterable[float]] = ..., top_label: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class EmbedTextResponse(_message.Message):
    __slots__ = ("embeddings", "offset")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[TextEmbedding]
    offset: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[TextEmbedding, _Mapping]]] = ..., offset: _Optional[int] = ...) -> None: ...

class EmbedImageResponse(_message.Message):
    __slots__ = ("embeddings", "offset")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[ImageEmbedding]
    offset: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[ImageEmbedding, _Mapping]]] = ..., offset: _Optional[int] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("classifications",)
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...
