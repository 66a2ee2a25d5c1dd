"""Where and how a model runs: the backend (torch, ONNX Runtime or OpenVINO), the device and the CPU threads.

Decided without importing torch, so that a process that runs ONNX Runtime never pays for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["torch", "onnx", "openvino"]
EXPORT_BACKENDS = ("onnx", "openvino")
"""The backends that run the stored ONNX exports, on the CPU, without torch."""
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Runtime:
    backend: Backend
    device: Device
    threads: int = 0
    """CPU threads of the model's intra-op pool; 0 leaves the library's default."""
    int8: bool = False
    """Runs the model's int8 export (models/quantize.py), on ONNX Runtime on the CPU."""

    @property
    def runs_export(self) -> bool:
        return self.backend in EXPORT_BACKENDS

    @classmethod
    def choose(
        cls,
        device: str = "auto",
        backend: str = "auto",
        threads: int = 0,
        has_onnx: bool = False,
        has_pytorch_weights: bool = True,
        int8: bool = False,
    ) -> Runtime:
        """On a GPU torch in fp16; on the CPU ONNX Runtime when the model has an export (backend "auto"), else torch.
        A model stored with its ONNX export alone runs on ONNX Runtime on the CPU, and torch is not even asked
        whether a GPU is there. Backend "openvino" runs the same export on OpenVINO (models/openvino_backend.py).

        Raises ValueError for a combination that cannot run: an export's backend on the GPU or for a model without an
        export, torch for a model without PyTorch weights, int8 anywhere but on ONNX Runtime on the CPU.
        """
        on_gpu = device == "cuda" or (device == "auto" and has_pytorch_weights and gpu_visible())
        if backend in EXPORT_BACKENDS and on_gpu:
            raise ValueError(f"the {backend} backend runs on the CPU only; use BACKEND=torch (or auto) on a GPU")
        if backend in EXPORT_BACKENDS and not has_onnx:
            raise ValueError("the model has no ONNX export; import it again with import_models.py --force")
        if on_gpu:
            chosen_backend = "torch"
        elif backend in EXPORT_BACKENDS:
            chosen_backend = backend
        else:
            chosen_backend = "onnx" if backend == "auto" and has_onnx else "torch"
        chosen = cls(chosen_backend, "cuda" if on_gpu else "cpu", threads, int8)
        if int8 and chosen.backend != "onnx":
            raise ValueError(
                f"QUANTIZE=int8 runs on ONNX Runtime on the CPU only, and this model would run on {chosen.backend} on "
                f"{chosen.device}; set QUANTIZE=none"
            )
        if chosen.backend == "torch" and not has_pytorch_weights:
            raise ValueError(
                "the model was stored with its ONNX export alone (import_models.py --onnx-only), which runs on the "
                "CPU with BACKEND=auto or onnx; import it without --onnx-only for torch or a GPU"
            )
        return chosen


def gpu_visible() -> bool:
    """An NVIDIA GPU that this process may use and torch can drive.

    torch is asked only where an NVIDIA device exists and is not hidden (BentoML hides GPUs from a service through
    CUDA_VISIBLE_DEVICES), so that a CPU machine never imports it; a CPU build of torch then says no.
    """
    if not Path("/dev/nvidiactl").exists() or os.environ.get("CUDA_VISIBLE_DEVICES", "0") in ("", "-1"):
        return False
    import torch

    return torch.cuda.is_available()
