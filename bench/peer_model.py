"""The peer's model folders, made with the peer's own tools in its venv (`.venv-peers/bin/python -m bench.peer_model`).

    python -m bench.peer_model SOURCE OUT

From SOURCE (the sentence-transformers folder of MiniLM) it writes into OUT:
- `torch/`: SOURCE as it is, for `--engine torch` (sentence-transformers, which cuts at its max_seq_length, 256);
- `onnx/`: SOURCE plus `model.onnx`, optimum's ONNX export (what a hub repository ships for `--engine optimum`), with
  `max_position_embeddings` set to 256 in config.json: infinity's optimum engine cuts texts at that figure (512 for
  MiniLM), and this is the only way to make it cut where sentence-transformers and our server do;
- `onnx-int8/`: `onnx/` plus `model_quantized.onnx`, optimum's dynamic int8 quantisation for AVX-512 VNNI (per channel),
  the file infinity's optimum engine prefers on a CPU (any `*quantize*` ONNX file).

Each file sits at the folder's top level, as the peer is started with the folder as its working directory and
`--model-id .`: infinity names the file to load by its path as globbed from the model id, optimum 1.x compares that with
the bare file name, so any other model id fails with "Trying to load … but only found model.onnx".
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

MAX_TOKENS = 256


def export_onnx(source: Path, folder: Path) -> None:
    """optimum's feature-extraction export of `source` into `folder` (model.onnx, outputs last_hidden_state)."""
    import torch.onnx
    from optimum.exporters.onnx import main_export

    # torch ≥ 2.9 exports with dynamo by default, whose output optimum 1.x cannot handle; the TorchScript exporter is
    # the one optimum was written for.
    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
    with tempfile.TemporaryDirectory() as scratch:
        main_export(str(source), output=scratch, task="feature-extraction", do_validation=True)
        shutil.move(Path(scratch) / "model.onnx", folder / "model.onnx")


def quantize_int8(folder: Path, into: Path) -> None:
    """optimum's dynamic int8 quantisation of `folder`'s model.onnx, written as `into`/model_quantized.onnx."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
    with tempfile.TemporaryDirectory() as scratch:
        quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False), save_dir=scratch)
        shutil.move(Path(scratch) / "model_quantized.onnx", into / "model_quantized.onnx")


def cut_at(folder: Path, tokens: int) -> None:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["max_position_embeddings"] = tokens
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.copytree(source, out / "torch", ignore=shutil.ignore_patterns("README.md"))
    onnx = out / "onnx"
    shutil.copytree(out / "torch", onnx, ignore=shutil.ignore_patterns("*.safetensors"))
    export_onnx(source, onnx)
    cut_at(onnx, MAX_TOKENS)
    shutil.copytree(onnx, out / "onnx-int8")
    quantize_int8(onnx, out / "onnx-int8")


if __name__ == "__main__":
    main()
