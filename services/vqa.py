"""The VQA service: image + question → answer (BLIP-VQA generative, ViLT classifier with a score).

bentoml serve services.vqa:VQAService --port 3002
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import bentoml

from infra.settings import Settings
from services.gateway import gateway
from services.model_pool import Loaded
from services.rpc.vision import VQARpc, servicers
from services.skeleton import ModelService, items_of, json_list, running_service, service_options
from services.vision_schemas import AnswerOut, per_params, vqa_item

if TYPE_CHECKING:
    from registry.families.vqa import VQAModel

SETTINGS = Settings()
LIMITS = SETTINGS.vqa
QuestionItem = vqa_item(LIMITS, running_service)
QuestionItems = items_of(QuestionItem, LIMITS)
Answers = json_list(AnswerOut)


@gateway(
    LIMITS,
    SETTINGS.auth,
    log_format=SETTINGS.log_format,
    read=("answer", "models"),
    hot=("answer",),
    fast_path=LIMITS.fast_path,
    grpc=servicers(VQARpc, QuestionItem, LIMITS),
)
@bentoml.service(**service_options("vlmops-vqa", LIMITS, timeout_s=300))
class VQAService(ModelService["VQAModel"]):
    def __init__(self) -> None:
        from registry.families.vqa import VQAModel  # the model stack, in the worker only

        self.setup(SETTINGS, LIMITS, VQAModel)

    @bentoml.api
    async def answer(self, items: QuestionItems) -> Answers:
        """(image, question) pairs → answers; the batch runs over pairs."""
        return await self.respond(items, self._answer)

    def _answer(self, loaded: Loaded[VQAModel], group: list[Any]) -> list[AnswerOut]:
        def run(params: tuple[Any, ...], items: list[Any]) -> list[AnswerOut]:
            (tokens,) = params
            answers = loaded.model.answer([it.pil for it in items], [it.question for it in items], tokens)
            return [
                AnswerOut(answer=a.answer, score=a.score, model=self.pool.name, version=loaded.version) for a in answers
            ]

        return per_params(group, ("max_new_tokens",), run)

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        return self.describe_models()
