"""SD 1.5's architecture with random weights, in memory or written as a diffusers folder.

The UNet is LCM-Dreamshaper-v7's (SD 1.5 with a w-embedding, time_cond_proj_dim 256), the
text encoder CLIP ViT-L/14's, the autoencoder TAESD's (AutoencoderTiny), the scheduler
LCMScheduler with LCM-Dreamshaper-v7's settings and the tokenizer models.tiny's (any prompt
tokenizes). The speed is the real model's; the pictures are not.

Diffusers' default random weights give an output that hardly depends on the camera picture.
With `calibrated=True` (what write_sd15_model writes) the UNet's weights are re-drawn
variance-preserving (as the tiny test model's are) and its last layer scaled so that it
predicts noise of unit scale, and TAESD is random but structure-keeping (structure_keeping):
the output then follows the camera picture at large scale (a scene switch shows in it) and
the prompt, and stays finite in float16. Same shapes, same kernels, same time. The server
loads the written folder as it loads a real model:

    python -m bench.sd15 /tmp/sd15 && python server.py --model /tmp/sd15 --vae /tmp/sd15/vae
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models.tiny import SCHEDULER_CONFIG, TOKENIZER_MAX_LENGTH, variance_preserving, write_tokenizer

logger = logging.getLogger("bench.sd15")

SEED = 0
GUIDANCE_EMBEDDING_DIM = 256  # LCM-Dreamshaper-v7's UNet
CLIP_VIT_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": TOKENIZER_MAX_LENGTH,
    # models.tiny's tokenizer: <|startoftext|> is 0, <|endoftext|> 1 (also the padding)
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
OPENCLIP_VIT_H = {  # SD 2.x's text encoder (its last layer dropped, as the checkpoints ship it)
    **CLIP_VIT_L,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "hidden_act": "gelu",
}
NOISE_PREDICTION_STD = 1.0  # the UNet predicts epsilon: unit Gaussian noise
LATENT_GAIN = 5.0  # structure-keeping TAESD: latents = gain * (colour - 0.5), about +-2.5
RANDOM_SCALE = 0.05  # structure-keeping TAESD: its random weights, times this
CALIBRATION_SIZE = 64  # px: activation scales hardly depend on the size
CALIBRATION_TIMESTEP = 499  # the first of 4 LCM steps at strength 0.5


@dataclass
class Sd15Components:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    autoencoder: AutoencoderTiny

    def modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet, self.text_encoder, self.autoencoder)


def sd15_components(
    device: torch.device, calibrated: bool = False, seed: int = SEED, architecture: str = "sd15"
) -> Sd15Components:
    """The three networks in float32 on `device` (made there: fast on a GPU), eval mode.
    `architecture` "sd21" is SD 2.1's (as SD-Turbo, 1-step distilled, has it): OpenCLIP ViT-H
    text states 1024 wide, linear projections, per-level head counts, no w-embedding (only
    uncalibrated: for timing)."""
    if architecture == "sd21" and calibrated:
        raise ValueError("only SD 1.5's architecture is calibrated")
    torch.manual_seed(seed)
    with torch.device(device):
        if architecture == "sd21":
            unet = UNet2DConditionModel(
                sample_size=64,
                cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
            )
            text_encoder = CLIPTextModel(CLIPTextConfig(**OPENCLIP_VIT_H))
        else:
            unet = UNet2DConditionModel(
                sample_size=64, cross_attention_dim=768, time_cond_proj_dim=GUIDANCE_EMBEDDING_DIM
            )
            text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L))
        components = Sd15Components(unet=unet, text_encoder=text_encoder, autoencoder=AutoencoderTiny())
    for module in components.modules():
        module.eval().requires_grad_(False)
    if calibrated:
        calibrate(components, device)
    return components


def sd15_tokenizer(folder: Path) -> CLIPTokenizer:
    write_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


@torch.no_grad()
def calibrate(components: Sd15Components, device: torch.device, size: int = CALIBRATION_SIZE) -> dict[str, float]:
    """The UNet's weights variance-preserving and its last layer scaled so that it predicts
    noise of unit scale (measured in one img2img step as at the default settings); TAESD
    structure-keeping. Returns the UNet's output scale factor."""
    variance_preserving(components.unet, "linear")
    structure_keeping(components.autoencoder)
    generator = torch.Generator(device).manual_seed(SEED)
    # A smooth random picture, as camera pictures are smooth at the scale of a few pixels.
    coarse = torch.rand((1, 3, size // 8, size // 8), generator=generator, device=device) * 2 - 1
    pixels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    latents = components.autoencoder.encoder(pixels)
    text = components.text_encoder(torch.zeros((1, TOKENIZER_MAX_LENGTH), dtype=torch.long, device=device))[0]
    alpha = float(LCMScheduler(**SCHEDULER_CONFIG).alphas_cumprod[CALIBRATION_TIMESTEP])
    condition = torch.rand((1, GUIDANCE_EMBEDDING_DIM), generator=generator, device=device) * 2 - 1
    noise = torch.randn(latents.shape, generator=generator, device=device)
    noisy = alpha**0.5 * latents + (1 - alpha) ** 0.5 * noise
    step = torch.tensor(CALIBRATION_TIMESTEP, device=device)
    unet = components.unet

    def predict() -> torch.Tensor:
        return unet(noisy, step, encoder_hidden_states=text, timestep_cond=condition, return_dict=False)[0]

    factor = _calibrate_layer(unet.conv_out, predict, NOISE_PREDICTION_STD, 0.0)
    logger.info("calibrated: the UNet's output layer scaled by %.3g", factor)
    return {"unet_output": factor}


@torch.no_grad()
def structure_keeping(autoencoder: AutoencoderTiny, gain: float = LATENT_GAIN, scale: float = RANDOM_SCALE) -> None:
    """Random TAESD weights that still let the picture through, as a trained TAESD does.

    A random TAESD maps every camera picture to much the same texture, so the output would
    not show what the camera sees. Here every weight is random (variance-preserving, times
    `scale` but inside the residual branches), and the convolutions between the residual
    blocks also carry an identity path for each channel: the encoder's latents are the
    picture's colours at 1/8 of its size, centred and times `gain`, the decoder inverts
    that, and each residual block adds a small random term. The arithmetic (shapes, kernels, time) is TAESD's."""
    variance_preserving(autoencoder, "relu")
    inside_blocks = {
        id(layer)
        for block in autoencoder.modules()
        if isinstance(block, AutoencoderTinyBlock)
        for layer in list(block.conv)[:-1]
    }
    for module in autoencoder.modules():
        if isinstance(module, torch.nn.Conv2d) and id(module) not in inside_blocks:
            module.weight.mul_(scale)
    encoder, decoder = autoencoder.encoder.layers, autoencoder.decoder.layers
    last_encoder, first_decoder = encoder[-1], decoder[0]
    assert isinstance(last_encoder, torch.nn.Conv2d) and last_encoder.bias is not None
    assert isinstance(first_decoder, torch.nn.Conv2d) and first_decoder.bias is not None
    colours = 3
    for layers in (encoder, decoder):
        for layer in layers:
            if isinstance(layer, torch.nn.Conv2d) and layer not in (last_encoder, first_decoder):
                for channel in range(min(layer.in_channels, layer.out_channels)):
                    layer.weight[channel, channel, 1, 1] += 1.0
    # The encoder's input is in [0, 1]: latent c = gain * (colour c - 0.5), the fourth the grey.
    for channel in range(colours):
        last_encoder.weight[channel, channel, 1, 1] += gain
        last_encoder.weight[colours, channel, 1, 1] += gain / colours
    last_encoder.bias.fill_(-0.5 * gain)
    # The decoder's last layer gives [0, 1] pictures: colour c = latent c / gain + 0.5.
    for channel in range(colours):
        first_decoder.weight[channel, channel, 1, 1] += 1.0 / gain
    first_decoder.bias.zero_()
    first_decoder.bias[:colours] = 0.5


def _calibrate_layer(layer: torch.nn.Module, run: Callable[[], object], std: float, mean: float) -> float:
    """Scale (and, with a bias, shift) a conv so that its output in `run` gets `std` and `mean`."""
    assert isinstance(layer, torch.nn.Conv2d), f"expected a Conv2d, got {type(layer).__name__}"
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.float()))
    try:
        run()
    finally:
        hook.remove()
    output = seen[-1]
    observed_std, observed_mean = float(output.std()), float(output.mean())
    if not (math.isfinite(observed_std) and observed_std > 0):
        raise RuntimeError(f"calibration: the random model's output is not usable (std {observed_std})")
    factor = std / observed_std
    layer.weight.mul_(factor)
    if layer.bias is not None:
        layer.bias.sub_(observed_mean).mul_(factor).add_(mean)
    return factor


def write_sd15_model(
    folder: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    calibrated: bool = True,
) -> tuple[Path, Path]:
    """Write the model to `folder` in diffusers' layout, weights in `dtype`; returns (model
    folder, TAESD folder), the server's --model and --vae."""
    device = torch.device(device)
    components = sd15_components(device, calibrated=calibrated)
    for module in components.modules():
        module.to("cpu", dtype)  # saved from host memory
    pipeline = StableDiffusionPipeline(
        vae=components.autoencoder,
        text_encoder=components.text_encoder,
        tokenizer=sd15_tokenizer(folder / "tokenizer"),
        unet=components.unet,
        scheduler=LCMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder, folder / "vae"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sd15", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the model (diffusers layout)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to make it")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored precision")
    parser.add_argument("--uncalibrated", action="store_true", help="diffusers' default random weights")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    model, vae = write_sd15_model(args.folder, args.device, getattr(torch, args.dtype), not args.uncalibrated)
    print(f"wrote {model} in {time.monotonic() - started:.1f} s: --model {model} --vae {vae}")


if __name__ == "__main__":
    main()
