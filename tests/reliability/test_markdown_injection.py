"""Markdown and HTML in what users and models write is shown as text, in a real headless Chromium.

The app runs with the fake model (tests/fake_model_app.py); uploads named like Markdown images,
bold, HTML and javascript: links, a passage and a question full of the same, and the model's reply
quoting that passage. A local HTTP server stands in for the URL an injected image would fetch,
and the browser's own requests are watched for relative ones (a file name keeps no "/": the
upload passes on only its last part): neither may see a fetch, the page must hold no element
made from the payloads, and every payload must be on the page as the literal text it is.
"""

from __future__ import annotations

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from app_server import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium, running_app

pytestmark = pytest.mark.browser

ENTRY = Path(__file__).resolve().parents[1] / "fake_model_app.py"


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []  # each server gets its own subclass and list

    def do_GET(self):
        self.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def leak_url():
    """A local server any fetch of an injected URL would reach; yields (its URL, the paths requested)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Recorder", (_Recorder,), {"requests": []}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.RequestHandlerClass.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def app_url(tmp_path):
    require_chromium()
    port = free_port()
    env = {**os.environ, "ECONLM_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    with running_app(command, port, env, tmp_path / "app.log") as url:
        yield url


BOLD_PAYLOADS = ["bold", "strong passage", "tariffs", "Bold", "Tag"]  # "Tag": the fake model title-cases


def made_from_payloads(page, leak: str) -> dict[str, list[str]]:
    """Elements the payloads would make: images and links to injected URLs, javascript: links, bold
    text (a heading's own "#slug" anchor link is Streamlit's, and leads nowhere else)."""
    return page.evaluate("""([leak, bold]) => ({
        images: [...document.querySelectorAll('img')].map(e => e.src).filter(s => s.startsWith(leak) || s.includes('injected')),
        links: [...document.querySelectorAll('a')].map(e => e.getAttribute('href') || '')
            .filter(h => !h.startsWith('#') && (h.startsWith('javascript:') || h.startsWith(leak) || h.includes('injected'))),
        bold: [...document.querySelectorAll('strong, b')].map(e => e.textContent.trim()).filter(t => bold.includes(t)),
    })""", [leak, BOLD_PAYLOADS])


def test_payloads_in_names_passages_questions_and_replies_are_shown_as_text(app_url, leak_url):
    from playwright.sync_api import expect, sync_playwright

    leak, requested = leak_url
    names = ["![img](injected-name.png).md", "**bold**.md", "<img src=injected-name-html.png>.txt",
             "[link](javascript:alert(1)).md", ":red[red] :smile: $x^2$ &amp; &lt;b&gt;.md"]
    passage = (f"Tariffs ![p]({leak}/injected-passage.png) **strong passage** "
               f"<img src='{leak}/injected-passage-html.png'> [plink](javascript:alert(2)) raise consumer prices.")
    files = [{"name": name, "mimeType": "text/plain", "buffer": f"{passage} Note {i} on trade.".encode()}
             for i, name in enumerate(names)]
    question = f"What do **tariffs** ![q]({leak}/injected-question.png) :red[do] :material/home: to prices?"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            fetched: list[str] = []
            page.on("request", lambda request: fetched.append(request.url))
            page.goto(app_url)
            page.get_by_role("link", name="My documents", exact=True).click()
            page.locator("input[type=file]").set_input_files(files)
            page.get_by_role("button", name="Add to index").click()
            for name in names:  # the "Indexed ..." messages
                expect(page.get_by_text(f"Indexed {name} (1 pages, 1 chunks)", exact=True)).to_be_visible()
            caption = page.get_by_text(f"{len(names)} document(s)")  # the index caption lists every file name
            for name in names:
                expect(caption).to_contain_text(f"{name} (1 p.)")

            chat = page.get_by_placeholder("Ask about your documents")
            chat.fill(question)
            chat.press("Enter")
            messages = page.locator('[data-testid="stChatMessage"]')
            expect(messages.first).to_contain_text(question)
            reply = messages.nth(1)
            expect(reply).to_contain_text("Cites:")
            reply.get_by_text("Retrieved passages").click()
            expect(reply).to_contain_text("**strong passage**")  # the model quoting the passage
            expect(reply.get_by_text(passage).first).to_be_visible()  # the passage itself

            documents_page = made_from_payloads(page, leak)

            page.get_by_role("link", name="Title", exact=True).click()
            page.get_by_label("Abstract").fill(f"**Bold** ![t]({leak}/injected-title.png) <b>tag</b> [t](javascript:x) "
                                               ":red[red] :material/home: title words")
            page.get_by_text("Also suggest 3 alternatives").click()
            page.get_by_role("button", name="Suggest a title").click()
            expect(page.get_by_role("heading", name="**Bold**")).to_contain_text(":Red[Red] :Material/Home:")
            expect(page.get_by_text("(Variant 2)")).to_be_visible()

            title_page = made_from_payloads(page, leak)
        finally:
            browser.close()
    nothing = {"images": [], "links": [], "bold": []}
    assert documents_page == nothing and title_page == nothing
    assert requested == [], f"the browser fetched injected URLs: {requested}"
    assert not [url for url in fetched if "injected" in url or url.startswith(leak)]
