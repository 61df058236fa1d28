"""Harvest arXiv economics papers over OAI-PMH into the corpus JSONL schema (`econlm.types.Paper`).

A polite, resumable client for arXiv's OAI-PMH interface (https://info.arxiv.org/help/oa/):

- at most one request every 3 seconds (arXiv's rule for its APIs), measured from request start;
- `503`/`429` + `Retry-After` are honoured (that is how arXiv does flow control);
- connection errors, timeouts, other 5xx and malformed pages are retried with exponential
  backoff, a bounded number of times, then a `UserError` naming the URL;
- resumption tokens are followed until the list is complete.

Layout of the output directory:

    harvest_state.json  the query, the resumption token of the next page and counters; rewritten
                        atomically after every page
    harvest_log.jsonl   every record received so far (papers and deletions), in order; appended and
                        fsynced after every page, *before* the state moves on
    papers.jsonl        the result, written atomically at the end: the latest listing of each paper
                        whose primary category was asked for, deleted papers removed, sorted by id

The state stores how many bytes of the log belong to committed pages, so an interruption at any
point (crash, Ctrl-C, network failure) resumes from the saved token without duplicating or losing
records: a half-written page is cut off and fetched again. Category filtering happens only when
`papers.jsonl` is written, so a paper whose primary category changes between two listings ends up
right, and a finished harvest can be re-filtered without touching the network.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET  # arXiv's OAI-PMH XML is small and regular: the stdlib parser is enough, no lxml
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import ValidationError

from econlm import __version__
from econlm.errors import UserError
from econlm.io import atomic_write_json, read_jsonl
from econlm.types import CATEGORIES, Paper, _first_error, normalize_ws

# arXiv moved OAI-PMH from http://export.arxiv.org/oai2 to this host in 2025.
DEFAULT_BASE_URL = "https://oaipmh.arxiv.org/oai"
# arXivRaw, because its <authors> is the author string exactly as submitted, which is what the
# shared corpus holds ("A. Author, B. Author and C. Author", TeX accents kept), and it lists every
# version with its date, so `published` is the first version's date and `versions` can be kept.
# The `arXiv` format splits authors into name parts; we join them as "Forenames Keyname, ...".
DEFAULT_METADATA_PREFIX = "arXivRaw"
METADATA_PREFIXES = ("arXivRaw", "arXiv")
DEFAULT_SET = "econ"
DEFAULT_CATEGORIES = tuple(CATEGORIES)

MIN_INTERVAL_S = 3.0  # arXiv API terms of use: no more than one request every three seconds
BACKOFF_BASE_S = 4.0  # first retry waits 4 s, then 8, 16, ... (deterministic: a single client needs no jitter)
BACKOFF_MAX_S = 120.0
MAX_RETRY_AFTER_S = 3600.0  # a server asking for more than an hour is treated as a failure

STATE_FILE = "harvest_state.json"
LOG_FILE = "harvest_log.jsonl"
PAPERS_FILE = "papers.jsonl"
STATE_FORMAT = 1

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
METADATA_NS = {"arXiv": "http://arxiv.org/OAI/arXiv/", "arXivRaw": "http://arxiv.org/OAI/arXivRaw/"}
# OAI-PMH errors that describe the request itself: asking again cannot help.
REQUEST_ERRORS = {"badArgument", "badVerb", "cannotDisseminateFormat", "noSetHierarchy", "noMetadataFormats"}

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_VERSION_SUFFIX_RE = re.compile(r"v\d+$")


class MalformedPage(Exception):
    """A response that is not a usable OAI-PMH ListRecords page (retried like a network error)."""


@dataclass
class Page:
    """One parsed ListRecords response."""

    entries: list[dict]  # log entries, see `parse_record`
    token: str | None  # resumption token of the next page; None on the last page
    complete_list_size: int | None = None


@dataclass
class HarvestResult:
    """What a harvest produced; counts cover the whole harvest, requests only this run."""

    papers_path: Path
    papers: int
    records: int  # OAI records received (papers, repeated listings, deletions)
    deleted: int  # deletion notices received
    superseded: int  # older listings of a paper that was listed again
    other_category: int  # papers dropped because their primary category was not asked for
    invalid: list[str] = field(default_factory=list)  # "id: reason" for records that fail the schema
    requests: int = 0
    resumed: bool = False


# --------------------------------------------------------------------------------------------
# Parsing


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _text(parent: ET.Element, ns: str, tag: str) -> str | None:
    child = parent.find(_q(ns, tag))
    return None if child is None or child.text is None else child.text


def _bare_id(arxiv_id: str) -> str:
    return _VERSION_SUFFIX_RE.sub("", arxiv_id.strip())


def _rfc2822_to_iso(value: str | None) -> str | None:
    """'Mon, 2 Apr 2007 19:18:42 GMT' (arXivRaw version dates) -> '2007-04-02T19:18:42Z'."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw_fields(meta: ET.Element) -> tuple[dict, str | None]:
    """Paper fields from an arXivRaw record, and the date of its latest version."""
    ns = METADATA_NS["arXivRaw"]
    versions = []
    for version in meta.findall(_q(ns, "version")):
        label = version.get("version") or ""
        number = int(label[1:]) if label[1:].isdigit() else 0
        versions.append((number, {"version": label, "date": _rfc2822_to_iso(_text(version, ns, "date"))}))
    versions = [v for _, v in sorted(versions, key=lambda nv: nv[0])]
    first = versions[0]["date"] if versions else None
    latest = versions[-1]["date"] if versions else None
    fields = {
        "authors": normalize_ws(_text(meta, ns, "authors") or "") or None,
        "published": first[:10] if first else None,
        "updated": latest[:10] if latest else None,
        "versions": versions,
    }
    return fields, latest


