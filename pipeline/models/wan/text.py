"""Wan's text conditioning: the UMT5 encoder and tokenizer through transformers.

As WanPipeline does, a prompt is tokenized to at most `max_length` tokens (512 for Wan2.1), run
through `UMT5EncoderModel`, cut to its real tokens and zero-padded back to `max_length`: the
transformer's cross-attention sees zeros where the padding was. Embeddings are cached per
distinct text (LRU), so weighted prompt lists, blends and transitions (pipeline/models/blending.py)
cost one encoder call per new text only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

MAX_LENGTH = 512
CACHE_SIZE = 64


class TextEncoder:
    def __init__(self, tokenizer: Any, encoder: Any, *, max_length: int = MAX_LENGTH,
                 cache_size: int = CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_length = max_length
        self.cache_size = cache_size
        self.device = next(encoder.parameters()).device
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.calls = 0
        """Encoder calls so far (tests check the cache with it)."""

    @torch.no_grad()
    def embed(self, text: str) -> torch.Tensor:
        """(1, max_length, D) float32 embedding of `text`, cached."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        tokens = self.tokenizer([text], padding="max_length", max_length=self.max_length,
                                truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.encoder(ids, mask).last_hidden_state.float()
        embedding = hidden * mask[..., None].to(hidden.dtype)  # zeros past the real tokens
        self.calls += 1
        self._cache[text] = embedding
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embedding

    def clear(self) -> None:
        self._cache.clear()
