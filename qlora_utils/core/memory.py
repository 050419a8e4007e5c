"""Memory by component from tensor accounting: what a model's tensors hold (frozen weights by dtype, 4-bit packed
weights and their quantization state, trainable weights, gradients, optimizer states), what autograd saves for the
backward pass and the peak of one forward/backward, beside the process's resident set split into anonymous and
file-backed pages. Every figure counts each tensor storage once (views and tied weights share one)."""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

from ..errors import QLoraError

MiB = 1024 ** 2
_MAPS = "/proc/self/maps"
RSS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
PACKED_4BIT = "4-bit packed"  # the dtype key of bitsandbytes' packed weights (two 4-bit codes per uint8 byte)


def resident_set() -> dict[str, float]:
    """The process's resident set in MiB from /proc/self/status: VmRSS = RssAnon (heap, allocated tensors) + RssFile
    (file-backed pages: memory-mapped checkpoints, libraries) + RssShmem; empty where /proc is not available."""
    from ..speed.efficiency import _status_kib

    return {key: value / MiB for key, value in _status_kib(*RSS_FIELDS).items()}


def file_backed_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from files (not anonymous, heap or stack), sorted; empty without /proc."""
    ranges = []
    try:
        with open(_MAPS, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return sorted(ranges)


def _in_ranges(ptr: int, ranges: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(ranges, (ptr, float("inf"))) - 1
    return i >= 0 and ranges[i][0] <= ptr < ranges[i][1]


@dataclass
class Ledger:
    """Bytes per category and dtype, each storage counted once across all categories (the first one claims it), and
    how many of them lie in file-backed (memory-mapped) pages."""

    ranges: list[tuple[int, int]] = field(default_factory=file_backed_ranges)
    seen: set[int] = field(default_factory=set)
    bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    mapped: dict[str, int] = field(default_factory=dict)

    def add(self, category: str, tensor: torch.Tensor | None, dtype: str | None = None) -> None:
        """Count `tensor`'s whole storage under category/dtype unless a storage at the same address was counted."""
        if tensor is None or not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or ptr in self.seen:
            return
        self.seen.add(ptr)
        key = dtype or str(tensor.dtype).removeprefix("torch.")
        per = self.bytes.setdefault(category, {})
        per[key] = per.get(key, 0) + size
        if tensor.device.type == "cpu" and _in_ranges(ptr, self.ranges):
            self.mapped[category] = self.mapped.get(category, 0) + size

    def mib(self) -> dict[str, dict[str, float]]:
        """The categories in MiB, per dtype, with a `total` and the memory-mapped share of each."""
        out = {}
        for category, per in self.bytes.items():
            row = {k: round(v / MiB, 4) for k, v in sorted(per.items())}
            row["total"] = round(sum(per.values()) / MiB, 4)
            row["file_backed"] = round(self.mapped.get(category, 0) / MiB, 4)
            out[category] = row
        return out


def quant_state_tensors(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of a bitsandbytes 4-bit weight's quantization state: the per-block absmax (8-bit when double
    quantized), the nested fp32 absmax and code of double quantization, the offset and the 4-bit code table."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return {}
    found = {"absmax": state.absmax, "code": state.code, "offset": getattr(state, "offset", None)}
    if getattr(state, "nested", False) and state.state2 is not None:
        found.update({"nested absmax": state.state2.absmax, "nested code": state.state2.code})
    return {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}


def is_packed_4bit(param: torch.Tensor) -> bool:
    """Whether a parameter is bitsandbytes' packed 4-bit weight (Params4bit)."""
    return type(param).__name__ == "Params4bit"


def weight_ledger(model: torch.nn.Module, ledger: Ledger | None = None) -> Ledger:
    """Count a model's parameters and buffers: `frozen weights` by dtype (packed 4-bit weights under PACKED_4BIT),
    `quantization state` by part, `adapters` (trainable LoRA weights), `trainable weights` (other trainable ones,
    as in full fine-tuning) and `buffers`."""
    ledger = ledger or Ledger()
    for name, param in model.named_parameters(remove_duplicate=False):
        if is_packed_4bit(param):
            ledger.add("frozen weights", param, PACKED_4BIT)
            for part, tensor in quant_state_tensors(param).items():
                ledger.add("quantization state", tensor, part)
        elif param.requires_grad:
            ledger.add("adapters" if "lora_" in name else "trainable weights", param)
        else:
            ledger.add("frozen weights", param)
    for _, buffer in model.named_buffers(remove_duplicate=False):
        ledger.add("buffers", buffer)
    return ledger


