"""Prompt embeddings, cached: a prompt is encoded once when it is set, never per frame.

Encoding runs in the thread that asks (the worker preparing a session's new params), outside
any lock the stage threads take: another session's frames never wait for it.
"""

from __future__ import annotations

import torch

from models import devices
from models.cache import BoundedCache
from models.loading import DiffusionModel

PROMPT_CACHE_SIZE = 64  # prompts remembered; a live prompt evicted is simply encoded again


class PromptEncoder:
    """Text -> CLIP text-encoder states (1, 77, dim), as StableDiffusionPipeline.encode_prompt."""

    def __init__(self, model: DiffusionModel, cache_size: int = PROMPT_CACHE_SIZE) -> None:
        self._model = model
        self._cache: BoundedCache[str, torch.Tensor] = BoundedCache(cache_size)

    def __call__(self, text: str) -> torch.Tensor:
        return self._cache.get(text, lambda: self._encode(text))

    @torch.inference_mode()
    def _encode(self, text: str) -> torch.Tensor:
        tokenizer, encoder = self._model.tokenizer, self._model.text_encoder
        tokens = tokenizer(
            text,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(self._model.device) if use_mask else None
        states = encoder(tokens.input_ids.to(self._model.device), attention_mask=mask)[0]
        states = states.to(dtype=encoder.dtype, device=self._model.device)
        devices.finish_work(self._model.device)  # ready before another thread can find it in the cache
        return states
