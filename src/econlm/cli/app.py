"""`econlm app`, `econlm index ...`, `econlm ask` and `econlm bench rag`: the web app, its retrieval
indexes, and the same assistant on the command line (`econlm.rag.assistant`)."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelSpecParam, bench, corpus_option, main, resolve_corpus, warn_deprecated


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Port to listen on.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to bind (localhost only by default; 0.0.0.0 exposes the app to the network).")
@click.option("--model", "spec", type=ModelSpecParam(), default=None,
              help="ENGINE:MODEL, e.g. transformers:econlm, llamacpp:FILE.gguf or openai:NAME (with $OPENAI_BASE_URL) "
                   "[default: $ECONLM_BACKEND, else the shipped adapter, else the base model].")
@click.option("--backend", "backend_spec", type=ModelSpecParam(), default=None, hidden=True,
              help="Deprecated: use --model SPEC.")
@click.option("--max-upload-mb", type=click.IntRange(1, 2000), default=50, show_default=True,
              help="Largest file the app accepts (Streamlit's server.maxUploadSize).")
@click.option("--top-k", type=click.IntRange(1, 50), default=None, help="Passages retrieved per answer [default: 5].")
def app(port: int, address: str, spec, backend_spec, max_upload_mb: int, top_k: int | None) -> None:
    """Start the Streamlit web app: Title, Classify, Ask, Papers, My documents.

    Reads the papers index ($ECONLM_HOME/indexes/papers, from `econlm index build`) and the model;
    writes uploaded documents' indexes under $ECONLM_HOME/indexes/. Stop it with Ctrl+C.
    """
    import os
    import sys

    from econlm.app import settings

    if backend_spec is not None:
        if spec is not None:
            raise click.UsageError("give the model once: --model SPEC (--backend is its deprecated spelling)")
        warn_deprecated("--backend", f"--model {backend_spec}")
        spec = backend_spec
    env = dict(os.environ)
    if spec is not None:
        env["ECONLM_BACKEND"] = str(spec)
    if top_k:
        env["ECONLM_TOP_K"] = str(top_k)
    script = Path(settings.__file__).with_name("main.py")
    command = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.maxUploadSize", str(max_upload_mb),
        "--server.fileWatcherType", "none",  # a served app, not a script being edited
        "--browser.gatherUsageStats", "false",
    ]
    click.echo(f"econlm app on http://{address}:{port} (Ctrl+C to stop)", err=True)
    os.execvpe(sys.executable, command, env)  # streamlit takes over this process (signals, exit code)


@main.group()
def index() -> None:
    """Retrieval indexes under $ECONLM_HOME/indexes: the corpus papers and uploaded documents."""


@index.command()
@corpus_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Index directory [default: $ECONLM_HOME/indexes/papers].")
@click.option("--splits", default="train,validation,test", show_default=True, help="Corpus splits to index.")
@click.option("--index-type", type=click.Choice(["flat", "hnsw"]), default="hnsw", show_default=True,
              help="Approximate HNSW, or exact Flat search (slower past ~10k chunks; see `econlm bench rag`).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Index only the first N papers (for a quick try).")
def build(corpus: Path | None, out: Path | None, splits: str, index_type: str, limit: int | None) -> None:
    """Index the corpus papers (title + abstract) for the app's Papers page.

    Reads the corpus JSONL files; embeds with the packaged all-MiniLM-L6-v2 on CPU (about 45
    abstracts/s); writes OUT (manifest.json, index.faiss, chunks.jsonl) atomically.
    """
    import time

    from econlm.io import check_out_dir
    from econlm.rag.embeddings import MiniLMEmbedder
    from econlm.rag.store import PAPERS_INDEX, build_papers_index, index_dir

    started = time.perf_counter()
    target = out if out is not None else index_dir(PAPERS_INDEX)
    check_out_dir(target)  # before the embedding model loads and the corpus is embedded
    built = build_papers_index(resolve_corpus(corpus), target, MiniLMEmbedder(),
                               splits=[s.strip() for s in splits.split(",") if s.strip()],
                               index_type=index_type, limit=limit)
    click.echo(f"{built.path}: {len(built.manifest['sources'])} papers, {len(built.chunks)} chunks, "
               f"{index_type} ({time.perf_counter() - started:.0f}s)")


@index.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--max-file-mb", type=click.IntRange(1, 2000), default=50, show_default=True,
              help="Largest file accepted (the app's --max-upload-mb).")
def add(name: str, files: tuple[Path, ...], max_file_mb: int) -> None:
    """Add PDF, TXT or Markdown FILES to the documents index NAME (created if new).

    Parses the files as the app's My documents page does (text files in any encoding, read as
    detected; PDFs in a bounded subprocess), embeds them with the packaged all-MiniLM-L6-v2 and
    writes the index atomically. If any file is refused, nothing is added.
    """
    from econlm.rag.assistant import add_files
    from econlm.rag.loaders import MB, ParseLimits

    report = add_files(name, files, limits=ParseLimits(max_bytes=max_file_mb * MB))
    for added in report.added:
        click.echo(f"indexed {added}")
    for line in report.skipped:
        click.echo(line)


@index.command("list")
@click.option("--fast", is_flag=True, help="Read the manifests only; every index is listed as unverified.")
def list_(fast: bool) -> None:
    """List the indexes under $ECONLM_HOME/indexes, each checked against its manifest's sha256 and chunk count.

    Status: ok, broken (with why: loading it would fail the same way) or unverified (--fast).
    Writes nothing. Exits 1 if any index is broken.
    """
    from rich.console import Console
    from rich.table import Table

    from econlm.rag.store import indexes_root, list_indexes

    rows = list_indexes(verify=not fast)
    if not rows:
        click.echo(f"no indexes under {indexes_root()}")
        return
    table = Table()
    for col in ("name", "kind", "type", "documents", "chunks", "created", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row.get("kind", ""), row.get("index_type", ""), str(row.get("documents", "")),
                      str(row.get("chunks", "")), row.get("created", ""), row["status"])
    Console(width=160).print(table)
    broken = [row["name"] for row in rows if row["status"].startswith("broken")]
    if broken:
        click.echo(f"broken: {', '.join(broken)} (rebuild, or `econlm index delete NAME`)", err=True)
        raise SystemExit(1)


@index.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete the index NAME (a directory under $ECONLM_HOME/indexes) from disk."""
    from econlm.rag.store import delete_index, index_dir

    path = index_dir(name)
    if not yes:
        click.confirm(f"Delete {path}?", abort=True)
    delete_index(path)
    click.echo(f"deleted {path}")


