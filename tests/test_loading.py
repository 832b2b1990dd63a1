"""Checkpoints the stream cannot run are refused at load, with a message saying what works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import UNet2DConditionModel

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
