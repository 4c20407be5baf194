"""The VQA service: image + question → answer (BLIP-VQA generative, ViLT classifier with a score).

bentoml serve services.vqa:VQAService --port 3002
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from infra.settings import Settings
from registry.families.vqa import VQAModel
from services.model_pool import Loaded
from services.skeleton import ModelService, access_log, running_service
from services.vision_schemas import AnswerOut, group_by, vqa_item

SETTINGS = Settings()
LIMITS = SETTINGS.vqa
QuestionItem = vqa_item(LIMITS, running_service)
QuestionItems = Annotated[list[QuestionItem], Field(min_length=1, max_length=LIMITS.max_items)]  # type: ignore[valid-type]
Answers = Annotated[list[AnswerOut], ContentType("application/json")]
BATCH = {"batchable": True, "max_batch_size": LIMITS.max_batch_size, "max_latency_ms": LIMITS.max_latency_ms}


@bentoml.service(name="vlmops-vqa", traffic={"timeout": 300}, workers=1, logging=access_log(LIMITS))
class VQAService(ModelService[VQAModel]):
    def __init__(self) -> None:
        self.setup(SETTINGS, LIMITS, VQAModel)

    @bentoml.api(**BATCH)
    def answer(self, items: QuestionItems) -> Answers:
        """(image, question) pairs → answers; the batch runs over pairs."""

        def run(loaded: Loaded[VQAModel], group: list[Any]) -> list[AnswerOut]:
            out: list[AnswerOut | None] = [None] * len(group)
            for (tokens,), idx in group_by(group, "max_new_tokens").items():
                answers = loaded.model.answer([group[i].pil for i in idx], [group[i].question for i in idx], tokens)
                for i, a in zip(idx, answers, strict=True):
                    out[i] = AnswerOut(answer=a.answer, score=a.score, model=self.pool.name, version=loaded.version)
            return [o for o in out if o is not None]

        return self.per_version(items, run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
