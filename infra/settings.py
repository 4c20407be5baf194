"""Settings: environment variables prefixed ``VLMOPS_``, nested with ``__``; state under ``VLMOPS_HOME``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SECRETS_DIR_ENV = "VLMOPS_SECRETS_DIR"


class GrpcSettings(BaseModel):
    """The gRPC port every service process serves beside HTTP (``VLMOPS_<SERVICE>__GRPC_*``; services/rpc)."""

    grpc_port: int = Field(
        50051,
        ge=0,
        le=65535,
        description="the gRPC port (each API worker binds it, SO_REUSEPORT); 0: no gRPC. Defaults: embedding "
        "50051, captioning 50052, vqa 50053, grounding 50054, search 50055",
    )
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest gRPC message received or sent (over it: RESOURCE_EXHAUSTED)"
    )
    grpc_max_stream_items: int = Field(
        100_000, ge=1, description="items in one streaming call (EmbedTextStream, EmbedImageStream, IngestStream)"
    )
    grpc_keepalive_s: float = Field(
        60.0, gt=0, description="the server pings a connection idle this long, and drops it unanswered"
    )
    grpc_keepalive_timeout_s: float = Field(20.0, gt=0, description="how long a keepalive ping may go unanswered")
    grpc_min_client_ping_s: float = Field(
        10.0, gt=0, description="clients may ping no more often than this (more often: the connection is closed)"
    )
    grpc_max_connection_age_s: float | None = Field(
        600.0,
        gt=0,
        description="connections are closed gracefully after this long, so clients spread over new replicas; "
        "unset: never",
    )
    grpc_grace_s: float = Field(10.0, ge=0, description="on shutdown, how long calls in flight may finish")


class ServiceSettings(GrpcSettings):
    """What every model service has (``VLMOPS_<SERVICE>__*``)."""

    model_name: str = "vlmops-model"
    max_batch_size: int = Field(32, ge=1)
    max_latency_ms: int = Field(
        5000, ge=1, description="a request still queued for the model after this is shed (503, retry later)"
    )
    max_wait_ms: float = Field(
        200.0,
        ge=0,
        description="the most a batch waits to fill to the load seen (never longer than the last batch ran; "
        "at idle it does not wait); 0: never wait",
    )
    refresh_interval_s: float = Field(10.0, gt=0, description="how often `production` is re-resolved")
    version_cache_size: int = Field(3, ge=1, description="pinned versions kept loaded besides production")
    max_items: int = Field(256, ge=1, description="items in one request")
    max_text_chars: int = Field(
        2048, ge=1, description="longer texts are rejected; texts over the model's context are truncated"
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb guard")
    precision: str = Field("auto", pattern="^(auto|fp32|fp16|bf16)$", description="auto: fp16 on CUDA, fp32 on CPU")
    access_log: bool = Field(
        False, description="BentoML's per-request access log (on: every request takes BentoML's own path)"
    )
    fast_path: bool = Field(
        True,
        description="serve the item APIs through vlmops' lean ASGI layer in front of BentoML's stack "
        "(services/fastpath.py); false: every request through BentoML's middlewares (tracing spans)",
    )
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="largest request body the fast path reads")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads for inference; default: torch's")
    workers: int = Field(
        1, ge=1, description="API worker processes, each with its own model copy (2-4 keep one GPU busy)"
    )
    max_concurrency: int = Field(
        256, ge=1, description="requests in flight per worker process; over it: 429 with Retry-After"
    )


class EmbeddingSettings(ServiceSettings):
    """The embedding service (``VLMOPS_EMBEDDING__*``)."""

    model_name: str = "vlmops-clip"
    grpc_port: int = Field(50051, ge=0, le=65535)
    max_batch_size: int = Field(64, ge=1)
    max_labels: int = Field(256, ge=1)
    decode_threads: int = Field(2, ge=1)
    compile: bool = Field(False, description="torch.compile the towers (GPU nodes; first batches are slow)")


class CaptioningSettings(ServiceSettings):
    """The captioning service (``VLMOPS_CAPTIONING__*``)."""

    model_name: str = "vlmops-captioner"
    grpc_port: int = Field(50052, ge=0, le=65535)
    max_new_tokens: int = Field(64, ge=1, description="upper bound a request may ask for")
    max_beams: int = Field(5, ge=1)


class VQASettings(ServiceSettings):
    """The VQA service (``VLMOPS_VQA__*``)."""

    model_name: str = "vlmops-vqa"
    grpc_port: int = Field(50053, ge=0, le=65535)
    max_new_tokens: int = Field(32, ge=1)
    max_text_chars: int = Field(512, ge=1)


class GroundingSettings(ServiceSettings):
    """The grounding service (``VLMOPS_GROUNDING__*``)."""

    model_name: str = "vlmops-grounder"
    grpc_port: int = Field(50054, ge=0, le=65535)
    max_queries: int = Field(32, ge=1, description="text queries per image")
    max_text_chars: int = Field(256, ge=1)


class SearchSettings(GrpcSettings):
    """The search service (``VLMOPS_SEARCH__*``)."""

    grpc_port: int = Field(50055, ge=0, le=65535)
    embedding_url: str = Field("http://127.0.0.1:3000", description="the embedding service that embeds queries")
    default_model: str = "vlmops-clip"
    max_items: int = Field(256, ge=1, description="images in one ingest request")
    max_top_k: int = Field(1000, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_text_chars: int = Field(2048, ge=1)
    thumbnail_cache_bytes: int = Field(64 * 1024 * 1024, ge=0, description="thumbnails kept in memory (LRU)")
    threads: int = Field(8, ge=1, description="requests handled at once (each waits mostly on the embedding service)")
    access_log: bool = False
    max_concurrency: int = Field(64, ge=1, description="requests in flight; over it: 429 with Retry-After")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="largest request body")
    ingest_uri_prefixes: list[str] = Field(
        default_factory=list,
        description="local folders (paths or file:// URIs) that ingest items may name by `uri` (JSON list); "
        "empty: ingest by uri is off. Paths are resolved (symlinks, '..') before the check",
    )
    ingest_uri_hosts: list[str] = Field(
        default_factory=list,
        description="remote origins ingest items may name by `uri`: scheme://host[:port] (https://images.example.com, "
        "s3://bucket); empty: no remote reads",
    )


class ExplorerSettings(BaseModel):
    """The explorer, the platform's web page (``VLMOPS_EXPLORER__*``): where it finds the services it calls
    for the browser (with the browser's key)."""

    search_url: str = "http://127.0.0.1:3001"
    embedding_url: str = "http://127.0.0.1:3000"
    captioning_url: str = "http://127.0.0.1:3002"
    vqa_url: str = "http://127.0.0.1:3003"
    grounding_url: str = "http://127.0.0.1:3004"
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body (an upload)")
    timeout_s: float = Field(120.0, gt=0, description="how long a call to a service may take")


class AuthSettings(BaseModel):
    """API keys (``VLMOPS_AUTH__*``); see ``infra.auth``."""

    keys: SecretStr = Field(
        SecretStr(""),
        description="hash lines of the keys this service accepts (`vlmops keys create`), separated by newlines; "
        "from a Secret",
    )
    disabled: bool = Field(
        False, description="serve without keys even on a non-loopback address (only behind another gate)"
    )
    key: SecretStr | None = Field(
        None, description="the key this process sends when it calls the other services (worker, search, CLI)"
    )
    audit_log: str = Field(
        "-", description="where mutating calls are recorded as JSON lines: a file path, or - (stdout)"
    )


class WorkerSettings(BaseModel):
    """Celery workers and the jobs they run (``VLMOPS_WORKER__*``)."""

    search_url: str = "http://127.0.0.1:3001"
    embedding_url: str = "http://127.0.0.1:3000"
    page_size: int = Field(
        1024, ge=1, le=4096, description="items a reindex job reads and writes per step (one index upsert each)"
    )
    inflight_pages: int = Field(2, ge=1, description="pages a job's stages may hold between them (overlapped)")
    embed: Literal["local", "service"] = Field(
        "local",
        description="who embeds for a reindex: the worker itself, loading the pinned version from the registry "
        "(GPU worker pools; the bulk paths at the model's speed), or the embedding service (CPU workers)",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="intra-op threads of a job's model on CPU; default: one less than the CPUs (the job's "
        "decode thread keeps one), or all of them for a model whose forward scales with them (timed at load: "
        "workers/embedder.py cpu_threads)",
    )
    prepare_processes: int | None = Field(
        None,
        ge=0,
        description="processes that decode, resize and crop a job's images on a GPU worker (the model's "
        "float conversion and normalisation then run on the GPU); default: the CPUs less two with a GPU, 0 on "
        "CPU (one thread beside the model, which needs the cores)",
    )
    grace_s: float = Field(
        60.0, ge=0, description="how long a replaced collection stays before the search service drops it"
    )
    visibility_timeout_s: int = Field(4 * 3600, ge=1, description="above the longest job (Redis redelivery)")
    reconcile: bool = Field(
        True, description="run the reconciler in workers of the default queue (collections follow production)"
    )
    reconcile_interval_s: float = Field(
        30.0, gt=0, description="how often a worker compares each collection with its model's production version"
    )
    retry_backoff_s: float = Field(
        30.0, gt=0, description="wait before retrying a failed reindex (doubles per failure)"
    )
    retry_backoff_max_s: float = Field(1800.0, gt=0, description="longest wait between retries of a failing reindex")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve the worker's Prometheus metrics on this port (/metrics); off if unset"
    )
    heartbeat_file: Path | None = Field(
        None,
        description="a file the worker touches from its consumer loop while it can take jobs (a liveness probe "
        "checks its age); off if unset",
    )
    heartbeat_interval_s: float = Field(10.0, gt=0, description="how often the heartbeat file is touched")


