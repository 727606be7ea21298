"""Drives the voice page in headless Chromium (run by tests/test_browser.py, playwright venv).

Usage: browser_driver.py URL MICROPHONE.wav SCREENSHOT.png TIMEOUT_SECONDS
Prints one JSON line: the page's `window.spiritlm` counters when a reply was received and
played (or when the time ran out).
"""

from __future__ import annotations

import json
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Headless and offline: no sandbox (containers), no GPU, no background traffic.
HEADLESS_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_args(microphone: str) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required",
        *HEADLESS_ARGS,
    ]


def replied(stats: dict) -> bool:
    # A reply of the random test LM runs to its token cap: "incomplete" is a finished reply too.
    # The user's transcript is made beside the reply and may come after it (the random LM's
    # transcript can run to its budget, longer than a short reply): wait for both.
    finished = {"completed", "incomplete"}
    transcribed = any(entry["role"] == "user" for entry in stats["transcripts"])
    return (
        stats["playedBuffers"] > 0 and bool(finished & set(stats["responsesDone"])) and transcribed
    )


def main(url: str, microphone: str, screenshot: str, timeout: float) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(microphone)
        )
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.click("#connect")
        deadline = time.monotonic() + timeout
        stats = page.evaluate("window.spiritlm")
        while time.monotonic() < deadline and not replied(stats):
            time.sleep(0.5)
            stats = page.evaluate("window.spiritlm")
        stats["status"] = page.inner_text("#status")
        stats["bubbles"] = page.eval_on_selector_all(
            "#transcript li", "items => items.map(item => item.className)"
        )
        stats["console"] = console[-20:]
        page.screenshot(path=screenshot, full_page=True)
        page.click("#connect")  # disconnect
        browser.close()
    print(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
