"""Prompt blending, weighting syntax and long prompts (compel) on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.loading import DiffusionModel, load_model
from models.prompts import PromptEncoder, compel_syntax
from models.stream import LcmStream
from tests.test_diffusion import job, run
from transforms.diffusion import DiffusionTransform
from transforms.params import StyleParams

SIZE = 64
WATERCOLOR, CLAY = "a watercolor portrait", "a claymation figure, studio light"


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return load_model("tiny", "", None, "cpu", "float32")


@pytest.fixture(scope="module")
def prompts(model: DiffusionModel) -> PromptEncoder:
    return PromptEncoder(model)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


def test_a_blend_moves_from_one_prompt_to_the_other_as_the_weight_moves(prompts: PromptEncoder) -> None:
    with torch.inference_mode():
        watercolor, clay = prompts(WATERCOLOR), prompts(CLAY)
        assert torch.equal(prompts.blend([(WATERCOLOR, 1.0), (CLAY, 0.0)]), watercolor), "weight 0 blends nothing in"
        mixes = [prompts.blend([(WATERCOLOR, 1.0 - w), (CLAY, w)]) for w in (0.1, 0.3, 0.5, 0.7, 0.9)]
        to_clay = [distance(mix, clay) for mix in mixes]
        to_watercolor = [distance(mix, watercolor) for mix in mixes]
        assert to_clay == sorted(to_clay, reverse=True) and to_watercolor == sorted(to_watercolor)
        half = prompts.blend([(WATERCOLOR, 0.5), (CLAY, 0.5)])
        assert abs(distance(half, clay) - distance(half, watercolor)) < 1e-4, "equal weights, half way"
        assert torch.allclose(half, prompts.blend([(CLAY, 0.2), (WATERCOLOR, 0.2)])), "only the ratio counts"


def test_weighting_syntax_weights_a_word_more_the_higher_its_weight(prompts: PromptEncoder) -> None:
    with torch.inference_mode():
        plain = prompts("a portrait, watercolor")
        assert torch.equal(prompts("a portrait, (watercolor:1.0)"), plain)
        for written in ("(watercolor:{})", "(watercolor){}"):  # other tools' way and compel's
            stronger = [distance(prompts("a portrait, " + written.format(w)), plain) for w in (1.1, 1.3, 1.6)]
            assert 0 < stronger[0] < stronger[1] < stronger[2], written
            weaker = [distance(prompts("a portrait, " + written.format(w)), plain) for w in (0.9, 0.6)]
            assert 0 < weaker[0] < weaker[1], written
        assert distance(prompts("a portrait, watercolor++"), plain) > 0


def test_a_prompt_longer_than_77_tokens_counts_to_its_end(model: DiffusionModel, prompts: PromptEncoder) -> None:
    """CLIP's context is 77 tokens: a truncating encoder would ignore the last words."""
    words = "portrait"
    while len(model.tokenizer(words).input_ids) < 100:
        words += " portrait"
    with torch.inference_mode():
        cat, dog = prompts(f"{words}. a cat"), prompts(f"{words}. a dog")
    assert cat.shape[1] == 2 * prompts.chunk_tokens
    assert distance(cat[:, prompts.chunk_tokens :], dog[:, prompts.chunk_tokens :]) > 0


def test_sessions_with_short_and_long_prompts_each_get_their_own_picture(model: DiffusionModel) -> None:
    """Padding text states changes cross-attention (more keys to attend to): a short prompt is
    never padded to share a UNet call with a long one; each picture is the one it gets alone."""
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE)
    short = StyleParams(prompt=WATERCOLOR, seed=1)
    long = StyleParams(prompt=" ".join(["claymation figure"] * 40), seed=2, guidance_scale=3.0)
    together = run(transform, [job(short, "0"), job(long, "1")])
    assert np.abs(together[0] - run(transform, [job(short, "0")])[0]).max() <= 2
    assert np.abs(together[1] - run(transform, [job(long, "1")])[0]).max() <= 2


def test_a_second_prompt_mixed_in_changes_the_picture_by_its_weight(model: DiffusionModel) -> None:
    transform = DiffusionTransform(LcmStream(model), SIZE, SIZE)

    def picture(params: StyleParams) -> np.ndarray:
        return run(transform, [job(params)])[0]

    watercolor = picture(StyleParams(prompt=WATERCOLOR))
    clay = picture(StyleParams(prompt=CLAY))
    mixed = [
        picture(StyleParams(prompt=WATERCOLOR, prompt_weight=1 - w, prompts=({"text": CLAY, "weight": w},)))
        for w in (0.0, 0.5, 1.0)
    ]
    assert np.abs(mixed[0] - watercolor).max() <= 2 and np.abs(mixed[2] - clay).max() <= 2
    half = mixed[1]
    assert 0 < np.abs(half - watercolor).mean() < np.abs(clay - watercolor).mean()


def test_weights_that_are_all_0_are_refused() -> None:
    with pytest.raises(ValueError, match="all 0"):
        StyleParams(prompt_weight=0.0, prompts=({"text": CLAY, "weight": 0.0},))


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("a (red hat:1.3) and (blue:0.8) coat", "a (red hat)1.3 and (blue)0.8 coat"),
        ("no weights, (just parentheses)", "no weights, (just parentheses)"),
        ("(cat: 1.25 )", "(cat)1.25"),
    ],
)
def test_colon_weights_read_as_compel_writes_them(written: str, read: str) -> None:
    assert compel_syntax(written) == read


def test_padding_never_runs_the_text_encoder(model: DiffusionModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding happens on the denoise stage (a transition between prompts of different
    lengths): the empty prompt's chunk is made with the encoder, never later."""
    encoder = PromptEncoder(model)
    with torch.inference_mode():
        short = encoder(WATERCOLOR)

    def refuse(self: PromptEncoder, text: str) -> torch.Tensor:
        raise AssertionError(f"encoded {text!r} while padding")

    monkeypatch.setattr(PromptEncoder, "_encode", refuse)
    with torch.inference_mode():
        assert encoder.pad(short, 3 * encoder.chunk_tokens).shape[1] == 3 * encoder.chunk_tokens
