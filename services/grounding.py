"""The grounding service: image + text queries → boxes in pixels, with score threshold and NMS (OWL-ViT, OWLv2).

bentoml serve services.grounding:GroundingService --port 3003
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from infra.settings import Settings
from registry.families.grounding import Grounder
from services.model_pool import Loaded
from services.skeleton import ModelService, access_log, running_service
from services.vision_schemas import Box, GroundingOut, grounding_item, group_by

SETTINGS = Settings()
LIMITS = SETTINGS.grounding
GroundingItem = grounding_item(LIMITS, running_service)
GroundingItems = Annotated[list[GroundingItem], Field(min_length=1, max_length=LIMITS.max_items)]  # type: ignore[valid-type]
Groundings = Annotated[list[GroundingOut], ContentType("application/json")]
BATCH = {"batchable": True, "max_batch_size": LIMITS.max_batch_size, "max_latency_ms": LIMITS.max_latency_ms}


@bentoml.service(name="vlmops-grounding", traffic={"timeout": 300}, workers=1, logging=access_log(LIMITS))
class GroundingService(ModelService[Grounder]):
    def __init__(self) -> None:
        self.setup(SETTINGS, LIMITS, Grounder)

    @bentoml.api(**BATCH)
    def ground(self, items: GroundingItems) -> Groundings:
        """Image + queries → boxes ``[x0, y0, x1, y1]`` with score and the query that matched."""

        def run(loaded: Loaded[Grounder], group: list[Any]) -> list[GroundingOut]:
            out: list[GroundingOut | None] = [None] * len(group)
            for (threshold, iou), idx in group_by(group, "threshold", "nms_iou").items():
                found = loaded.model.detect(
                    [group[i].pil for i in idx], [group[i].queries for i in idx], threshold, iou
                )
                for i, detections in zip(idx, found, strict=True):
                    boxes = [Box(box=list(d.box), score=d.score, query=d.query) for d in detections]
                    out[i] = GroundingOut(detections=boxes, model=self.pool.name, version=loaded.version)
            return [o for o in out if o is not None]

        return self.per_version(items, run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
