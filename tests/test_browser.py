"""End to end in a real headless Chromium (see `app_server`): `econlm app` with the real models,
an uploaded PDF, a question, a cited answer, and a screenshot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from app_server import CHROMIUM, CHROMIUM_ARGS, free_port, require_chromium, running_app
from fakes import make_pdf

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "transformers:smollm2-135m-instruct"
PAGES = [
    "Freedonia monetary policy report. The central bank of Freedonia raised its policy rate to 4.5 percent "
    "in March 2024 to bring inflation back to its 2 percent target.",
    "Labour market. Unemployment in Freedonia fell to 3.9 percent while wage growth stayed near 4 percent.",
]
QUESTION = "What did the central bank of Freedonia do in March 2024?"


@pytest.fixture
def app_url(tmp_path, small_corpus):
    require_chromium()
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
    command = [*econlm, "app", "--port", str(port), "--model", MODEL]
    with running_app(command, port, env, tmp_path / "app.log") as url:
        yield url


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
