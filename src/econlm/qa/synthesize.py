"""Synthesize economics question-answer pairs from paper abstracts with a teacher LLM.

Per paper: a named, versioned prompt -> the teacher's reply -> "Q:/A:" lines parsed -> filters
(every drop counted) -> the kept pairs appended to the output JSONL as `QAPair` records.

Teachers (`--model SPEC`, see `econlm.backends`):
    openai:<name>          any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server,
                           Ollama); base URL and key from $OPENAI_BASE_URL / $OPENAI_API_KEY;
                           `concurrency` requests in flight from a thread pool (the backend is
                           thread-safe)
    transformers:<model>   a model econlm loads in-process, prompted in batches of `concurrency`
    llamacpp:<file.gguf>   a GGUF run in-process by llama.cpp, one prompt at a time

Filters, applied in this order; a pair is counted under the first one it fails (`Filters` holds
the thresholds). "Support" is the share of a text's distinct content words (stop words removed,
Porter-stemmed) that occur in the abstract: a lexical check that catches invented facts and
copies of the prompt's worked examples.
    too_short / too_long  question 4-40 words, answer 3-60 words with at least 2 content words
    not_a_question        the question does not end with "?" (a sentence copied from the abstract)
    not_self_contained    the question points at a text the reader never sees ("this paper", "we")
    vague_referent        the question leans on the abstract's own referents ("the model", "the
                          proposed method", "these results"): closed-book, it has no answer
    off_topic             question support below 0.5
    unsupported           answer support below 0.6
    restates_question     under 15% of the answer's content words are new to the question
                          ("How does X provide Y?" / "It provides Y.")
    duplicate             normalised question already kept, for this paper or any earlier one
    over_limit            beyond the first 4 kept pairs of a paper
A reply without one complete Q/A pair counts as unparsable. Follow-up turns (--dialogue) pass the
same checks; if one fails, the pair keeps no turns (`turns_dropped`).

Resumable: the output file holds only kept pairs; a sidecar `<stem>.progress.jsonl` gets one line
per finished paper (its counts, the teacher's whole reply, each dropped pair with its reason), so
the filters can be audited and the replies' tokens counted without asking the teacher again; the
line is written after that paper's pairs are appended and fsynced. A rerun first drops
pairs of papers without a progress line (interrupted mid-paper), then skips finished papers.
Papers whose teacher call failed (after the backend's bounded retries) are not marked finished,
so a rerun tries them again. `<stem>.summary.json` (counts over all runs) is written atomically at
the end, also when interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from econlm import provenance
from econlm.backends import ENGINES, Backend, Decoding, EngineSpec, Messages, get_backend
from econlm.data import templates
from econlm.data.build import drop_leaks
from econlm.data.corpus import load_corpus
from econlm.data.templates import SYNTHESIS_DIALOGUE, SYNTHESIS_PAIRS, ChatTemplate
from econlm.errors import UserError
from econlm.io import atomic_write_json, atomic_write_text
from econlm.types import SPLITS, Message, Paper, QAPair, normalize_ws

# Room for four pairs (~50 tokens each); a rambling reply is cut here.
TEACHER_DECODING = Decoding(max_new_tokens=256, temperature=0.3, top_p=0.9, seed=0)
# A dead endpoint should stop the run, not fail every remaining paper one by one.
MAX_CONSECUTIVE_FAILURES = 5


# ---------------------------------------------------------------------------------------- parsing


@dataclass
class ParsedPair:
    question: str
    answer: str
    followups: list[tuple[str, str]] = field(default_factory=list)


# "Q: ...", "Question 2: ...", "**A:** ...", "1. Q: ...", "- Follow-up Q: ..."; the colon is required.
_FIELD_RE = re.compile(
    r"^\s*(?:[-*#>]+\s*)?(?:\d+\s*[.)]\s*)?(?:\*\*|__)?\s*(?P<follow>follow[- ]?up\s+)?"
    r"(?P<kind>question|answer|q|a)\s*\d*\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?(?P<text>.*)$",
    re.IGNORECASE,
)


# Chat-template markup a teacher can echo ("[/INST]", "<|im_end|>", "<<SYS>>"): text is cut there.
_MARKUP_RE = re.compile(r"\[/?INST\]|<</?SYS>>|<\|[a-z_]+\|>|</s>")


def _clean(text: str) -> str:
    text = _MARKUP_RE.split(text, maxsplit=1)[0]
    return normalize_ws(text.replace("**", "").replace("__", "")).strip("\"' ")


def parse_reply(text: str) -> list[ParsedPair]:
    """Q/A pairs in reading order; a field continues over following non-blank lines."""
    fields: list[list] = []  # [is_followup, "q" | "a", text]
    open_field = False
    for line in text.splitlines():
        match = _FIELD_RE.match(line)
        if match:
            fields.append([bool(match["follow"]), match["kind"][0].lower(), match["text"]])
            open_field = True
        elif line.strip() and open_field:
            fields[-1][2] += " " + line.strip()
        else:
            open_field = False  # a blank line or stray text ends the field
    pairs: list[ParsedPair] = []
    i = 0
    while i + 1 < len(fields):
        (follow, kind, question), (follow_next, kind_next, answer) = fields[i], fields[i + 1]
        question, answer = _clean(question), _clean(answer)
        if kind == "q" and kind_next == "a" and follow == follow_next and question and answer:
            if not follow:
                pairs.append(ParsedPair(question, answer))
            elif pairs:
                pairs[-1].followups.append((question, answer))
            i += 2
        else:
            i += 1
    return pairs


# ---------------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """Thresholds of the pair filters (see the module docstring); recorded in the summary."""

    min_question_words: int = 4
    max_question_words: int = 40
    min_answer_words: int = 3
    min_answer_content_words: int = 2
    max_answer_words: int = 60
    min_question_support: float = 0.5
    min_answer_support: float = 0.6
    min_answer_novelty: float = 0.15
    max_pairs: int = 4


FILTER_NAMES = ("too_short", "too_long", "not_a_question", "not_self_contained", "vague_referent", "off_topic",
                "unsupported", "restates_question", "duplicate", "over_limit")

# A closed-book question cannot point at a text the reader never sees.
_CONTEXT_RE = re.compile(
    r"\b(?:this|the|that|these) (?:paper|study|article|abstract|research|work|text|author|authors|note)s?\b"
    r"|(?-i:\b(?:[Ww]e|[Oo]ur|us)\b)",  # "us" but not "US"
    re.IGNORECASE,
)
# The abstract's own referents: a generic noun right after "the" ("the model", "the results";
# "the method of moments" is a name, so "of" after it is allowed), a demonstrative ("these
# networks"), or the words that introduce an abstract's contribution ("the proposed estimator",
# "the new test"). A named thing ("the Sieve-SMM estimator", "the Solow model") passes.
_VAGUE_REFERENT_RE = re.compile(
    r"\bthe (?:model|method|methodology|approach|framework|estimator|algorithm|procedure|mechanism|"
    r"results?|findings?|data|dataset|sample|analysis|experiments?|simulations?|tests?|survey|literature|"
    r"proposal|technique|strategy|scheme|setting|system|tool|application|index|measure|indicator)"
    r"(?:'s)?\b(?! of\b)"
    r"|\b(?:this|these|those)\b"
    r"|\b(?:proposed|presented|introduced|novel)\b|\bthe new\b",
    re.IGNORECASE,
)


def content_stems(text: str) -> set[str]:
    """Distinct Porter stems of the words that are not English stop words (numbers included).

    rouge-score's tokenizer (lower case, alphanumeric tokens) and scikit-learn's stop-word list, so
    support uses the same word units as the ROUGE scores."""
    from rouge_score.tokenize import tokenize
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {_stem(w) for w in tokenize(text, None) if w not in ENGLISH_STOP_WORDS}


@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """Porter stem (nltk, a dependency of rouge-score), only for words over 3 characters as rouge-score does."""
    return _porter().stem(word) if len(word) > 3 else word


@functools.cache
def _porter():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


def support_score(text: str, abstract_stems: set[str]) -> float:
    """Share of the text's content words found in the abstract (0 when it has none)."""
    return _share_in(content_stems(text), abstract_stems)


