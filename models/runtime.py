"""Where and how a model runs: device, dtype and torch threads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def choose(cls, device: str = "auto", threads: int | None = None) -> Runtime:
        """The GPU in fp16 when one is visible (or asked for), else the CPU in fp32 with `threads` threads."""
        if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
            return cls(torch.device("cuda"), torch.float16)
        if threads:
            torch.set_num_threads(threads)
        return cls(torch.device("cpu"), torch.float32)
