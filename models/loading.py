"""Loading a Stable Diffusion 1.5 model for the stream: UNet, text encoder, tokenizer,
LCM scheduler settings and TAESD, from the hub, a local folder or a single .safetensors file,
with an optional LoRA (e.g. LCM-LoRA) fused in."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import diffusers
import huggingface_hub
import torch
import transformers
from diffusers import AutoencoderTiny, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import infer_diffusers_model_type
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from models import devices
from models.tiny import write_tiny_model

logger = logging.getLogger(__name__)

TINY_MODEL = "tiny"  # SD 1.5 with an LCM w-embedding, random weights, written offline
TINY_TURBO_MODEL = "tiny-turbo"  # SD 2.1's architecture as SD-Turbo has it, likewise
TINY_MODELS: dict[str, Literal["sd15", "turbo"]] = {TINY_MODEL: "sd15", TINY_TURBO_MODEL: "turbo"}
SUPPORTED_PIPELINES = {  # model_index.json's class names of the families the stream loop runs
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "LatentConsistencyModelPipeline",
    "LatentConsistencyModelImg2ImgPipeline",
}
SUPPORTED_CHECKPOINTS = {"v1", "v2"}  # diffusers' names for SD 1.x and SD 2.x single files
SUPPORTED_FAMILIES = (
    "SD 1.5 models (LCM-distilled such as SimianLuo/LCM_Dreamshaper_v7, or any SD 1.5 model with "
    "--lora latent-consistency/lcm-lora-sdv1-5) and SD 2.x-base models such as SD-Turbo (stabilityai/sd-turbo)"
)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
OFFLINE_ERRORS = (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
LATENT_CHANNELS = 4  # SD 1.5's and TAESD's latent space
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
WHERE_WEIGHTS_COME_FROM = (
    "Weights come from the Hugging Face hub on first run (then from its cache): check the id "
    "and the network, set HF_TOKEN for gated models, or give a local diffusers folder or a "
    ".safetensors file. `--model tiny` runs offline with a tiny random-weight model."
)


class ModelLoadError(RuntimeError):
    """The model cannot be loaded for a reason the user can fix; the message says how."""


@dataclass
class DiffusionModel:
    """What the stream loop needs of a model, on its device, in its dtype."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    autoencoder: AutoencoderTiny
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def guidance_embedding_dim(self) -> int | None:
        """LCM-distilled UNets take the guidance scale as an embedding (no second pass)."""
        dim = self.unet.config.time_cond_proj_dim
        return int(dim) if dim is not None else None

    @property
    def latent_downscale(self) -> int:
        return int(2 ** (len(self.autoencoder.config.encoder_block_out_channels) - 1))


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name}: no CUDA GPU is visible to PyTorch (use --device cpu)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA, float32 elsewhere (CPUs are slow or wrong in half precision)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_model(
    model: str, vae: str, lora: str | None, device: str, dtype: str, file_config: str | None = None
) -> DiffusionModel:
    """Load everything the stream needs; raises ModelLoadError with a message for the user.
    `file_config`: the diffusers settings (hub id or folder) a single checkpoint file is read
    with, where the file alone does not tell (SD 2.x: base and SD-Turbo, or 768-v)."""
    quiet_libraries()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    devices.bind_thread(torch_device)
    if model in TINY_MODELS:
        with tempfile.TemporaryDirectory(prefix="stylecam-tiny-") as folder:
            model_folder, vae_folder = write_tiny_model(Path(folder), TINY_MODELS[model])
            return _load(str(model_folder), str(vae_folder), lora, torch_device, torch_dtype, model)
    refuse_other_families(model, file_config)
    return _load(model, vae, lora, torch_device, torch_dtype, model, file_config)