def _share_in(words: set[str], stems: set[str]) -> float:
    return len(words & stems) / len(words) if words else 0.0


def normalize_question(question: str) -> str:
    from rouge_score.tokenize import tokenize

    return " ".join(tokenize(question, None))


def _problem(question: str, answer: str, abstract_stems: set[str], filters: Filters,
             followup: bool = False) -> tuple[str | None, float]:
    """The first filter a pair fails, and its answer support. A follow-up question may refer back
    to the conversation ("this estimate"), so it skips the vague-referent check."""
    q, a = len(question.split()), len(answer.split())
    question_stems, answer_stems = content_stems(question), content_stems(answer)
    support = _share_in(answer_stems, abstract_stems)
    if q < filters.min_question_words or a < filters.min_answer_words or len(answer_stems) < filters.min_answer_content_words:
        return "too_short", support
    if q > filters.max_question_words or a > filters.max_answer_words:
        return "too_long", support
    if not question.endswith("?"):
        return "not_a_question", support
    if _CONTEXT_RE.search(question):
        return "not_self_contained", support
    if not followup and _VAGUE_REFERENT_RE.search(question):
        return "vague_referent", support
    if _share_in(question_stems, abstract_stems) < filters.min_question_support:
        return "off_topic", support
    if support < filters.min_answer_support:
        return "unsupported", support
    if len(answer_stems - question_stems) / len(answer_stems) < filters.min_answer_novelty:
        return "restates_question", support
    return None, support


