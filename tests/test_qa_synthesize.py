"""Q&A synthesis against a teacher served by a scripted OpenAI-compatible server on 127.0.0.1:
every filter counted, a 429 and a timeout retried, a garbage reply counted as unparsable, resume
after an interruption or a failed paper, the output read by `econlm data build`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from econlm.backends import Decoding, parse_spec
from econlm.data.build import build_datasets
from econlm.data import templates
from econlm.data.templates import SYNTHESIS_PAIRS, SYNTHESIS_PAIRS_V1
from econlm.errors import UserError
from econlm.qa.datasheet import render_datasheet
from econlm.qa.synthesize import (
    Filters,
    content_stems,
    parse_reply,
    read_progress,
    review_reply,
    sidecar_paths,
    support_score,
    synthesize,
    synthesize_prompt,
)
from econlm.types import Paper, QAPair

TEACHER = "openai:tiny-teacher"

# Invented abstracts; the first word after "Abstract:" keys the server's script for each paper.
ABSTRACTS = {
    "2101.00001": "Carbon taxes: we estimate the effect of carbon taxes on manufacturing emissions in Sweden using "
                  "plant-level data. Emissions fall by 8 percent after the tax increase, while output is unchanged.",
    "2101.00002": "Sweden: carbon taxes cut manufacturing emissions in Sweden by 8 percent according to firm data; "
                  "the effect of carbon taxes on output is small.",
    "2101.00003": "Auctions: we study first-price auctions with risk-averse bidders. Revenue exceeds that of "
                  "second-price auctions when bidders are risk averse, and reserve prices raise revenue further.",
    "2101.00004": "Savings: household savings in Japan respond to interest rates, according to survey data from "
                  "2000 to 2020. Younger households save more when rates rise.",
    "2101.00005": "Remittances raise school enrolment in rural Mexico. Children in households receiving "
                  "remittances are 10 percent more likely to attend secondary school.",
    "2101.00006": "Lending: minimum capital requirements reduce bank lending to small firms in Italy. Lending "
                  "falls most for firms with short credit histories.",
}

CARBON_REPLY = """Q: How do carbon taxes affect manufacturing emissions in Sweden?
A: Emissions fall by 8 percent after the carbon tax increase.
Q: Carbon taxes?
A: Emissions fall by 8 percent.
Q: What does this paper estimate about carbon taxes in Sweden?
A: It estimates the effect of carbon taxes on manufacturing emissions.
Q: How do minimum wages affect teen employment in U.S. counties?
A: Emissions fall by 8 percent after the tax increase.
Q: What happens to output when Sweden raises carbon taxes?
A: Output collapses because firms relocate abroad to Norway and Finland.
Q: How do carbon taxes affect manufacturing emissions in Sweden?
A: Emissions fall by 8 percent.
Q: Carbon taxes and manufacturing emissions in Swedish plants
A: Emissions fall by 8 percent after the tax increase.
Q: What do the results show about carbon taxes in Sweden?
A: Emissions fall by 8 percent while output is unchanged.
Q: How do carbon taxes affect emissions of Swedish manufacturing plants?
A: Carbon taxes affect the emissions of manufacturing plants.
Q: What do plant-level data show about carbon taxes and emissions in Sweden?
A: """ + " ".join(["Emissions fall by 8 percent after the tax increase while output is unchanged."] * 6)

AUCTION_REPLY = "\n".join(
    f"Q: {q}\nA: {a}"
    for q, a in [
        ("How does revenue of first-price auctions compare with second-price auctions?",
         "Revenue exceeds that of second-price auctions when bidders are risk averse."),
        ("What do reserve prices do in first-price auctions with risk-averse bidders?",
         "Reserve prices raise revenue further."),
        ("Which bidders are studied in first-price auctions?", "Risk-averse bidders in first-price auctions."),
        ("When does first-price auction revenue exceed second-price revenue?", "When bidders are risk averse."),
        ("What raises first-price auction revenue further?", "Reserve prices raise auction revenue."),
    ]
)
GOOD_REPLIES = {
    "Sweden": "Q: How do carbon taxes affect manufacturing emissions in Sweden?\nA: They cut manufacturing emissions by 8 percent.",
    "Remittances": "Q: How do remittances affect school enrolment in rural Mexico?\n"
                   "A: Remittances raise school enrolment in rural Mexico.\n"
                   "Q: How much more likely are children in remittance-receiving households to attend secondary school?\n"
                   "A: They are 10 percent more likely to attend secondary school.",
    "Lending": "Q: How do minimum capital requirements affect bank lending to small firms in Italy?\n"
               "A: They reduce bank lending to small firms in Italy.\n"
               "Q: Which small firms see bank lending fall most under capital requirements?\n"
               "A: Firms with short credit histories.",
}


def reply(text: str):
    return lambda: (200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


def rate_limited():
    return 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}


def stall(seconds: float, text: str):
    def step():
        time.sleep(seconds)  # longer than the client's timeout: the client gives up and retries
        return reply(text)()
    return step


def server_error():
    return 500, {}, {"error": {"message": "boom"}}


def not_json():
    return 200, {}, b"<html>502 Bad Gateway</html>"


def default_script() -> dict[str, list]:
    return {
        "Carbon": [reply(CARBON_REPLY)],
        "Sweden": [reply(GOOD_REPLIES["Sweden"])],
        "Auctions": [reply(AUCTION_REPLY)],
        "Savings": [reply("I am a small language model and I like turtles. ### 42")],
        "Remittances": [rate_limited, reply(GOOD_REPLIES["Remittances"])],
        "Lending": [stall(1.5, GOOD_REPLIES["Lending"]), reply(GOOD_REPLIES["Lending"])],
    }


class TeacherServer:
    """POST /v1/chat/completions answered from a per-paper script keyed by the abstract's first word;
    each step is used once and the last one repeats."""

    def __init__(self, script: dict[str, list]):
        self.script = script
        self.requests: list[str] = []  # the key of each request, in arrival order
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                abstract = body["messages"][-1]["content"].removeprefix("Abstract: ")
                key = abstract.split()[0].rstrip(":")
                with server.lock:
                    server.requests.append(key)
                    server.bodies.append(body)
                    steps = server.script[key]
                    step = steps.pop(0) if len(steps) > 1 else steps[0]
                status, headers, payload = step()
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def teacher_server(monkeypatch):
    servers = []

    def start(script=None) -> TeacherServer:
        server = TeacherServer(script or default_script())
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def make_corpus(root: Path, test_ids=tuple(ABSTRACTS)) -> Path:
    def paper(arxiv_id: str, abstract: str) -> str:
        return json.dumps({"arxiv_id": arxiv_id, "title": f"Paper {arxiv_id}", "abstract": abstract,
                           "primary_category": "econ.GN", "categories": ["econ.GN"], "published": "2021-01-01"})

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text(paper("2001.00001", "Train-only abstract about trade.") + "\n")
    (root / "validation.jsonl").write_text(paper("2002.00001", "Validation abstract about money.") + "\n")
    (root / "test.jsonl").write_text("".join(paper(i, ABSTRACTS[i]) + "\n" for i in test_ids))
    return root


def run(corpus: Path, out: Path, **kwargs) -> dict:
    options = {"concurrency": 3, "timeout": 0.5, "progress": False, **kwargs}
    return synthesize(corpus, "test", parse_spec(TEACHER), out, **options)


def read_pairs(path: Path) -> list[QAPair]:
    return list(QAPair.read_jsonl(path))


# ---------------------------------------------------------------------------------------- end to end


def test_every_filter_is_counted_and_transient_errors_are_retried(teacher_server, tmp_path):
    server = teacher_server()
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    summary = run(corpus, out)

    totals = summary["totals"]
    assert totals["papers"] == 6 and summary["last_run"]["failed"] == 0
    assert totals["unparsable"] == 1  # the turtles reply
    # Carbon: one of each filter (its repeated question is a duplicate); Auctions: 5 good pairs,
    # the fifth over the limit of 4; Sweden's only question repeats Carbon's (whichever came first
    # keeps it); Remittances and Lending: 2 each after the 429 and the timeout.
    for name in ("too_short", "too_long", "not_a_question", "not_self_contained", "vague_referent", "off_topic",
                 "unsupported", "restates_question", "over_limit"):
        assert totals[name] == 1, name
    assert totals["duplicate"] == 2
    assert totals["candidates"] == 10 + 1 + 5 + 2 + 2
    assert totals["kept"] == 1 + 4 + 2 + 2

    pairs = read_pairs(out)
    assert len(pairs) == totals["kept"]
    assert {p.teacher for p in pairs} == {TEACHER}
    assert {p.prompt_version for p in pairs} == {SYNTHESIS_PAIRS.id}
    assert {p.split for p in pairs} == {"test"}
    assert all(p.support >= Filters().min_answer_support for p in pairs)
    assert sorted(p.source_id for p in pairs).count("2101.00003") == 4
    # The 429 (Retry-After: 0) and the stalled request were each asked again exactly once.
    assert server.requests.count("Remittances") == 2
    assert server.requests.count("Lending") == 2
    assert server.requests.count("Carbon") == 1
    assert server.bodies[0]["model"] == "tiny-teacher"

    progress_path, summary_path = sidecar_paths(out)
    assert json.loads(summary_path.read_text())["totals"] == totals
    records = {r["source_id"]: r for r in read_progress(progress_path)}
    assert records["2101.00004"]["rejected"][0]["reason"] == "unparsable"
    assert "turtles" in records["2101.00004"]["reply"]  # every reply is kept whole, kept pairs or not
    assert records["2101.00003"]["reply"] == AUCTION_REPLY
    reasons = sorted(r["reason"] for r in records["2101.00001"]["rejected"])
    assert reasons.count("duplicate") >= 1 and "unsupported" in reasons

    # `econlm data build` reads the file: every pair becomes a test-split qa example.
    manifest = build_datasets(corpus, "qa", tmp_path / "datasets", qa_file=out)
    assert manifest["counts"]["qa"] == {"train": 0, "validation": 0, "test": totals["kept"]}

    sheet = render_datasheet(out, notes="Chosen because it is tiny.", n_examples=3)
    assert "Chosen because it is tiny." in sheet and "| unsupported | 1 | 1 |" in sheet
    assert sheet.count("| 2101.0000") == 3


def test_interrupted_run_resumes_without_duplicates(teacher_server, tmp_path):
    server = teacher_server()
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    first = run(corpus, out, concurrency=1)
    complete = out.read_text()
    progress_path, _ = sidecar_paths(out)

    # A kill after the last paper's pairs were written but before its progress line, mid-way
    # through writing one more pair line.
    lines = progress_path.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    progress_path.write_text("".join(lines[:-1]))
    with out.open("a") as fh:
        fh.write('{"source_id": "2101.0000')
    requests_before = len(server.requests)

    second = run(corpus, out, concurrency=1)
    assert second["last_run"]["already_done"] == 5 and second["last_run"]["finished"] == 1
    assert second["last_run"]["pairs_dropped_on_recovery"] == last["counts"].get("kept", 0)
    assert len(server.requests) == requests_before + 1  # only the unfinished paper was asked again
    assert out.read_text() == complete
    assert second["totals"] == first["totals"]

    third = run(corpus, out)  # nothing left to do
    assert third["last_run"]["finished"] == 0 and len(server.requests) == requests_before + 1


def test_failed_paper_is_left_for_the_next_run(teacher_server, tmp_path):
    script = default_script()
    script["Auctions"] = [server_error]
    script["Savings"] = [not_json]
    script["Remittances"] = script["Lending"] = [reply("Q: x y z w?\nA: a b c")]  # no 429, no stall
    server = teacher_server(script)
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    summary = run(corpus, out, max_retries=0, concurrency=1)
    assert summary["last_run"]["failed"] == 2 and summary["totals"]["papers"] == 4
    errors = " ".join(summary["last_run"]["errors"])
    assert "HTTP 500" in errors and "JSONDecodeError" in errors

    server.script["Auctions"] = [reply(AUCTION_REPLY)]
    server.script["Savings"] = [reply("Still no pairs.")]
    again = run(corpus, out, max_retries=0)
    assert again["last_run"]["finished"] == 2 and again["totals"]["papers"] == 6
    assert sorted(server.requests[-2:]) == ["Auctions", "Savings"]


def test_dead_endpoint_stops_the_run(teacher_server, tmp_path):
    teacher_server({key: [server_error] for key in default_script()})
    corpus = make_corpus(tmp_path / "corpus")
    with pytest.raises(UserError, match="failed 5 times in a row"):
        run(corpus, tmp_path / "qa.jsonl", max_retries=0, concurrency=1)
    assert read_progress(sidecar_paths(tmp_path / "qa.jsonl")[0]) == []


def test_local_teacher_runs_in_process_batches(tiny_llama, tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    # A random 2-layer model cannot write "Q: x / A: y" (7+ tokens) in 4 tokens: every reply is unparsable.
    summary = synthesize(corpus, "test", parse_spec(f"transformers:{tiny_llama}"), out, concurrency=4,
                         decoding=Decoding(max_new_tokens=4), progress=False)
    assert summary["totals"]["papers"] == 6 and summary["totals"]["unparsable"] == 6
    assert out.read_text() == ""
    assert summary["teachers"] == {f"transformers:{tiny_llama}": 6}


def test_teacher_option_and_the_deprecated_local_spelling(tiny_llama, tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "qa", "synthesize", "--split", "test", "--teacher", f"local:{tiny_llama}",
         "--corpus", str(corpus), "--limit", "1", "--max-new-tokens", "2", "--out", str(tmp_path / "qa.jsonl")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("econlm: warning:")]
    assert warnings == [
        f"econlm: warning: 'local:{tiny_llama}' is deprecated and will be removed in the next release; "
        f"use 'transformers:{tiny_llama}'",
    ]
    assert read_progress(sidecar_paths(tmp_path / "qa.jsonl")[0])[0]["teacher"] == f"transformers:{tiny_llama}"


def test_limit_takes_a_growing_seeded_subset(teacher_server, tmp_path):
    teacher_server()
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    run(corpus, out, limit=2, seed=3)
    first = [r["source_id"] for r in read_progress(sidecar_paths(out)[0])]
    run(corpus, out, limit=4, seed=3)
    grown = [r["source_id"] for r in read_progress(sidecar_paths(out)[0])]
    assert len(first) == 2 and len(grown) == 4 and set(first) <= set(grown)


def test_cli_rejects_unknown_teacher_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "qa", "synthesize", "--split", "test", "--model", "gpt4",
         "--out", str(tmp_path / "qa.jsonl")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'gpt4'" in proc.stderr


def test_prompt_option_picks_the_template_recorded_with_every_pair(teacher_server, tmp_path):
    server = teacher_server()
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    summary = run(corpus, out, prompt=synthesize_prompt("econ-qa-synth@1"))
    assert {p.prompt_version for p in read_pairs(out)} == {"econ-qa-synth@1"}
    assert summary["prompts"] == {"econ-qa-synth@1": 6}
    assert server.bodies[0]["messages"][0]["content"] == SYNTHESIS_PAIRS_V1.system.format(n_pairs=3)
    assert summary["last_run"]["prompt"] == "econ-qa-synth@1"


def test_a_file_written_with_two_prompts_shows_both_in_its_datasheet(teacher_server, tmp_path):
    teacher_server()
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "qa.jsonl"
    run(corpus, out, limit=3, prompt=SYNTHESIS_PAIRS_V1)
    summary = run(corpus, out)  # resumes: the other 3 papers
    assert summary["prompts"] == {SYNTHESIS_PAIRS_V1.id: 3, SYNTHESIS_PAIRS.id: 3}
    sheet = render_datasheet(out)
    assert f"| `{SYNTHESIS_PAIRS_V1.id}` | 3 |" in sheet and f"| `{SYNTHESIS_PAIRS.id}` | 3 |" in sheet
    for template in (SYNTHESIS_PAIRS_V1, SYNTHESIS_PAIRS):
        assert f"The prompt `{template.id}`" in sheet and template.system.format(n_pairs=3) in sheet


@pytest.mark.parametrize(("options", "message"), [
    (["--prompt", "econ-qa-synth@9"], "unknown prompt template 'econ-qa-synth@9'"),
    (["--prompt", "econ-title@1"], "--prompt 'econ-title@1' is not a Q&A synthesis prompt (known: econ-qa-synth@1"),
    (["--prompt", "econ-qa-synth@2", "--dialogue"], "give --prompt or --dialogue, not both"),
])
def test_cli_rejects_a_wrong_prompt_in_one_line(tmp_path, options, message):
    corpus = make_corpus(tmp_path / "corpus")
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "qa", "synthesize", "--split", "test", "--teacher", TEACHER,
         "--corpus", str(corpus), "--out", str(tmp_path / "qa.jsonl"), *options],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "qa.jsonl").exists()


# ---------------------------------------------------------------------------------------- units


def test_parse_reply_formats():
    text = (
        "Here are the pairs:\n"
        "1. **Q:** What do carbon taxes do to emissions?\n"
        "**A:** They cut emissions\n"
        "by 8 percent.\n"
        "\n"
        "Question 2: Is output affected?\n"
        "Answer 2: No, output is unchanged. [/INST] Q: leaked template text\n"
        "Follow-up Q: Where was this measured?\n"
        "Follow-up A: In Swedish plants.\n"
        "Q: A question without an answer?\n"
        "Some unrelated text\n"
    )
    pairs = parse_reply(text)
    assert [(p.question, p.answer) for p in pairs] == [
        ("What do carbon taxes do to emissions?", "They cut emissions by 8 percent."),
        ("Is output affected?", "No, output is unchanged."),
    ]
    assert pairs[1].followups == [("Where was this measured?", "In Swedish plants.")]
    assert parse_reply("Sure! Economics is great.") == []


def test_support_is_the_share_of_answer_content_words_in_the_abstract():
    abstract = content_stems("We study counties. Employment fell 2 percent.")
    # content stems of the answer: employ, fall, 2, percent, counti -> all but "fall" (abstract says "fell")
    assert support_score("Employment falls by 2 percent in the counties", abstract) == pytest.approx(4 / 5)
    assert support_score("the of and", abstract) == 0.0


def test_dialogue_turns_are_kept_or_dropped_with_their_pair():
    paper = Paper(arxiv_id="2101.00001", title="T", abstract=ABSTRACTS["2101.00001"], primary_category="econ.GN")
    text = (
        "Q: How do carbon taxes affect manufacturing emissions in Sweden?\n"
        "A: Emissions fall by 8 percent after the tax increase.\n"
        "Follow-up Q: What happens to output after the carbon tax increase?\n"
        "Follow-up A: Output is unchanged after the tax increase.\n"
        "Q: What data measure carbon tax effects on emissions in Sweden?\n"
        "A: Plant-level data on manufacturing emissions.\n"
        "Follow-up Q: What happens to output after the carbon tax increase?\n"
        "Follow-up A: Output doubles thanks to new Norwegian subsidies.\n"
    )
    review = review_reply(paper, text, Filters(), set(), "test", TEACHER, "p@1")
    assert len(review.kept) == 2 and review.counts["turns_dropped"] == 1
    assert [m.role for m in review.kept[0].turns] == ["user", "assistant"]
    assert review.kept[0].turns[1].content == "Output is unchanged after the tax increase."
    assert review.kept[1].turns == []


def test_closed_book_questions_must_name_what_they_ask_about():
    paper = Paper(arxiv_id="2101.00001", title="T", abstract=ABSTRACTS["2101.00001"], primary_category="econ.GN")
    cases = {
        "How does the method of moments estimate carbon tax effects in Sweden?": None,
        "How does the Swedish carbon tax model affect manufacturing emissions?": None,
        "How accurate is the model for carbon taxes in Sweden?": "vague_referent",
        "How does the proposed estimator measure carbon tax effects in Sweden?": "vague_referent",
        "What do these plant-level data show about carbon taxes in Sweden?": "vague_referent",
        "What do the data's plants show about carbon taxes in Sweden?": "vague_referent",
        "Carbon taxes cut manufacturing emissions in Sweden.": "not_a_question",
    }
    for question, reason in cases.items():
        review = review_reply(paper, f"Q: {question}\nA: Emissions fall by 8 percent after the tax increase.",
                              Filters(), set(), "test", TEACHER, "p@2")
        assert [r["reason"] for r in review.rejected] == ([reason] if reason else []), question


@pytest.mark.parametrize("template", [SYNTHESIS_PAIRS, templates.SYNTHESIS_DIALOGUE], ids=lambda t: t.id)
def test_the_worked_examples_of_the_default_prompts_pass_the_filters(template):
    """A teacher copies the worked examples' phrasing, so their questions (and follow-ups) must be
    ones the filters keep."""
    for user, reply in template.examples:
        abstract = user.removeprefix("Abstract: ")
        paper = Paper(arxiv_id="2001.00001", title="Worked example", abstract=abstract, primary_category="econ.GN")
        review = review_reply(paper, reply, Filters(), set(), "train", TEACHER, template.id)
        parsed = parse_reply(reply)
        assert review.rejected == [] and review.counts["kept"] == len(parsed) >= 2, abstract
        assert "turns_dropped" not in review.counts
        assert [len(pair.turns) for pair in review.kept] == [2 * len(pair.followups) for pair in parsed]


def test_synthesis_prompts_are_registered_by_id():
    assert synthesize_prompt() is SYNTHESIS_PAIRS
    assert synthesize_prompt(dialogue=True) is templates.SYNTHESIS_DIALOGUE
    assert synthesize_prompt("econ-qa-synth@2") is SYNTHESIS_PAIRS is templates.get("econ-qa-synth@2")
    assert synthesize_prompt("econ-qa-synth@1") is SYNTHESIS_PAIRS_V1
    with pytest.raises(UserError, match="not a Q&A synthesis prompt"):
        synthesize_prompt("econ-rag@1")
