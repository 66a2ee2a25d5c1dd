"""Text to token ids, with the length of each text before the cut.

Uses the `tokenizers` library on the model's tokenizer.json, not transformers: transformers imports torch, and the
API process, which tokenises, must stay small.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenizedText:
    ids: list[int]
    """Token ids the model sees: special tokens included, cut to the model's limit."""
    token_count: int
    """Tokens of the whole text, special tokens included, before any cut."""
    truncated: bool


@dataclass(frozen=True)
class Token:
    """One token of a text, as text-embeddings-inference's /tokenize shows it."""

    id: int
    text: str
    special: bool
    start: int | None
    """Offsets in the text, in characters; None for a special token."""
    stop: int | None


class TextTokenizer:
    """Turns texts into the model's token ids and says how long each text was; needs no weights."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, pad_token_id: int) -> None:
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        # The file's own padding and truncation settings (all-MiniLM-L6-v2 ships both at 128) are not the model's
        # limit: one tokenizer sees whole texts, to count them, the other cuts at `max_tokens` as transformers does.
        self._whole = tokenizer
        self._whole.no_padding()
        self._whole.no_truncation()
        self._cutting = {side: Tokenizer.from_str(tokenizer.to_str()) for side in ("right", "left")}
        for side, cutting in self._cutting.items():
            cutting.enable_truncation(max_tokens, direction=side)

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return cls(tokenizer, max_sequence_length(path), pad_token_id(tokenizer, path))

    def tokenize(self, texts: Sequence[str], side: Literal["right", "left"] = "right") -> list[TokenizedText]:
        """The texts' ids; one over the limit loses its end (or, with `side="left"`, its beginning)."""
        full = [encoding.ids for encoding in self._whole.encode_batch(list(texts))]
        # Only texts over the limit are tokenised again, with the tokenizer's own cut, so that the special tokens
        # and the cut are exactly what the model's reference implementation produces.
        long = [i for i, ids in enumerate(full) if len(ids) > self.max_tokens]
        cut = self._cutting[side].encode_batch([texts[i] for i in long]) if long else []
        cut_ids = {i: encoding.ids for i, encoding in zip(long, cut, strict=True)}
        return [
            TokenizedText(ids=cut_ids.get(i, ids), token_count=len(ids), truncated=i in cut_ids)
            for i, ids in enumerate(full)
        ]

    def tokens(self, text: str, add_special_tokens: bool = True) -> list[Token]:
        """Every token of `text`, uncut, with the part of the text it stands for."""
        encoding = self._whole.encode(text, add_special_tokens=add_special_tokens)
        return [
            Token(id, token, True, None, None) if special else Token(id, text[start:stop], False, start, stop)
            for id, token, special, (start, stop) in zip(
                encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
            )
        ]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._whole.decode(list(ids), skip_special_tokens=skip_special_tokens)


def pad_token_id(tokenizer: Tokenizer, path: Path) -> int:
    """The pad id, from wherever the model's files say it: tokenizer.json's padding, the tokenizer config's pad
    token (a string or an added-token object), or the model config; 0 when none does."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    pad_token = read_json(path / "tokenizer_config.json").get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    pad_id = tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
    if pad_id is None:
        pad_id = read_json(path / "config.json").get("pad_token_id")
    return int(pad_id or 0)


def max_sequence_length(path: str | Path) -> int:
    """The sentence-transformers `max_seq_length` when the folder has one, else what the model can take."""
    path = Path(path)
    st_config = read_json(path / "sentence_bert_config.json")
    if "max_seq_length" in st_config:
        return int(st_config["max_seq_length"])
    config = read_json(path / "config.json")
    positions = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    limits = [read_json(path / "tokenizer_config.json").get("model_max_length"), positions]
    # transformers writes a huge number as model_max_length when the tokenizer has no limit of its own.
    return min(int(limit) for limit in limits if isinstance(limit, int | float) and limit < 1e9)


def read_json(file: Path) -> dict:
    return json.loads(file.read_text()) if file.is_file() else {}
