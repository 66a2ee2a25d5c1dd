"""Text to token ids, with the length of each text before the cut; no weights and no torch needed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer


@dataclass(frozen=True)
class TokenizedText:
    ids: list[int]
    """Token ids the model sees: special tokens included, cut to the model's limit."""
    token_count: int
    """Tokens of the whole text, special tokens included, before any cut."""
    truncated: bool


class TextTokenizer:
    """Turns texts into the model's token ids and says how long each text was; needs no weights."""

    def __init__(self, tokenizer, max_tokens: int) -> None:
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_token_id: int = tokenizer.pad_token_id or 0

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        return cls(AutoTokenizer.from_pretrained(str(path)), max_sequence_length(path))

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        full = self._tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        # Only texts over the limit are tokenised again, with the tokenizer's own cut, so that the special tokens
        # and the cut are exactly what the model's reference implementation produces.
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_tokens]
        cut = (
            self._tokenizer([texts[i] for i in long], truncation=True, max_length=self.max_tokens)["input_ids"]
            if long
            else []
        )
        cut_ids = dict(zip(long, cut, strict=True))
        return [
            TokenizedText(ids=cut_ids.get(i, ids), token_count=len(ids), truncated=i in cut_ids)
            for i, ids in enumerate(full)
        ]


def max_sequence_length(path: str | Path) -> int:
    """The sentence-transformers `max_seq_length` when the folder has one, else what the model can take."""
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    config = AutoConfig.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return min(tokenizer.model_max_length, config.max_position_embeddings)