class GateSettings(BaseModel):
    """The promotion gate (``VLMOPS_GATE__*``): a candidate may not be worse than production on these."""

    metrics: list[str] = Field(
        default_factory=lambda: ["t2i_r_precision", "i2t_recall@1"],
        description="metrics of `vlmops eval` the candidate must match (JSON list in the environment)",
    )
    task_metrics: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "captioning": ["caption_word_acc"],
            "vqa": ["vqa_acc"],
            "grounding": ["grounding_recall_at_iou50"],
        },
        description="the metrics of captioning, VQA and grounding versions the candidate must match, per task",
    )
    margin: float = Field(0.0, ge=0, description="how far below production a candidate may be and still pass")
    dataset: str | None = Field(None, description="held-out pairs both versions are scored on when no eval is stored")
    max_class_drop: float | None = Field(
        None,
        ge=0,
        description="the per-class guard: refuse a candidate that loses more than this on any class for "
        "class_metric (off when unset)",
    )
    class_metric: str = Field(
        "class_r_precision", description="the per-class metric of the guard (class_recall@K, class_precision@K too)"
    )


class Settings(BaseSettings):
    """Every setting, from the environment; and, when ``VLMOPS_SECRETS_DIR`` names a folder, from the files in it,
    one a setting, named like its variable (``VLMOPS_AUTH__KEYS``): a Kubernetes Secret mounted as a volume. The
    environment wins over a file."""

    # the secrets' delimiter is given to their source, not here: pydantic-settings warns at every start
    # (a stray line in JSON logs) about a secrets option in the config when that source is not in use
    model_config = SettingsConfigDict(env_prefix="VLMOPS_", env_nested_delimiter="__", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        folder = os.environ.get(SECRETS_DIR_ENV)
        if not folder:
            return init_settings, env_settings, dotenv_settings
        secrets = NestedSecretsSettingsSource(
            file_secret_settings, secrets_dir=folder, secrets_dir_missing="error", secrets_nested_delimiter="__"
        )
        return init_settings, env_settings, dotenv_settings, secrets

    home: Path = Path(".vlmops")
    log_format: str = Field(
        "text", pattern="^(text|json)$", description="text: one readable line a record; json: one JSON object a line"
    )
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite under VLMOPS_HOME")
    artifact_root: str | None = Field(
        None,
        description="where new experiments keep model files (s3://bucket/prefix, a shared volume's file:// URI); "
        "default: the tracking server's artifact proxy with a remote tracking URI, HOME/mlartifacts otherwise",
    )
    catalog_url: str | None = Field(
        None, description="SQLAlchemy URL of the collection catalog (postgresql://...); default: sqlite under HOME"
    )
    index_path: Path | None = Field(None, description="folder of the embedded Qdrant Edge index; default: HOME/index")
    work_dir: Path | None = Field(
        None, description="job work folders (finetune checkpoints), a volume the trainers share; default: HOME/jobs"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    qdrant_url: str | None = Field(None, description="a Qdrant server; default: Qdrant Edge in-process under HOME")
    qdrant_api_key: SecretStr | None = Field(None, description="the Qdrant server's API key, if it has one")
    blob_root: str | None = Field(None, description="fsspec URI of the blob store; default: HOME/blobs")
    broker_url: str | None = Field(None, description="e.g. redis://host:6379/0; default: sqlite under HOME")
    result_backend: str | None = Field(None, description="default: the Redis broker, or sqlite under HOME")
    up_services: str = Field(
        "embedding,search,captioning,vqa,grounding,explorer", description="what `vlmops up` starts"
    )
    embedding: EmbeddingSettings = EmbeddingSettings()
    captioning: CaptioningSettings = CaptioningSettings()
    vqa: VQASettings = VQASettings()
    grounding: GroundingSettings = GroundingSettings()
    search: SearchSettings = SearchSettings()
    explorer: ExplorerSettings = ExplorerSettings()
    worker: WorkerSettings = WorkerSettings()
    gate: GateSettings = GateSettings()
    auth: AuthSettings = AuthSettings()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def remote_tracking(self) -> bool:
        """An MLflow tracking server (``http(s)://``): processes on other machines read the same registry."""
        return (self.mlflow_tracking_uri or "").startswith(("http://", "https://"))

    @property
    def artifact_location(self) -> str | None:
        """Where new experiments put their artifacts; ``None``: the tracking server decides (its artifact
        proxy, ``mlflow-artifacts:``), which every client of that server can read."""
        if self.artifact_root:
            return self.artifact_root
        if self.remote_tracking:
            return None
        return (self.home.resolve() / "mlartifacts").as_uri()

    @property
    def catalog_uri(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home.resolve() / 'catalog.db'}"

    @property
    def index_dir(self) -> Path:
        return (self.index_path or self.home / "index").resolve()

    @property
    def blob_uri(self) -> str:
        return self.blob_root or str(self.home.resolve() / "blobs")

    @property
    def jobs_dir(self) -> Path:
        """Job work folders (finetune checkpoints) on a volume every trainer shares."""
        return (self.work_dir or self.home / "jobs").resolve()

    @property
    def model_cache_dir(self) -> Path:
        return self.home.resolve() / "model-cache"

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return "fp16" if device.startswith("cuda") else "fp32"


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