def gradient_ledger(model: torch.nn.Module, ledger: Ledger) -> Ledger:
    """Add the parameters' gradients (`gradients`, by dtype) to a ledger."""
    for param in model.parameters():
        ledger.add("gradients", param.grad)
    return ledger


def optimizer_ledger(optimizer: Any, ledger: Ledger) -> Ledger:
    """Add an optimizer's state tensors (`optimizer states`, by dtype; accelerate's wrapper is looked through)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in getattr(inner, "state", {}).values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:  # moments, not step counters
                ledger.add("optimizer states", value)
    return ledger


def model_components(model: torch.nn.Module, optimizer: Any = None) -> dict[str, dict[str, float]]:
    """Weights, quantization state, adapters, gradients and optimizer states of a model now, in MiB by dtype."""
    ledger = weight_ledger(model)
    gradient_ledger(model, ledger)
    if optimizer is not None:
        optimizer_ledger(optimizer, ledger)
    return ledger.mib()


class SavedForBackward:
    """Context manager summing the storages autograd saves for the backward pass (each once), by dtype, leaving out
    storages in `exclude` (the parameters, counted as weights). The pack hook returns the tensor itself, so nothing
    changes. Under non-reentrant gradient checkpointing its own hooks take precedence inside checkpointed blocks:
    there only what is saved outside them is seen (what checkpointing keeps is the blocks' inputs)."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.ledger = Ledger(ranges=[], seen=set(exclude or ()))
        self.tensors = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.tensors += 1
        self.ledger.add("saved for backward", tensor)
        return tensor

    def __enter__(self) -> "SavedForBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def mib(self) -> dict[str, float]:
        """MiB by dtype with the total and the number of saved tensors."""
        row = self.ledger.mib().get("saved for backward", {"total": 0.0})
        row.pop("file_backed", None)
        return {**row, "tensors": self.tensors}


@contextlib.contextmanager
def allocation_peak() -> Iterator[dict[str, Any]]:
    """The peak of tensor memory allocated during a block above what was allocated at its start, in MiB: on CUDA
    from the allocator (`max_memory_allocated` after a reset), on a CPU from PyTorch's profiler, whose CPU memory
    reporter keeps a running total of the bytes allocated and freed while profiling (every tensor allocation goes
    through it; memory-mapped weights are not allocations and do not appear)."""
    result: dict[str, Any] = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result.update({"method": "torch.cuda.max_memory_allocated above the start",
                       "start_mib": round(start / MiB, 1),
                       "peak_above_start_mib": round((torch.cuda.max_memory_allocated() - start) / MiB, 1),
                       "max_allocated_mib": round(torch.cuda.max_memory_allocated() / MiB, 1)})
        return
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield result
    totals = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            totals.append((node.start_time_ns, node.extra_fields.total_allocated, node.extra_fields.alloc_size))
    totals.sort()
    base = totals[0][1] - totals[0][2] if totals else 0
    peak = max((t for _, t, _ in totals), default=base) - base
    result.update({"method": "PyTorch profiler: CPU tensor allocations, running total above the start",
                   "allocations": len(totals), "peak_above_start_mib": round(peak / MiB, 1),
                   "end_above_start_mib": round(((totals[-1][1] if totals else base) - base) / MiB, 1)})


def parameter_storages(model: torch.nn.Module) -> set[int]:
    """Addresses of a model's parameter and buffer storages (packed 4-bit weights' quantization state included)."""
    ledger = weight_ledger(model)
    return set(ledger.seen)


def step_components(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, autocast: bool = True,
                    ) -> dict[str, Any]:
    """One forward and backward pass of `batch` (its `labels` give the model's own loss), as the Trainer runs it
    (bf16 autocast when `autocast`): what autograd saved for backward, the allocation peak (`allocation_peak`), the
    gradients it left and the resident set before and after. Gradients are dropped afterwards (set to None)."""
    if "labels" not in batch:
        raise QLoraError("step_components needs a batch with labels (the loss it differentiates)")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    model.train()
    before = resident_set()
    with allocation_peak() as peak:
        with SavedForBackward(parameter_storages(model)) as saved:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch).loss
        after_forward = resident_set()
        loss.backward()
    grads = gradient_ledger(model, Ledger(ranges=[])).mib().get("gradients", {"total": 0.0})
    grads.pop("file_backed", None)
    result = {"tokens": int(batch["input_ids"].numel()), "saved_for_backward": saved.mib(), "gradients": grads,
              "peak": peak, "resident_set": {"before": before, "after_forward": after_forward,
                                             "after_backward": resident_set()}}
    model.zero_grad(set_to_none=True)
    return result


