"""The captioning service: image → caption (BLIP, GIT), batched, with bounded generation parameters.

bentoml serve services.captioning:CaptioningService --port 3001
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from infra.settings import Settings
from registry.families.captioning import Captioner, GenerationParams
from services.model_pool import Loaded
from services.skeleton import ModelService, access_log, running_service
from services.vision_schemas import CaptionOut, caption_item, group_by

SETTINGS = Settings()
LIMITS = SETTINGS.captioning
CaptionItem = caption_item(LIMITS, running_service)
CaptionItems = Annotated[list[CaptionItem], Field(min_length=1, max_length=LIMITS.max_items)]  # type: ignore[valid-type]
Captions = Annotated[list[CaptionOut], ContentType("application/json")]
BATCH = {"batchable": True, "max_batch_size": LIMITS.max_batch_size, "max_latency_ms": LIMITS.max_latency_ms}


@bentoml.service(name="vlmops-captioning", traffic={"timeout": 300}, workers=1, logging=access_log(LIMITS))
class CaptioningService(ModelService[Captioner]):
    def __init__(self) -> None:
        self.setup(SETTINGS, LIMITS, Captioner)

    @bentoml.api(**BATCH)
    def caption(self, items: CaptionItems) -> Captions:
        """Images (base64 files) → captions; items with the same generation parameters run as one batch."""

        def run(loaded: Loaded[Captioner], group: list[Any]) -> list[CaptionOut]:
            out: list[CaptionOut | None] = [None] * len(group)
            for (tokens, beams), idx in group_by(group, "max_new_tokens", "num_beams").items():
                texts = loaded.model.caption([group[i].pil for i in idx], GenerationParams(tokens, beams))
                for i, text in zip(idx, texts, strict=True):
                    out[i] = CaptionOut(caption=text, model=self.pool.name, version=loaded.version)
            return [o for o in out if o is not None]

        return self.per_version(items, run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