def _arxiv_fields(meta: ET.Element) -> tuple[dict, str | None]:
    """Paper fields from an `arXiv`-format record, and the date of its latest version."""
    ns = METADATA_NS["arXiv"]
    names = []
    for author in meta.findall(f"{_q(ns, 'authors')}/{_q(ns, 'author')}"):
        parts = (_text(author, ns, tag) for tag in ("forenames", "keyname", "suffix"))
        names.append(normalize_ws(" ".join(p for p in parts if p)))
    created = (_text(meta, ns, "created") or "").strip() or None
    updated = (_text(meta, ns, "updated") or "").strip() or created
    fields = {"authors": ", ".join(n for n in names if n) or None, "published": created, "updated": updated}
    return fields, updated


def parse_record(record: ET.Element, metadata_prefix: str) -> dict:
    """One OAI <record> as a log entry.

    `{"arxiv_id", "datestamp", "deleted": True}` for a deletion notice, otherwise also
    `"version_date"` (date of the latest version, decides which listing of a paper wins) and
    `"paper"` (Paper fields plus `updated`, `doi` and, for arXivRaw, `versions`; not yet validated).
    """
    header = record.find(_q(OAI_NS, "header"))
    if header is None:
        raise MalformedPage("a <record> without <header>")
    identifier = (_text(header, OAI_NS, "identifier") or "").strip()
    datestamp = (_text(header, OAI_NS, "datestamp") or "").strip()
    if header.get("status") == "deleted":
        return {"arxiv_id": _bare_id(identifier.removeprefix("oai:arXiv.org:")), "datestamp": datestamp, "deleted": True}

    ns = METADATA_NS[metadata_prefix]
    meta = record.find(f"{_q(OAI_NS, 'metadata')}/{_q(ns, metadata_prefix)}")
    if meta is None:
        raise MalformedPage(f"record {identifier!r} has no {metadata_prefix} metadata")
    arxiv_id = _bare_id(_text(meta, ns, "id") or identifier.removeprefix("oai:arXiv.org:"))
    categories = (_text(meta, ns, "categories") or "").split()
    fields, version_date = (_raw_fields if metadata_prefix == "arXivRaw" else _arxiv_fields)(meta)
    paper = {
        "arxiv_id": arxiv_id,
        "title": normalize_ws(_text(meta, ns, "title") or ""),
        "abstract": normalize_ws(_text(meta, ns, "abstract") or ""),
        "primary_category": categories[0] if categories else "",
        "categories": categories,
        **fields,
    }
    doi = normalize_ws(_text(meta, ns, "doi") or "")
    if doi:
        paper["doi"] = doi
    return {"arxiv_id": arxiv_id, "datestamp": datestamp, "deleted": False, "version_date": version_date, "paper": paper}


