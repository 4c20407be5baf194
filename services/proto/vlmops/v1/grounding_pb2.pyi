from services.proto.vlmops.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroundingItem(_message.Message):
    __slots__ = ("image", "queries", "model_version", "threshold", "nms_iou")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NMS_IOU_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    queries: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    threshold: float
    nms_iou: float
    def __init__(self, image: _Optional[bytes] = ..., queries: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., nms_iou: _Optional[float] = ...) -> None: ...

class GroundRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GroundingItem]
    def __init__(self, items: _Optional[_Iterable[_Union[GroundingItem, _Mapping]]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "query")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    query: str
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., query: _Optional[str] = ...) -> None: ...

class GroundingResult(_message.Message):
    __slots__ = ("detections", "model")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    model: _common_pb2.ModelRef
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class GroundResponse(_message.Message):
    __slots__ = ("groundings",)
    GROUNDINGS_FIELD_NUMBER: _ClassVar[int]
    groundings: _containers.RepeatedCompositeFieldContainer[GroundingResult]
    def __init__(self, groundings: _Optional[_Iterable[_Union[GroundingResult, _Mapping]]] = ...) -> None: ...
