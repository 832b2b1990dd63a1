"""Prompt embeddings, cached: a prompt is encoded once when it is set, never per frame.

Prompts go through compel (a well-kept library for exactly this): its weighting syntax,
`(words)1.3`, `word++`, `word--`, and prompts longer than CLIP's 77 tokens, encoded in chunks
of 77 and concatenated; the `(words:1.3)` of other tools' prompts is read as compel's
`(words)1.3`. A plain prompt of up to 77 tokens gives what diffusers' pipelines give. Several
prompts blend as the weighted mean of their states.

Encoding runs in the thread that asks (the worker preparing a session's new params), outside
any lock the stage threads take: another session's frames never wait for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from models import devices
from models.cache import BoundedCache
from models.loading import DiffusionModel

PROMPT_CACHE_SIZE = 64  # prompts (and blends) remembered; a live one evicted is simply encoded again
MAX_PROMPT_CHUNKS = 3  # 77-token chunks a prompt may take; a longer one is cut at a chunk's end

WeightedPrompts = Sequence[tuple[str, float]]
COLON_WEIGHT = re.compile(r"\(([^():]+):\s*(\d*\.?\d+)\s*\)")  # (words:1.3), as A1111 and ComfyUI write it


def compel_syntax(text: str) -> str:
    """`(words:1.3)` as compel writes it, `(words)1.3`; the rest of the text as it is."""
    return COLON_WEIGHT.sub(r"(\1)\2", text)


class PromptEncoder:
    """Text -> text-encoder states (1, 77 k, dim), k chunks of CLIP's context."""

    def __init__(self, model: DiffusionModel, cache_size: int = PROMPT_CACHE_SIZE) -> None:
        # Imported here: compel's import wakes transformers' image processors, which print
        # warnings unless load_model has quieted the libraries first.
        from compel import Compel

        self._model = model
        self._compel = Compel(
            tokenizer=model.tokenizer,
            text_encoder=model.text_encoder,
            truncate_long_prompts=False,
            device=str(model.device),
        )
        self.chunk_tokens = int(model.tokenizer.model_max_length)
        self._cache: BoundedCache[Any, torch.Tensor] = BoundedCache(cache_size)
        # Padding's chunk, made now (the loader's thread), kept for good: padding happens on the
        # denoise stage, which must never run the text encoder.
        self._empty = self._encode("")

    def __call__(self, text: str) -> torch.Tensor:
        return self._cache.get(text, lambda: self._encode(text))

    def blend(self, prompts: WeightedPrompts) -> torch.Tensor:
        """The weighted mean of the prompts' states, each padded to the longest; one prompt of
        weight > 0 is just its states."""
        used = [(text, weight) for text, weight in prompts if weight > 0]
        if not used:
            raise ValueError("at least one prompt needs a weight above 0")
        if len(used) == 1:
            return self(used[0][0])
        return self._cache.get(tuple(used), lambda: self._blend(used))

    def pad(self, states: torch.Tensor, tokens: int) -> torch.Tensor:
        """`states` lengthened to `tokens` with chunks of the empty prompt (as compel pads)."""
        missing = (tokens - states.shape[1]) // self.chunk_tokens
        if missing <= 0:
            return states
        devices.keep_until_used([states])
        return torch.cat([states, *([self._empty.expand(states.shape[0], -1, -1)] * missing)], dim=1)

    @torch.inference_mode()
    def _blend(self, prompts: WeightedPrompts) -> torch.Tensor:
        states = [self(text) for text, _ in prompts]
        longest = max(state.shape[1] for state in states)
        total = sum(weight for _, weight in prompts)
        weights = [weight / total for _, weight in prompts]
        mixed = torch.stack([self.pad(state, longest) for state in states]).mul(
            torch.tensor(weights, dtype=states[0].dtype, device=states[0].device).view(-1, 1, 1, 1)
        ).sum(0)
        devices.finish_work(self._model.device)
        return mixed

    @torch.inference_mode()
    def _encode(self, text: str) -> torch.Tensor:
        states = self._compel(compel_syntax(text))[:, : MAX_PROMPT_CHUNKS * self.chunk_tokens]
        states = states.to(dtype=self._model.dtype, device=self._model.device)
        devices.finish_work(self._model.device)  # ready before another thread can find it in the cache
        return states
