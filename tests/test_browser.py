"""End to end in a real headless Chromium: `econlm app` with the real models, an uploaded PDF, a
question, a cited answer, and a screenshot.

Uses Debian's chromium (`apt-get install chromium`, done by `make install-ci`) through Python
Playwright with `executable_path`; no browser is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fakes import make_pdf

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MODEL = "transformers:smollm2-135m-instruct"
PAGES = [
    "Freedonia monetary policy report. The central bank of Freedonia raised its policy rate to 4.5 percent "
    "in March 2024 to bring inflation back to its 2 percent target.",
    "Labour market. Unemployment in Freedonia fell to 3.9 percent while wage growth stayed near 4 percent.",
]
QUESTION = "What did the central bank of Freedonia do in March 2024?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"econlm app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"econlm app did not come up in {seconds:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path, small_corpus):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make install-ci / WITH_BROWSER=1 scripts/install.sh)")
    home = tmp_path / "home"
    home.mkdir()
    # Reuse the converted base model of the test home (the conversion is not what is tested here).
    models = Path(os.environ["ECONLM_HOME"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models, target_is_directory=True)
    env = {**os.environ, "ECONLM_HOME": str(home)}
    econlm = [sys.executable, "-m", "econlm.cli"]
    subprocess.run([*econlm, "index", "build", "--corpus", str(small_corpus)], env=env, check=True,
                   capture_output=True, timeout=600)
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen([*econlm, "app", "--port", str(port), "--model", MODEL],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_upload_ask_and_see_a_cited_answer(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    pdf = tmp_path / "freedonia-report.pdf"
    pdf.write_bytes(make_pdf(PAGES))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)  # on 2 busy cores a first model load takes minutes
            page.goto(app_url)
            expect(page.get_by_text(f"Model: {MODEL}").first).to_be_visible(timeout=120_000)

            # Papers: semantic search over the (small) corpus index built by `econlm index build`.
            page.get_by_role("link", name="Papers", exact=True).click()
            search = page.get_by_label("Search the economics papers")
            expect(search).to_be_visible(timeout=600_000)  # first visit loads MiniLM and the index
            search.fill("minimum wage employment")
            page.keyboard.press("Enter")
            expect(page.get_by_role("link", name=re.compile(r"^arXiv:")).first).to_be_visible(timeout=300_000)
            page.screenshot(path=str(shots / "papers-search.png"), full_page=True)

            # My documents: upload the generated PDF, ask, and wait for the cited answer.
            page.get_by_role("link", name="My documents", exact=True).click()
            page.locator("input[type=file]").set_input_files(str(pdf))
            page.get_by_role("button", name="Add to index").click()
            expect(page.get_by_text("Indexed freedonia-report.pdf (2 pages, 2 chunks)")).to_be_visible(timeout=300_000)
            chat = page.get_by_placeholder("Ask about your documents")
            chat.fill(QUESTION)
            chat.press("Enter")
            cites = page.get_by_text(re.compile(r"Cites: .*freedonia-report\.pdf, p\. 1"))
            expect(cites).to_be_visible(timeout=600_000)
            answer = page.locator('[data-testid="stChatMessage"]').last
            expect(answer).to_contain_text("[freedonia-report.pdf, p. 1]")
            expect(answer).to_contain_text("Retrieved passages")
            page.screenshot(path=str(shots / "documents-answer.png"), full_page=True)
        finally:
            browser.close()
    for shot in ("papers-search.png", "documents-answer.png"):
        assert (shots / shot).stat().st_size > 10_000
    if os.environ.get("ECONLM_KEEP_SCREENSHOTS"):  # to look at them after a run
        shutil.copytree(shots, os.environ["ECONLM_KEEP_SCREENSHOTS"], dirs_exist_ok=True)
