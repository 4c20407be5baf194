"""The grounding service: image + text queries → boxes in pixels, with score threshold and NMS (OWL-ViT, OWLv2).

bentoml serve services.grounding:GroundingService --port 3003
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bentoml

from infra.settings import Settings
from services.gateway import gateway
from services.model_pool import Loaded
from services.rpc.vision import GroundingRpc, servicers
from services.skeleton import ModelService, items_of, json_list, running_service, service_options
from services.vision_schemas import Box, GroundingOut, grounding_item, per_params

if TYPE_CHECKING:
    from registry.families.grounding import Grounder

SETTINGS = Settings()
LIMITS = SETTINGS.grounding
GroundingItem = grounding_item(LIMITS, running_service)
GroundingItems = items_of(GroundingItem, LIMITS)
Groundings = json_list(GroundingOut)


@gateway(
    LIMITS,
    SETTINGS.auth,
    log_format=SETTINGS.log_format,
    read=("ground", "models"),
    hot=("ground",),
    fast_path=LIMITS.fast_path,
    grpc=servicers(GroundingRpc, GroundingItem, LIMITS),
)
@bentoml.service(**service_options("vlmops-grounding", LIMITS, timeout_s=300))
class GroundingService(ModelService["Grounder"]):
    def __init__(self) -> None:
        from registry.families.grounding import Grounder  # the model stack, in the worker only

        self.setup(SETTINGS, LIMITS, Grounder)

    @bentoml.api
    async def ground(self, items: GroundingItems) -> Groundings:
        """Image + queries → boxes ``[x0, y0, x1, y1]`` with score and the query that matched."""
        return await self.respond(items, self._ground)

    def _ground(self, loaded: Loaded[Grounder], group: list[Any]) -> list[GroundingOut]:
        def run(params: tuple[Any, ...], items: list[Any]) -> list[GroundingOut]:
            threshold, iou = params
            found = loaded.model.detect([it.pil for it in items], [it.queries for it in items], threshold, iou)
            return [
                GroundingOut(
                    detections=[Box(box=list(d.box), score=d.score, query=d.query) for d in detections],
                    model=self.pool.name,
                    version=loaded.version,
                )
                for detections in found
            ]

        return per_params(group, ("threshold", "nms_iou"), run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
