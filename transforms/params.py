"""Live parameters: what a client may change while its stream runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**31 - 1
MAX_EXTRA_PROMPTS = 4  # prompts blended in next to the main one


class WeightedPrompt(BaseModel):
    """A prompt blended into the look with its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(max_length=1000, description="a prompt, weighting syntax allowed")
    weight: float = Field(ge=0.0, le=1.0, description="its share, relative to the other prompts' weights")


class StyleParams(BaseModel):
    """Validated live parameters of one session; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(
        "watercolor portrait, soft light, detailed",
        max_length=1000,
        description=(
            "what the stream should look like; (word:1.3) or word++ weights a word up, (word:0.7) or word-- "
            "down; longer than 77 tokens is fine (compel's syntax)"
        ),
    )
    prompt_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="the prompt's share when `prompts` blend others in (weighted mean)"
    )
    prompts: tuple[WeightedPrompt, ...] = Field(
        (),
        max_length=MAX_EXTRA_PROMPTS,
        description="more prompts blended into the look, each {text, weight}",
    )
    negative_prompt: str = Field("", max_length=1000, description="what to steer away from (costs a second UNet pass)")
    strength: float = Field(
        0.5,
        ge=0.05,
        le=1.0,
        description="how far from the camera image the result may move (0 keeps it, 1 ignores it)",
    )
    steps: int = Field(
        4,
        ge=1,
        le=8,
        description=(
            "LCM schedule length; the UNet runs int(steps * strength) times (at least once), "
            "as StableDiffusionImg2ImgPipeline with LCMScheduler does"
        ),
    )
    guidance_scale: float = Field(
        1.0,
        ge=0.0,
        le=20.0,
        description=(
            "prompt adherence; LCM-distilled models take it for free through their "
            "w-embedding, other models above 1 run classic guidance (twice the UNet work)"
        ),
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="fixed noise; same seed, same look")
    transition_ms: int = Field(
        500,
        ge=0,
        le=10_000,
        description=(
            "how long a change of prompt, negative prompt, seed or guidance takes to ease in (0: at once); "
            "steps and strength change the schedule at once"
        ),
    )

    @model_validator(mode="after")
    def _some_prompt_weighs(self) -> StyleParams:
        if self.prompt_weight <= 0 and not any(extra.weight > 0 for extra in self.prompts):
            raise ValueError("prompt_weight and the prompts' weights are all 0: give one of them a weight")
        return self

    def updated(self, changes: dict[str, Any]) -> StyleParams:
        """A validated copy with `changes` applied; raises pydantic.ValidationError."""
        return StyleParams.model_validate({**self.model_dump(), **changes})


def params_schema() -> dict[str, Any]:
    """JSON schema of the live parameters with defaults and ranges, for GET /api/params."""
    return StyleParams.model_json_schema()
