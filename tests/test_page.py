"""The studio page in headless chromium (fake camera) against the real server."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page

from bench.serve import ServerProcess
from tests.browser import chromium
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

PLAYED_JS = "document.getElementById('remote').getVideoPlaybackQuality().totalVideoFrames"
Spawn = Callable[..., Awaitable[str]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def open_page(browser: Browser, url: str, name: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    log = (ARTIFACTS / f"console-{name}.log").open("w")

    def keep(message: ConsoleMessage) -> None:
        log.write(f"{message.type}: {message.text}\n")
        log.flush()

    page.on("console", keep)
    await page.goto(url)
    await page.wait_for_selector("#param-strength")
    return page


async def wait_live_and_playing(page: Page, timeout_ms: int = 30_000) -> None:
    await page.wait_for_function("document.getElementById('state').dataset.state === 'live'", timeout=timeout_ms)
    played = await page.evaluate(PLAYED_JS)
    await page.wait_for_function(f"{PLAYED_JS} > {played + 10}", timeout=timeout_ms)


async def wait_applied(page: Page, name: str) -> None:
    await page.wait_for_function(
        f"document.getElementById('param-{name}').closest('.param').dataset.status === 'applied'", timeout=15_000
    )


async def server_params(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as response:
        sessions = (await response.json())["sessions"]
    assert len(sessions) == 1
    return dict(next(iter(sessions.values()))["params"])


async def choose_style(page: Page, url: str, preset: str, slider: tuple[str, str, str]) -> None:
    """Pick a preset and move a slider; both must be acknowledged, in the page and on the server."""
    label, name, value = slider
    await page.get_by_label("Preset").select_option(preset)
    await wait_applied(page, "prompt")
    await page.get_by_label(label).fill(value)
    await wait_applied(page, name)
    params = await server_params(url)
    assert str(params["prompt"]).lower().startswith(preset.lower().split()[0])
    assert str(params[name]) == value


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def test_studio_streams_applies_styles_snapshots_and_restarts(browser: Browser, spawn_server: Spawn) -> None:
    url = await spawn_server("--transform", "invert", "--width", "480", "--height", "352")
    page = await open_page(browser, url, "studio")
    await page.get_by_role("button", name="Start").click()
    await wait_live_and_playing(page)

    await page.get_by_label("Prompt", exact=True).fill("a bronze statue, museum light")
    await page.get_by_label("Prompt", exact=True).press("Enter")
    await wait_applied(page, "prompt")
    assert (await server_params(url))["prompt"] == "a bronze statue, museum light"
    await choose_style(page, url, preset="Claymation", slider=("Strength", "strength", "0.8"))
    await page.screenshot(path=ARTIFACTS / "studio-live.png")

    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Snapshot").click()
    download = await download_info.value
    saved = ARTIFACTS / "snapshot.png"
    await download.save_as(saved)
    width, height = png_size(saved)
    assert abs(width / height - 640 / 480) < 0.02, "the camera's aspect (4:3)"
    assert abs(width * height - 480 * 352) < 0.05 * 480 * 352, "at about --width x --height pixels"

    await page.get_by_role("button", name="Stop").click()
    await page.wait_for_function("document.getElementById('state').dataset.state === 'idle'")
    await page.get_by_role("button", name="Start").click()
    await wait_live_and_playing(page)
    assert (await server_params(url))["strength"] == 0.8, "the style survives a restart of the stream"


async def test_studio_reconnects_after_a_server_restart(browser: Browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "server-restart.log").open("ab") as log:
        server = ServerProcess("--transform", "invert", log=log)
    await server.ready()
    try:
        page = await open_page(browser, server.url, "restart")
        await page.get_by_role("button", name="Start").click()
        await wait_live_and_playing(page)
        await server.stop()
        await page.wait_for_function(
            "['reconnecting', 'warming'].includes(document.getElementById('state').dataset.state)", timeout=15_000
        )
        await asyncio.sleep(1)
        with (ARTIFACTS / "server-restart.log").open("ab") as log:
            server = ServerProcess("--transform", "invert", log=log, port=server.port)
        await server.ready()
        await wait_live_and_playing(page, timeout_ms=40_000)
        await page.screenshot(path=ARTIFACTS / "studio-reconnected.png")
    finally:
        await server.stop()


async def test_studio_with_the_diffusion_model(browser: Browser, spawn_server: Spawn) -> None:
    url = await spawn_server("--model", "tiny", "--width", "256", "--height", "256")
    page = await open_page(browser, url, "diffusion")
    await page.get_by_role("button", name="Start").click()
    await wait_live_and_playing(page, timeout_ms=60_000)
    await choose_style(page, url, preset="Oil painting", slider=("Steps", "steps", "2"))
    await page.screenshot(path=ARTIFACTS / "studio-diffusion.png")


async def test_a_refused_camera_is_explained(spawn_server: Spawn) -> None:
    url = await spawn_server("--transform", "invert")
    async with chromium(allow_camera=False) as browser:
        page = await open_page(browser, url, "refused")
        await page.get_by_role("button", name="Start").click()
        notice = page.locator("#notice")
        await notice.wait_for(state="visible", timeout=15_000)
        assert "refused" in (await notice.text_content() or "")
        assert await page.locator("#state").get_attribute("data-state") == "failed"
        await page.screenshot(path=ARTIFACTS / "studio-camera-refused.png")


async def test_a_full_size_model_on_a_cpu_is_called_slow_on_the_page(
    browser: Browser, spawn_server: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a GPU the default model runs at seconds per frame: the page says so and names the
    fast choices (here the weights are not even there, which the page also learns on Start)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = await spawn_server("--model", "someone/not-in-the-cache")
    page = await open_page(browser, url, "slow-cpu")
    advice = page.locator("#advice")
    await advice.wait_for(state="visible", timeout=15_000)
    text = await advice.text_content() or ""
    assert "seconds per frame" in text and "--transform cartoon" in text and "GPU" in text
    await page.screenshot(path=ARTIFACTS / "studio-slow-cpu.png")


async def test_the_blend_and_transition_controls_are_applied_and_the_video_fits_720p(
    browser: Browser, spawn_server: Spawn
) -> None:
    """A second prompt mixed in and a transition time reach the server as the live parameters
    prompt_weight, prompts and transition_ms; at 1280x720 the whole stylized video is visible."""
    url = await spawn_server("--transform", "invert", "--width", "640", "--height", "480")
    for width, height in ((1280, 720), (1366, 768)):
        page = await browser.new_page(viewport={"width": width, "height": height})
        await page.goto(url)
        await page.wait_for_selector("#param-strength")
        await page.get_by_role("button", name="Start").click()
        await wait_live_and_playing(page)
        box = await page.locator("#remote").bounding_box()
        assert box is not None and box["height"] > 0.5 * height
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, (width, height, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, height, box)
        await page.screenshot(path=ARTIFACTS / f"studio-{width}x{height}.png")
        if width == 1280:
            await page.get_by_label("Second prompt").fill("claymation character, plasticine")
            await page.get_by_label("Second prompt").press("Enter")
            await page.get_by_label("Mix").fill("0.3")
            await wait_applied(page, "mix")
            await wait_applied(page, "second_prompt")
            await page.get_by_label("Transition (ms)").fill("1200")
            await wait_applied(page, "transition_ms")
            params = await server_params(url)
            assert params["prompts"] == [{"text": "claymation character, plasticine", "weight": 0.3}]
            assert params["prompt_weight"] == 0.7 and params["transition_ms"] == 1200
            await page.get_by_label("Preset").select_option("Watercolor meets clay")
            await wait_applied(page, "mix")
            assert (await server_params(url))["prompts"] == [
                {"text": "claymation character, plasticine, studio light", "weight": 0.4}
            ]
        await page.close()
