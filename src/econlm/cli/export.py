"""`econlm export gguf`, `econlm serve`, `econlm bench infer` and `econlm bench serve`: running a model fast, anywhere."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelRefParam, ModelSpecParam, bench, corpus_option, main, resolve_corpus

QUANT_CHOICES = ("f16", "q8_0", "q4_k_m")  # econlm.export.QUANT_TYPES, kept here so --help stays instant
SERVE_ENGINES = ("transformers", "llamacpp", "vllm")


def serve_spec(spec, engine: str | None):
    """The spec `serve` runs: --engine applies to a bare MODEL (or one with the same prefix); vllm
    keeps the transformers spec, whose ModelRef it launches."""
    from econlm.backends import DEFAULT_ENGINE, EngineSpec
    from econlm.errors import UserError

    if engine is None:
        return spec
    if spec.model is None or spec.engine not in (DEFAULT_ENGINE, engine):
        raise UserError(f"--engine {engine} --model {spec}: give --engine a bare MODEL (or drop --engine)")
    return spec if engine == "vllm" else EngineSpec.of(engine, spec.model)


@main.group()
def export() -> None:
    """Export a model for other runtimes (llama.cpp, Ollama, LM Studio)."""


@export.command("gguf")
@click.argument("model", type=ModelRefParam())
@click.option("--quant", type=click.Choice(QUANT_CHOICES), default="f16", show_default=True,
              help="f16: exact weights; q8_0: ~half the size, near-identical output; q4_k_m: ~quarter, small quality loss.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .gguf file.")
def gguf(model, quant: str, out: Path) -> None:
    """Write MODEL as one GGUF file with its tokenizer and chat template.

    MODEL: a merged model folder, a LoRA adapter or run directory (merged on the fly), a packaged
    model name, or a hub id (LLaMA or Qwen2 architecture). Reads the model; writes OUT (atomically).
    Run it with `econlm serve --model llamacpp:OUT`, llama.cpp or Ollama (docs/serving.md).
    """
    from econlm.export import export_gguf

    info = export_gguf(model, out, quant)
    click.echo(f"{info['out']}: {quant}, {info['bytes'] / 2**20:.1f} MiB ({info['seconds']}s)")


@main.command()
@click.option("--model", "spec", type=ModelSpecParam(), required=True,
              help="ENGINE:MODEL: llamacpp:FILE.gguf (fast CPU), transformers:MODEL or a bare MODEL, openai:NAME.")
@click.option("--engine", type=click.Choice(SERVE_ENGINES), default=None,
              help="What generates: transformers or llamacpp behind econlm's own server (one request at a time), or "
                   "vllm: vLLM's OpenAI server with continuous batching and the LoRA adapter loaded by name (its "
                   "own limits apply; install: make install-vllm) [default: the --model spec's engine].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on: 127.0.0.1 is this machine only. 0.0.0.0 (all) lets anyone on the network "
                   "use the model: only with --api-key.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", envvar="ECONLM_API_KEY", show_envvar=True, default=None,
              help="Require `Authorization: Bearer KEY` on every request but /health (401 otherwise). "
                   "econlm's openai: clients send $ECONLM_API_KEY.")
@click.option("--name", default="econlm", show_default=True, help="Model id clients send (and /v1/models lists).")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1), help="Largest max_tokens a request may ask for.")
@click.option("--max-prompts", default=16, show_default=True, type=click.IntRange(1), help="Prompts one /v1/completions request may hold.")
@click.option("--max-generated-tokens", default=2048, show_default=True, type=click.IntRange(1),
              help="Tokens one request may ask to generate (prompts x n x max_tokens).")
@click.option("--max-prompt-tokens", default=8192, show_default=True, type=click.IntRange(1), help="Prompt tokens one request may hold.")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(1), help="Largest request body accepted.")
@click.option("--max-waiting", default=64, show_default=True, type=click.IntRange(1), help="Requests queued behind the running one; more get 503.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads the model computes on [default: the engine's own: one per core for transformers and "
                   "llama.cpp, every core but one for vLLM]. 1 when other jobs share the cores.")
def serve(spec, engine: str | None, host: str, port: int, api_key: str | None, name: str, max_tokens: int, max_prompts: int, max_generated_tokens: int,
          max_prompt_tokens: int, max_body_bytes: int, max_waiting: int, threads: int | None) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (chat/completions with streaming).

    Reads the model the spec names; writes nothing. Clients: the econlm app and `openai:` backend
    (OPENAI_BASE_URL=http://HOST:PORT/v1), the openai package, curl. Requests beyond the limits
    get a 4xx; a request whose client leaves stops generating. For many users (and GPUs),
    --engine vllm runs vLLM's server instead (docs/serving.md).
    """
    from econlm.errors import UserError
    from econlm.serve import ServerLimits, is_loopback, serve as run_server

    if not api_key and not is_loopback(host):
        click.echo(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the model", err=True)
    spec = serve_spec(spec, engine)
    if engine == "vllm":
        from econlm.vllm_engine import serve as serve_vllm

        serve_vllm(spec.model, served_name=name, host=host, port=port, api_key=api_key, threads=threads)
        return
    if threads is not None and spec.engine not in SERVE_ENGINES:
        raise UserError(f"--threads: {spec} is served elsewhere; econlm computes nothing for it")
    limits = ServerLimits(
        max_tokens=max_tokens, default_max_tokens=min(256, max_tokens), max_body_bytes=max_body_bytes, max_waiting=max_waiting,
        max_prompts=max_prompts, max_generated_tokens=max_generated_tokens, max_prompt_tokens=max_prompt_tokens,
    )
    run_server(spec, host=host, port=port, model_name=name, limits=limits, api_key=api_key, threads=threads)


@bench.command("infer")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(("transformers",)), default=None,
              help="transformers:MODEL to compare (a bare MODEL works; it is exported to GGUF for the llama.cpp "
                   "engines) [default: the shipped econlm adapter, else smollm2-135m-instruct].")
