"""The tiny offline model: SD 1.5's architecture in miniature, random weights from a fixed seed.

It is written to a folder in diffusers' layout (a CLIP tokenizer included) and loaded back
through the same code as a real model, so tests exercise every line of loading and
inference without a download. Its pictures are noise-like: it proves the plumbing and the
math, not the art.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderTiny,
    EulerDiscreteScheduler,
    LCMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_SEED = 0
TEXT_HIDDEN = 32
TURBO_TEXT_HIDDEN = 48  # SD 2.x's OpenCLIP text encoder is wider than SD 1.5's CLIP (1024 vs 768)
GUIDANCE_EMBEDDING_DIM = 32  # a time_cond_proj_dim makes it an LCM-distilled UNet (w-embedding)
TOKENIZER_MAX_LENGTH = 77  # as CLIP's: prompts are padded to it
MERGES = ["t h", "th e</w>", "a n", "o r", "i n", "e r</w>", "p o", "r t"]

# LCM-Dreamshaper-v7's scheduler settings: the SD 1.5 noise schedule.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_scaling": 10.0,
    "clip_sample": False,
    "thresholding": False,
}
# SD-Turbo's scheduler settings (stabilityai/sd-turbo): Euler, trailing timesteps, epsilon.
TURBO_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [byte for byte in range(256) if byte not in printable]
    return [chr(code) for code in printable] + [chr(256 + n) for n in range(len(extra))]


def write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer whose vocabulary holds every byte, so any prompt tokenizes."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = _byte_alphabet()
    for token in [*alphabet, *(char + "</w>" for char in alphabet), *(m.replace(" ", "") for m in MERGES)]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": TOKENIZER_MAX_LENGTH}))


def variance_preserving(module: torch.nn.Module, nonlinearity: Literal["linear", "relu"]) -> None:
    """Re-draw conv and linear weights so signals keep their scale through the layers.

    With PyTorch's default init a random model's output hardly depends on its input or
    prompt; tests need a model whose output changes when they do.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)


TINY_UNET: dict[str, Any] = {  # the shape both families' tiny UNets share
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    # Attention at the coarser level only: at 512 px the finer one would hold 4096 tokens.
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}


def tiny_unet(guidance_embedding: bool = True) -> UNet2DConditionModel:
    """An LCM-distilled-like UNet (w-embedding), or without it: like SD 1.5 with LCM-LoRA."""
    return _variance_preserving_unet(
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        time_cond_proj_dim=GUIDANCE_EMBEDDING_DIM if guidance_embedding else None,
    )


def tiny_turbo_unet() -> UNet2DConditionModel:
    """SD 2.1's UNet in miniature, as SD-Turbo has it: linear projections in the transformers,
    wider cross-attention, per-level head counts, no w-embedding."""
    return _variance_preserving_unet(
        cross_attention_dim=TURBO_TEXT_HIDDEN, attention_head_dim=(4, 8), use_linear_projection=True
    )


def _variance_preserving_unet(**family: Any) -> UNet2DConditionModel:
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(**TINY_UNET, **family)
    variance_preserving(unet, "linear")
    return unet


def tiny_autoencoder() -> AutoencoderTiny:
    """TAESD's shape with few channels: four blocks, the real 8x downscale, 4 latent channels."""
    torch.manual_seed(TINY_SEED)
    autoencoder = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    variance_preserving(autoencoder, "relu")
    return autoencoder


def tiny_text_encoder(vocab_size: int, hidden: int = TEXT_HIDDEN, activation: str = "quick_gelu") -> CLIPTextModel:
    """CLIP's text encoder in miniature; SD 2.x's OpenCLIP one is wider and uses plain gelu."""
    torch.manual_seed(TINY_SEED)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act=activation,
    )
    return CLIPTextModel(config)


def write_tiny_model(folder: Path, family: Literal["sd15", "turbo"] = "sd15") -> tuple[Path, Path]:
    """Write the tiny model to `folder`; returns (model folder, TAESD folder) for the loader.
    `sd15`: SD 1.5 with an LCM w-embedding (as LCM-Dreamshaper); `turbo`: SD 2.1's architecture
    as SD-Turbo ships it (1-step distilled, Euler scheduler settings)."""
    tokenizer_folder = folder / "tokenizer"
    write_tokenizer(tokenizer_folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    autoencoder = tiny_autoencoder()
    scheduler: SchedulerMixin
    if family == "turbo":
        text_encoder = tiny_text_encoder(len(tokenizer), TURBO_TEXT_HIDDEN, "gelu")
        unet, scheduler = tiny_turbo_unet(), EulerDiscreteScheduler(**TURBO_SCHEDULER_CONFIG)
    else:
        text_encoder = tiny_text_encoder(len(tokenizer))
        unet, scheduler = tiny_unet(), LCMScheduler(**SCHEDULER_CONFIG)
    pipeline = StableDiffusionPipeline(
        vae=autoencoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder, folder / "vae"