def component_totals(components: Mapping[str, Any]) -> dict[str, float]:
    """The measured totals in MiB that the memory planner predicts (planner.MemoryPlan's fields) from a
    `memory_components` record: 4-bit packed weights, quantization state, the other weights (frozen and, in full
    fine-tuning, trained), adapters, gradients, optimizer states, and what autograd saved for backward."""
    weights = components.get("weights", {})
    frozen = weights.get("frozen weights", {})
    packed = frozen.get(PACKED_4BIT, 0.0)
    step = components.get("step", {})
    return {"quantized_weights": packed,
            "quantization_constants": weights.get("quantization state", {}).get("total", 0.0),
            "unquantized_weights": frozen.get("total", 0.0) - packed
            + weights.get("trainable weights", {}).get("total", 0.0),
            "adapters": weights.get("adapters", {}).get("total", 0.0),
            "gradients": step.get("gradients", weights.get("gradients", {})).get("total", 0.0),
            "optimizer_states": weights.get("optimizer states", {}).get("total", 0.0),
            "saved_for_backward": step.get("saved_for_backward", {}).get("total", 0.0),
            "step_peak": step.get("peak", {}).get("peak_above_start_mib", 0.0)}


def components_callback() -> Any:
    """A Trainer callback recording, at its first optimizer step (gradients and optimizer states both alive), the
    model's components (`model_components`) and the resident set at the start, after that step and at the end of
    training; read them from its `record` afterwards."""
    from transformers import TrainerCallback

    class ComponentsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.record: dict[str, Any] = {"resident_set": {}}

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.record["resident_set"]["train_begin"] = resident_set()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                              **_: Any) -> None:
            if "weights" not in self.record and model is not None:
                self.record["weights"] = model_components(model, optimizer)
                self.record["resident_set"]["first_optimizer_step"] = resident_set()

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.record["resident_set"]["train_end"] = resident_set()

    return ComponentsCallback()


def _above(phases: Mapping[str, Mapping[str, float]], phase: str, key: str) -> float | None:
    """A resident-set field at `phase` above the process before loading, in MiB (None where not recorded)."""
    if phase not in phases or "before_load" not in phases or key not in phases[phase]:
        return None
    return round(phases[phase][key] - phases["before_load"][key], 1)


def _untracked(weights: Mapping[str, Mapping[str, float]], phases: Mapping[str, Mapping[str, float]]
               ) -> float | None:
    """Anonymous memory above the process before loading that no tensor held after the first optimizer step (MiB):
    freed memory the allocator kept (the step's activations, the load's temporaries), libraries' own buffers."""
    anon = _above(phases, "first_optimizer_step", "RssAnon")
    if anon is None:
        return None
    allocated = sum(row.get("total", 0.0) - row.get("file_backed", 0.0) for row in weights.values())
    return round(anon - allocated, 1)


