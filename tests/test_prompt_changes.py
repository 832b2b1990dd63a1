"""A prompt change is encoded beside the stream: no other session's frames wait for it."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from models.prompts import PromptEncoder
from settings import Settings
from tests.test_diffusion import camera_frame
from transforms.catalog import build_engine
from transforms.engine import EngineSession, FrameEngine
from transforms.params import StyleParams

SLOW_PROMPT = "a prompt whose encoding takes a second"
ENCODE_S = 1.0


@pytest.fixture
def slow_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    encode = PromptEncoder._encode

    def slow(self: PromptEncoder, text: str) -> object:
        if text == SLOW_PROMPT:
            time.sleep(ENCODE_S)
        return encode(self, text)

    monkeypatch.setattr(PromptEncoder, "_encode", slow)


@pytest.fixture
def engine() -> Iterator[FrameEngine]:
    built = build_engine(Settings(model="tiny", width=64, height=64, device="cpu", similarity_threshold=0))
    built.start()
    yield built
    built.stop()


def stream(
    engine: FrameEngine, name: str, outputs: dict[str, list[float]], stop: threading.Event, prepared: bool
) -> EngineSession:
    """A session fed a 30 fps camera until `stop`; its output times land in outputs[name].
    Unprepared, its frames find their conditioning in the stream's caches on the hot path."""
    outputs[name] = []
    session = engine.open_session(
        name, StyleParams(), lambda job: outputs[name].append(time.monotonic()), lambda message: None
    )
    if prepared:
        engine.transform.prepare_params(session, session.params)

    def camera() -> None:
        while not stop.wait(1 / 30):
            engine.submit(session, camera_frame())

    threading.Thread(target=camera, daemon=True).start()
    return session


def gaps(times: list[float], since: float, until: float) -> list[float]:
    inside = [t for t in times if since <= t <= until]
    return [b - a for a, b in itertools.pairwise(inside)]


def test_no_session_waits_while_another_ones_prompt_is_encoded(slow_encoder: None, engine: FrameEngine) -> None:
    """Regression: the prompt encoder held its lock while the text encoder ran, and the denoise
    stage took the same lock for every frame: one session's new prompt stalled every session.
    Now a prepared session's frames use its own look, and the caches never lock while encoding."""
    outputs: dict[str, list[float]] = {}
    stop = threading.Event()
    try:
        stream(engine, "a", outputs, stop, prepared=False)
        b = stream(engine, "b", outputs, stop, prepared=True)
        time.sleep(1.5)
        steady = time.monotonic()
        time.sleep(1.0)
        changing = time.monotonic()
        slow = StyleParams(prompt=SLOW_PROMPT)
        worker = threading.Thread(target=engine.transform.prepare_params, args=(b, slow))
        worker.start()
        worker.join()
        b.params = slow
        done = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
    assert done - changing >= ENCODE_S, "the encoder was slow"
    model_call_s = statistics.median(gaps(outputs["a"], steady, changing))
    for name in ("a", "b"):
        while_encoding = gaps(outputs[name], changing, done)
        assert len(while_encoding) >= 3, f"{name} kept streaming"
        assert max(while_encoding) < 2 * model_call_s + 0.05, (name, max(while_encoding), model_call_s)
