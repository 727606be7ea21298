"""Opens the gateway's /docs in headless Chromium with every other origin unreachable.

Run by tests/test_browser.py with the playwright venv. Usage: docs_driver.py URL TIMEOUT_SECONDS.
Requests to any origin but the gateway's are aborted (as on a machine without internet) and
recorded. Prints one JSON line: the operations Swagger UI rendered, the outside requests the
page attempted, the requests that failed, and the console errors.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit

# Run as a script: its own directory is on sys.path, so the voice page's driver is importable.
from browser_driver import CHROMIUM, HEADLESS_ARGS
from playwright.sync_api import Route, sync_playwright


def main(url: str, timeout: float) -> None:
    origin = urlsplit(url).netloc
    outside: list[str] = []
    failed: list[str] = []
    errors: list[str] = []

    def only_the_gateway(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=HEADLESS_ARGS
        )
        page = browser.new_page()
        page.route("**/*", only_the_gateway)
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        operations: list[str] = []
        try:
            page.wait_for_selector(".opblock", timeout=timeout * 1000)
            operations = page.eval_on_selector_all(
                ".opblock .opblock-summary-path",
                "nodes => nodes.map(node => node.getAttribute('data-path') || node.innerText)",
            )
        except Exception as error:  # the report says what was missing
            errors.append(f"no operations rendered: {error}")
        title = page.inner_text(".info .title") if page.query_selector(".info .title") else ""
        browser.close()
    print(
        json.dumps(
            {
                "operations": operations,
                "title": title,
                "outside": outside,
                "failed": failed,
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
