"""Evaluation: label scoring (SST-2 accuracy), batched greedy generation, SQuAD exact match and F1 (torchmetrics)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torchmetrics.text import SQuAD
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..speed.dequant import prepared_once
from ..speed.prefix import common_prefix, decoder_hidden, prefix_cache
from ..speed.threads import follow
from .data import TaskData
from .prompts import SST2_LABELS, answer_ids, messages_for, prompt_ids
from .training import causal_lm


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, padding_side: str) -> Iterator[None]:
    """Eval mode, no grad, bf16 autocast (as in training), KV cache on, a padding side and, on CPUs without the fused
    kernels, frozen weights converted once instead of in every forward (`dequant.py`), all restored afterwards."""
    was_training, side = model.training, tokenizer.padding_side
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    tokenizer.padding_side = padding_side
    if config is not None:
        config.use_cache = True
    try:
        with torch.inference_mode(), torch.autocast(_device(model).type, dtype=torch.bfloat16), \
                prepared_once(model, _device(model)):
            yield
    finally:
        tokenizer.padding_side = side
        if config is not None:
            config.use_cache = use_cache
        model.train(was_training)


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """The model's attention implementation switched for a block and restored afterwards (a peft model's base)."""
    lm = causal_lm(model)
    before = lm.config._attn_implementation
    if before == implementation:
        yield
        return
    lm.set_attn_implementation(implementation)
    try:
        yield
    finally:
        lm.set_attn_implementation(before)


def _device(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters())


def _pad(tokenizer: PreTrainedTokenizerBase, sequences: Sequence[list[int]], device: torch.device) -> dict[str, Any]:
    return tokenizer.pad({"input_ids": list(sequences)}, return_tensors="pt").to(device)


SCORE_BATCH = 32  # prompts per scoring pass (no gradients: larger than a training batch)
GENERATE_BATCH = 8  # prompts per greedy-generation batch (measured: 32 was no faster on 2 cores, and batch
# composition moves bf16 greedy outputs)
GENERATE_ATTENTION = "sdpa"  # for greedy generation also on a CPU, where training and scoring use eager attention
# (`models.attention_implementation`). Measured with `speedup` on week6-instruct-qlora (same host, started together,
# runs/speedup): the tuned model's answers 218 -> 195 s, the base model's 133 -> 131 s, while the unchanged training
# took 176 and 169 s (the noise between the two sides).


def token_logprobs(head: torch.nn.Module, hidden: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities of a few tokens after each hidden state: their logits in fp32 (bf16 logits are coarse,
    0.125 apart near 20, enough to tie two labels), normalised by a log-sum-exp over the vocabulary."""
    weight = head.weight
    with torch.autocast(hidden.device.type, enabled=False):
        chosen = hidden.float() @ weight[list(token_ids)].float().T
        normaliser = torch.logsumexp(head(hidden.to(weight.dtype)).float(), dim=-1, keepdim=True)
    return chosen - normaliser


