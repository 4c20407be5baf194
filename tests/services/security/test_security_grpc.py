"""Keys and scopes on every RPC, and the audit of gRPC mutations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.services.security.helpers import (
    IMAGES,
    Stack,
    lower,
)

pytestmark = pytest.mark.slow


# every RPC of every service and the scope it needs (checked against the protos' services)
GRPC_SCOPES: dict[str, dict[str, str]] = {
    "embedding": {m: "read" for m in ("EmbedText", "EmbedImage", "Classify", "EmbedTextStream", "EmbedImageStream")},
    "captioning": {"Caption": "read"},
    "vqa": {"Answer": "read"},
    "grounding": {"Ground": "read"},
    "search": {
        "ListCollections": "read",
        "Search": "read",
        "CreateCollection": "write",
        "Ingest": "write",
        "IngestStream": "write",
        "DeleteCollection": "admin",
    },
}
GRPC_MATRIX = [(svc, m, scope) for svc, methods in GRPC_SCOPES.items() for m, scope in methods.items()]


def grpc_service(service: str) -> Any:
    from services.proto.vlmops.v1 import captioning_pb2, embedding_pb2, grounding_pb2, search_pb2, vqa_pb2

    module = {"embedding": embedding_pb2, "captioning": captioning_pb2, "vqa": vqa_pb2}.get(service)
    module = module or {"grounding": grounding_pb2, "search": search_pb2}[service]
    return module.DESCRIPTOR.services_by_name[{"vqa": "VQA"}.get(service, service.capitalize())]


def grpc_request(method: str) -> Any:
    from services.proto.vlmops.v1 import captioning_pb2, embedding_pb2, grounding_pb2, search_pb2, vqa_pb2

    image = IMAGES[0]
    ingest = search_pb2.IngestRequest(collection="guarded-grpc", items=[search_pb2.IngestItem(image=image)])
    return {
        "EmbedText": embedding_pb2.EmbedTextRequest(items=[embedding_pb2.TextItem(text="a red circle")]),
        "EmbedTextStream": embedding_pb2.EmbedTextRequest(items=[embedding_pb2.TextItem(text="a red circle")]),
        "EmbedImage": embedding_pb2.EmbedImageRequest(items=[embedding_pb2.ImageItem(image=image)]),
        "EmbedImageStream": embedding_pb2.EmbedImageRequest(items=[embedding_pb2.ImageItem(image=image)]),
        "Classify": embedding_pb2.ClassifyRequest(items=[embedding_pb2.ClassifyItem(image=image, labels=["a", "b"])]),
        "Caption": captioning_pb2.CaptionRequest(items=[captioning_pb2.CaptionItem(image=image)]),
        "Answer": vqa_pb2.AnswerRequest(items=[vqa_pb2.QuestionItem(image=image, question="what colour?")]),
        "Ground": grounding_pb2.GroundRequest(items=[grounding_pb2.GroundingItem(image=image, queries=["a star"])]),
        "ListCollections": search_pb2.ListCollectionsRequest(),
        "Search": search_pb2.SearchRequest(collection="guarded-grpc", text="a red circle"),
        "CreateCollection": search_pb2.CreateCollectionRequest(name="guarded-grpc"),
        "Ingest": ingest,
        "IngestStream": ingest,
        "DeleteCollection": search_pb2.DeleteCollectionRequest(name="guarded-grpc"),
    }[method]


def grpc_call(stack: Stack, service: str, method: str, key: str | None = None) -> Any:
    """Call ``method`` through a channel made from its descriptor (any streaming kind); the status code."""
    import grpc
    from google.protobuf.message_factory import GetMessageClass

    desc = grpc_service(service).methods_by_name[method]
    path = f"/{desc.containing_service.full_name}/{method}"
    metadata = [("authorization", f"Bearer {stack.keys.get(key, key)}")] if key else []
    out = GetMessageClass(desc.output_type)
    with grpc.insecure_channel(stack.grpc[service]) as channel:
        kinds = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }
        call = kinds[(desc.client_streaming, desc.server_streaming)](
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=out.FromString
        )
        request = grpc_request(method)
        try:
            answer = call(iter([request]) if desc.client_streaming else request, metadata=metadata, timeout=120)
            if desc.server_streaming:
                list(answer)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""


def test_every_rpc_is_in_the_grpc_matrix() -> None:
    for service, methods in GRPC_SCOPES.items():
        assert set(grpc_service(service).methods_by_name) == set(methods), service


@pytest.mark.parametrize(("service", "method", "scope"), GRPC_MATRIX, ids=[f"{s}.{m}" for s, m, _ in GRPC_MATRIX])
def test_an_rpc_needs_a_known_key_with_its_scope(stack: Stack, service: str, method: str, scope: str) -> None:
    import grpc

    assert grpc_call(stack, service, method)[0] is grpc.StatusCode.UNAUTHENTICATED
    forged = "vlmops_read-client_" + "0" * 48
    code, message = grpc_call(stack, service, method, forged)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "0" * 48 not in message
    weaker = lower(scope)
    while weaker is not None:
        code, message = grpc_call(stack, service, method, weaker)
        assert code is grpc.StatusCode.PERMISSION_DENIED and f"'{scope}' scope" in message, (weaker, message)
        weaker = lower(weaker)
    code, message = grpc_call(stack, service, method, scope)
    assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), message


def test_grpc_answers_with_keys_and_mutations_are_audited(stack: Stack) -> None:
    from services.client import EmbeddingGrpc, SearchGrpc

    with EmbeddingGrpc(stack.grpc["embedding"], api_key=stack.keys["read"]) as emb:
        vectors = emb.embed_text(["a red circle"]).vectors
    assert abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-4
    start = len(stack.audit_lines())
    with (
        SearchGrpc(stack.grpc["search"], api_key=stack.keys["write"]) as writer,
        SearchGrpc(stack.grpc["search"], api_key=stack.keys["admin"]) as admin,
    ):
        writer.create_collection("audited-grpc")
        assert writer.ingest_stream("audited-grpc", iter([(b, {"n": i}) for i, b in enumerate(IMAGES)])).count == 4
        hits = writer.search("audited-grpc", text="a red circle", top_k=4)  # search → embedding with its own key
        assert {h.payload["n"] for h in hits} == {0, 1, 2, 3}
        assert admin.delete_collection("audited-grpc") == "audited-grpc"
    trail = [(a["key"], a["operation"], a["target"], a["outcome"]) for a in stack.audit_lines()[start:]]
    assert sorted(trail) == sorted(
        [
            ("write-client", "CreateCollection", "audited-grpc", "ok"),
            ("write-client", "IngestStream", "audited-grpc", "ok"),
            ("admin-client", "DeleteCollection", "audited-grpc", "ok"),
        ]
    )