@dataclass
class Review:
    """What became of one teacher reply: the kept pairs, the count of each drop, and the dropped
    pairs with their reason (kept in the progress file, to audit the filters)."""

    kept: list[QAPair]
    counts: Counter
    rejected: list[dict[str, str]]


def review_reply(
    paper: Paper, reply: str, filters: Filters, seen_questions: set[str], split: str, teacher: str, prompt_id: str
) -> Review:
    """Apply the filters to one reply. `seen_questions` (normalised questions kept so far) is
    updated with the kept ones."""
    counts: Counter = Counter()
    parsed = parse_reply(reply)
    if not parsed:
        counts["unparsable"] = 1
        return Review([], counts, [{"reason": "unparsable"}])
    rejected: list[dict[str, str]] = []
    abstract_stems = content_stems(paper.abstract)
    kept: list[QAPair] = []
    for pair in parsed:
        counts["candidates"] += 1
        problem, support = _problem(pair.question, pair.answer, abstract_stems, filters)
        key = normalize_question(pair.question)
        if problem is None and key in seen_questions:
            problem = "duplicate"
        if problem is None and len(kept) >= filters.max_pairs:
            problem = "over_limit"
        if problem:
            counts[problem] += 1
            rejected.append({"reason": problem, "question": pair.question, "answer": pair.answer})
            continue
        turns: list[Message] = []
        for question, answer in pair.followups:
            if _problem(question, answer, abstract_stems, filters, followup=True)[0]:
                counts["turns_dropped"] += 1
                turns = []
                break
            turns += [Message(role="user", content=question), Message(role="assistant", content=answer)]
        seen_questions.add(key)
        kept.append(
            QAPair(
                source_id=paper.arxiv_id, question=pair.question, answer=pair.answer, split=split,
                teacher=teacher, prompt_version=prompt_id, support=round(support, 4), turns=turns,
            )
        )
    counts["kept"] = len(kept)
    return Review(kept, counts, rejected)


# ---------------------------------------------------------------------------------------- storage


def sidecar_paths(out: str | Path) -> tuple[Path, Path]:
    """(progress JSONL, summary JSON) next to the output file."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.progress.jsonl"), out.with_name(f"{stem}.summary.json")


def _complete_lines(path: Path) -> tuple[list[str], bool]:
    """The file's complete lines (JSON-checked) and whether a torn last line was dropped."""
    if not path.is_file():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines[-1] != ""  # a kill mid-write leaves a last line without its newline
    lines = [line for line in lines[:-1] if line.strip()]
    for lineno, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno}: invalid JSON in a file econlm appends to; fix or remove it") from None
    return lines, torn


