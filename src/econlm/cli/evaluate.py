"""`econlm eval`, `econlm baselines`, `econlm report`, `econlm reproduce` and `econlm bench eval`."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelSpecParam, bench, corpus_option, main, resolve_corpus, warn_deprecated
from econlm.evaluate import PROMPTINGS
from econlm.types import SPLITS


@main.command("eval")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(("transformers", "llamacpp", "openai")), default="econlm", show_default=True,
              help="ENGINE:MODEL. transformers:MODEL (the default engine, so a bare MODEL works): 'econlm' (shipped "
                   "adapter), a training run or adapter dir, a packaged name (smollm2-135m-instruct, gemma3-270m), a "
                   "HF folder, a .gguf file or a hub id. llamacpp:FILE.gguf (`econlm export gguf`): llama.cpp "
                   "(extra [fast]), title and classify. openai:NAME: a chat endpoint at $OPENAI_BASE_URL, e.g. "
                   "`econlm serve --engine vllm` (--batch-size requests at a time), title and classify.")
@click.option("--backend", "backend_kind", type=click.Choice(["transformers", "llamacpp"]), default=None, hidden=True,
              help="Deprecated: use --model ENGINE:MODEL.")
@click.option("--task", required=True, help="title, classify, qa (Q&A and MMLU-econ; more options: econlm qa eval), "
                                           "or rag (retrieval over the papers index, cited answers over the benchmark documents).")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Corpus split to evaluate on.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate a seeded random subset of N papers.")
@click.option("--prompting", type=click.Choice(PROMPTINGS), default="auto", show_default=True,
              help="zero-shot (chat template + training prompt), one-shot (completion prompt with one train "
                   "example), few-shot (the published paper's baselines: 5 train examples for titles, one per "
                   "category for classification, before the query), or auto (zero-shot if the model has a chat template).")
@click.option("--shots", type=click.IntRange(1), default=None, help="With --prompting few-shot: how many train examples [5 titles, 3 classify].")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Examples per forward pass.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="float32 or bfloat16 (Gemma needs float32).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=40, show_default=True, help="Title generation length limit.")
@click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy decoding.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling (with --temperature > 0).")
@click.option("--num-beams", default=1, show_default=True, type=click.IntRange(min=1),
              help="Beam search over N beams for titles (transformers engine; 1 = greedy or sampling).")
@click.option("--length-penalty", default=1.0, show_default=True,
              help="With --num-beams > 1: beams scored by log-prob / length ** P (> 1 favours longer titles).")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling, --limit subsets and the shot examples.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def eval_(corpus, spec, backend_kind, task, split, limit, prompting, shots, batch_size, dtype, max_new_tokens, temperature,
          top_p, num_beams, length_penalty, seed, out):
    """Evaluate a model on title generation or classification.

    Reads CORPUS/<split>.jsonl (and train.jsonl for one- and few-shot prompts) and the model; writes
    OUT/predictions.jsonl (id, input, reference, prediction), OUT/metrics.json (metrics and
    provenance) and, for classification, OUT/confusion_matrix.png. Titles: ROUGE-1/2/L F
    (rouge-score, stemmer) and BLEU; classification: constrained scoring of the three answers,
    accuracy, weighted/macro P/R/F1, free-generation parse rate.
    """
    from econlm.backends import Decoding, EngineSpec
    from econlm.evaluate import check_task, evaluate, load_backend
    from econlm.io import check_out_dir

    check_out_dir(out)  # before the model loads: a refused --out would waste the whole run
    if backend_kind is not None:
        warn_deprecated(f"--backend {backend_kind}", f"--model {backend_kind}:{spec.model_text}")
        spec = EngineSpec.of(backend_kind, spec.model)
    if task == "qa":  # Q&A + MMLU-econ live in econlm.qa.eval (also `econlm qa eval`)
        if spec.engine != "transformers":
            raise click.UsageError(f"--model {spec}: llamacpp: models support --task title and classify")
        from econlm.cli.qa import echo_qa_report
        from econlm.qa.eval import QA_DECODING, evaluate_qa

        given = click.get_current_context().get_parameter_source("max_new_tokens") is click.core.ParameterSource.COMMANDLINE
        decoding = Decoding(max_new_tokens=max_new_tokens if given else QA_DECODING.max_new_tokens)
        report = evaluate_qa(load_backend(spec, batch_size=batch_size, dtype=dtype), out, resolve_corpus(corpus),
                             split=split, limit=limit, decoding=decoding, seed=seed)
        echo_qa_report(report, out)
        return
    if task == "rag":  # retrieval and answers with citations live in econlm.rag.evaluate
        from econlm.rag.evaluate import echo_rag_report, evaluate_rag
        from econlm.rag.store import PAPERS_INDEX, index_dir

        papers = index_dir(PAPERS_INDEX)
        report = evaluate_rag(load_backend(spec, batch_size=1, dtype=dtype), out, limit=limit,
                              papers_index=papers if papers.is_dir() else None,
                              corpus_dir=resolve_corpus(corpus) if papers.is_dir() else None)
        echo_rag_report(report, out)
        return
    check_task(task)
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        num_beams=num_beams, length_penalty=length_penalty)
    report = evaluate(load_backend(spec, batch_size=batch_size, dtype=dtype), task, resolve_corpus(corpus), out,
                      split=split, limit=limit, prompting=prompting, decoding=decoding, seed=seed, shots=shots)
    shown = {k: v for k, v in report.metrics.items() if isinstance(v, float)}
    click.echo("  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    click.echo(f"wrote {out}/predictions.jsonl and {out}/metrics.json ({report.provenance['seconds']:.0f}s)")


@main.command()
@corpus_option
@click.option("--only", default=None, help="Comma-separated subset of: logreg, knn, random_forest, xgboost, "
                                           "decision_tree, svc, rnn, lstm, minilm [default: all].")
@click.option("--train-limit", type=int, default=None, help="Train on a seeded subset of N papers (quick runs).")
@click.option("--test-limit", type=int, default=None, help="Score a seeded subset of N test papers (quick runs).")
@click.option("--rnn-epochs", default=6, show_default=True, help="Epochs for the RNN and LSTM (best on validation kept).")
@click.option("--minilm-epochs", default=2, show_default=True, help="Epochs for MiniLM fine-tuning (best on validation kept).")
@click.option("--minilm-max-len", default=256, show_default=True, help="MiniLM input length in tokens.")
@click.option("--jobs", default=2, show_default=True, help="Threads for random forest and XGBoost.")
@click.option("--seed", default=0, show_default=True, help="Seed for subsets, forests and network initialisation.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def baselines(corpus, only, train_limit, test_limit, rnn_epochs, minilm_epochs, minilm_max_len, jobs, seed, out):
    """Classification baselines of the study's Table 2, tuned on validation, scored on test.

    Reads CORPUS/{train,validation,test}.jsonl; writes OUT/<baseline>/{predictions.jsonl,
    metrics.json,confusion_matrix.png}, OUT/summary.json and OUT/baselines.png. The input is the
    abstract, as for the language models; metrics are the same functions.
    """
    from econlm.baselines import BASELINE_NAMES, BaselineSettings, run_baselines

    names = tuple(n.strip() for n in only.split(",") if n.strip()) if only else BASELINE_NAMES
    settings = BaselineSettings(names=names, seed=seed, train_limit=train_limit, test_limit=test_limit,
                                rnn_epochs=rnn_epochs, minilm_epochs=minilm_epochs, minilm_max_len=minilm_max_len,
                                jobs=jobs)
    summary = run_baselines(resolve_corpus(corpus), out, settings)
    for name, row in summary["baselines"].items():
        click.echo(f"{name:14s} accuracy={row['accuracy']:.4f}  f1_weighted={row['f1_weighted']:.4f}  "
                   f"f1_macro={row['f1_macro']:.4f}  ({row['seconds']:.0f}s)")
    click.echo(f"wrote {out}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--title", default="econlm vs the LLaMA-2-Econ study", show_default=True, help="Report heading.")
@click.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Markdown file with notes to put at the top of the report.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Report directory.")
def report(run_dirs, title, notes, out):
    """Tables 1 and 2 of the study with our numbers beside the published ones.

    Reads RUN_DIRS (outputs of `econlm eval` and `econlm baselines`); writes OUT/report.md,
    OUT/table1.png, OUT/table2.png, OUT/results.json, OUT/provenance.json and OUT/confusion/*.png.
    """
    from econlm.report import write_report

    path = write_report(list(run_dirs), out, title=title, notes=notes.read_text(encoding="utf-8") if notes else None)
    click.echo(f"wrote {path}")


@bench.command("eval")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(("transformers",)), default="smollm2-135m-instruct",
              show_default=True, help="transformers:MODEL to measure (a bare MODEL works).")
@click.option("-n", "n", default=32, show_default=True, help="Test abstracts to use (the first N).")
@click.option("--batch-size", default=16, show_default=True, help="Batch size of the batched runs.")
@click.option("--max-new-tokens", default=40, show_default=True, help="Title length limit (greedy).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results"), show_default=True,
              help="A .json file, or a directory that gets eval-<timestamp>.json.")
def bench_eval_(corpus, spec, n, batch_size, max_new_tokens, out):
    """Titles/s of batched generation vs one-at-a-time generate; classification examples/s (scoring
    batched vs one at a time; scores plus free reply from one prompt pass vs two).

    Reads the first N test abstracts of CORPUS and the model; writes a JSON result to OUT.
    """
    import json

    from econlm.bench.common import write_result
    from econlm.bench.eval import bench_eval

    result = bench_eval(spec.model, resolve_corpus(corpus), n=n, batch_size=batch_size, max_new_tokens=max_new_tokens)
    path = write_result(out, "eval", result)
    click.echo(json.dumps({k: result[k] for k in ("title_generation", "classification_constrained_scoring",
                                                  "classification_scores_and_free_reply")}, indent=2))
    click.echo(f"wrote {path}")


@main.command()
@corpus_option
@click.option("--preset", default="quick", show_default=True,
              help="quick (seeded subsets, under 10 minutes on a 2-core CPU) or full (the study's full splits).")
@click.option("--train", is_flag=True, help="With --preset full: fine-tune a new adapter first instead of "
                                            "using the shipped one (hours on a CPU).")
@click.option("--seed", default=0, show_default=True, help="Seed for subsets, one-shot example and baselines.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Working directory for every stage's output [default: out/reproduce-<preset>].")
@click.option("--report-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the report goes [default: OUT/report], e.g. reports/<name>.")
def reproduce(corpus, preset, train, seed, out, report_out):
    """The whole study: data -> fine-tuned model -> eval both tasks -> baselines -> report.

    Reads the corpus, the default shipped adapter (`econlm`, models/econlm-qwen2.5-coder-0.5b) and the packaged base
    models; writes OUT/datasets, OUT/eval/<model>-<task>, OUT/baselines and the report
    (OUT/report/report.md, or --report-out). Without a shipped adapter and without --train, the
    fine-tuned rows are reported as pending.
    """
    from econlm.reproduce import reproduce as run

    path = run(resolve_corpus(corpus), out or Path("out") / f"reproduce-{preset}", preset_name=preset, train=train,
               report_dir=report_out, seed=seed)
    click.echo(f"wrote {path}")


@bench.command("rag-quality")
@corpus_option
@click.option("--model", "specs", multiple=True, required=True,
              help="ENGINE:MODEL of an answer model (repeat the option; all run one after another in this process).")
@click.option("--papers-index", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Papers index whose retrieval is measured [default: $ECONLM_HOME/indexes/papers if built].")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N Q&A pairs for retrieval.")
@click.option("--eval-out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory that gets one `econlm eval --task rag` output per model.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results"), show_default=True,
              help="A .json file, or a directory that gets rag-quality-<timestamp>.json.")
def bench_rag_quality(corpus, specs, papers_index, limit, eval_out, out):
    """Answer models side by side on the RAG benchmark (`econlm eval --task rag` for each).

    Reads the committed benchmark documents, the Q&A set and the papers index; writes
    EVAL_OUT/<model>/{predictions.jsonl,metrics.json} and the side-by-side JSON to OUT.
    """
    import json

    from econlm.bench.common import write_result
    from econlm.rag.evaluate import compare_models
    from econlm.rag.store import PAPERS_INDEX, index_dir

    papers = papers_index or (index_dir(PAPERS_INDEX) if index_dir(PAPERS_INDEX).is_dir() else None)
    result = compare_models(specs, eval_out, papers, limit, resolve_corpus(corpus) if papers else None)
    path = write_result(out, "rag-quality", result)
    click.echo(json.dumps([{row["model"]: row["answer"]} for row in result["models"]], indent=1))
    click.echo(f"wrote {path}")
