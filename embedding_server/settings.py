"""The one typed settings object, read once from the environment."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# LOG_LEVEL, by its lower-case name: Python's levels, and those of the Node loggers (winston, pino) that the Node
# model-worker's .env may name, each as the Python level that shows at least what it showed.
LOG_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "warn": "WARNING",
    "fatal": "CRITICAL",
    "http": "DEBUG",
    "verbose": "DEBUG",
    "trace": "DEBUG",
    "silly": "DEBUG",
}


class Settings(BaseSettings):
    """Every tunable of the server; each field is the environment variable of the same name in upper case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    port: int = Field(3000, description="HTTP port (`bentoml serve --port` wins); 3000 is the one the image exposes.")
    host: str = Field("0.0.0.0", description="Address to bind.")
    text_model_name: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="Hugging Face id of the text model; empty disables text routes.",
    )
    image_model_name: str = Field(
        "openai/clip-vit-base-patch32",
        description="Hugging Face id of the CLIP model; empty runs a text-only server.",
    )
    text_max_batch_size: int = Field(
        128, ge=1, description="Most texts in one batch of the text model (it runs them 32 at a time, by length)."
    )
    image_max_batch_size: int = Field(16, ge=1, description="Most images in one batch of the image model.")
    max_batch_tokens: int = Field(
        4096,
        ge=1,
        description="Most tokens in one batch of a text model (text-embeddings-inference's max_batch_tokens): a batch "
        "of long texts takes about a second on a 2-core CPU, so that a short request queued behind them waits no "
        "longer; a request over half a batch is sent in parts of at most half a batch.",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="The Node model-worker's one batch size: TEXT_MAX_BATCH_SIZE and IMAGE_MAX_BATCH_SIZE where "
        "those are not set.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO",
        description="Python log level of the server's own loggers (embedding_server.*, models.*); any case, and the "
        "Node loggers' names (LOG_LEVELS).",
    )
    max_items_per_request: int = Field(256, ge=1)
    max_text_chars: int = Field(100_000, ge=1)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest request body, checked before it is parsed (413 past it)."
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="Deadline of one request, from its first byte to its answer (504 past it)."
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="Seconds the server goes on serving after SIGTERM while /readyz and /health answer 503, so that a "
        "load balancer polling them stops sending it requests before it closes its listener (the Kubernetes "
        "manifests set 5).",
    )
    max_queued_items: int = Field(
        2048, ge=1, description="Items waiting for each model beyond those it computes; past it, 503 and Retry-After."
    )
    clip_text_tower: Literal["lazy", "eager"] = Field(
        "lazy",
        description="When CLIP's text tower (/embed/image-text, /classify/image) is loaded: at its first call, so that "
        "a server that never uses it does not hold its ~190 MB, or at start.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the models run.")
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto",
        description="auto: ONNX Runtime on the CPU when the stored model has an export, torch on a GPU or otherwise; "
        "openvino: the same export on OpenVINO, in bf16 where the CPU has bf16 arithmetic (about twice as fast).",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: the text model and CLIP's image tower run their int8 exports (import_models.py --int8) on "
        "ONNX Runtime on the CPU, about 1.7 times as fast as fp32 on file-length texts; a model whose export is "
        "missing or failed the quality gate at import is not served (README, int8). CLIP's text tower stays fp32.",
    )
    model_threads: int = Field(
        0, ge=0, description="CPU threads of each model process; 0 uses every core the process may run on."
    )
    decode_token_ids: bool = Field(
        True,
        description="/v1/embeddings: read token-id arrays (what LangChain's OpenAIEmbeddings sends by default) as "
        "tiktoken's cl100k_base ids and embed their text; false refuses them (422).",
    )
    tracing: bool = Field(
        False,
        description="BentoML's OpenTelemetry span for each request and call between services. Off: BentoML exports "
        "no span unless its tracing exporter is configured, and making them took a fifth of the API's CPU on small "
        "requests.",
    )
    api_key: str = Field(
        "", description="When set, every route but /health, /livez, /readyz and /metrics needs `Bearer <key>`."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins that browsers may call the API from, or *; empty: none (closed)."
    )
    allow_image_urls: bool = Field(
        False, description="Accept http(s) URLs as image content; the server fetches them, public addresses only."
    )
    image_url_allowlist: str = Field(
        "",
        description="Comma-separated hosts (names or IP literals, exact, any case) fetched even when they resolve to "
        "non-public addresses.",
    )
    image_fetch_timeout_s: float = Field(
        5.0, gt=0, description="Seconds an image fetch waits to connect, and for each read of the answer."
    )
    image_fetch_deadline_s: float = Field(
        20.0,
        gt=0,
        description="Seconds a whole image fetch may take: DNS, redirects, TLS, status line, headers and body.",
    )
    image_fetch_concurrency: int = Field(
        8,
        ge=1,
        description="Image URLs fetched at once by each API worker (their DNS lookups in threads of their own); "
        "more wait their turn.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="The Node model-worker's model cache: where import_models.py keeps its hub downloads. The "
        "server does not read it (legacy_setting_notes).",
    )
    # The Node model-worker's .env sets these two, which the server accepts so that the file runs unchanged, and
    # does not act on (legacy_setting_notes).
    max_memory_mb: int | None = Field(None, ge=1, description="The Node model-worker's memory cap; not enforced.")
    node_env: str = Field("", description="The Node model-worker's NODE_ENV; no meaning here.")

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @field_validator("log_level", mode="before")
    @classmethod
    def _python_level(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        level = LOG_LEVELS.get(value.lower())
        if level is None:
            raise ValueError(f"{value!r} is not a log level; accepted, in any case: {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _max_batch_size_sets_both_models(self) -> Settings:
        if self.max_batch_size is not None:
            for name in ("text_max_batch_size", "image_max_batch_size"):
                if name not in self.model_fields_set:
                    setattr(self, name, self.max_batch_size)
        return self

    @model_validator(mode="after")
    def _some_model_is_served(self) -> Settings:
        if not self.text_model_name and not self.image_model_name:
            raise ValueError("TEXT_MODEL_NAME and IMAGE_MODEL_NAME are both empty: nothing to serve")
        return self

    @model_validator(mode="after")
    def _a_whole_request_fits_the_queue(self) -> Settings:
        if self.max_queued_items < self.max_items_per_request:
            raise ValueError(
                f"MAX_QUEUED_ITEMS ({self.max_queued_items}) is below MAX_ITEMS_PER_REQUEST "
                f"({self.max_items_per_request}): a full request could never wait for its turn"
            )
        return self

    @model_validator(mode="after")
    def _int8_runs_on_onnx_runtime(self) -> Settings:
        if self.quantize == "int8" and (self.backend in ("torch", "openvino") or self.device == "cuda"):
            raise ValueError(
                f"QUANTIZE=int8 runs on ONNX Runtime on the CPU only, not with BACKEND={self.backend} "
                f"DEVICE={self.device}; use BACKEND=auto or onnx on the CPU, or QUANTIZE=none"
            )
        return self

    def legacy_setting_notes(self) -> list[str]:
        """A warning, to log once at start, for each setting of the Node model-worker's .env that is set and that
        the server does not act on: the file runs unchanged, and nothing in it is ignored silently."""
        notes = []
        if self.model_cache_dir is not None:
            notes.append(
                f"MODEL_CACHE_DIR={self.model_cache_dir} is not read by the server, which loads its models from the "
                "BentoML model store ($BENTOML_HOME/models); only import_models.py uses it, to keep its hub downloads"
            )
        if self.max_memory_mb is not None:
            notes.append(
                f"MAX_MEMORY_MB={self.max_memory_mb} is not enforced by the server; cap its memory with the "
                "container's memory limit (the Kubernetes manifests set one)"
            )
        if self.node_env:
            notes.append(f"NODE_ENV={self.node_env} has no meaning for this server; ignored")
        return notes

    def threads_per_model(self) -> int:
        """CPU threads for one model process's thread pool."""
        return self.model_threads or usable_cores()


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def get_settings() -> Settings:
    return Settings()
