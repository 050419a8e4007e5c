"""Label scoring, generation and SQuAD EM/F1 against hand-checked cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_utils.core.data import load_task
from qlora_utils.core.metrics import generate, score_candidates, squad_evaluate, squad_scores, sst2_accuracy
from qlora_utils.core.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-qwen3", "bf16")


def _manual_logprob(model, prompt: list[int], candidate: list[int]) -> float:
    """Score one unpadded sequence by hand: sum of log p(candidate token | everything before it)."""
    ids = torch.tensor([prompt + candidate])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    total = 0.0
    for i, token in enumerate(candidate):
        total += torch.log_softmax(logits[len(prompt) + i - 1], dim=-1)[token].item()
    return total


def test_label_scoring_agrees_with_a_hand_computed_example(tiny) -> None:
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]  # different lengths exercise the padding
    for candidates in ([[20], [30]], [[20, 21], [30], [40, 41, 42]]):  # one-token fast path and the general path
        scores = score_candidates(tiny.model, tiny.tokenizer, prompts, candidates, batch_size=2)
        for i, prompt in enumerate(prompts):
            for j, candidate in enumerate(candidates):
                assert scores[i, j].item() == pytest.approx(_manual_logprob(tiny.model, prompt, candidate), abs=0.05)


def test_sst2_accuracy_counts_agreement(tiny, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_task("sst2", "validation", n=10, seed=0, data_dir=data_dir)
    labels = list(data.dataset["label"])
    wanted = labels[:7] + [1 - y for y in labels[7:]]  # 7 of 10 right
    fake = torch.tensor([[0.0, 1.0] if w else [1.0, 0.0] for w in wanted])
    monkeypatch.setattr("qlora_utils.core.metrics.score_candidates", lambda *a, **k: fake)
    result = sst2_accuracy(tiny.model, tiny.tokenizer, data)
    assert result["accuracy"] == pytest.approx(0.7) and result["predictions"] == wanted
    assert sum(wanted) == 6 and result["predicted_positive_share"] == pytest.approx(0.6)  # 6 of 10 predicted positive


def test_squad_scores_on_hand_made_cases() -> None:
    assert squad_scores(["the cat"], [["cat"]]) == {"exact_match": 100.0, "f1": 100.0}  # articles are dropped
    scores = squad_scores(["a big dog"], [["dog"]])  # tokens big, dog vs dog: P 1/2, R 1, F1 2/3
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(200 / 3, abs=1e-3)
    assert squad_scores(["Paris!"], [["London", "paris"]])["exact_match"] == 100.0  # best gold, punctuation ignored
    assert squad_scores(["x", "y"], [["x"], ["z"]]) == {"exact_match": 50.0, "f1": 50.0}


def test_generation_is_greedy_and_batch_independent(tiny) -> None:
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]
    batched = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=5, batch_size=3)
    single = [generate(tiny.model, tiny.tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single and all(isinstance(t, str) for t in batched)


def test_squad_evaluate_keeps_every_prediction(tiny, data_dir: Path) -> None:
    data = load_task("squad", "validation", n=3, seed=0, data_dir=data_dir)
    result = squad_evaluate(tiny.model, tiny.tokenizer, data, max_new_tokens=4)
    assert result["n"] == 3 and len(result["examples"]) == 3
    assert 0.0 <= result["exact_match"] <= result["f1"] <= 100.0


def test_generation_runs_with_sdpa_and_gives_the_training_kernel_back(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from qlora_utils.core import metrics

    tiny.model.set_attn_implementation("eager")
    seen: list[str] = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: seen.append("sdpa") or original(*a, **k))
    out = generate(tiny.model, tiny.tokenizer, [[1, 2, 3]], max_new_tokens=3)
    assert seen and isinstance(out[0], str)  # SDPA computed the attention while generating
    assert tiny.model.config._attn_implementation == "eager"  # and the model is back on its own kernel
    seen.clear()
    with metrics.evaluating(tiny.model, tiny.tokenizer, "left"):
        tiny.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert not seen  # outside generation, eager attention