@click.option("--n", "n_prompts", default=50, show_default=True, type=click.IntRange(1), help="Test abstracts to title.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(2))
@click.option("--engines", default=None, help="Comma-separated subset of: hf-fp32, hf-bf16, llamacpp-f16, llamacpp-q8_0, llamacpp-q4_k_m.")
@click.option("--load-test/--no-load-test", default=True, show_default=True, help="Also load-test `econlm serve` (q8_0) on 127.0.0.1.")
@click.option("--out", default=Path("bench/results"), show_default=True, type=click.Path(path_type=Path), help="Result .json file or directory.")
def infer(corpus: Path | None, spec, n_prompts: int, max_new_tokens: int, engines: str | None, load_test: bool, out: Path) -> None:
    """Inference speed: transformers fp32/bf16 vs llama.cpp f16/q8_0/q4_k_m on the same prompts.

    Reads the first N test abstracts of the corpus and the model (exported to GGUF once, cached
    under $ECONLM_HOME/gguf/); writes a JSON result (tokens/s, time to first token, peak RSS,
    memory-bandwidth ceiling, serving p50/p95) and prints a table.
    """
    from econlm.bench.common import write_result
    from econlm.bench.infer import ENGINES, default_model, format_table, run_infer_bench

    chosen = tuple(e.strip() for e in engines.split(",")) if engines else ENGINES
    result = run_infer_bench(
        spec.model if spec is not None else default_model(), resolve_corpus(corpus), n_prompts=n_prompts, max_new_tokens=max_new_tokens,
        engines=chosen, load_test=load_test,
    )
    path = write_result(out, "infer", result)
    click.echo(format_table(result))
    click.echo(f"wrote {path}")


@bench.command("serve")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(("transformers",)), default=None,
              help="MODEL every engine serves (an adapter is merged only for the llama.cpp export) "
                   "[default: the shipped econlm adapter, else smollm2-135m-instruct].")
@click.option("--prompts", "n_prompts", default=200, show_default=True, type=click.IntRange(1), help="Test abstracts to title.")
@click.option("--concurrency", default="1,8,32", show_default=True, help="Comma-separated requests in flight, each run in turn.")
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(1), help="max_tokens of every request.")
@click.option("--engines", default=None, help="Comma-separated subset of: vllm, llamacpp-q8_0, transformers [default: all].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="`econlm serve --threads` for every engine, so each computes on as many cores [default: each engine's own].")
@click.option("--out", default=Path("bench/results"), show_default=True, type=click.Path(path_type=Path), help="Result .json file or directory.")
def serve_bench(corpus: Path | None, spec, n_prompts: int, concurrency: str, max_tokens: int, engines: str | None,
                threads: int | None, out: Path) -> None:
    """Serving engines under the same load: vLLM (continuous batching, LoRA by name) vs econlm's
    one-at-a-time server over llama.cpp q8_0 and over transformers.

    Starts `econlm serve` for each engine on 127.0.0.1 in turn and sends it the title prompts of
    the first N test abstracts, greedy and streamed, at each concurrency. Writes a JSON result
    (tokens/s, requests/s, p50/p95 latency and time to first token, lost requests, share of titles
    equal to greedy transformers') with a PNG of throughput and p95 latency beside it, and prints a table.
    """
    from econlm.bench.common import write_result
    from econlm.bench.infer import default_model
    from econlm.bench.serve import ENGINES, format_table, plot, run_serve_bench

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        raise click.BadParameter(f"{concurrency!r}: comma-separated whole numbers, e.g. 1,8,32", param_hint="--concurrency") from None
    if min(levels) < 1:
        raise click.BadParameter("every concurrency must be at least 1", param_hint="--concurrency")
    chosen = tuple(e.strip() for e in engines.split(",")) if engines else ENGINES
    result = run_serve_bench(spec.model if spec is not None else default_model(), resolve_corpus(corpus), n_prompts=n_prompts,
                             concurrency=levels, max_tokens=max_tokens, engines=chosen, threads=threads)
    path = write_result(out, "serve", result)
    plot(result, path.with_suffix(".png"))
    click.echo(format_table(result))
    click.echo(f"wrote {path} (+ {path.with_suffix('.png').name})")
