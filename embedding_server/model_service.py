"""The BentoML side of a model service: loading its encoder from the store, and the API's client for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from embedding_server.batching import BatchQueue, ForwardThread
from embedding_server.model_store import Modality, find_stored, import_hint
from embedding_server.observability import MODEL_BATCH_SIZE
from embedding_server.served_model import ModelClient, ModelFailed, ModelNotLoaded, ModelUnavailable
from embedding_server.settings import Settings
from models.onnx_backend import INT8_ONNX_FILE, ONNX_FILE
from models.quantize import Quality
from models.runtime import Runtime

logger = logging.getLogger("embedding_server")

# bentoml>=1.4.30 replaces the aiohttp session behind `bentoml.depends` every `max_requests` requests or `max_age`
# seconds and closes the old one at once, failing the requests still in flight on it (about one in five at 32
# clients; bentoml issues #5540, #5544). A session that is never replaced avoids that; the retry below covers a
# keep-alive connection that the model service closed just as it was reused.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 1e12}
CONNECTION_RETRIES = 2
# Two calls in flight to a model service: one computing, the next already queued there, so the model never idles
# between batches while the API gathers the one after.
CALLS_IN_FLIGHT = 2
# A live model service answers its probe in milliseconds, even while it computes (the forward pass has its own
# thread); one that died is restarted by BentoML, which takes seconds.
ALIVE_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Loaded:
    """What a model service loaded: its encoder, or why it has none (the store lacks the model, or it failed to
    load), which every call to it is answered with."""

    encoder: Any = None
    problem: str | None = None


def load_encoder(
    modality: Modality,
    model_id: str,
    loader: Callable[[Path, Any], Any],
    settings: Settings,
    quantize: str | None = None,
) -> Loaded:
    """The model service's encoder from the store, or why there is none (logged). `quantize`: QUANTIZE's value
    for this encoder, when it is not the setting's (CLIP's text tower has no int8 export)."""
    stored = find_stored(model_id)
    if stored is None:
        logger.warning(import_hint(modality, model_id))
        return Loaded(problem=import_hint(modality, model_id))
    path = Path(stored.path)
    try:
        runtime = Runtime.choose(
            settings.device,
            settings.backend,
            settings.threads_per_model(),
            has_onnx=(path / ONNX_FILE).is_file(),
            has_pytorch_weights=stored.info.metadata.get("pytorch_weights", True),
            int8=(quantize or settings.quantize) == "int8",
        )
        if runtime.int8:
            refuse_unchecked_int8(stored)
        encoder = loader(path, runtime)
    except Exception as exc:
        logger.exception("cannot load %s model %s from %s", modality.value, model_id, stored.path)
        return Loaded(problem=f"{modality.value} model {stored.tag} failed to load: {type(exc).__name__}: {exc}")
    logger.info(
        "%s model %s (%s) loaded as %s: %s on %s, %s threads%s",
        modality.value,
        model_id,
        stored.tag,
        type(encoder).__name__,
        runtime.backend,
        runtime.device,
        runtime.threads,
        ", int8" if runtime.int8 else "",
    )
    return Loaded(encoder)


def refuse_unchecked_int8(stored: bentoml.Model) -> None:
    """Raises ValueError unless the stored model's int8 export is there and its figures, measured at import, pass
    today's quality gate (judged again here, so that a gate made stricter since applies to stores imported before)."""
    gate = stored.info.metadata.get("int8")
    if gate is not None:
        failures = Quality.from_metadata(gate).failures if "mean_cosine" in gate else gate["failures"]
        if failures:
            raise ValueError(
                f"QUANTIZE=int8: the int8 export of {stored.tag} failed its quality check "
                f"({'; '.join(failures)}), so it is not served; set QUANTIZE=none"
            )
    if gate is None or not (Path(stored.path) / INT8_ONNX_FILE).is_file():
        raise ValueError(
            f"QUANTIZE=int8: {stored.tag} has no int8 export; import it again with `python import_models.py --force "
            "--int8`, or set QUANTIZE=none"
        )


def counted_forward(model: str, forward: Callable, thread: ForwardThread) -> Callable[[Any], Awaitable[Any]]:
    """`forward` as a model service runs it: in the process's forward thread, one call after the other (the API
    already sends whole batches), each batch's size counted in the `model` series."""

    def counted(inputs):
        MODEL_BATCH_SIZE.labels(model).observe(len(inputs))
        return forward(inputs)

    return thread.runs(counted)


class LoadedOnFirstUse:
    """A model service's forward pass for an encoder that is loaded by the first call that needs it (in the forward
    thread, so that no pass runs beside the loading), so that a model nobody calls costs no memory. `preload()`
    loads it now, for a server that must not make its first caller wait."""

    def __init__(
        self, load: Callable[[], Loaded], forward_for: Callable[[Any], Callable], thread: ForwardThread
    ) -> None:
        self._load = load
        self._forward_for = forward_for
        self._thread = thread
        self._forward: Callable | None = None
        self._loading = asyncio.Lock()
        self.problem: str | None = None
        """Why the last attempt to load it failed."""

    async def __call__(self, inputs: Any) -> Any:
        if self._forward is None:
            async with self._loading:
                if self._forward is None:
                    self._take(await self._thread.call(self._load))
        if self._forward is None:
            raise ServiceUnavailable(self.problem)
        return await self._forward(inputs)

    def preload(self) -> None:
        self._take(self._load())  # on failure the first call tries again, and answers 503 if it fails too

    def _take(self, loaded: Loaded) -> None:
        self.problem = loaded.problem
        if loaded.encoder is not None:
            self._forward = self._forward_for(loaded.encoder)


def remote_client(
    proxy: Any,
    max_batch_size: int,
    max_queued: int,
    method: str = "embed",
    problem_method: str = "load_problem",
    max_batch_tokens: int | None = None,
) -> ModelClient:
    """The API's client for a model service reached through `bentoml.depends`, calling its `method` (and
    `problem_method` to learn why it has no model); concurrent requests are sent together, up to `max_batch_size`
    items (and, for token ids, `max_batch_tokens` tokens) a call, with at most `max_queued` items waiting."""
    client = proxy.to_async

    async def load_problem() -> str | None:
        return await client.call(problem_method) or None

    async def answers_at_once() -> bool:
        try:
            await asyncio.wait_for(load_problem(), ALIVE_PROBE_TIMEOUT_S)
        except Exception:
            return False
        return True

    async def call_embed(inputs: object):
        for attempt in range(CONNECTION_RETRIES + 1):
            try:
                return await client.call(method, inputs)
            except aiohttp.ClientConnectionError as exc:
                # Embedding is idempotent, so a call lost on a keep-alive connection that the model service closed
                # as it was reused is sent again. A model service that died with the call fails it instead: the
                # retry would wait for its restart, seconds, while the caller can be told to come back.
                if attempt == CONNECTION_RETRIES or not await answers_at_once():
                    raise ModelUnavailable(f"cannot reach the model service ({type(exc).__name__})") from exc
            except BentoMLException as exc:
                if exc.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                    raise ModelNotLoaded(f"{exc.error_code.value} {exc.error_code.phrase}") from exc
                raise ModelFailed(f"{exc.error_code.value} {exc.error_code.phrase}") from exc
            except TimeoutError as exc:
                raise ModelUnavailable("the model service timed out") from exc

    queue = BatchQueue(
        call_embed, max_batch_size, CALLS_IN_FLIGHT, max_queued, max_batch_tokens, len if max_batch_tokens else None
    )
    return ModelClient(embed=queue.submit, load_problem=load_problem)
