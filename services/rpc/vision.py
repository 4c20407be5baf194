"""The captioning, VQA and grounding services over gRPC (``vlmops.v1.Captioning``, ``VQA``,
``Grounding``): the HTTP APIs' items, batches and answers, as protobuf messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from infra.auth import Scope
from infra.settings import ServiceSettings
from services.proto.vlmops.v1 import (
    captioning_pb2,
    captioning_pb2_grpc,
    common_pb2,
    grounding_pb2,
    grounding_pb2_grpc,
    vqa_pb2,
    vqa_pb2_grpc,
)
from services.rpc.edge import GrpcEdge, deadline_of, rpc
from services.rpc.items import Items, check_count, optional, version_of


def ref(out: Any) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(model=out.model, version=out.version)


class _VisionRpc:
    """What the three share: the service, its item class, its limits."""

    def __init__(self, service: Any, edge: GrpcEdge, item: type, limits: ServiceSettings) -> None:
        self.service = service
        self.edge = edge
        self.items = Items(item)
        self.limits = limits

    async def _run(self, rows: list[dict[str, Any]], run: Any, context: grpc.aio.ServicerContext) -> list[Any]:
        check_count(len(rows), self.limits.max_items)
        return await self.service.batched(self.items.validate(rows), run, deadline_of(context))  # type: ignore[no-any-return]


class CaptioningRpc(_VisionRpc, captioning_pb2_grpc.CaptioningServicer):
    descriptor = captioning_pb2.DESCRIPTOR.services_by_name["Captioning"]

    @rpc(Scope.read)
    async def Caption(self, request: Any, context: grpc.aio.ServicerContext) -> captioning_pb2.CaptionResponse:  # noqa: N802
        rows = [
            {"image": it.image, "model_version": version_of(it), **optional(it, "max_new_tokens", "num_beams")}
            for it in request.items
        ]
        outs = await self._run(rows, self.service._caption, context)
        return captioning_pb2.CaptionResponse(
            captions=[captioning_pb2.CaptionResult(caption=o.caption, model=ref(o)) for o in outs]
        )


class VQARpc(_VisionRpc, vqa_pb2_grpc.VQAServicer):
    descriptor = vqa_pb2.DESCRIPTOR.services_by_name["VQA"]

    @rpc(Scope.read)
    async def Answer(self, request: Any, context: grpc.aio.ServicerContext) -> vqa_pb2.AnswerResponse:  # noqa: N802
        rows = [
            {
                "image": it.image,
                "question": it.question,
                "model_version": version_of(it),
                **optional(it, "max_new_tokens"),
            }
            for it in request.items
        ]
        outs = await self._run(rows, self.service._answer, context)
        return vqa_pb2.AnswerResponse(
            answers=[vqa_pb2.AnswerResult(answer=o.answer, score=o.score, model=ref(o)) for o in outs]
        )


class GroundingRpc(_VisionRpc, grounding_pb2_grpc.GroundingServicer):
    descriptor = grounding_pb2.DESCRIPTOR.services_by_name["Grounding"]

    @rpc(Scope.read)
    async def Ground(self, request: Any, context: grpc.aio.ServicerContext) -> grounding_pb2.GroundResponse:  # noqa: N802
        rows = [
            {
                "image": it.image,
                "queries": list(it.queries),
                "model_version": version_of(it),
                **optional(it, "threshold", "nms_iou"),
            }
            for it in request.items
        ]
        outs = await self._run(rows, self.service._ground, context)
        return grounding_pb2.GroundResponse(
            groundings=[
                grounding_pb2.GroundingResult(
                    detections=[
                        grounding_pb2.Detection(
                            box=grounding_pb2.Box(x0=d.box[0], y0=d.box[1], x1=d.box[2], y1=d.box[3]),
                            score=d.score,
                            query=d.query,
                        )
                        for d in o.detections
                    ],
                    model=ref(o),
                )
                for o in outs
            ]
        )


def servicers(kind: type[_VisionRpc], item: type, limits: ServiceSettings) -> Callable[[Any, GrpcEdge], list[Any]]:
    """``gateway(grpc=...)`` of a vision service."""
    return lambda service, edge: [kind(service, edge, item, limits)]