def memory_table(records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per efficiency run that recorded `memory_components` (MiB): frozen weights by dtype and how many of
    them are memory-mapped file pages, quantization state, trained weights or adapters, gradients, optimizer states,
    what autograd saved, the step's allocation peak, the tensor total (static components + step peak), and the
    resident set above the process before loading (anonymous, file-backed, whole) after the first optimizer step,
    with the anonymous memory no tensor held then, beside the run's sampled peaks."""
    rows = []
    for record in records:
        components = record.get("memory_components")
        if not components:
            continue
        weights, totals, phases = components["weights"], components["totals"], components["resident_set"]
        frozen = weights.get("frozen weights", {})
        memory = record.get("training", {}).get("memory", {})
        rows.append({
            "model": record["model"]["preset"], "mode": record["model"]["mode"],
            "frozen 4-bit packed": frozen.get(PACKED_4BIT, 0.0),
            "quantization state": totals["quantization_constants"],
            "frozen bf16": frozen.get("bfloat16", 0.0), "frozen fp32": frozen.get("float32", 0.0),
            "frozen file-backed": frozen.get("file_backed", 0.0),
            "trained weights": weights.get("trainable weights", {}).get("total", 0.0),
            "adapters": totals["adapters"], "gradients": weights.get("gradients", {}).get("total", 0.0),
            "optimizer states": totals["optimizer_states"], "saved for backward": totals["saved_for_backward"],
            "step peak": totals["step_peak"],
            "tensor total": round(sum(totals[k] for k in ("quantized_weights", "quantization_constants",
                                                          "unquantized_weights", "adapters", "optimizer_states",
                                                          "step_peak")), 1),
            "RssAnon after step 1": _above(phases, "first_optimizer_step", "RssAnon"),
            "RssFile after step 1": _above(phases, "first_optimizer_step", "RssFile"),
            "VmRSS after step 1": _above(phases, "first_optimizer_step", "VmRSS"),
            "RssAnon in no tensor after step 1": _untracked(weights, phases),
            "sampled peak anon": memory.get("cpu_peak_above_baseline_mib"),
            "sampled peak whole": memory.get("cpu_total_rss_above_baseline_mib")})
    return rows


def release_free_heap() -> bool:
    """Hand the C heap's free memory back to the system (glibc's `malloc_trim(0)`); True where it ran. Quantizing a
    checkpoint to 4 bits on a CPU frees its temporaries into the heap, where glibc kept them: measured on
    Qwen2.5-Coder-0.5B, 1,005-1,169 MiB of anonymous memory above the process before loading, of which this handed
    back 693-857 MiB (no tensor held it). Nothing that any tensor holds is touched."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return False
    if trim is None:  # not glibc (musl, macOS)
        return False
    trim(0)
    return True


COMPONENT_ROWS = {  # the components table's tensor rows: a label, and the memory_table columns it sums
    "frozen weights": ("frozen 4-bit packed", "frozen bf16", "frozen fp32"),
    "of which memory-mapped from the file": ("frozen file-backed",),
    "quantization state": ("quantization state",),
    "trained weights or adapters": ("trained weights", "adapters"),
    "gradients": ("gradients",),
    "optimizer states": ("optimizer states",),
}
PROCESS_ROWS = {  # then the process: its resident set at the first optimizer step (whole, and anonymous) and the
    # training phase's sampled peak above the process before loading
    "process after step 1 (VmRSS)": "VmRSS", "of which anonymous (RssAnon)": "RssAnon",
}


def components_by_arm(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The memory a training process holds, by component, one column per arm (`records`: an arm's label and a run
    record with `memory_components`), in whole MiB: tensor storages at the first optimizer step (memory_table), the
    whole process's resident set then, and the training peak above the process before loading."""
    tables = {arm: (row, record["memory_components"]["resident_set"].get("first_optimizer_step", {}))
              for arm, record in records.items() for row in memory_table([record])}
    rows = [{"component (MiB)": label, **{arm: round(sum(row[k] or 0.0 for k in keys))
                                            for arm, (row, _) in tables.items()}}
            for label, keys in COMPONENT_ROWS.items()]
    rows += [{"component (MiB)": label, **{arm: round(step[key]) if key in step else None
                                             for arm, (_, step) in tables.items()}}
             for label, key in PROCESS_ROWS.items()]
    rows.append({"component (MiB)": "training peak above the process before loading",
                 **{arm: round(row["sampled peak whole"]) if row["sampled peak whole"] is not None else None
                    for arm, (row, _) in tables.items()}})
    return rows
