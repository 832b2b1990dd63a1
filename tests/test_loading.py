"""Checkpoints the stream cannot run are refused at load, with a message saying what works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from models.loading import ModelLoadError, load_model
from models.tiny import tiny_unet, write_tiny_model


def tiny_model_with(tmp_path: Path, config: str, **changes: object) -> tuple[str, str]:
    model, vae = write_tiny_model(tmp_path)
    path = model / config
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return str(model), str(vae)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_a_model_that_does_not_predict_noise_is_refused(tmp_path: Path, prediction: str) -> None:
    """Regression: a v-prediction checkpoint loaded and silently gave garbage (the LCM update assumes epsilon)."""
    model, vae = tiny_model_with(tmp_path, "scheduler/scheduler_config.json", prediction_type=prediction)
    with pytest.raises(ModelLoadError, match=prediction) as refused:
        load_model(model, vae, None, "cpu", "float32")
    assert "epsilon" in str(refused.value) and "LCM_Dreamshaper" in str(refused.value)


def test_an_inpainting_unet_is_refused(tmp_path: Path) -> None:
    model, vae = write_tiny_model(tmp_path)
    inpainting = UNet2DConditionModel.from_config({**tiny_unet().config, "in_channels": 9})
    inpainting.save_pretrained(model / "unet")
    with pytest.raises(ModelLoadError, match="9 input channels"):
        load_model(str(model), str(vae), None, "cpu", "float32")


@pytest.mark.parametrize(
    ("pipeline", "family"),
    [("StableDiffusionXLPipeline", "XL"), ("StableDiffusion3Pipeline", "3"), ("FluxPipeline", "Flux")],
)
def test_a_folder_of_another_family_is_refused_before_loading(tmp_path: Path, pipeline: str, family: str) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    with pytest.raises(ModelLoadError, match=family) as refused:
        load_model(str(tmp_path), "", None, "cpu", "float32")
    assert "SD-Turbo" in str(refused.value) and "SD 1.5" in str(refused.value), "it names what works"


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", "xl_base"),
        ("double_blocks.0.img_attn.norm.key_norm.scale", "flux"),
    ],
)
def test_a_checkpoint_file_of_another_family_is_refused(tmp_path: Path, key: str, family: str) -> None:
    checkpoint = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(4)}, checkpoint)
    with pytest.raises(ModelLoadError, match=family):
        load_model(str(checkpoint), "", None, "cpu", "float32")


def sd2_checkpoint(tmp_path: Path) -> str:
    """A .safetensors file with SD 2.x's tell-tale key: cross-attention 1024 wide."""
    checkpoint = tmp_path / "sd_turbo.safetensors"
    key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 1024)}, checkpoint)
    return str(checkpoint)


def test_an_sd2_file_without_its_settings_is_refused_before_loading(tmp_path: Path) -> None:
    """diffusers reads a lone SD 2.x file as SD 2.1-768 (v-prediction): SD-Turbo would load, then
    be refused as v-prediction, after gigabytes. The user is asked for its settings at once."""
    with pytest.raises(ModelLoadError, match="--model-file-config") as refused:
        load_model(sd2_checkpoint(tmp_path), "", None, "cpu", "float32")
    assert "stabilityai/sd-turbo" in str(refused.value)


def test_an_sd2_file_is_read_with_the_settings_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, object] = {}

    def from_single_file(path: str, **options: object) -> object:
        given.update(options)
        raise ValueError("no weights in this test file")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", from_single_file)
    with pytest.raises(ModelLoadError, match="cannot load the model file"):
        load_model(sd2_checkpoint(tmp_path), "", None, "cpu", "float32", file_config="stabilityai/sd-turbo")
    assert given["config"] == "stabilityai/sd-turbo"
