"""The embedding service: CLIP text and image embeddings and zero-shot classification over HTTP.

Serves the ``production`` version of the registered CLIP model named in settings and any version
a request pins. Every API is batched: concurrent requests for the same operation and model version
run as one batch on the worker's model thread (``services.batcher``). Items validate themselves
(see ``services.schemas``) before they join a batch.

    bentoml serve services.embedding:EmbeddingService --port 3000
    vlmops serve embedding --port 3000
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import bentoml
from PIL import Image

from infra.settings import Settings
from infra.threads import one_torch_thread
from services.gateway import gateway
from services.items import Prepared
from services.model_pool import Loaded
from services.rpc import wire
from services.rpc.embedding import servicers
from services.schemas import Classification, ImageEmbedding, TextEmbedding, build_request_schemas, embedding_json
from services.skeleton import ModelService, items_of, json_list, running_service, service_options

if TYPE_CHECKING:
    import torch

    from registry.families.clip import ClipModel
    from registry.store import VersionInfo

log = logging.getLogger(__name__)

SETTINGS = Settings()
LIMITS = SETTINGS.embedding


SCHEMAS = build_request_schemas(LIMITS, running_service)
TextItem = SCHEMAS.TextItem
ImageItem = SCHEMAS.ImageItem
ClassifyItem = SCHEMAS.ClassifyItem
TextItems = items_of(TextItem, LIMITS)
ImageItems = items_of(ImageItem, LIMITS)
ClassifyItems = items_of(ClassifyItem, LIMITS)
TextEmbeddings = json_list(TextEmbedding)
ImageEmbeddings = json_list(ImageEmbedding)
Classifications = json_list(Classification)

ITEMS_TOTAL = bentoml.metrics.Counter(
    name="vlmops_embedding_items_total",
    documentation="items embedded, by operation and model version",
    labelnames=["operation", "version"],
)

MODEL_SECONDS = bentoml.metrics.Histogram(
    name="vlmops_embedding_model_seconds",
    documentation="time in the model per batch (tokenise or pixels to vectors), by operation",
    labelnames=["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


@gateway(
    LIMITS,
    SETTINGS.auth,
    log_format=SETTINGS.log_format,
    read=("embed_text", "embed_image", "classify", "models"),
    hot=("embed_text", "embed_image", "classify"),
    fast_path=LIMITS.fast_path,
    grpc=servicers(SCHEMAS, LIMITS),
)
@bentoml.service(**service_options("vlmops-embedding", LIMITS))
class EmbeddingService(ModelService["ClipModel"]):
    def __init__(self) -> None:
        # the model stack loads here, in the worker: the supervisor that imports this module never needs it
        from registry.families.clip import DEFAULT_TEMPLATES, ClipModel

        self.default_templates = DEFAULT_TEMPLATES
        self.setup(SETTINGS, LIMITS, ClipModel)
        self.preprocess_pool = ThreadPoolExecutor(
            LIMITS.decode_threads, thread_name_prefix="preprocess", initializer=one_torch_thread
        )
        self.pool.on_load = self._warm_up

    def _load(self, info: VersionInfo) -> ClipModel:
        model = super()._load(info)
        model.configure_runtime(self.precision, LIMITS.compile)
        return model

    @staticmethod
    def _warm_up(loaded: Loaded[ClipModel]) -> None:
        loaded.model.label_embeddings(["warm", "up"])

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.shutdown()
        self.preprocess_pool.shutdown(wait=False)

    def preprocess(self, version: str | None, image: Image.Image) -> Prepared | None:
        """Pixels for ``version`` made now, on the request path, when that version is loaded."""
        loaded = self.pool.peek(version)
        if loaded is None:
            return None
        return Prepared(loaded.model.transform_key, loaded.model.preprocess(image))

    def _pixels(self, model: ClipModel, items: list[Any]) -> torch.Tensor:
        """Pixels prepared at request time where their transform matches this model's; the rest made now."""
        key = model.transform_key
        ready = [it.prepared.pixels if it.prepared is not None and it.prepared.key == key else None for it in items]
        todo = [i for i, px in enumerate(ready) if px is None]
        made = self.preprocess_pool.map(lambda i: model.preprocess(items[i].pil), todo)
        for i, px in zip(todo, made, strict=True):
            ready[i] = px
        import torch

        return torch.stack([px for px in ready if px is not None])

    def _name(self, loaded: Loaded[ClipModel]) -> str:
        return loaded.info.name

    # ------------------------------------------------------------------ APIs
    @bentoml.api
    async def embed_text(self, items: TextItems) -> TextEmbeddings:
        """Texts → L2-normalised vectors. Texts over the model's context are cut (``truncated``)."""
        return await self.respond(items, self._embed_text)

    @bentoml.api
    async def embed_image(self, items: ImageItems) -> ImageEmbeddings:
        """Images (base64 files) → L2-normalised vectors."""
        return await self.respond(items, self._embed_image)

    @bentoml.api
    async def classify(self, items: ClassifyItems) -> Classifications:
        """Zero-shot classification: image + candidate labels (+ prompt templates) → probabilities."""
        return await self.respond(items, self._classify)

    # ------------------------------------------------------------------ batches (model thread)
    def _answers(
        self, loaded: Loaded[ClipModel], vectors: torch.Tensor, group: list[Any], truncated: list[bool] | None = None
    ) -> list[bytes]:
        """Per item, its answer's bytes: :class:`TextEmbedding` / :class:`ImageEmbedding` JSON for an HTTP
        item, the protobuf message for a gRPC one (``services.rpc.wire``)."""
        name, version = self._name(loaded), loaded.version
        ref = wire.model_ref(name, version)
        cut = truncated or [False] * len(group)
        out = []
        for v, t, it in zip(vectors.cpu().numpy(), cut, group, strict=True):
            if it.wire == "grpc":
                out.append(wire.embedding(v, ref, t))
            elif truncated is None:
                out.append(embedding_json(v, it.encoding, model=name, version=version))
            else:
                out.append(embedding_json(v, it.encoding, model=name, version=version, truncated=t))
        return out

    def _embed_text(self, loaded: Loaded[ClipModel], group: list[Any]) -> list[bytes]:
        with MODEL_SECONDS.labels(operation="embed_text").time():
            vectors, truncated = loaded.model.encode_text([it.text for it in group])
        ITEMS_TOTAL.labels(operation="embed_text", version=loaded.version).inc(len(group))
        return self._answers(loaded, vectors, group, list(truncated))

    def _embed_image(self, loaded: Loaded[ClipModel], group: list[Any]) -> list[bytes]:
        with MODEL_SECONDS.labels(operation="embed_image").time():
            vectors = loaded.model.encode_pixels(self._pixels(loaded.model, group))
        ITEMS_TOTAL.labels(operation="embed_image", version=loaded.version).inc(len(group))
        return self._answers(loaded, vectors, group)

    def _classify(self, loaded: Loaded[ClipModel], group: list[Any]) -> list[Classification]:
        model = loaded.model
        image_emb = model.encode_pixels(self._pixels(model, group))
        results = []
        for emb, it in zip(image_emb, group, strict=True):
            label_emb = model.label_embeddings(it.labels, it.templates or self.default_templates)
            probs = model.classify_embeddings(emb[None], label_emb)[0].cpu().tolist()
            order = sorted(range(len(probs)), key=lambda k: -probs[k])
            results.append(
                Classification(
                    labels=[it.labels[k] for k in order],
                    probs=[probs[k] for k in order],
                    top_label=it.labels[order[0]],
                    model=self._name(loaded),
                    version=loaded.version,
                )
            )
        ITEMS_TOTAL.labels(operation="classify", version=loaded.version).inc(len(group))
        return results

    @bentoml.api(route="/models")
    def models(self) -> dict[str, Any]:
        """Which versions this replica holds, and which is production."""
        return self.describe_models()