def score_candidates(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]],
                     candidates: Sequence[list[int]], batch_size: int = SCORE_BATCH,
                     desc: str = "scoring") -> torch.Tensor:
    """Log-likelihood of every candidate continuation after every prompt: a [len(prompts), len(candidates)] tensor.

    Each prompt + candidate is scored in one right-padded forward pass; the score is the sum of the candidate
    tokens' log-probabilities. When every candidate is one token, the prompt alone is run once, the opening all
    prompts share once for all of them (`prefix.py`), and the LM head only at each prompt's last position."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
    if order != list(range(len(prompts))):
        ordered = score_candidates(model, tokenizer, [prompts[i] for i in order], candidates, batch_size, desc)
        scores = torch.empty_like(ordered)
        scores[order] = ordered
        return scores
    device = _device(model)
    scores = torch.empty(len(prompts), len(candidates))
    if all(len(c) == 1 for c in candidates):  # one pass per prompt; the head at its last position only
        lm = causal_lm(model)
        decoder, head = lm.get_decoder(), lm.get_output_embeddings()
        shared = common_prefix(prompts)
        with evaluating(model, tokenizer, "right"):
            cache = prefix_cache(decoder, torch.tensor(prompts[0][:shared], device=device)) if shared else None
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
                follow()
                chunk = prompts[start:start + batch_size]
                batch = _pad(tokenizer, chunk, device)
                hidden = decoder_hidden(decoder, batch["input_ids"], batch["attention_mask"], shared, cache)
                last = batch["attention_mask"].sum(dim=1) - 1 - shared
                rows = hidden[torch.arange(len(chunk), device=device), last]
                scores[start:start + len(chunk)] = token_logprobs(head, rows, [c[0] for c in candidates]).cpu()
        return scores
    with evaluating(model, tokenizer, "right"):
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            follow()
            chunk = prompts[start:start + batch_size]
            seqs = [p + c for p in chunk for c in candidates]
            batch = _pad(tokenizer, seqs, device)
            logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)
            for row, (p, c) in enumerate((p, c) for p in chunk for c in candidates):
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=logprobs.device)
                token_ids = torch.tensor(c, device=logprobs.device)
                scores[start + row // len(candidates), row % len(candidates)] = \
                    logprobs[row, positions, token_ids].sum().item()
    return scores


def sst2_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: TaskData,
                  batch_size: int = SCORE_BATCH) -> dict[str, Any]:
    """SST-2 accuracy by comparing the likelihood of 'negative' and 'positive' after each prompt."""
    prompts = [prompt_ids(tokenizer, messages_for("sst2", r)) for r in data.dataset]
    candidates = [answer_ids(tokenizer, label, add_eos=False) for label in SST2_LABELS]
    scores = score_candidates(model, tokenizer, prompts, candidates, batch_size, desc="SST-2 label scoring")
    predictions = scores.argmax(dim=1).tolist()
    labels = list(data.dataset["label"])
    correct = sum(int(p == y) for p, y in zip(predictions, labels))
    return {"accuracy": correct / len(labels), "n": len(labels), "predictions": predictions,
            "predicted_positive_share": sum(predictions) / len(predictions)}


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[int]],
             max_new_tokens: int = 32, batch_size: int = GENERATE_BATCH, desc: str = "generating") -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding, decoded without special tokens, with
    SDPA attention (`GENERATE_ATTENTION`) whatever kernel training uses."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    if order != list(range(len(prompts))):
        ordered = generate(model, tokenizer, [prompts[i] for i in order], max_new_tokens, batch_size, desc)
        result = [""] * len(prompts)
        for position, index in enumerate(order):
            result[index] = ordered[position]
        return result
    device = _device(model)
    outputs: list[str] = []
    with evaluating(model, tokenizer, "left"), attention_kernel(model, GENERATE_ATTENTION):
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            follow()
            batch = _pad(tokenizer, prompts[start:start + batch_size], device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return outputs


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Official SQuAD v1.1 exact match and F1 (percent, max over gold answers), via torchmetrics."""
    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"text": list(a), "answer_start": [0] * len(a)}, "id": str(i)} for i, a in enumerate(answers)]
    result = SQuAD()(preds, target)
    return {"exact_match": float(result["exact_match"]), "f1": float(result["f1"])}


def squad_evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: TaskData,
                   max_new_tokens: int = 32, batch_size: int = GENERATE_BATCH) -> dict[str, Any]:
    """Greedy answers to SQuAD questions scored by EM/F1, with every prediction kept for error analysis."""
    prompts = [prompt_ids(tokenizer, messages_for("squad", r)) for r in data.dataset]
    predictions = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc="SQuAD generation")
    golds = [r["answers"]["text"] for r in data.dataset]
    per_example = [{"id": r["id"], "question": r["question"], "prediction": p, "answers": g,
                    **squad_scores([p], [g])} for r, p, g in zip(data.dataset, predictions, golds)]
    return {**squad_scores(predictions, golds), "n": len(predictions), "examples": per_example}
