"""The real service with faults in its forward passes, for the tests only: `bentoml serve tests.faulty_service`.

FAULT_FORWARD_DELAY_S: seconds added to every forward pass. FAULT_FAIL_BATCH_SIZE: a forward pass of exactly this
many items raises. Both are read here, in every process (each BentoML worker imports this module), and the
production settings know nothing of them.
"""

from __future__ import annotations

import functools
import os
import time

from models.image import ImageEncoder
from models.text import TextEncoder  # CLIP's text tower is one too

DELAY_S = float(os.environ.get("FAULT_FORWARD_DELAY_S", "0"))
FAIL_BATCH_SIZE = int(os.environ.get("FAULT_FAIL_BATCH_SIZE", "0"))


def faulty(forward):
    @functools.wraps(forward)
    def run(encoder, inputs):
        time.sleep(DELAY_S)
        if len(inputs) == FAIL_BATCH_SIZE:
            raise RuntimeError(f"fault injected by FAULT_FAIL_BATCH_SIZE={FAIL_BATCH_SIZE}")
        return forward(encoder, inputs)

    return run


TextEncoder.embed_token_ids = faulty(TextEncoder.embed_token_ids)
ImageEncoder.embed_pixels = faulty(ImageEncoder.embed_pixels)

from service import EmbeddingAPI  # noqa: E402 - the service's encoders are the patched ones

__all__ = ["EmbeddingAPI"]
