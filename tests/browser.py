"""Headless Debian chromium with a fake camera, driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@asynccontextmanager
async def chromium(allow_camera: bool = True) -> AsyncIterator[Browser]:
    """`allow_camera=False` leaves out the flag that accepts the camera prompt: it is refused."""
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
    flags = CHROMIUM_FLAGS if allow_camera else [f for f in CHROMIUM_FLAGS if f != "--use-fake-ui-for-media-stream"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            yield browser
        finally:
            await browser.close()