@main.command()
@click.argument("question")
@click.option("--index", "index_name", default="papers", show_default=True,
              help="Index to answer from: papers (the corpus, `econlm index build`) or a documents index (`econlm index add`).")
@click.option("--model", "spec", type=ModelSpecParam(), default=None,
              help="ENGINE:MODEL that writes the answer [default: the app's, $ECONLM_BACKEND or the shipped adapter].")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True, help="Passages retrieved.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, citations, passages, model, timings).")
def ask(question: str, index_name: str, spec, k: int, as_json: bool) -> None:
    """Answer QUESTION from an index's passages, citing them, as the app's Papers and My documents pages do.

    Prints the answer, where each citation comes from, and the passages it read. Reads the index
    and the model; writes nothing.
    """
    import json

    from econlm.rag.assistant import Assistant, clean_question

    question = clean_question(question)
    reply = Assistant(index_name, model=spec, k=k).ask(question)
    if as_json:
        click.echo(json.dumps(reply.summary(), ensure_ascii=False, indent=2))
        return
    click.echo(reply.text)
    if reply.citations:
        click.echo(f"\nCites: {' '.join(reply.citations)}")
    if reply.unsupported_citations:
        click.echo(f"Also cited, but not among the passages: {' '.join(reply.unsupported_citations)}")
    if reply.passages:
        click.echo(f"\nPassages ({len(reply.passages)}):")
        for passage in reply.summary()["passages"]:
            click.echo(f"--- {passage['label']}\n{passage['text'].strip()}")
    click.echo(f"\n{reply.model}; retrieval {reply.timings.retrieve_s:.2f} s, answer {reply.timings.answer_s:.2f} s", err=True)