def _load(
    model: str,
    vae: str,
    lora: str | None,
    device: torch.device,
    dtype: torch.dtype,
    name: str,
    file_config: str | None = None,
) -> DiffusionModel:
    logger.info("loading model %s with autoencoder %s on %s (%s)", name, vae, device, dtype)
    options: dict[str, Any] = {
        "vae": None,  # TAESD replaces SD's autoencoder: never download or load the big one
        "dtype": dtype,
        "safety_checker": None,
        "requires_safety_checker": False,
        "feature_extractor": None,
    }
    if model.endswith(SINGLE_FILE_SUFFIXES):
        if not Path(model).is_file():
            raise ModelLoadError(f"model file not found: {model}")
        if file_config:
            options["config"] = file_config
        pipeline = _attempt(f"the model file {model!r}", StableDiffusionPipeline.from_single_file, model, **options)
    else:
        pipeline = _attempt(f"the model {model!r}", StableDiffusionPipeline.from_pretrained, model, **options)
    refuse_unsupported(pipeline, name)
    if lora:
        _attempt(f"the LoRA {lora!r}", pipeline.load_lora_weights, lora)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
        logger.info("fused LoRA %s", lora)
    autoencoder = _attempt(f"the autoencoder {vae!r}", AutoencoderTiny.from_pretrained, vae, dtype=dtype)
    pipeline.to(device)
    autoencoder.to(device)
    for module in (pipeline.unet, pipeline.text_encoder, autoencoder):
        module.eval().requires_grad_(False)
    return DiffusionModel(
        unet=pipeline.unet,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        scheduler_config=dict(pipeline.scheduler.config),
        autoencoder=autoencoder,
        device=device,
        dtype=dtype,
        name=name,
    )


def refuse_other_families(model: str, file_config: str | None = None) -> None:
    """SDXL, SD 3, Flux and the like are refused before any weight loads: their class in
    model_index.json (hub id or folder), or the keys of a .safetensors file, name the family.
    An SD 2.x file needs `file_config`: diffusers would read it as SD 2.1-768 (v-prediction)."""
    if model.endswith(".safetensors") and Path(model).is_file():
        with safe_open(model, framework="pt") as checkpoint:
            family = infer_diffusers_model_type(LazyCheckpoint(checkpoint))
        if family not in SUPPORTED_CHECKPOINTS:
            raise ModelLoadError(
                f"the model file {model!r} is {family!r}, not supported; stylecam runs {SUPPORTED_FAMILIES}"
            )
        if family == "v2" and not file_config:
            raise ModelLoadError(
                f"the model file {model!r} is an SD 2.x checkpoint, which the file alone does not say how to "
                "run: give its settings with --model-file-config, e.g. stabilityai/sd-turbo for SD-Turbo or "
                "stabilityai/stable-diffusion-2-1-base (a v-prediction 768-v model is not supported)"
            )
        return
    if model.endswith(SINGLE_FILE_SUFFIXES):
        return  # a pickled .ckpt cannot be read without loading it: from_single_file tells
    config = _attempt(f"the model {model!r}", StableDiffusionPipeline.load_config, model)
    pipeline = config.get("_class_name", "")
    if pipeline not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"the model {model!r} is a {pipeline or 'non-diffusers'} model, not supported; "
            f"stylecam runs {SUPPORTED_FAMILIES}"
        )


class LazyCheckpoint(Mapping[str, torch.Tensor]):
    """A .safetensors file as a mapping that reads a tensor only when asked (its keys and a
    few shapes tell the family, without reading gigabytes)."""

    def __init__(self, checkpoint: Any) -> None:
        """`checkpoint`: an open safetensors file (safe_open)."""
        self._file = checkpoint
        self._keys = list(checkpoint.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def refuse_unsupported(pipeline: StableDiffusionPipeline, name: str) -> None:
    """The stream's LCM update predicts epsilon from 4 latent channels; other checkpoints would
    load and silently give garbage (diffusers' LCM pipelines refuse them too)."""
    prediction = pipeline.scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLoadError(
            f"the model {name!r} predicts {prediction!r} (e.g. an SD 2.x 768-v checkpoint); stylecam's LCM "
            "loop needs an epsilon-prediction SD 1.5 model such as SimianLuo/LCM_Dreamshaper_v7, or an SD 1.5 "
            "model with --lora latent-consistency/lcm-lora-sdv1-5"
        )
    channels = pipeline.unet.config.in_channels
    if channels != LATENT_CHANNELS:
        raise ModelLoadError(
            f"the model {name!r} has a UNet with {channels} input channels (an inpainting or depth model); "
            f"stylecam needs a plain text-to-image SD 1.5 model ({LATENT_CHANNELS} latent channels)"
        )


def _attempt(what: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a diffusers loader; turn the many ways a download or a file can fail into one message."""
    try:
        return load(*args, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {what}: {_reason(exc)}\n{WHERE_WEIGHTS_COME_FROM}") from exc


def _reason(error: BaseException) -> str:
    """The first line of the error, unless a network failure hides behind it: diffusers reports
    an unreachable hub as a missing file."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(link, OFFLINE_ERRORS) or "connect" in type(link).__name__.lower() for link in chain):
        return "the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set) and the files are not in its cache"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def quiet_libraries() -> None:
    """No progress bars, retry chatter or advice meant for notebooks in a server's log."""
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
    huggingface_hub.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
