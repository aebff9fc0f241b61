"""The search page end to end: uvicorn on loopback, the system Chromium driven by Playwright."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from medfm.service import ServiceSettings, create_app
from tests.service.conftest import TOKEN

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(case_search):
    """The app served by uvicorn in a background thread; stopped after the module's tests."""
    port = free_port()
    app = create_app(case_search, ServiceSettings(token=TOKEN))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (the Makefile's system-packages target "
                    "apt-installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_a_dicom_and_open_a_similar_case(server_url, browser, studies, case_search):
    page = browser.new_page()
    page.set_default_timeout(60_000)  # the first search embeds the upload: slow on two busy cores, never wrong
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    # The page's first request finds out whether the service wants a token: that 401 is expected.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "401" not in msg.text else None)
    page.goto(server_url)

    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_selector("#search:not([hidden])")
    assert "cases" in page.locator("#about").inner_text()

    page.set_input_files("#file", str(studies["cxr"]))
    page.wait_for_selector(".card")
    cards = page.locator(".card")
    assert cards.count() >= 1
    first = cards.first
    score = first.locator(".score").inner_text()
    assert 0 <= abs(float(score)) <= 1.001 and len(score.split(".")[1]) == 3
    page.wait_for_function("document.querySelector('.card img.thumb').naturalWidth > 0")
    assert first.locator("img.thumb").evaluate("img => img.src").startswith("blob:")
    assert "cxr query" in page.locator("#status").inner_text()

    case = case_search.index.case(int(first.get_attribute("data-case-id")))
    first.click()
    dialog = page.locator("#case")
    dialog.wait_for(state="visible")
    assert page.locator("#case-report").inner_text().strip() == case.report.strip()
    assert case.study_id in page.locator("#case-title").inner_text()
    page.wait_for_function("document.querySelector('#case-image').naturalWidth > 0")
    page.get_by_role("button", name="Close").click()
    dialog.wait_for(state="hidden")

    assert errors == []
    page.close()
