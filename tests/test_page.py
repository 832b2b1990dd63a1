"""The page in a real browser against the real server: camera out, stylized video back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.browser import chromium
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

PLAYED_FRAMES_JS = "() => document.getElementById('remote').getVideoPlaybackQuality().totalVideoFrames"


async def test_page_streams_and_applies_a_prompt(spawn_server: Callable[..., Awaitable[str]]) -> None:
    url = await spawn_server("--transform", "invert")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(url)
        await page.get_by_role("button", name="Start").click()
        await page.wait_for_function(f"({PLAYED_FRAMES_JS})() > 10", timeout=30_000)
        played = await page.evaluate(PLAYED_FRAMES_JS)
        await page.wait_for_function(f"({PLAYED_FRAMES_JS})() > {played + 15}", timeout=15_000)

        await page.get_by_label("Prompt").fill("claymation portrait")
        await page.get_by_role("button", name="Apply").click()
        await page.wait_for_function(
            "() => document.getElementById('ack').textContent === 'applied: claymation portrait'",
            timeout=10_000,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "page-streaming.png")
        assert "fps" in (await page.locator("#fps").text_content() or "")