class OAIError(Exception):
    """An OAI-PMH <error> element (code and message from the server)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"OAI-PMH error {code}: {message}" if message else f"OAI-PMH error {code}")
        self.code = code


def parse_page(content: bytes, metadata_prefix: str) -> Page:
    """Parse one ListRecords response. `noRecordsMatch` is an empty last page, not an error."""
    try:
        root = ET.fromstring(content)
    except ET.ParseError as exc:
        raise MalformedPage(f"not XML ({exc})") from None
    if root.tag != _q(OAI_NS, "OAI-PMH"):
        raise MalformedPage(f"root element is {root.tag!r}, not OAI-PMH")
    error = root.find(_q(OAI_NS, "error"))
    if error is not None:
        code = error.get("code", "unknown")
        if code == "noRecordsMatch":
            return Page(entries=[], token=None, complete_list_size=0)
        raise OAIError(code, normalize_ws(error.text or ""))
    listing = root.find(_q(OAI_NS, "ListRecords"))
    if listing is None:
        raise MalformedPage("no <ListRecords> element")
    entries = [parse_record(r, metadata_prefix) for r in listing.findall(_q(OAI_NS, "record"))]
    token_el = listing.find(_q(OAI_NS, "resumptionToken"))
    token, size = None, None
    if token_el is not None:  # present but empty on the last page of a list
        token = (token_el.text or "").strip() or None
        size = token_el.get("completeListSize")
    return Page(entries=entries, token=token, complete_list_size=int(size) if size and size.isdigit() else None)


# --------------------------------------------------------------------------------------------
# Fetching


class Throttle:
    """Keeps request starts at least `interval` seconds apart on the injected clock."""

    def __init__(self, interval: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.interval, self.clock, self.sleep = interval, clock, sleep
        self.last_start: float | None = None

    def wait(self) -> None:
        if self.last_start is not None:
            remaining = self.last_start + self.interval - self.clock()
            if remaining > 0:
                self.sleep(remaining)
        self.last_start = self.clock()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_seconds(failures: int) -> float:
    """Exponential backoff after the n-th failed attempt (1-based)."""
    return min(BACKOFF_BASE_S * 2 ** (failures - 1), BACKOFF_MAX_S)


class Fetcher:
    """GETs OAI-PMH pages politely: throttled, retrying transient failures, bounded."""

    def __init__(self, client: httpx.Client, metadata_prefix: str, max_retries: int, throttle: Throttle,
                 sleep: Callable[[float], None], resume_hint: str, notify: Callable[[str], None]):
        self.client, self.metadata_prefix, self.max_retries = client, metadata_prefix, max_retries
        self.throttle, self.sleep, self.resume_hint, self.notify = throttle, sleep, resume_hint, notify
        self.requests = 0

    def page(self, url: str) -> Page:
        problem = ""
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            self.throttle.wait()
            self.requests += 1
            try:
                response = self.client.get(url)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, broken responses
                problem = f"{type(exc).__name__}: {normalize_ws(str(exc)) or 'no details'}"
            else:
                status = response.status_code
                if status in (429, 503) or status >= 500:
                    problem = f"HTTP {status}"
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
                    if wait is not None and wait > MAX_RETRY_AFTER_S:
                        raise UserError(f"{url}: the server asks to retry after {wait:.0f} s; {self.resume_hint} later")
                elif status >= 400:
                    raise UserError(f"{url}: HTTP {status} {response.reason_phrase} (is --base-url an OAI-PMH endpoint?)")
                else:
                    try:
                        return parse_page(response.content, self.metadata_prefix)
                    except MalformedPage as exc:
                        problem = f"malformed OAI-PMH page: {exc}"
                    except OAIError as exc:
                        if exc.code == "badResumptionToken":
                            raise UserError(
                                f"{url}: the server rejected the saved resumption token (it may have expired); "
                                "re-run with --restart to harvest from the beginning"
                            ) from None
                        if exc.code in REQUEST_ERRORS:
                            raise UserError(f"{url}: {exc}") from None
                        problem = str(exc)
            if attempt == attempts:
                break
            wait = backoff_seconds(attempt) if wait is None else wait
            self.notify(f"{problem}; retrying in {wait:.0f} s ({attempt}/{self.max_retries})")
            self.sleep(wait)
        raise UserError(f"{url}: {problem} (gave up after {attempts} attempts); {self.resume_hint}")


# --------------------------------------------------------------------------------------------
# State, log and result


def _check_date(name: str, value: str | None) -> None:
    """OAI-PMH `from`/`until` at arXiv's granularity (a day)."""
    if value is None:
        return
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise UserError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None
    if not _DATE_RE.match(value):  # strptime also accepts '2024-1-5'
        raise UserError(f"{name} must be a date YYYY-MM-DD, got {value!r}")


