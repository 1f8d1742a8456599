"""A word-level tokenizer over a closed vocabulary: the demo preset's, with no download.

Ids: 0 pad, 1 eos, 2 bos, 3 unk (Gemma's special ids), then the words in order. Prompts are
lower-cased and split on whitespace and punctuation; every prompt starts with ``<bos>`` (as Gemma's
tokenizer does), so even the empty prompt has one real token; the mask is True on real tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    def __init__(self, vocabulary: Sequence[str], max_length: int):
        words = list(dict.fromkeys(w.lower() for w in vocabulary))
        self.vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, max_length] int32, mask [B, max_length] bool)``, right-padded, truncated."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        mask = np.zeros((len(prompts), self.max_length), bool)
        unk, bos = self.vocab["<unk>"], self.vocab["<bos>"]
        for i, p in enumerate(prompts):
            toks = [bos, *(self.vocab.get(w, unk) for w in _WORD.findall(p.lower()))]
            toks = toks[: self.max_length]
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = True
        return ids, mask
