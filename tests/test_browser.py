"""The API's /docs page in a real browser: Debian's Chromium, driven by Playwright, headless.

The page must render the service's OpenAPI 3.1 document, list every path of it, and run "Try it out"
on the features endpoint against the live service. Without a Chromium on the machine the test is
skipped, and the end of the run says so loudly (see conftest.py); `.ci/run` installs Chromium first.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from serving.app import create_app
from tests.redis_servers import free_port
from tests.test_app import CLIENTS, app_config, publish

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="BROWSER TEST NOT RUN: no Chromium (apt-get install chromium)"),
]


@pytest.fixture
def served(redis_url: str) -> Iterator[str]:
    """The app on a real HTTP server (werkzeug, in a thread) reading a published version."""
    publish(redis_url, "v1", CLIENTS)
    port = free_port()
    server = make_server("127.0.0.1", port, create_app(app_config(redis_url)), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


def test_docs_render_every_path_and_try_it_out_answers(served: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{served}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            assert "Unable to render this definition" not in page.content()
            spec = page.request.get(f"{served}/openapi.json").json()
            shown = set(page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path)"))
            assert shown == set(spec["paths"])
            operation = page.locator("#operations-default-getFeatures")
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            operation.locator('tr[data-param-name="client_id"] input').fill("7")
            operation.locator("button.execute").click()
            answer = operation.locator(".live-responses-table .response-col_description pre")
            answer.first.wait_for(timeout=30_000)
            text = answer.first.inner_text()
            assert '"client_id": 7' in text and '"avg_amount_loans_previous": 2134.5' in text
            assert errors == []
        finally:
            browser.close()