def _append_log(log_path: Path, entries: Iterable[dict]) -> int:
    """Append entries durably; returns the log's new size in bytes."""
    with log_path.open("ab") as fh:
        for entry in entries:
            fh.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def _start_or_resume(out_dir: Path, query: dict, restart: bool) -> tuple[dict, bool]:
    """The saved state for this query (log cut back to its committed pages), or a fresh one."""
    state_path, log_path = out_dir / STATE_FILE, out_dir / LOG_FILE
    if state_path.is_file() and not restart:
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{state_path}: unreadable harvest state ({exc}); re-run with --restart") from None
        if state.get("format") != STATE_FORMAT or state.get("query") != query:
            raise UserError(
                f"{out_dir} holds a harvest with other options ({json.dumps(state.get('query'))}); "
                "repeat those options to resume it, use another --out, or pass --restart"
            )
        size = log_path.stat().st_size if log_path.is_file() else 0
        if size < state["log_bytes"]:
            raise UserError(f"{log_path} is shorter than {state_path} says; re-run with --restart")
        if size > state["log_bytes"]:  # a page was being written when the harvest stopped
            with log_path.open("r+b") as fh:
                fh.truncate(state["log_bytes"])
        return state, True
    log_path.unlink(missing_ok=True)
    state = {
        "format": STATE_FORMAT,
        "query": query,
        "resumption_token": None,
        "pages": 0,
        "records": 0,
        "log_bytes": 0,
        "complete_list_size": None,
        "complete": False,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    atomic_write_json(state_path, state)
    return state, False


def write_papers(out_dir: Path, categories: Iterable[str]) -> HarvestResult:
    """Fold the log into `papers.jsonl`: latest listing per paper, deletions applied, filtered."""
    wanted = set(categories)
    latest: dict[str, dict] = {}
    records = deleted = superseded = 0
    log_path = out_dir / LOG_FILE
    for _, entry in read_jsonl(log_path) if log_path.is_file() else ():
        records += 1
        arxiv_id = entry["arxiv_id"]
        if entry["deleted"]:
            deleted += 1
            latest.pop(arxiv_id, None)
            continue
        previous = latest.get(arxiv_id)
        if previous is not None:
            superseded += 1
            # Latest version first, then the later OAI datestamp; on a tie the later listing wins.
            if (previous["version_date"] or "", previous["datestamp"]) > (entry["version_date"] or "", entry["datestamp"]):
                continue
        latest[arxiv_id] = entry

    papers, invalid, other_category = [], [], 0
    for arxiv_id, entry in latest.items():
        if entry["paper"]["primary_category"] not in wanted:
            other_category += 1
            continue
        try:
            papers.append(Paper.model_validate(entry["paper"]))
        except ValidationError as exc:
            invalid.append(f"{arxiv_id}: {_first_error(exc)}")
    papers.sort(key=lambda p: p.arxiv_id)
    papers_path = out_dir / PAPERS_FILE
    Paper.write_jsonl(papers_path, papers)
    return HarvestResult(
        papers_path=papers_path, papers=len(papers), records=records, deleted=deleted,
        superseded=superseded, other_category=other_category, invalid=invalid,
    )


# --------------------------------------------------------------------------------------------
# Entry point


def harvest(
    out_dir: str | Path,
    *,
    set_spec: str | None = DEFAULT_SET,
    from_date: str | None = None,
    until_date: str | None = None,
    metadata_prefix: str = DEFAULT_METADATA_PREFIX,
    categories: Iterable[str] = DEFAULT_CATEGORIES,
    base_url: str = DEFAULT_BASE_URL,
    restart: bool = False,
    max_retries: int = 5,
    timeout: float = 60.0,
    min_interval: float = MIN_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: bool = True,
) -> HarvestResult:
    """Harvest ListRecords from an OAI-PMH endpoint into `out_dir/papers.jsonl`, resumably.

    Re-running with the same `out_dir` and query continues an unfinished harvest from its saved
    resumption token; a finished one only rewrites `papers.jsonl` (no requests) unless `restart`.
    `sleep` and `clock` are injectable so tests check the politeness interval without waiting.
    """
    from tqdm.auto import tqdm

    categories = list(dict.fromkeys(categories))
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise UserError(f"--categories must be some of {', '.join(CATEGORIES)} (the corpus schema), got {' '.join(unknown) or 'none'}")
    if metadata_prefix not in METADATA_PREFIXES:
        raise UserError(f"--metadata-prefix must be one of {', '.join(METADATA_PREFIXES)}, got {metadata_prefix!r}")
    _check_date("--from", from_date)
    _check_date("--until", until_date)
    if from_date and until_date and from_date > until_date:
        raise UserError(f"--from {from_date} is after --until {until_date}")
    if max_retries < 0:
        raise UserError("--max-retries must be 0 or more")
    try:
        parsed_url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise UserError(f"--base-url {base_url!r} is not a URL ({exc})") from None
    if parsed_url.scheme not in ("http", "https") or not parsed_url.host:
        raise UserError(f"--base-url must be an http(s) URL, got {base_url!r}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    query = {"base_url": base_url, "set": set_spec, "from": from_date, "until": until_date,
             "metadata_prefix": metadata_prefix}
    state, resumed = _start_or_resume(out_dir, query, restart)
    state_path = out_dir / STATE_FILE
    first_params = {"verb": "ListRecords", "metadataPrefix": metadata_prefix}
    first_params.update({k: v for k, v in (("set", set_spec), ("from", from_date), ("until", until_date)) if v})

    requests = 0
    if not state["complete"]:
        bar = tqdm(total=state["complete_list_size"], initial=state["records"], unit="rec",
                   desc="harvest", disable=None if progress else True, dynamic_ncols=True)
        headers = {"User-Agent": f"econlm/{__version__} (OAI-PMH harvester; python-httpx)"}
        # Redirects are followed (arXiv has moved its endpoint before); each hop is one extra request.
        with bar, httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client:
            fetcher = Fetcher(
                client, metadata_prefix, max_retries, Throttle(min_interval, clock, sleep), sleep,
                resume_hint=f"progress is saved in {state_path}: re-run the same command to resume",
                notify=lambda message: tqdm.write(message, file=sys.stderr),
            )
            try:
                while True:
                    token = state["resumption_token"]
                    params = {"verb": "ListRecords", "resumptionToken": token} if token else first_params
                    page = fetcher.page(str(parsed_url.copy_merge_params(params)))
                    state["log_bytes"] = _append_log(out_dir / LOG_FILE, page.entries)
                    state["records"] += len(page.entries)
                    state["pages"] += 1
                    state["resumption_token"] = page.token
                    state["complete"] = page.token is None
                    if page.complete_list_size is not None:
                        state["complete_list_size"] = bar.total = page.complete_list_size
                    atomic_write_json(state_path, state)  # only now is the page committed
                    bar.update(len(page.entries))
                    if state["complete"]:
                        break
            finally:
                requests = fetcher.requests

    result = write_papers(out_dir, categories)
    result.requests, result.resumed = requests, resumed
    return result