class ResumableStore:
    """The output JSONL of kept pairs and its progress sidecar: append-only, fsynced per paper."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.progress_path, self.summary_path = sidecar_paths(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        self.seen_questions: set[str] = set()
        self.recovered_pairs_dropped = 0
        self._recover()
        self._out_fh = self.out.open("a", encoding="utf-8")
        self._progress_fh = self.progress_path.open("a", encoding="utf-8")

    def _recover(self) -> None:
        progress_lines, progress_torn = _complete_lines(self.progress_path)
        for line in progress_lines:
            record = json.loads(line)
            self.done[record["source_id"]] = record
        if progress_torn:
            atomic_write_text(self.progress_path, "".join(f"{line}\n" for line in progress_lines))
        pair_lines, pairs_torn = _complete_lines(self.out)
        kept = [line for line in pair_lines if json.loads(line).get("source_id") in self.done]
        self.recovered_pairs_dropped = len(pair_lines) - len(kept)
        if pairs_torn or self.recovered_pairs_dropped:
            atomic_write_text(self.out, "".join(f"{line}\n" for line in kept))
        for line in kept:
            self.seen_questions.add(normalize_question(json.loads(line)["question"]))

    @staticmethod
    def _append(fh, text: str) -> None:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())

    def add(self, pairs: Sequence[QAPair], record: dict[str, Any]) -> None:
        """Append one paper's pairs, then its progress line (the paper counts as done only then)."""
        if pairs:
            self._append(self._out_fh, "".join(p.model_dump_json(exclude_none=True) + "\n" for p in pairs))
        self._append(self._progress_fh, json.dumps(record, ensure_ascii=False) + "\n")
        self.done[record["source_id"]] = record

    def close(self) -> None:
        self._out_fh.close()
        self._progress_fh.close()


# ---------------------------------------------------------------------------------------- running


