"""ONNX Runtime on the CPU: exporting the encoders' torch modules, and running the exports without torch."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.runtime import Runtime

ONNX_FILE = Path("onnx") / "model.onnx"
"""Where a stored model keeps its export, relative to the model's folder."""
INT8_ONNX_FILE = Path("onnx") / "model.int8.onnx"
"""Where a stored model keeps the int8 version of ONNX_FILE (models/quantize.py), when it was imported with one."""
CLIP_TEXT_ONNX_FILE = Path("onnx") / "text_model.onnx"
"""Where a stored CLIP model keeps the export of its text tower, beside the image tower's ONNX_FILE."""

TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixels",)


def export_text_model(folder: Path) -> Path:
    """Writes `folder/ONNX_FILE` for the text model in `folder`, with its attention fused for ONNX Runtime."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from models.torch_backend import load_text_module

    # The eager attention exports as plain ops that ONNX Runtime's optimiser recognises and fuses into one kernel.
    module = load_text_module(folder, attention="eager")
    # A padded row in the example, so that nothing specialises the graph to a mask of all ones.
    example = (torch.ones((2, 8), dtype=torch.long), torch.tensor([[1] * 8, [1] * 5 + [0] * 3]))
    target = folder / ONNX_FILE
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    _export(module, example, TEXT_INPUTS, axes, target)
    config = module.encoder.config
    fused = optimize_model(
        str(target), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    fused.save_model_to_file(str(target))
    return target


def export_clip_text_model(folder: Path) -> Path:
    """Writes `folder/CLIP_TEXT_ONNX_FILE` for the text tower of the CLIP model in `folder`."""
    import torch

    from models.torch_backend import load_clip_text_module

    module = load_clip_text_module(folder, attention="eager")
    eos = module.text.config.eos_token_id
    # Two rows of different lengths, each ending in its end-of-text token as the tokenizer makes them, the shorter
    # one padded: the pooling picks each row's end-of-text position, whatever the padding.
    example = (
        torch.tensor([[eos - 1, 5, 6, 7, 8, 9, 10, eos], [eos - 1, 5, 6, 7, eos, eos, eos, eos]]),
        torch.tensor([[1] * 8, [1] * 5 + [0] * 3]),
    )
    target = folder / CLIP_TEXT_ONNX_FILE
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    _export(module, example, TEXT_INPUTS, axes, target)
    return target


def export_image_model(folder: Path) -> Path:
    """Writes `folder/ONNX_FILE` for the CLIP vision tower in `folder`: uint8 pixels (N, H, W, 3) in, features out."""
    import torch

    from models.preprocess import ImagePreprocessor
    from models.torch_backend import load_image_module

    preprocessor = ImagePreprocessor.from_dir(folder)
    module = load_image_module(folder, preprocessor.mean, preprocessor.std)
    size = module.vision.config.image_size
    example = (torch.zeros((2, size, size, 3), dtype=torch.uint8),)
    target = folder / ONNX_FILE
    _export(module, example, IMAGE_INPUTS, {"pixels": {0: "batch"}}, target)
    return target


def _export(module, example: tuple, inputs: tuple[str, ...], axes: dict, target: Path) -> None:
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes that the dynamic axes cover
        torch.onnx.export(
            module,
            example,
            str(target),
            input_names=list(inputs),
            output_names=["embeddings"],
            dynamic_axes={**axes, "embeddings": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def onnx_forward(file: Path, threads: int = 0) -> Callable[..., np.ndarray]:
    """An ONNX Runtime CPU session for `file` as a function of numpy arrays returning float32 vectors."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: the cores are shared with the API process and the other model.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Weights allocated outside the arena: the arena rounds them up to its chunk sizes (CLIP: 200 MB more RSS).
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(*arrays: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(names, arrays, strict=True)))[0]

    return forward


def model_export(folder: Path, runtime: Runtime) -> Path:
    """The export of the model in `folder` that `runtime` runs: fp32, or int8."""
    return folder / (INT8_ONNX_FILE if runtime.int8 else ONNX_FILE)


def export_forward(file: Path, runtime: Runtime) -> Callable[..., np.ndarray]:
    """The ONNX export `file` on the runtime's CPU engine: ONNX Runtime, or OpenVINO for backend "openvino"."""
    if runtime.backend == "openvino":
        from models.openvino_backend import openvino_forward

        return openvino_forward(file, runtime.threads)
    return onnx_forward(file, runtime.threads)
