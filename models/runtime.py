"""Where and how a model runs: the backend (torch or ONNX Runtime), the device and the CPU threads.

Decided without importing torch, so that a process that runs ONNX Runtime never pays for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["torch", "onnx"]
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Runtime:
    backend: Backend
    device: Device
    threads: int = 0
    """CPU threads of the model's intra-op pool; 0 leaves the library's default."""

    @classmethod
    def choose(cls, device: str = "auto", backend: str = "auto", threads: int = 0, has_onnx: bool = False) -> Runtime:
        """On a GPU torch in fp16; on the CPU ONNX Runtime when the model has an export (backend "auto"), else torch.

        Raises ValueError for a combination that cannot run: ONNX on the GPU, or ONNX for a model without an export.
        """
        on_gpu = device == "cuda" or (device == "auto" and gpu_visible())
        if backend == "onnx" and on_gpu:
            raise ValueError("the ONNX backend runs on the CPU only; use BACKEND=torch (or auto) on a GPU")
        if backend == "onnx" and not has_onnx:
            raise ValueError("the model has no ONNX export; import it again with import_models.py --force")
        if on_gpu:
            return cls("torch", "cuda", threads)
        return cls("onnx" if backend == "onnx" or (backend == "auto" and has_onnx) else "torch", "cpu", threads)


def gpu_visible() -> bool:
    """An NVIDIA GPU that this process may use and torch can drive.

    torch is asked only where an NVIDIA device exists and is not hidden (BentoML hides GPUs from a service through
    CUDA_VISIBLE_DEVICES), so that a CPU machine never imports it; a CPU build of torch then says no.
    """
    if not Path("/dev/nvidiactl").exists() or os.environ.get("CUDA_VISIBLE_DEVICES", "0") in ("", "-1"):
        return False
    import torch

    return torch.cuda.is_available()
