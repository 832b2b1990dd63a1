"""The `control` data-channel protocol (DESIGN.md): message shapes and their validation."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

CONTROL_LABEL = "control"
MAX_MESSAGE_BYTES = 16 * 1024  # far above any valid message; keeps a flood cheap to refuse


class ProtocolError(ValueError):
    """A message the server cannot act on; the text goes back to the client."""

    def __init__(self, message: str, request: str | None = None) -> None:
        super().__init__(message)
        self.request = request


class ParamsRequest(BaseModel):
    """{"type": "params", ...any subset of the live parameters}; checked by StyleParams."""

    model_config = ConfigDict(extra="allow")
    type: Literal["params"]

    def changes(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PingRequest(BaseModel):
    type: Literal["ping"]
    t: Any = None


Request = ParamsRequest | PingRequest
REQUEST_TYPES: dict[str, type[ParamsRequest] | type[PingRequest]] = {
    "params": ParamsRequest,
    "ping": PingRequest,
}


def parse_request(message: str | bytes) -> Request:
    """Decode one data-channel message; raises ProtocolError saying what is wrong."""
    if isinstance(message, bytes):
        raise ProtocolError("binary messages are not part of the protocol; send JSON text")
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object with a 'type'")
    kind = data.get("type")
    request_type = REQUEST_TYPES.get(kind) if isinstance(kind, str) else None
    if request_type is None:
        known = ", ".join(sorted(REQUEST_TYPES))
        raise ProtocolError(f"unknown message type {kind!r}; known: {known}")
    try:
        return request_type.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation(exc), request=kind) from exc


def describe_validation(error: ValidationError) -> str:
    """'strength: Input should be less than or equal to 1' for each bad field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        parts.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(parts)


def error_reply(message: str, request: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": message, "request": request}
