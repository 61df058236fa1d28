"""The prompt-template registry knows every template id a committed metrics file, training run or
Q&A file names, and an unknown id is a one-line UserError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from econlm.data import templates
from econlm.data.templates import ChatTemplate, CompletionTemplate, FollowUpTemplate, PromptTemplate
from econlm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9-]*@\d+$")
RECORDED = [
    *sorted((REPO / "reports" / "full-test").glob("*.json")),
    *sorted((REPO / "models").glob("*/econlm_run.json")),
    *sorted((REPO / "data" / "qa").glob("*.json")),
    *sorted((REPO / "data" / "qa").glob("*.jsonl")),
]


def template_ids(value) -> set[str]:
    """Every string shaped like a template id ("name@version") anywhere in a JSON value."""
    if isinstance(value, dict):
        return set().union(*map(template_ids, value.values()))
    if isinstance(value, list):
        return set().union(*map(template_ids, value))
    return {value} if isinstance(value, str) and TEMPLATE_ID.match(value) else set()


def recorded_ids() -> set[str]:
    found: set[str] = set()
    for path in RECORDED:
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
        found |= template_ids(rows)
    return found


def test_every_recorded_template_id_resolves():
    ids = recorded_ids()
    # The committed files name the chat, one-shot and synthesis templates: the scan is not empty.
    assert {"econ-title@1", "econ-classify-oneshot@1", "econ-qa@1", "econ-qa-synth@1"} <= ids
    for template_id in ids:
        template = templates.get(template_id)
        assert isinstance(template, PromptTemplate) and template.id == template_id


def test_one_type_one_id_per_template():
    every = templates.all_templates()
    assert len({t.id for t in every}) == len(every)
    assert all(isinstance(t, (ChatTemplate, CompletionTemplate, FollowUpTemplate)) for t in every)
    assert {t.id for t in templates.TEMPLATES.values()} <= {t.id for t in every}
    assert templates.get("econ-title-oneshot@1") is templates.ONE_SHOT_TITLE


def test_unknown_template_id_is_a_user_error():
    with pytest.raises(UserError) as error:
        templates.get("econ-title@0")
    assert "econ-title@0" in str(error.value) and "econ-title@1" in str(error.value)
    assert "\n" not in str(error.value)


def test_chat_template_renders_system_worked_turns_then_user():
    template = templates.SYNTHESIS_PAIRS
    messages = template.prompt(abstract="We study {braces} in prices.", n_pairs=3)
    assert messages[0].role == "system" and "You write 3 question-answer pairs" in messages[0].content
    assert [m.role for m in messages[1:-1]] == ["user", "assistant"] * len(template.examples)
    assert messages[-1].content == "Abstract: We study {braces} in prices."


def test_follow_up_template_starts_with_its_first_tasks_prompt():
    template = templates.CLASSIFY_THEN_TITLE
    messages = template.prompt(first_answer="Econometrics", abstract="We estimate demand.")
    assert messages[: len(messages) - 2] == templates.CLASSIFY.prompt(abstract="We estimate demand.")
    assert [m.role for m in messages[-2:]] == ["assistant", "user"] and messages[-2].content == "Econometrics"
    assert template.tasks == (template.first.task, "title") and templates.get(template.id) is template
