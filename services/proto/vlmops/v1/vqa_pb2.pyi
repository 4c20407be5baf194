from services.proto.vlmops.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuestionItem(_message.Message):
    __slots__ = ("image", "question", "model_version", "max_new_tokens")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    question: str
    model_version: str
    max_new_tokens: int
    def __init__(self, image: _Optional[bytes] = ..., question: _Optional[str] = ..., model_version: _Optional[str] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[QuestionItem]
    def __init__(self, items: _Optional[_Iterable[_Union[QuestionItem, _Mapping]]] = ...) -> None: ...

class AnswerResult(_message.Message):
    __slots__ = ("answer", "score", "model")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    answer: str
    score: float
    model: _common_pb2.ModelRef
    def __init__(self, answer: _Optional[str] = ..., score: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class AnswerResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[AnswerResult]
    def __init__(self, answers: _Optional[_Iterable[_Union[AnswerResult, _Mapping]]] = ...) -> None: ...
