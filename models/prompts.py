"""Prompt embeddings, cached: a prompt is encoded once when it is set, never per frame."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from models import devices
from models.loading import DiffusionModel

PROMPT_CACHE_SIZE = 64  # prompts remembered; a live prompt evicted is simply encoded again


class PromptEncoder:
    """Text -> CLIP text-encoder states (1, 77, dim), as StableDiffusionPipeline.encode_prompt."""

    def __init__(self, model: DiffusionModel, cache_size: int = PROMPT_CACHE_SIZE) -> None:
        self._model = model
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __call__(self, text: str) -> torch.Tensor:
        with self._lock:
            embeddings = self._cache.get(text)
            if embeddings is None:
                embeddings = self._encode(text)
                self._cache[text] = embeddings
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(text)
            return embeddings

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
