"""The captioning service: image → caption (BLIP, GIT), batched, with bounded generation parameters.

bentoml serve services.captioning:CaptioningService --port 3001
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bentoml

from infra.settings import Settings
from services.gateway import gateway
from services.model_pool import Loaded
from services.rpc.vision import CaptioningRpc, servicers
from services.skeleton import ModelService, items_of, json_list, running_service, service_options
from services.vision_schemas import CaptionOut, caption_item, per_params

if TYPE_CHECKING:
    from registry.families.captioning import Captioner

SETTINGS = Settings()
LIMITS = SETTINGS.captioning
CaptionItem = caption_item(LIMITS, running_service)
CaptionItems = items_of(CaptionItem, LIMITS)
Captions = json_list(CaptionOut)


@gateway(
    LIMITS,
    SETTINGS.auth,
    log_format=SETTINGS.log_format,
    read=("caption", "models"),
    hot=("caption",),
    fast_path=LIMITS.fast_path,
    grpc=servicers(CaptioningRpc, CaptionItem, LIMITS),
)
@bentoml.service(**service_options("vlmops-captioning", LIMITS, timeout_s=300))
class CaptioningService(ModelService["Captioner"]):
    def __init__(self) -> None:
        from registry.families.captioning import Captioner  # the model stack, in the worker only

        self.setup(SETTINGS, LIMITS, Captioner)

    @bentoml.api
    async def caption(self, items: CaptionItems) -> Captions:
        """Images (base64 files) → captions; items with the same generation parameters run as one batch."""
        return await self.respond(items, self._caption)

    def _caption(self, loaded: Loaded[Captioner], group: list[Any]) -> list[CaptionOut]:
        from registry.families.captioning import GenerationParams

        def run(params: tuple[Any, ...], items: list[Any]) -> list[CaptionOut]:
            texts = loaded.model.caption([it.pil for it in items], GenerationParams(*params))
            return [CaptionOut(caption=t, model=self.pool.name, version=loaded.version) for t in texts]

        return per_params(group, ("max_new_tokens", "num_beams"), run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
