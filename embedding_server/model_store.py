"""How the models are named and found in the BentoML model store (shared by import_models.py and the services)."""

from __future__ import annotations

import re
from enum import Enum

import bentoml
from bentoml.exceptions import NotFound


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"


def store_name(model_id: str) -> str:
    """A valid BentoML tag name for a Hugging Face id: `sentence-transformers/all-MiniLM-L6-v2` ->
    `sentence-transformers--all-minilm-l6-v2`."""
    return re.sub(r"[^a-z0-9._-]", "-", model_id.lower().replace("/", "--"))[:63]


def find_stored(model_id: str) -> bentoml.Model | None:
    """The newest stored version of the model, or None when it has not been imported."""
    try:
        return bentoml.models.get(store_name(model_id))
    except NotFound:
        return None


def import_hint(modality: Modality, model_id: str) -> str:
    """What to run to put a missing model into the store."""
    return (
        f"{modality.value} model {model_id!r} is not in the BentoML model store; run `python import_models.py` "
        f"(or `--{modality.value}-source DIR` to import it from a local folder)"
    )


def bento_model_reference(model_id: str) -> bentoml.models.BentoModel | None:
    """The reference a model service declares so that `bentoml build` packs the model into the Bento.

    Only a stored model is declared: `bentoml serve` refuses to start when a declared model is missing, and a
    missing model must leave the server up, answering 503 with the way to import it. (`make build` runs
    import_models.py first and stops when a model cannot be imported, so a Bento is not built without one.)
    """
    stored = find_stored(model_id) if model_id else None
    return bentoml.models.BentoModel(stored.tag) if stored is not None else None