def select_papers(corpus_dir: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[Paper]:
    """The split's papers in a seeded random order, the first `limit` of them.

    Train papers that leak into validation/test are left out (as `econlm data build` does). A larger
    limit with the same seed extends the same subset, so a run can be grown later.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    corpus = load_corpus(corpus_dir)
    papers = drop_leaks(corpus)[0] if split == "train" else list(corpus[split])
    random.Random(f"qa-{seed}").shuffle(papers)
    return papers[:limit] if limit else papers


def load_teacher(spec: EngineSpec, concurrency: int = 4, timeout: float = 120.0, max_retries: int = 3,
                 base_url: str | None = None) -> Backend:
    """The teacher's backend: an endpoint (at `base_url`, else $OPENAI_BASE_URL) with `concurrency`
    requests in flight, or an in-process model (transformers batches `concurrency` prompts)."""
    if spec.engine == "transformers":
        return get_backend(spec, batch_size=concurrency, progress=False)
    if ENGINES[spec.engine].local:
        return get_backend(spec)
    return get_backend(spec, timeout=timeout, max_retries=max_retries, concurrency=concurrency, base_url=base_url)


def _teacher_errors() -> tuple[type[BaseException], ...]:
    """What a failed teacher call raises once the backend's own retries are spent (a reply body
    that is not JSON included)."""
    import httpx

    return (UserError, httpx.HTTPError, json.JSONDecodeError)


def synthesize_prompt(template_id: str | None = None, dialogue: bool = False) -> ChatTemplate:
    """The teacher's prompt: the template `template_id` names (a qa-synthesis chat template), else
    the default pairs prompt, or the dialogue prompt when `dialogue`."""
    if template_id is None:
        return SYNTHESIS_DIALOGUE if dialogue else SYNTHESIS_PAIRS
    if dialogue:
        raise UserError("give --prompt or --dialogue, not both (--dialogue picks " + SYNTHESIS_DIALOGUE.id + ")")
    template = templates.get(template_id)
    if not (isinstance(template, ChatTemplate) and template.task == "qa-synthesis"):
        known = ", ".join(t.id for t in templates.all_templates() if t.task == "qa-synthesis")
        raise UserError(f"--prompt {template_id!r} is not a Q&A synthesis prompt (known: {known})")
    return template


def synthesize(
    corpus_dir: str | Path,
    split: str,
    teacher: EngineSpec,
    out: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    concurrency: int = 4,
    n_pairs: int = 3,
    prompt: ChatTemplate = SYNTHESIS_PAIRS,
    decoding: Decoding = TEACHER_DECODING,
    filters: Filters = Filters(),
    timeout: float = 120.0,
    max_retries: int = 3,
    base_url: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write Q&A pairs for the split's papers to `out` (appending, resumable); returns the summary.
    `prompt` is a qa-synthesis template (`synthesize_prompt`); its id is recorded with every pair."""
    from tqdm.auto import tqdm

    teacher_name = str(teacher)  # recorded with every pair and progress line
    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    if not 1 <= n_pairs <= filters.max_pairs:
        raise UserError(f"--pairs must be between 1 and {filters.max_pairs}, got {n_pairs}")
    papers = select_papers(corpus_dir, split, limit, seed)
    store = ResumableStore(out)
    pending = [p for p in papers if p.arxiv_id not in store.done]
    run = provenance.build(corpus_dir=corpus_dir, seed=seed, split=split, teacher=teacher_name, prompt=prompt.id,
                           pairs_asked=n_pairs, selected=len(papers), already_done=len(papers) - len(pending),
                           finished=0, failed=0, errors=[], pairs_dropped_on_recovery=store.recovered_pairs_dropped)
    started = time.perf_counter()
    bar = tqdm(total=len(pending), desc=f"qa {split}", unit="paper", disable=not progress, mininterval=2)

    def finish(paper: Paper, reply: str, seconds: float) -> None:
        review = review_reply(paper, reply, filters, store.seen_questions, split, teacher_name, prompt.id)
        store.add(review.kept, {"source_id": paper.arxiv_id, "split": split, "teacher": teacher_name, "prompt": prompt.id,
                                "counts": dict(review.counts), "seconds": round(seconds, 2), "reply": reply,
                                "rejected": review.rejected})
        run["finished"] += 1
        bar.update(1)
        bar.set_postfix(pairs=sum(r["counts"].get("kept", 0) for r in store.done.values()), refresh=False)

    try:
        backend = load_teacher(teacher, concurrency=concurrency, timeout=timeout, max_retries=max_retries, base_url=base_url)
        if ENGINES[teacher.engine].local:
            _run_batched(backend, pending, prompt, n_pairs, decoding, concurrency, finish)
        else:
            _run_concurrent(backend, pending, prompt, n_pairs, decoding, concurrency, finish, run)
    finally:
        bar.close()
        store.close()
        run["seconds"] = round(time.perf_counter() - started, 1)
        summary = summarize(store, filters, decoding, prompt, run)
        atomic_write_json(store.summary_path, summary)
    return summary


def teacher_conversation(prompt: ChatTemplate, abstract: str, n_pairs: int) -> Messages:
    """The chat the teacher gets for one abstract (with "{abstract}": the prompt as a record shows it)."""
    return [m.model_dump() for m in prompt.prompt(abstract=abstract, n_pairs=n_pairs)]


def _run_batched(backend, papers, prompt, n_pairs, decoding, batch_size, finish) -> None:
    """In-process teacher: one batched generate call per `batch_size` papers."""
    for start in range(0, len(papers), batch_size):
        batch = papers[start: start + batch_size]
        began = time.perf_counter()
        replies = backend.chat([teacher_conversation(prompt, p.abstract, n_pairs) for p in batch], decoding)
        seconds = (time.perf_counter() - began) / len(batch)
        for paper, reply in zip(batch, replies):
            finish(paper, reply[0], seconds)


