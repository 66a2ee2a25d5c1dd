"""How the models are named and found in the BentoML model store (shared by import_models.py and the services)."""

from __future__ import annotations

import re
from enum import Enum

import bentoml
from bentoml.exceptions import NotFound


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"


# The transformers.js conversions (ONNX files for Node and the browser) that the Node model-worker this server
# replaces was configured with, by lower-case id, and the model each was converted from. The original's weights are
# what this server imports and runs (exporting them to ONNX itself), so a conversion's id stands for its original,
# at import and in the store.
CONVERTED_FROM = {
    "xenova/all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "xenova/distilbert-base-nli-stsb-mean-tokens": "sentence-transformers/distilbert-base-nli-stsb-mean-tokens",
    "xenova/clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "xenova/clip-vit-base-patch16": "openai/clip-vit-base-patch16",
}


def hub_model_id(model_id: str) -> str:
    """The Hugging Face id of the model that serves `model_id`: the model a transformers.js conversion was converted
    from (`Xenova/all-MiniLM-L6-v2` -> `sentence-transformers/all-MiniLM-L6-v2`, any case), else `model_id`."""
    return CONVERTED_FROM.get(model_id.lower(), model_id)


def store_name(model_id: str) -> str:
    """A valid BentoML tag name for a Hugging Face id, a conversion's being its original's:
    `sentence-transformers/all-MiniLM-L6-v2` and `Xenova/all-MiniLM-L6-v2` ->
    `sentence-transformers--all-minilm-l6-v2`."""
    return re.sub(r"[^a-z0-9._-]", "-", hub_model_id(model_id).lower().replace("/", "--"))[:63]


def find_stored(model_id: str) -> bentoml.Model | None:
    """The newest stored version of the model (of its original, for a transformers.js conversion), or None when it
    has not been imported."""
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
