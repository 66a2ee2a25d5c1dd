"""OpenVINO on the CPU: the stored ONNX exports (models/onnx_backend.py), run in bfloat16 where the CPU computes it.

On a CPU with native bf16 arithmetic (AVX512_BF16 or AMX) the matrix products run in bf16, about twice as fast as
ONNX Runtime in fp32, with vectors within 5e-5 cosine of its own (README, Performance; `bench/engines.py`). On a CPU
without it OpenVINO ignores the bf16 hint and computes in fp32, no faster than ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def openvino_forward(file: Path, threads: int = 0) -> Callable[..., np.ndarray]:
    """An OpenVINO CPU model compiled from the ONNX `file`, as a function of numpy arrays returning float32 vectors.
    Not thread-safe: one caller at a time (a model service's forward thread)."""
    import openvino
    from openvino._offline_transformations import compress_model_transformation

    core = openvino.Core()
    model = core.read_model(str(file))
    # The compiled model keeps the weights it is given beside the bf16 copies its kernels use: given in fp16 they
    # take half the memory (CLIP's image process 907 -> 555 MB RSS), with vectors as close to fp32 as before.
    compress_model_transformation(model)
    # No pinning (on by default on Linux): each model process would pin its threads to the first cores, the same
    # ones for both models when they run fewer threads than there are cores. Unpinned: the same speed alone
    # (file texts batch 32: 49.4 / 48.9 vs 49.3 / 53.3 per s pinned), and the scheduler spreads the processes.
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16", "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(model, "CPU", config).create_infer_request()

    def forward(*arrays: np.ndarray) -> np.ndarray:
        return request.infer(list(arrays))[0]

    return forward
