"""Server settings: defaults < JSON file (--config) < STYLECAM_* environment < CLI flags.

Everything that needs a restart (network, model, processing size) lives here;
what changes live (prompt, strength, ...) is a live parameter in transforms/params.py.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "STYLECAM_"


class SettingsFileError(ValueError):
    """The --config file is missing, unreadable or not a JSON object."""


class IceServer(BaseModel):
    """One STUN or TURN server, as RTCIceServer in the browser and in aiortc."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class Settings(BaseSettings):
    """stylecam server settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="server.py",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="forbid",
    )

    config: Path | None = Field(None, description="JSON file with settings; environment and flags override it")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: all)")
    port: int = Field(8080, ge=1, le=65535, description="TCP port")
    cert: Path | None = Field(
        None,
        description="TLS certificate (PEM); with --key serves HTTPS, which browsers "
        "need for camera access from other machines",
    )
    key: Path | None = Field(None, description="TLS private key (PEM) for --cert")
    token: str | None = Field(None, description="if set, POST /offer needs 'Authorization: Bearer <token>'")
    udp_ports: str | None = Field(
        None,
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="UDP ports for WebRTC media, as FIRST-LAST (e.g. 40000-40100): publish this range from a "
        "container; default: any port the system gives",
    )
    announced_address: str | None = Field(
        None,
        description="IP address put in the host candidates of answers instead of this machine's own: the "
        "address browsers reach (e.g. the Docker host's), when the server runs behind a port mapping",
    )
    max_sessions: int = Field(4, ge=1, le=64, description="concurrent streams; more get 503")
    ice_servers: list[IceServer] = Field(
        [],
        description='STUN/TURN servers as JSON, e.g. [{"urls": "stun:stun.l.google.com:19302"}]',
    )
    transform: Literal["diffusion", "passthrough", "invert", "edges", "cartoon"] = Field(
        "diffusion", description="what is done to each frame; all but diffusion need no model"
    )
    model: str = Field(
        "SimianLuo/LCM_Dreamshaper_v7",
        description="SD 1.5 or SD 2.x-base (SD-Turbo) model: hub id, local diffusers folder, .safetensors "
        "file, or 'tiny' / 'tiny-turbo' (offline random weights of either architecture, for tests)",
    )
    model_file_config: str | None = Field(
        None,
        description="for a single SD 2.x checkpoint file: the diffusers settings (hub id or folder) to read it "
        "with, e.g. stabilityai/sd-turbo",
    )
    vae: str = Field("madebyollin/taesd", description="TAESD autoencoder: hub id or local folder")
    lora: str | None = Field(
        None, description="LoRA fused into the UNet, e.g. latent-consistency/lcm-lora-sdv1-5 for a non-LCM model"
    )
    device: str = Field("auto", description="torch device: auto (CUDA if present), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="model precision; auto is float16 on CUDA, float32 on the CPU"
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch threads per model stage on the CPU; default: the cores shared among the stages, "
        "which run at once (more would make their threads fight for the cores)",
    )
    batch: int = Field(
        1, ge=1, le=8, description="camera frames of one session per model call: more throughput, more latency"
    )
    channels_last: bool = Field(True, description="channels-last memory layout (faster convolutions, CUDA and CPU)")
    compile: bool = Field(False, description="torch.compile the UNet and TAESD (slow first frames)")
    stable_fast: bool = Field(
        False,
        description="compile the UNet and TAESD with stable-fast instead of --compile (CUDA; needs the "
        "stable-fast package built for the installed torch; stylecam's CUDA graphs replace its own)",
    )
    cuda_graphs: bool = Field(True, description="replay each model stage as a CUDA graph (CUDA only)")
    stream_batch: bool = Field(
        False,
        description="denoise the steps of consecutive frames in one UNet call: one UNet call per frame "
        "at full-step quality, output (UNet evaluations - 1) frames later",
    )
    similarity_threshold: float = Field(
        5.0,
        ge=0,
        le=255,
        description="a camera frame in which no block of a 64-wide grid changed its mean gray level by this "
        "much since the last processed frame repeats the last output instead of running the model; 0: off",
    )
    max_skips: int = Field(10, ge=0, le=300, description="at most this many repeated outputs in a row")
    width: int = Field(512, ge=64, le=2048, multiple_of=8, description="processing width (px)")
    height: int = Field(512, ge=64, le=2048, multiple_of=8, description="processing height (px)")
    aspect: Literal["camera", "fixed"] = Field(
        "camera",
        description="camera: each camera's aspect (4:3, 16:9) at about width x height pixels (576x432 or "
        "672x384 for 512x512); fixed: exactly width x height, the camera centre-cropped to it",
    )
    delay_ms: float = Field(0.0, ge=0, le=10_000, description="extra processing time per batch, to model a slow GPU")
    max_batch: int = Field(8, ge=1, le=64, description="most frames (from different sessions) one stage call takes")
    frame_timeout_s: float = Field(10.0, gt=0, description="a session with no camera frame for this long is closed")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    check: bool = Field(
        False,
        description="load the transform, push frames through the engine, print device, model, stage times "
        "and fps, then exit (0: it works); serves nothing",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together: give both for HTTPS, or neither")
        for path in (self.cert, self.key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self

    @model_validator(mode="after")
    def _network(self) -> Settings:
        ports = self.udp_port_range
        if ports is not None:
            first, last = ports
            if not 1024 <= first <= last <= 65535:
                raise ValueError(f"--udp-ports: FIRST-LAST within 1024-65535, FIRST <= LAST (got {self.udp_ports})")
        if self.announced_address is not None:
            try:
                ipaddress.ip_address(self.announced_address)
            except ValueError:
                address = self.announced_address
                raise ValueError(f"--announced-address must be an IP address (got {address!r})") from None
        return self

    @model_validator(mode="after")
    def _accelerators(self) -> Settings:
        if self.stable_fast and self.compile:
            raise ValueError("--stable-fast and --compile both compile the model: choose one")
        if self.stable_fast and importlib.util.find_spec("sfast") is None:
            raise ValueError(
                "--stable-fast needs the stable-fast package built for the installed torch "
                "(https://github.com/chengzeyi/stable-fast); --compile is the supported alternative"
            )
        return self

    @property
    def udp_port_range(self) -> tuple[int, int] | None:
        """(first, last) of --udp-ports, both included; None when any port will do."""
        if self.udp_ports is None:
            return None
        first, last = self.udp_ports.split("-")
        return int(first), int(last)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings passes the JSON file's values as init kwargs; they rank
        # below the environment. The CLI source, when given, ranks above both.
        return (env_settings, init_settings)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SettingsFileError(f"cannot read config file {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise SettingsFileError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsFileError(f"config file {path} must hold a JSON object")
    return {key.replace("-", "_"): value for key, value in data.items()}


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Build Settings from all sources; argv None means no CLI flags (tests, embedding).

    Raises SettingsFileError or pydantic.ValidationError with a message meant for users.
    """
    cli_source: CliSettingsSource[Settings] | None = None
    cli_values: dict[str, Any] = {}
    if argv is not None:
        cli_source = CliSettingsSource(Settings, cli_parse_args=list(argv))
        cli_values = cli_source()
    config_path = cli_values.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
    file_values = _read_config_file(Path(config_path)) if config_path else {}
    file_values.pop("config", None)
    return Settings(_cli_settings_source=cli_source, **file_values)


def describe_errors(error: ValidationError) -> str:
    """One line per bad setting, naming the flag a user would type."""
    lines = []
    for item in error.errors():
        name = "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message} (got {item['input']!r})" if item["loc"] else message)
    return "\n".join(lines)
