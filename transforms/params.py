"""Live parameters: what a client may change while its stream runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1


class StyleParams(BaseModel):
    """Validated live parameters of one session; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(
        "watercolor portrait, soft light, detailed",
        max_length=1000,
        description="what the stream should look like",
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

    def updated(self, changes: dict[str, Any]) -> StyleParams:
        """A validated copy with `changes` applied; raises pydantic.ValidationError."""
        return StyleParams.model_validate({**self.model_dump(), **changes})


def params_schema() -> dict[str, Any]:
    """JSON schema of the live parameters with defaults and ranges, for GET /api/params."""
    return StyleParams.model_json_schema()
