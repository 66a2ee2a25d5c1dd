"""One model as the API sees it: its stored files, the client that reaches its model service, or why it can't be
used; and what a failed call to it means for the request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedding_server.batching import QueueFull
from embedding_server.errors import ApiError, ErrorCode
from embedding_server.model_store import Modality, find_stored, import_hint
from embedding_server.observability import record_items
from models.vectors import l2_normalize

HEALTH_PROBE_TIMEOUT_S = 2.0


class ModelUnavailable(Exception):
    """The model service could not be reached, or is not ready."""


class ModelNotLoaded(ModelUnavailable):
    """The model service answered that it has no model loaded; it tells why when asked (`load_problem`)."""


class ModelFailed(Exception):
    """The model service answered with an error: the forward pass raised."""


@dataclass(frozen=True)
class ModelClient:
    """How the API reaches one model service."""

    embed: Callable[[object], Awaitable[np.ndarray]]
    """Raw (un-normalised) vectors for token ids or uint8 pixels; raises ModelUnavailable."""
    load_problem: Callable[[], Awaitable[str | None]]
    """Why the model service has no model loaded (it failed to load), or None when it has one."""


@dataclass
class Model:
    """One model as the API sees it: its stored files, its client, or why it can't be used.

    Three of them: the text model, CLIP's image tower and CLIP's text tower; the two CLIP towers are one stored
    model served by one model service."""

    name: str
    """text, image or image_text: the metrics label and the word in messages."""
    modality: Modality
    model_id: str
    client: ModelClient | None
    path: Path | None = None
    dimension: int = 0
    metadata: dict = field(default_factory=dict)
    created: int = 0
    """When the model was imported, in Unix seconds."""
    problem: str | None = None

    @classmethod
    def configure(cls, name: str, modality: Modality, model_id: str, client: ModelClient | None) -> Model:
        if not model_id or client is None:
            return cls(
                name,
                modality,
                model_id,
                None,
                problem=f"{modality.value} model is disabled ({modality.value.upper()}_MODEL_NAME is empty)",
            )
        stored = find_stored(model_id)
        if stored is None:
            return cls(name, modality, model_id, client, problem=import_hint(modality, model_id))
        metadata = dict(stored.info.metadata)
        model = cls(
            name,
            modality,
            model_id,
            client,
            Path(stored.path),
            int(metadata["dimension"]),
            metadata,
            int(stored.info.creation_time.timestamp()),
        )
        if name == "image_text" and not ((model.path / "tokenizer.json").is_file() and "logit_scale" in metadata):
            model.problem = (
                f"the stored CLIP model {stored.tag} was imported without its text tower's tokenizer and logit scale; "
                "import it again with `python import_models.py --force`"
            )
        return model

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def require(self, index: int | None = None) -> ModelClient:
        if self.problem is not None or self.client is None:
            raise ApiError(ErrorCode.MODEL_UNAVAILABLE, self.problem or "model is not available", index)
        return self.client

    async def embed(self, inputs: object, normalize: bool) -> np.ndarray:
        try:
            vectors = await self.require().embed(inputs)
        except ModelNotLoaded as exc:
            failed = f"{self.modality.value} model service is unavailable: {exc}"
            raise ApiError(ErrorCode.MODEL_UNAVAILABLE, await self.health_problem(failed) or failed) from exc
        except ModelUnavailable as exc:
            raise ApiError(ErrorCode.MODEL_UNAVAILABLE, f"{self.modality.value} model service failed: {exc}") from exc
        except ModelFailed as exc:
            raise ApiError(ErrorCode.MODEL_ERROR, f"{self.modality.value} model failed on this batch: {exc}") from exc
        except QueueFull as exc:
            raise ApiError(
                ErrorCode.OVERLOADED, f"the {self.modality.value} model is busy ({exc}); retry after a second"
            ) from exc
        record_items(self.name, len(vectors))
        return l2_normalize(vectors) if normalize else vectors

    async def health_problem(self, when_unreachable: str = "model service is not answering") -> str | None:
        """Why the model can't be used now, or None when it can: what the API knows (not configured, not in the
        store), else what its model service says (it failed to load the model), else `when_unreachable`."""
        if self.problem is not None or self.client is None:
            return self.problem or "model is not available"
        try:
            return await asyncio.wait_for(self.client.load_problem(), HEALTH_PROBE_TIMEOUT_S)
        except Exception:  # unreachable, restarting or hung: all mean "not answering"
            return when_unreachable
