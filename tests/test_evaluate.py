"""`econlm eval` end to end on a small real corpus with a tiny random LLaMA (and a LoRA adapter on
it), the answer parser, and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from econlm import evaluate
from econlm.backends import parse_spec
from econlm.data.templates import CLASSIFY, TITLE
from econlm.errors import UserError
from econlm.metrics import classification_scores, title_scores
from econlm.models import ModelRef


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def loaded(model, batch_size: int = 16):
    return evaluate.load_backend(parse_spec(str(model)), batch_size=batch_size)


def test_title_eval_end_to_end(tiny_llama, small_corpus, tmp_path):
    report = evaluate.evaluate(loaded(tiny_llama, batch_size=4), "title", small_corpus, tmp_path / "title", limit=6,
                               decoding=evaluate.Decoding(max_new_tokens=6))
    rows = read_rows(tmp_path / "title" / "predictions.jsonl")
    assert len(rows) == 6 and {"id", "input", "reference", "prediction"} <= set(rows[0])
    assert all("\n" not in r["prediction"] for r in rows)
    saved = json.loads((tmp_path / "title" / "metrics.json").read_text())
    again = title_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert saved["metrics"]["rougeL_f"] == pytest.approx(again["rougeL_f"])
    assert saved["primary_metric"] == "rougeL_f" == report.primary_metric
    provenance = saved["provenance"]
    assert provenance["prompt_template"] == TITLE.id and provenance["prompting"] == "zero-shot"
    assert provenance["decoding"]["max_new_tokens"] == 6 and provenance["decoding"]["temperature"] == 0.0
    assert set(provenance["data_sha256"]) == {"train", "validation", "test"}
    assert provenance["model"]["hash"] == ModelRef.parse(tiny_llama).hash and "transformers" in provenance["versions"]


def test_classify_eval_end_to_end(tiny_llama, small_corpus, tmp_path):
    evaluate.evaluate(loaded(tiny_llama, batch_size=5), "classify", small_corpus, tmp_path / "cls")
    rows = read_rows(tmp_path / "cls" / "predictions.jsonl")
    assert len(rows) == 12  # the whole small test split
    for row in rows:
        # The prediction is the answer with the highest constrained score.
        assert row["prediction"] == max(row["option_logprobs"], key=row["option_logprobs"].get)
        assert row["free_generation_label"] in (None, "econ.EM", "econ.GN", "econ.TH")
    saved = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    again = classification_scores([r["label"] for r in rows], [r["predicted_label"] for r in rows],
                                  evaluate.LABELS)
    assert saved["metrics"]["f1_weighted"] == pytest.approx(again["f1_weighted"])
    assert saved["metrics"]["confusion_matrix"] == again["confusion_matrix"]
    parsed = [r["free_generation_label"] is not None for r in rows]
    assert saved["metrics"]["free_generation_parse_rate"] == pytest.approx(sum(parsed) / 12)
    assert saved["provenance"]["prompt_template"] == CLASSIFY.id
    assert (tmp_path / "cls" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_one_shot_prompting_uses_a_train_example(tiny_llama, small_corpus, tmp_path):
    evaluate.evaluate(loaded(tiny_llama), "classify", small_corpus, tmp_path / "one", limit=3, prompting="one-shot")
    provenance = json.loads((tmp_path / "one" / "metrics.json").read_text())["provenance"]
    assert provenance["prompting"] == "one-shot"
    assert provenance["prompt_template"] == evaluate.ONE_SHOT_CLASSIFY.id
    train_ids = {json.loads(line)["arxiv_id"] for line in (small_corpus / "train.jsonl").read_text().splitlines()}
    assert provenance["one_shot_example"] in train_ids


def test_one_shot_prompt_shows_the_worked_example_then_the_query():
    prompt = evaluate.ONE_SHOT_TITLE.render([("Prices rise.", "On Inflation")], "Wages fall.")
    assert prompt.endswith("Abstract: Wages fall.\nTitle:")
    assert "Abstract: Prices rise.\nTitle: On Inflation\n\n" in prompt


@pytest.fixture()
def tiny_adapter(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_adapter_eval_records_the_adapter_hash(tiny_adapter, tiny_llama, small_corpus, tmp_path):
    (tiny_adapter / "econlm_run.json").write_text(json.dumps({"templates": {"classify": CLASSIFY.id}, "seed": 3}))
    evaluate.evaluate(loaded(tiny_adapter), "classify", small_corpus, tmp_path / "out", limit=2)
    provenance = json.loads((tmp_path / "out" / "metrics.json").read_text())["provenance"]
    model = provenance["model"]
    assert model["kind"] == "adapter" and model["hash"] == ModelRef.parse(tiny_adapter).hash
    assert model["base"]["ref"] == str(tiny_llama) and model["base"]["hash"] == ModelRef.parse(tiny_llama).hash
    assert provenance["training_run"]["templates"] == {"classify": CLASSIFY.id}


def test_a_run_trained_with_another_template_is_refused(tiny_adapter, small_corpus, tmp_path):
    (tiny_adapter / "econlm_run.json").write_text(json.dumps({"templates": {"title": "econ-title@0"}}))
    with pytest.raises(UserError, match="trained with prompt template econ-title@0"):
        evaluate.evaluate(loaded(tiny_adapter), "title", small_corpus, tmp_path / "out", limit=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Econometrics", "econ.EM"),
        ("  theoretical economics.\nmore", "econ.TH"),
        ("The paper belongs to the General Economics category", "econ.GN"),
        ("Econometrics or General Economics", None),  # ambiguous
        ("Economics", None),
        ("", None),
    ],
)
def test_parse_category(text, label):
    assert evaluate.parse_category(text) == label


def test_first_line():
    assert evaluate.first_line("\n  A Title \nsecond line") == "A Title"
    assert evaluate.first_line("") == ""


def run_cli(*args):
    env = {**os.environ, "ECONLM_DATA": os.environ["ECONLM_DATA"]}
    return subprocess.run([sys.executable, "-m", "econlm.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--task", "summarise", "--out", "x"], "unknown task 'summarise'"),
        (["eval", "--task", "title", "--model", "/no/such/model", "--out", "x"], "/no/such/model"),
        (["eval", "--task", "title", "--model", "no-such-model", "--out", "x"], "unknown model 'no-such-model'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "econlm.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_eval_writes_the_files(tiny_llama, small_corpus, tmp_path):
    result = run_cli("eval", "--model", str(tiny_llama), "--task", "classify", "--corpus", str(small_corpus),
                     "--limit", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "accuracy=" in result.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"predictions.jsonl", "metrics.json", "confusion_matrix.png",
                                                             ".econlm-output.json"}


def test_bench_eval_compares_each_pair_of_contenders_on_the_same_output(tiny_llama, small_corpus, tmp_path):
    result = run_cli("bench", "eval", "--model", str(tiny_llama), "--corpus", str(small_corpus), "-n", "3",
                     "--batch-size", "2", "--max-new-tokens", "4", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["title_generation"]["identical_titles"] == "3/3"
    shared = saved["classification_scores_and_free_reply"]
    assert shared["identical_free_replies"] == "3/3" and shared["max_abs_logprob_difference"] < 1e-4
    assert shared["speedup"] > 0 and shared["free_generation_max_new_tokens"] == evaluate.FREE_GENERATION_DECODING.max_new_tokens


def _train_ids(corpus) -> dict[str, dict]:
    return {row["arxiv_id"]: row for row in map(json.loads, (corpus / "train.jsonl").read_text().splitlines())}


def test_few_shot_titles_are_earlier_chat_turns_of_the_training_template(small_corpus, tmp_path):
    from tests.fakes import FakeBackend

    backend = FakeBackend()
    evaluate.evaluate(backend, "title", small_corpus, tmp_path / "few", limit=2, prompting="few-shot")
    provenance = json.loads((tmp_path / "few" / "metrics.json").read_text())["provenance"]
    assert provenance["prompting"] == "few-shot" and provenance["prompt_template"] == TITLE.id
    shots = provenance["few_shot_examples"]
    train = _train_ids(small_corpus)
    assert len(shots) == 5 == len(set(shots)) and set(shots) <= set(train)
    conversation = backend.conversations[0]
    assert [m["role"] for m in conversation] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert [m["content"] for m in conversation[2:-1:2]] == [train[i]["title"] for i in shots]
    assert conversation[-1]["content"] == TITLE.user.format(abstract=backend.conversations[0][-1]["content"].split("Abstract: ", 1)[1])


def test_few_shot_classification_shows_one_paper_per_category(small_corpus, tmp_path):
    from tests.fakes import FakeBackend

    evaluate.evaluate(FakeBackend(), "classify", small_corpus, tmp_path / "few", limit=2, prompting="few-shot")
    shots = json.loads((tmp_path / "few" / "metrics.json").read_text())["provenance"]["few_shot_examples"]
    train = _train_ids(small_corpus)
    assert sorted(train[i]["primary_category"] for i in shots) == ["econ.EM", "econ.GN", "econ.TH"]


def test_few_shot_without_a_chat_template_uses_the_completion_prompt(small_corpus, tmp_path):
    from tests.fakes import FakeBackend

    class BaseModelFake(FakeBackend):
        has_chat_template = False

        def complete(self, prompts, decoding=evaluate.Decoding(), stop=()):
            self.prompts = list(prompts)
            return super().complete(prompts, decoding, stop)

    backend = BaseModelFake()
    evaluate.evaluate(backend, "title", small_corpus, tmp_path / "few", limit=1, prompting="few-shot", shots=2)
    provenance = json.loads((tmp_path / "few" / "metrics.json").read_text())["provenance"]
    assert provenance["prompt_template"] == evaluate.ONE_SHOT_TITLE.id and len(provenance["few_shot_examples"]) == 2
    assert backend.prompts[0].count("\nTitle:") == 3  # two worked examples, then the query


def test_shots_need_few_shot_prompting(small_corpus, tmp_path):
    from tests.fakes import FakeBackend

    with pytest.raises(UserError, match="--shots"):
        evaluate.evaluate(FakeBackend(), "title", small_corpus, tmp_path / "x", limit=1, prompting="zero-shot", shots=5)
    assert not (tmp_path / "x").exists()