def _run_concurrent(backend, papers, prompt, n_pairs, decoding, concurrency, finish, run) -> None:
    """Endpoint teacher: `concurrency` single-conversation requests in flight; results are written
    by this (the main) thread as they complete, so the store needs no lock."""
    errors = _teacher_errors()

    def ask(paper: Paper) -> tuple[str, float]:
        began = time.perf_counter()
        reply = backend.chat([teacher_conversation(prompt, paper.abstract, n_pairs)], decoding)[0][0]
        return reply, time.perf_counter() - began

    consecutive_failures = 0
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qa-teacher")
    try:
        futures = {pool.submit(ask, paper): paper for paper in papers}
        for future in as_completed(futures):
            paper = futures[future]
            try:
                reply, seconds = future.result()
            except errors as exc:
                run["failed"] += 1
                consecutive_failures += 1
                if len(run["errors"]) < 10:
                    run["errors"].append(f"{paper.arxiv_id}: {type(exc).__name__}: {str(exc)[:200]}")
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise UserError(
                        f"teacher {run['teacher']} failed {consecutive_failures} times in a row "
                        f"(last: {type(exc).__name__}: {str(exc)[:200]}); finished papers are kept, rerun to resume"
                    ) from None
                continue
            consecutive_failures = 0
            finish(paper, reply, seconds)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


COUNT_KEYS = ("papers", "unparsable", "candidates", *FILTER_NAMES, "kept", "turns_dropped", "papers_with_pairs")


def read_progress(path: str | Path) -> list[dict[str, Any]]:
    """The progress records of finished papers (a torn last line is ignored)."""
    lines, _ = _complete_lines(Path(path))
    return [json.loads(line) for line in lines]


def tally(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts over progress records: totals, per split, and papers per teacher and prompt."""
    per_split: dict[str, Counter] = {}
    teachers, prompts = Counter(), Counter()
    for record in records:
        counts = per_split.setdefault(record["split"], Counter())
        counts.update(record["counts"])
        counts["papers"] += 1
        counts["papers_with_pairs"] += record["counts"].get("kept", 0) > 0
        teachers[record["teacher"]] += 1
        prompts[record["prompt"]] += 1
    total = sum(per_split.values(), Counter())
    return {
        "totals": {k: total.get(k, 0) for k in COUNT_KEYS},
        "per_split": {split: {k: c.get(k, 0) for k in COUNT_KEYS} for split, c in sorted(per_split.items())},
        "teachers": dict(teachers),
        "prompts": dict(prompts),
    }


def summarize(store: ResumableStore, filters: Filters, decoding: Decoding, prompt: ChatTemplate,
              run: dict[str, Any]) -> dict[str, Any]:
    """Counts over every finished paper in the store (all runs), the filters, and the last run."""
    return {
        "output": str(store.out),
        **tally(store.done.values()),
        "filters": asdict(filters),
        "filter_definitions": {
            "unparsable": "reply without one complete 'Q: ... / A: ...' pair",
            "too_short": f"question < {filters.min_question_words} or answer < {filters.min_answer_words} words "
                         f"or < {filters.min_answer_content_words} content words",
            "too_long": f"question > {filters.max_question_words} or answer > {filters.max_answer_words} words",
            "not_a_question": "question does not end with '?'",
            "not_self_contained": "question points at an unseen text ('this paper', 'the authors', 'we', ...)",
            "vague_referent": "question leans on the abstract's referents ('the model', 'the proposed ...', "
                              "'these results', ...)",
            "off_topic": f"question support < {filters.min_question_support}",
            "unsupported": f"answer support < {filters.min_answer_support}",
            "restates_question": f"share of the answer's content stems not in the question < {filters.min_answer_novelty}",
            "support": "share of the text's distinct content stems (sklearn English stop words removed, "
                       "Porter stemmer, rouge-score tokenizer) that occur in the abstract",
            "duplicate": "normalised question (lower case, alphanumeric tokens) already kept for any paper",
            "over_limit": f"beyond the first {filters.max_pairs} kept pairs of a paper",
            "turns_dropped": "follow-up turns removed because one failed the length, context or support checks",
        },
        "last_run": {**run, "decoding": asdict(decoding),
                     "prompt_messages": teacher_conversation(prompt, "{abstract}", run["pairs_asked"])},
    }
