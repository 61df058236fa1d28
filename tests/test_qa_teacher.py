"""`econlm bench qa-teacher`: teachers take turns round by round on the same papers, every count and
token is attributed to the right teacher, and the datasheet's "Teacher choice" section shows the
result. Two scripted local HTTP teachers stand in for the served models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from econlm.backends import parse_spec
from econlm.bench.common import write_result
from econlm.bench.qa_teacher import Contender, Teacher, compare_teachers
from econlm.data.templates import SYNTHESIS_PAIRS, SYNTHESIS_PAIRS_V1
from econlm.errors import UserError
from econlm.qa.datasheet import render_datasheet
from econlm.qa.synthesize import read_progress, sidecar_paths, synthesize
from test_qa_synthesize import AUCTION_REPLY, TeacherServer, default_script, make_corpus, reply

TURTLES = "I am a small language model and I like turtles."


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def two_teachers(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never used: each teacher has its own URL
    weak_script = {key: [reply(TURTLES)] for key in default_script()}
    weak_script["Auctions"] = [reply(AUCTION_REPLY)]
    strong, weak = TeacherServer(default_script()), TeacherServer(weak_script)
    yield strong, weak
    strong.close()
    weak.close()


def test_teachers_take_turns_and_each_gets_its_own_counts(two_teachers, tmp_path):
    strong, weak = two_teachers
    corpus = make_corpus(tmp_path / "corpus")
    partial: list[dict[str, int]] = []
    contenders = [Contender("llamacpp:strong", strong.base_url, "strong"), Contender("llamacpp:weak", weak.base_url, "weak")]
    result = compare_teachers(
        contenders, corpus, tmp_path / "work", {c.label: words for c in contenders}, split="test", limit=6, round_size=4,
        concurrency=2, on_round=lambda r: partial.append({label: row["papers"] for label, row in r["teachers"].items()}),
    )
    # Round 1: the first 4 papers of the seeded order for each teacher; round 2: the other 2.
    assert partial == [{"llamacpp:strong": 4, "llamacpp:weak": 4}, {"llamacpp:strong": 6, "llamacpp:weak": 6}]
    assert result["rounds_done"] == 2
    assert {body["model"] for body in strong.bodies} == {"strong"} and {body["model"] for body in weak.bodies} == {"weak"}
    assert sorted(set(strong.requests)) == sorted(set(weak.requests)) == sorted(default_script())

    good, bad = result["teachers"]["llamacpp:strong"], result["teachers"]["llamacpp:weak"]
    # The strong teacher's counts are those of test_qa_synthesize's scripted run; the weak one
    # wrote pairs only for the auction paper (4 kept, the fifth over the limit).
    assert good["counts"]["candidates"] == 20 and good["counts"]["kept"] == 9 and good["counts"]["unparsable"] == 1
    assert bad["counts"] == {**dict.fromkeys(bad["counts"], 0), "unparsable": 5, "candidates": 5, "kept": 4, "over_limit": 1}
    assert bad["kept_per_candidate"] == pytest.approx(0.8) and bad["share_of_candidates"]["over_limit"] == pytest.approx(0.2)
    assert good["papers_with_pairs"] == 4 and bad["papers_with_pairs"] == 1
    assert good["failed_requests"] == bad["failed_requests"] == 0
    # Tokens: every reply of the teacher's progress file, by the given counter.
    for label, row in result["teachers"].items():
        replies = [r["reply"] for r in read_progress(sidecar_paths(row["output"])[0])]
        assert row["generated_tokens"] == sum(map(words, replies)) > 0
        # (seconds are rounded to ms in the row, rates from the unrounded seconds)
        assert row["tokens_per_s"] * row["seconds"] == pytest.approx(row["generated_tokens"], rel=0.1)
        assert row["papers_per_s"] * row["seconds"] == pytest.approx(6, rel=0.1)
    assert bad["generated_tokens"] == 5 * words(TURTLES) + words(AUCTION_REPLY)
    ratios = result["ratios_vs_first"]
    assert ratios["llamacpp:strong"]["kept_per_candidate"] == 1.0
    assert ratios["llamacpp:weak"]["kept_per_paper"] == pytest.approx((4 / 6) / (9 / 6), abs=1e-3)

    # The datasheet renders the result as its "Teacher choice" section.
    path = write_result(tmp_path / "qa-teacher.json", "qa-teacher", {
        **result, "cpu_count": 2, "load_average_at_start": [1.0, 1.0, 1.0], "load_average_at_end": [2.0, 2.0, 2.0],
        "complete": True})
    sheet = render_datasheet(good["output"], teacher_choice=path)
    section = sheet.split("## Teacher choice", 1)[1].split("\n## ", 1)[0]
    assert "| `llamacpp:weak` | 6 | 5 | 4 | 0.80 | 0.67 | 5 |" in section
    assert "1 (20%)" in section and "over limit" in section and "too short" in section
    assert "`llamacpp:weak` against `llamacpp:strong`" in section and "stopped before" not in section


def test_one_teacher_with_two_prompts_shares_its_server(two_teachers, tmp_path):
    strong, _ = two_teachers
    corpus = make_corpus(tmp_path / "corpus")
    contenders = [Contender(f"llamacpp:strong {p.id}", strong.base_url, "strong", p) for p in (SYNTHESIS_PAIRS_V1, SYNTHESIS_PAIRS)]
    result = compare_teachers(contenders, corpus, tmp_path / "work", {c.label: words for c in contenders}, split="test",
                              limit=6, round_size=6)
    systems = [body["messages"][0]["content"] for body in strong.bodies]
    assert sorted(set(systems)) == sorted(p.system.format(n_pairs=3) for p in (SYNTHESIS_PAIRS_V1, SYNTHESIS_PAIRS))
    for contender in contenders:
        row = result["teachers"][contender.label]
        assert row["prompt"] == contender.prompt.id and row["papers"] == 6
        pairs = [json.loads(line) for line in open(row["output"])]
        assert pairs and {p["prompt_version"] for p in pairs} == {contender.prompt.id}
    assert Path(result["teachers"][contenders[0].label]["output"]).name == "llamacpp-strong-econ-qa-synth@1.jsonl"

    path = write_result(tmp_path / "qa-teacher.json", "qa-teacher", {
        **result, "cpu_count": 2, "load_average_at_start": [1.0] * 3, "load_average_at_end": [1.0] * 3, "complete": True})
    section = render_datasheet(result["teachers"][contenders[0].label]["output"], teacher_choice=path)
    assert "each teacher with each prompt" in section and "`llamacpp:strong econ-qa-synth@1`" in section


def test_teacher_choice_file_that_is_not_a_result_is_one_line(two_teachers, tmp_path):
    strong, _ = two_teachers
    corpus = make_corpus(tmp_path / "corpus", test_ids=("2101.00003",))
    out = tmp_path / "qa.jsonl"
    synthesize(corpus, "test", parse_spec("openai:strong"), out, base_url=strong.base_url, progress=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "serve", "engines": {}}))
    with pytest.raises(UserError, match="not an `econlm bench qa-teacher` result"):
        render_datasheet(out, teacher_choice=other)


def test_teacher_spec_names_a_serve_engine_and_a_model():
    teacher = Teacher.parse("llamacpp:smollm2-135m-instruct")
    assert teacher.label == "llamacpp:smollm2-135m-instruct"
    command = teacher.serve_command(8123)
    assert command[:4] == [sys.executable, "-m", "econlm.cli", "serve"]
    assert command[4:] == ["--engine", "llamacpp", "--model", "smollm2-135m-instruct", "--name", "smollm2-135m-instruct",
                           "--port", "8123"]
    assert teacher.serve_command(8123, threads=2)[-2:] == ["--threads", "2"]
    for bad in ("smollm2-135m-instruct", "openai:tiny", "vllm:"):
        with pytest.raises(UserError, match="ENGINE:MODEL"):
            Teacher.parse(bad)


@pytest.mark.parametrize(("prompts", "message"), [
    (["econ-qa-synth@9"], "unknown prompt template 'econ-qa-synth@9'"),
    (["econ-qa-synth@1", "econ-qa-synth@1"], "--prompt: give each prompt once"),
])
def test_bench_rejects_a_wrong_prompt_before_serving_anything(tmp_path, prompts, message):
    corpus = make_corpus(tmp_path / "corpus")
    options = [arg for p in prompts for arg in ("--prompt", p)]
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "bench", "qa-teacher", "--teacher", "llamacpp:smollm2-135m-instruct",
         "--corpus", str(corpus), "--out", str(tmp_path / "result.json"), *options],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "result.json").exists()