@bench.command("rag")
@corpus_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results"), show_default=True,
              help="A .json file, or a directory that gets rag-<timestamp>.json (and a .png beside it).")
@click.option("--sizes", default="1000,10000,100000,1000000", show_default=True,
              help="Index sizes (chunks) to sweep; 1M needs about 9 GB of memory and its HNSW build ~30 min on 2 cores.")
@click.option("--queries", type=click.IntRange(10), default=200, show_default=True, help="Queries per size.")
@click.option("--ingest-papers", type=click.IntRange(1), default=200, show_default=True,
              help="Abstracts typeset into PDFs for the ingestion measurement.")
@click.option("--papers-index", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also compare Flat vs HNSW on this index's real vectors [default: $ECONLM_HOME/indexes/papers if built].")
def rag(corpus: Path | None, out: Path, sizes: str, queries: int, ingest_papers: int, papers_index: Path | None) -> None:
    """Ingestion pages/s; p50/p95 query latency and recall@10 of Flat vs HNSW; hybrid search p95 and recall.

    Reads the corpus (validation abstracts for ingestion and query text) and, if present, the
    papers index; writes OUT as JSON plus a latency plot (PNG). The size sweep uses synthetic
    vectors and chunks (see `econlm.bench.rag`). Run it on an otherwise idle machine.
    """
    import tempfile

    from econlm.bench.common import write_result
    from econlm.bench.rag import plot, run_rag_bench
    from econlm.errors import UserError
    from econlm.rag.embeddings import MiniLMEmbedder
    from econlm.rag.store import PAPERS_INDEX, index_dir

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated whole numbers, got {sizes!r}") from None
    papers = papers_index if papers_index is not None else index_dir(PAPERS_INDEX)
    corpus_dir = resolve_corpus(corpus)
    path = None

    def write(partial: dict) -> None:
        nonlocal path
        path = write_result(path or out, "rag", partial)

    with tempfile.TemporaryDirectory(prefix="econlm-bench-rag-") as workdir:
        result = run_rag_bench(corpus_dir, workdir, MiniLMEmbedder(), size_list, queries, ingest_papers, papers,
                               on_size=write)
    write(result)
    plot(result, path.with_suffix(".png"))
    click.echo(f"{path} (+ {path.with_suffix('.png').name})")
    ingest = result["ingestion"]
    click.echo(f"ingestion: {ingest['pages_per_s']} pages/s, {ingest['chunks_per_s']} chunks/s "
               f"(embedding {ingest['embed_chunks_per_s']} chunks/s); query embedding p95 "
               f"{result['query_embedding']['p95_ms']} ms")
    for row in result["sizes"]:
        best = max(row["hnsw"]["efSearch"].items(), key=lambda kv: kv[1]["recall_at_10"])
        hybrid = row["hybrid"]
        click.echo(f"{row['n']:>8} chunks: flat p95 {row['flat']['p95_ms']} ms; hnsw ef={best[0]} p95 "
                   f"{best[1]['p95_ms']} ms recall@10 {best[1]['recall_at_10']}; hybrid p95 {hybrid['hnsw']['p95_ms']} ms "
                   f"over hnsw ef={hybrid['hnsw']['efSearch']} (recall@10 {hybrid['hnsw']['recall_at_10']}), "
                   f"{hybrid['flat']['p95_ms']} ms over flat; peak memory {row['peak_rss_mb']} MB")
    for target in result["targets"]:
        if target["measured"]:
            verdict = "met" if target["met"] else "NOT met"
            click.echo(f"target at {target['chunks']:,} chunks (hybrid p95 <= {target['p95_ms']} ms, recall@10 >= "
                       f"{target['recall_at_10']}): {verdict} ({target['hybrid_p95_ms']} ms, {target['hybrid_recall_at_10']})")
