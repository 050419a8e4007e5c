"""The shared opening run once: the same hidden states, gradients and label scores as running every row whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_utils.core.adapters import prepare_for_training
from qlora_utils.core.data import load_task
from qlora_utils.core.metrics import score_candidates, token_logprobs
from qlora_utils.core.models import load_model
from qlora_utils.core.prompts import SST2_LABELS, answer_ids, messages_for, prompt_ids, tokenize_for_training
from qlora_utils.speed.prefix import MIN_PREFIX, common_prefix, decoder_hidden, shared_length


def test_shared_length_stops_at_the_first_difference_padding_and_label() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 9, 9], [1, 2, 3, 4, 5, 7, 8, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]])
    assert shared_length(ids, mask) == 5
    labels = torch.full_like(ids, -100)
    labels[0, 5], labels[1, 6] = 6, 8  # the first label (column 5) is predicted from column 4: stop before it
    assert shared_length(ids, mask, labels) == 4
    assert shared_length(ids[:, :3], mask[:, :3]) == 0, f"a prefix shorter than {MIN_PREFIX} is not worth a pass"
    assert shared_length(ids, torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])) == 4, "padding is never shared"
    assert common_prefix([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 8]]) == 5
    assert common_prefix([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]) == 4, "at least one token of each prompt runs"
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == 0


def _batch(loaded, data_dir: Path, n: int = 8) -> dict[str, torch.Tensor]:
    from transformers import DataCollatorForSeq2Seq

    examples = tokenize_for_training(load_task("sst2", "train", n=n, seed=0, data_dir=data_dir), loaded.tokenizer,
                                     add_eos=False)
    return DataCollatorForSeq2Seq(loaded.tokenizer, padding=True)(list(examples))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_gives_the_same_hidden_states_and_gradients_in_fp32(data_dir: Path, checkpointing: bool) -> None:
    loaded = load_model("tiny-qwen2", "full")  # fp32: differences are rounding only
    model = prepare_for_training(loaded, None, gradient_checkpointing=checkpointing)
    model.train()
    batch = _batch(loaded, data_dir)
    prefix = shared_length(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert prefix > 10, "the chat template's system turn is shared"
    decoder = model.get_decoder()
    results = []
    for p in (0, prefix):
        model.zero_grad()
        hidden = decoder_hidden(decoder, batch["input_ids"], batch["attention_mask"], p)[:, prefix - p:]
        assert hidden.shape[1] == batch["input_ids"].shape[1] - prefix
        (hidden * batch["attention_mask"][:, prefix:, None]).pow(2).mean().backward()
        grads = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
        results.append((hidden.detach(), grads))
    (h0, g0), (h1, g1) = results
    mask = batch["attention_mask"][:, prefix:].bool()
    assert torch.allclose(h0[mask], h1[mask], atol=1e-4, rtol=1e-4)
    assert g0.abs().max() > 0 and torch.allclose(g0, g1, atol=1e-5, rtol=1e-3), (g0 - g1).abs().max()
    assert all(not layer.__dict__.get("_can_checkpoint_with_cache") for layer in decoder.layers), "flags restored"


def test_label_scores_equal_a_whole_forward_pass_per_prompt(data_dir: Path) -> None:
    loaded = load_model("tiny-qwen2", "full")
    tok = loaded.tokenizer
    records = load_task("sst2", "validation", n=12, seed=0, data_dir=data_dir).dataset
    prompts = [prompt_ids(tok, messages_for("sst2", r)) for r in records]
    labels = [answer_ids(tok, w, add_eos=False)[0] for w in SST2_LABELS]
    scores = score_candidates(loaded.model, tok, prompts, [[t] for t in labels], batch_size=5)
    with torch.no_grad():
        expected = torch.stack([torch.log_softmax(loaded.model(torch.tensor([p])).logits[0, -1].float(), -1)[labels]
                                for p in prompts])
    assert torch.allclose(scores, expected, atol=2e-2), (scores - expected).abs().max()  # bf16 autocast inside
    assert (scores.argmax(1) == expected.argmax(1)).all()


def test_token_logprobs_are_fp32_log_softmax_entries() -> None:
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 16)
    expected = torch.log_softmax(head(hidden), -1)[:, [7, 3]]
    assert torch.allclose(token_logprobs(head, hidden, [7, 3]), expected, atol=1e-5)
    head.to(torch.bfloat16)  # a bf16 head still gives fp32 label logits: no ties from bf16's coarse grid
    out = token_logprobs(head, hidden.to(torch.bfloat16), [7, 3])
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=0.1)
