"""The arXiv OAI-PMH harvester against a scripted OAI-PMH server on 127.0.0.1.

The server answers with OAI-PMH XML written here in arXiv's formats, keyed by resumption token,
and can be told to fail (503 + Retry-After, 5xx, malformed pages, dropped connections) for a given
page. Time is a fake clock shared by the harvester (injected `clock`/`sleep`) and the server (which
stamps each request with it and advances it by a simulated latency), so politeness and backoff are
checked without ever waiting.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import pytest

from econlm.data.corpus import load_papers
from econlm.data.harvest import LOG_FILE, PAPERS_FILE, STATE_FILE, harvest
from econlm.errors import UserError

# --------------------------------------------------------------------------------------------
# OAI-PMH XML in arXiv's formats

OAI_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:schemaLocation="http://www.openarchives.org/OAI/2.0/ http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n'
    "<responseDate>2024-06-03T12:00:00Z</responseDate>\n"
    '<request verb="ListRecords" metadataPrefix="arXivRaw" set="econ">https://oaipmh.arxiv.org/oai</request>\n'
)


def oai(body: str) -> bytes:
    return (OAI_OPEN + body + "\n</OAI-PMH>\n").encode("utf-8")


def list_records(records: list[str], token: str | None = None, cursor: int = 0, size: int = 9) -> bytes:
    resumption = f'<resumptionToken cursor="{cursor}" completeListSize="{size}">{token or ""}</resumptionToken>'
    return oai("<ListRecords>\n" + "\n".join(records) + "\n" + resumption + "\n</ListRecords>")


def header(arxiv_id: str, datestamp: str, deleted: bool = False) -> str:
    status = ' status="deleted"' if deleted else ""
    return (
        f"<header{status}><identifier>oai:arXiv.org:{arxiv_id}</identifier>"
        f"<datestamp>{datestamp}</datestamp><setSpec>econ</setSpec></header>"
    )


def deleted_record(arxiv_id: str, datestamp: str) -> str:
    return f"<record>{header(arxiv_id, datestamp, deleted=True)}</record>"


def raw_record(arxiv_id: str, title: str, categories: str, versions: list[str], datestamp: str,
               abstract: str = "We study an economy.", authors: str = "Ada Lovelace and Alan Turing",
               doi: str | None = None) -> str:
    """A record in arXivRaw format (one <version> per entry of `versions`, RFC 2822 dates)."""
    version_xml = "".join(
        f'<version version="v{i}"><date>{date}</date><size>212kb</size><source_type>D</source_type></version>'
        for i, date in enumerate(versions, 1)
    )
    doi_xml = f"<doi>{doi}</doi>" if doi else ""
    return (
        f"<record>{header(arxiv_id, datestamp)}<metadata>"
        '<arXivRaw xmlns="http://arxiv.org/OAI/arXivRaw/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://arxiv.org/OAI/arXivRaw/ http://arxiv.org/OAI/arXivRaw.xsd">'
        f"<id>{arxiv_id}</id><submitter>Ada Lovelace</submitter>{version_xml}"
        f"<title>{escape(title)}</title><authors>{escape(authors)}</authors>"
        f"<categories>{categories}</categories><comments>30 pages</comments>{doi_xml}"
        "<license>http://creativecommons.org/licenses/by/4.0/</license>"
        f"<abstract>  {escape(abstract)}\n</abstract></arXivRaw></metadata></record>"
    )


def arxiv_record(arxiv_id: str, title: str, categories: str, created: str, updated: str | None,
                 datestamp: str, authors: list[tuple[str, str]]) -> str:
    """A record in the `arXiv` format (authors split into keyname/forenames)."""
    authors_xml = "".join(
        f"<author><keyname>{escape(k)}</keyname><forenames>{escape(f)}</forenames></author>" for f, k in authors
    )
    updated_xml = f"<updated>{updated}</updated>" if updated else ""
    return (
        f"<record>{header(arxiv_id, datestamp)}<metadata>"
        '<arXiv xmlns="http://arxiv.org/OAI/arXiv/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://arxiv.org/OAI/arXiv/ http://arxiv.org/OAI/arXiv.xsd">'
        f"<id>{arxiv_id}</id><created>{created}</created>{updated_xml}<authors>{authors_xml}</authors>"
        f"<title>{escape(title)}</title><categories>{categories}</categories>"
        "<license>http://arxiv.org/licenses/nonexclusive-distrib/1.0/</license>"
        "<abstract>We prove a theorem.</abstract></arXiv></metadata></record>"
    )


def oai_error(code: str, message: str) -> bytes:
    return oai(f'<error code="{code}">{escape(message)}</error>')


# A three-page arXivRaw harvest: 9 records, of which 4 papers survive.
#   2401.00001 listed twice (v1, then v1+v2 with a new title): the v2 listing is kept
#   2401.00002 primary cs.LG (cross-listed to econ.GN): filtered out
#   2402.00005 listed, then deleted on page 3: removed
CHAIN = {
    None: list_records([
        raw_record("2401.00001", "Old Title", "econ.EM stat.ME", ["Tue, 2 Jan 2024 10:00:00 GMT"], "2024-01-03"),
        raw_record("2401.00002", "Learning to Price", "cs.LG econ.GN", ["Wed, 3 Jan 2024 09:00:00 GMT"], "2024-01-04"),
        raw_record("2401.00003", "Bounds on $\\alpha$ -- a note", "econ.GN", ["Thu, 4 Jan 2024 09:00:00 GMT"],
                   "2024-01-05", abstract="We bound $\\alpha$\n  using   \\emph{data} & theory.",
                   authors="Rahul Deb, J\\\"org Stoye"),
    ], token="tok2", cursor=0),
    "tok2": list_records([
        raw_record("2401.00004", "Mechanisms", "econ.TH math.OC", ["Fri, 5 Jan 2024 09:00:00 GMT"], "2024-01-06"),
        raw_record("2401.00001", "New Title", "econ.EM stat.ME",
                   ["Tue, 2 Jan 2024 10:00:00 GMT", "Mon, 12 Feb 2024 08:30:00 GMT"], "2024-02-13"),
        raw_record("2402.00005", "Withdrawn", "econ.EM", ["Thu, 1 Feb 2024 09:00:00 GMT"], "2024-02-02"),
    ], token="tok3", cursor=3),
    "tok3": list_records([
        deleted_record("2402.00005", "2024-02-20"),
        raw_record("2403.00006", "Trade", "econ.GN q-fin.GN", ["Fri, 1 Mar 2024 09:00:00 GMT"], "2024-03-02",
                   doi="10.1000/xyz123"),
        raw_record("2403.00007", "Auctions", "econ.TH", ["Sat, 2 Mar 2024 09:00:00 GMT"], "2024-03-03"),
    ], token=None, cursor=6),
}
CHAIN_PAPERS = ["2401.00001", "2401.00003", "2401.00004", "2403.00006", "2403.00007"]

# --------------------------------------------------------------------------------------------
# A scripted OAI-PMH server and a fake clock

DROP = "drop"  # fault: close the connection without answering


class FakeClock:
    """Injected `clock`/`sleep`: sleeping advances time instantly and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class OAIServer:
    """Serves `pages[resumptionToken]` (None = the first request); `faults[token]` are served first."""

    def __init__(self, pages: dict, clock: FakeClock, latency: float = 0.4):
        self.pages, self.clock, self.latency = dict(pages), clock, latency
        self.faults: dict[str | None, list] = defaultdict(list)
        self.requests: list[tuple[float, dict]] = []  # (fake time, query parameters)
        oai_server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                params = dict(parse_qsl(urlsplit(self.path).query))
                oai_server.requests.append((oai_server.clock.now, params))
                oai_server.clock.now += oai_server.latency
                token = params.get("resumptionToken")
                fault = oai_server.faults[token].pop(0) if oai_server.faults[token] else None
                if fault == DROP:
                    self.close_connection = True
                    return
                status, headers, body = fault or (200, {}, oai_server.pages[token])
                self.send_response(status)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/oai"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def tokens_requested(self) -> list[str | None]:
        return [params.get("resumptionToken") for _, params in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def make_server(clock):
    servers = []

    def make(pages=CHAIN, **kwargs):
        servers.append(OAIServer(pages, clock, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def run(server, clock, out, **kwargs):
    options = {"from_date": "2024-01-01", "base_url": server.url, "sleep": clock.sleep, "clock": clock.clock,
               "progress": False}
    return harvest(out, **{**options, **kwargs})


def read_papers(out):
    return [json.loads(line) for line in (out / PAPERS_FILE).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# Tests


def test_follows_resumption_tokens_and_writes_corpus_schema(make_server, clock, tmp_path):
    server = make_server()
    result = run(server, clock, tmp_path / "h")

    assert server.tokens_requested() == [None, "tok2", "tok3"]
    first, *rest = [params for _, params in server.requests]
    assert first == {"verb": "ListRecords", "metadataPrefix": "arXivRaw", "set": "econ", "from": "2024-01-01"}
    assert rest == [{"verb": "ListRecords", "resumptionToken": t} for t in ("tok2", "tok3")]

    papers = read_papers(tmp_path / "h")
    assert [p["arxiv_id"] for p in papers] == CHAIN_PAPERS  # sorted, no duplicates, deleted and cs.LG gone
    assert (result.papers, result.records, result.deleted, result.superseded, result.other_category) == (5, 9, 1, 1, 1)
    by_id = {p["arxiv_id"]: p for p in papers}
    twice = by_id["2401.00001"]
    assert twice["title"] == "New Title"  # the listing with v2
    assert (twice["published"], twice["updated"]) == ("2024-01-02", "2024-02-12")
    assert [v["version"] for v in twice["versions"]] == ["v1", "v2"]
    assert (twice["primary_category"], twice["categories"]) == ("econ.EM", ["econ.EM", "stat.ME"])
    tex = by_id["2401.00003"]
    assert tex["title"] == "Bounds on $\\alpha$ -- a note"
    assert tex["abstract"] == "We bound $\\alpha$ using \\emph{data} & theory."
    assert tex["authors"] == 'Rahul Deb, J\\"org Stoye'
    assert by_id["2403.00006"]["doi"] == "10.1000/xyz123"
    # The output is a valid corpus file for the rest of the pipeline.
    assert [p.arxiv_id for p in load_papers(tmp_path / "h" / PAPERS_FILE).papers] == CHAIN_PAPERS
    state = json.loads((tmp_path / "h" / STATE_FILE).read_text())
    assert state["complete"] and state["records"] == 9 and state["resumption_token"] is None


def test_arxiv_prefix_keeps_latest_updated_listing(make_server, clock, tmp_path):
    authors = [("Ada", "Lovelace"), ("Alan M.", "Turing")]
    pages = {
        None: list_records([
            arxiv_record("2401.00010", "Revised Title", "econ.TH cs.GT", "2024-01-02", "2024-03-01", "2024-03-02", authors),
        ], token="p2", size=2),
        "p2": list_records([  # an older listing arriving later must not win
            arxiv_record("2401.00010", "First Title", "econ.TH cs.GT", "2024-01-02", None, "2024-01-03", authors),
        ], cursor=1, size=2),
    }
    server = make_server(pages)
    run(server, clock, tmp_path / "h", metadata_prefix="arXiv", categories=["econ.TH"])
    assert server.requests[0][1]["metadataPrefix"] == "arXiv"
    [paper] = read_papers(tmp_path / "h")
    assert (paper["title"], paper["published"], paper["updated"]) == ("Revised Title", "2024-01-02", "2024-03-01")
    assert paper["authors"] == "Ada Lovelace, Alan M. Turing"
    assert paper["categories"] == ["econ.TH", "cs.GT"]


def test_503_retry_after_is_honoured(make_server, clock, tmp_path):
    server = make_server()
    server.faults["tok2"] = [(503, {"Retry-After": "37"}, b"<html>busy</html>")]
    result = run(server, clock, tmp_path / "h")
    assert 37.0 in clock.sleeps
    assert server.tokens_requested() == [None, "tok2", "tok2", "tok3"]
    (t_503, _), (t_retry, _) = server.requests[1:3]
    assert t_retry - t_503 >= 37.0
    assert result.papers == len(CHAIN_PAPERS)


def test_malformed_pages_and_errors_are_retried_with_backoff(make_server, clock, tmp_path):
    server = make_server()
    server.faults["tok2"] = [
        (200, {}, b"<html><body>Internal proxy error</body></html>"),  # not OAI-PMH
        (200, {}, CHAIN["tok2"][:200]),  # truncated XML
        DROP,  # connection closed without a response
        (500, {}, b"oops"),
    ]
    result = run(server, clock, tmp_path / "h")
    assert server.tokens_requested() == [None] + ["tok2"] * 5 + ["tok3"]
    assert [s for s in clock.sleeps if s > 3] == [4.0, 8.0, 16.0, 32.0]  # exponential backoff
    assert [p["arxiv_id"] for p in read_papers(tmp_path / "h")] == CHAIN_PAPERS
    assert result.records == 9


def test_page_that_never_recovers_is_a_user_error_naming_the_url(make_server, clock, tmp_path):
    server = make_server()
    server.faults["tok2"] = [(200, {}, b"not xml at all")] * 10
    with pytest.raises(UserError) as err:
        run(server, clock, tmp_path / "h", max_retries=2)
    message = str(err.value)
    assert f"{server.url}?verb=ListRecords&resumptionToken=tok2" in message
    assert "malformed" in message and "3 attempts" in message and "re-run" in message
    assert "\n" not in message
    assert server.tokens_requested() == [None, "tok2", "tok2", "tok2"]
    state = json.loads((tmp_path / "h" / STATE_FILE).read_text())
    assert (state["resumption_token"], state["records"], state["complete"]) == ("tok2", 3, False)
    assert not (tmp_path / "h" / PAPERS_FILE).exists()


def test_interrupted_harvest_resumes_without_duplicates_or_loss(make_server, clock, tmp_path):
    out = tmp_path / "h"
    server = make_server()
    server.faults["tok3"] = [DROP] * 3  # the server fails hard on page 3
    with pytest.raises(UserError, match="re-run the same command to resume"):
        run(server, clock, out, max_retries=1)
    assert server.tokens_requested() == [None, "tok2", "tok3", "tok3"]
    # Simulate a crash while page 3 was being appended: a partial line after the committed pages.
    with (out / LOG_FILE).open("ab") as fh:
        fh.write(b'{"arxiv_id": "2403.00006", "datest')

    server.requests.clear()
    server.faults.clear()  # the server has recovered
    result = run(server, clock, out)
    assert result.resumed
    assert server.tokens_requested() == ["tok3"]  # continues from the saved token
    assert [p["arxiv_id"] for p in read_papers(out)] == CHAIN_PAPERS
    log_ids = [json.loads(line)["arxiv_id"] for line in (out / LOG_FILE).read_text().splitlines()]
    assert len(log_ids) == result.records == 9  # every record exactly once

    # A finished harvest re-run with the same options makes no requests and writes the same file.
    before = (out / PAPERS_FILE).read_bytes()
    server.requests.clear()
    again = run(server, clock, out)
    assert (again.requests, server.requests) == (0, [])
    assert (out / PAPERS_FILE).read_bytes() == before


def test_resume_with_other_options_is_refused_unless_restart(make_server, clock, tmp_path):
    out = tmp_path / "h"
    server = make_server()
    server.faults["tok2"] = [DROP]
    with pytest.raises(UserError):
        run(server, clock, out, max_retries=0)
    with pytest.raises(UserError, match="other options"):
        run(server, clock, out, from_date="2023-01-01")
    server.requests.clear()
    result = run(server, clock, out, from_date="2023-01-01", restart=True)
    assert server.tokens_requested() == [None, "tok2", "tok3"]
    assert server.requests[0][1]["from"] == "2023-01-01"
    assert not result.resumed and result.records == 9


def test_requests_are_never_closer_than_three_seconds(make_server, clock, tmp_path):
    server = make_server(latency=0.4)
    server.faults["tok2"] = [(200, {}, b"garbage")]
    server.faults["tok3"] = [(503, {"Retry-After": "1"}, b"")]  # shorter than the politeness interval
    run(server, clock, tmp_path / "h")
    starts = [t for t, _ in server.requests]
    assert len(starts) == 5
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 3.0
    assert gaps[0] == pytest.approx(3.0)  # the throttle counts the request's own latency, no extra wait


def test_no_records_match_is_an_empty_harvest(make_server, clock, tmp_path):
    server = make_server({None: oai_error("noRecordsMatch", "The combination of the values of the from, "
                                                           "until, set and metadataPrefix arguments results in an empty list.")})
    result = run(server, clock, tmp_path / "h", from_date="2030-01-01")
    assert (result.papers, result.records) == (0, 0)
    assert (tmp_path / "h" / PAPERS_FILE).read_text() == ""
    assert len(server.requests) == 1


def test_bad_argument_fails_at_once(make_server, clock, tmp_path):
    server = make_server({None: oai_error("cannotDisseminateFormat", "Unknown metadata format")})
    with pytest.raises(UserError, match="cannotDisseminateFormat: Unknown metadata format"):
        run(server, clock, tmp_path / "h")
    assert len(server.requests) == 1


def test_cli_unreachable_base_url_is_one_line_exit_2(tmp_path):
    with HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_port  # bound, then closed: nothing listens there any more
    cmd = [sys.executable, "-m", "econlm.cli", "data", "harvest", "--out", str(tmp_path / "h"), "--max-retries", "0"]
    unreachable = subprocess.run([*cmd, "--base-url", f"http://127.0.0.1:{port}/oai"], capture_output=True, text=True)
    assert unreachable.returncode == 2
    [line] = unreachable.stderr.strip().splitlines()
    assert line.startswith(f"econlm: error: http://127.0.0.1:{port}/oai?verb=ListRecords") and "ConnectError" in line

    invalid = subprocess.run([*cmd, "--restart", "--base-url", "ftp://example.org/oai"], capture_output=True, text=True)
    assert invalid.returncode == 2
    assert invalid.stderr.strip().splitlines() == ["econlm: error: --base-url must be an http(s) URL, got 'ftp://example.org/oai'"]
