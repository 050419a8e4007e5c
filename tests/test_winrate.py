"""AlpacaEval win rates: output format, both-order judging, alpaca-eval's metrics and the local judge."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pytest
from alpaca_eval.utils import make_prompts

from qlora_utils.errors import QLoraError
from qlora_utils.study import winrate
from qlora_utils.study.winrate import Judge, head_to_head, model_outputs, win_rate


@pytest.fixture(autouse=True)
def _offline_length_control(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(winrate, "_LC_REASON", "not computed: offline test")


class RuleJudge:
    """A stand-in for alpaca-eval's annotator: preference 1 if `rule(output_1, output_2)` says the first is better."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule

    def annotate_pairs(self, rows: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        return [{**r, "preference": 1.0 if self.rule(r["output_1"], r["output_2"]) else 2.0} for r in reversed(rows)]


INSTRUCTIONS = ["a", "b", "c", "d"]
REFERENCE = ["short", "short", "short", "a much longer answer"]
MODEL = ["a longer answer", "a longer answer", "a longer answer", "tiny"]


def test_model_outputs_have_alpacaeval_fields() -> None:
    rows = model_outputs([{"instruction": "Say hi", "dataset": "helpful_base"}], ["hi"], "me")
    assert rows == [{"instruction": "Say hi", "output": "hi", "generator": "me", "dataset": "helpful_base"}]
    with pytest.raises(QLoraError, match="2 outputs for 1 instructions"):
        model_outputs([{"instruction": "x"}], ["a", "b"], "me")


def test_a_judge_that_prefers_longer_answers_is_consistent() -> None:
    pairs = head_to_head(RuleJudge(lambda a, b: len(a) > len(b)), INSTRUCTIONS, REFERENCE, MODEL, "ref", "m", "rule")
    assert list(pairs["preference"]) == [2.0, 2.0, 2.0, 1.0]  # the model's answer is longer in the first three
    result = win_rate(pairs)
    assert result["win_rate"] == pytest.approx(75.0) and result["position_consistency"] == 1.0
    assert result["length_controlled_winrate"] is None and "offline" in result["length_controlled_note"]


def test_a_judge_that_always_picks_the_first_position_scores_fifty_and_is_never_consistent() -> None:
    pairs = head_to_head(RuleJudge(lambda a, b: True), INSTRUCTIONS, REFERENCE, MODEL, "ref", "m", "first")
    assert list(pairs["preference"]) == [1.5] * 4
    result = win_rate(pairs)
    assert result["win_rate"] == pytest.approx(50.0) and result["position_consistency"] == 0.0


def test_judge_specs_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(QLoraError, match="local:PRESET"):
        Judge("gpt4")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_CLIENT_CONFIG_PATH", raising=False)
    with pytest.raises(QLoraError, match="OPENAI_API_KEY"):
        Judge("openai:gpt-4-1106-preview").annotator()


def test_local_judge_through_alpaca_eval_matches_its_own_log_probabilities(tmp_path: Path) -> None:
    """alpaca-eval's annotator and logprob parser turn the judge's next-token probabilities of "m" (first output
    better) and "M" into preference = 2 - p(m) / (p(m) + p(M)); check one pair by hand, and the sanity pair."""
    import torch

    judge = Judge("local:tiny-qwen2")
    annotator = judge.annotator()
    instruction, first, second = "Name a colour.", "Blue.", "I like turtles."
    (preference,) = winrate.judge_pairs(annotator, [instruction], [first], [second])
    single = next(iter(annotator.annotators.values()))

    prompts, _ = make_prompts(pd.DataFrame({"instruction": [instruction], "output_1": [first], "output_2": [second]}),
                              template=single.prompt_template)
    local = judge.local
    assert local is not None and "Name a colour." in prompts[0]
    ids = torch.tensor([local.prompt_ids(prompts[0])])
    with torch.inference_mode():
        logits = local.loaded.model(input_ids=ids).logits[0, -1].float()
    p = torch.softmax(logits[[local.token_ids["m"], local.token_ids["M"]]], dim=0)[0].item()
    assert preference == pytest.approx(2 - p, abs=0.02)  # bf16 autocast in the judge, fp32 here
    sanity = winrate.sanity_pair(annotator, [instruction, "Say hi."], [first, "Hi!"])
    assert 0 < sanity["win_rate"] < 100 and sanity["n"] == 2 and not math.isnan(sanity["standard_error"])
    assert not list(tmp_path.iterdir()), "the judge's configuration file stays out of the working folder"


def test_local_judge_reuses_the_shared_prompt_opening_without_changing_the_scores() -> None:
    """Scoring after the shared opening run once gives the log-probabilities of each prompt run whole."""
    import torch

    judge = winrate.LocalJudge("tiny-qwen2")
    opening = judge.loaded.tokenizer.encode("You are a careful judge of answers. " * 8, add_special_tokens=False)
    ids = [opening + judge.loaded.tokenizer.encode(t, add_special_tokens=False) for t in ("first", "a second one")]
    cached = judge.next_token_logprobs(ids)
    marks = [judge.token_ids["m"], judge.token_ids["M"]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = [torch.log_softmax(judge.loaded.model(torch.tensor([seq])).logits[0, -1].float(), -1)[marks].tolist()
                 for seq in ids]
    for got, want in zip(cached, whole):
        assert got == pytest.approx(want, abs=0.05)


def _judged(consistency: list[float], sanity: list[float]) -> dict:
    return {"win_rates": [{"position_consistency": c} for c in consistency],
            "sanity_pair": {f"ref{i}": {"win_rate": s} for i, s in enumerate(sanity)}}


def test_judge_trust_is_mean_consistency_and_worst_sanity_gap():
    trust = winrate.judge_trust(_judged([0.2, 0.6], [47.0, 58.0]))
    assert trust["position_consistency"] == pytest.approx(40.0)
    assert trust["sanity_gap"] == pytest.approx(8.0)
    assert winrate.judge_trust(_judged([0.5], [40.0, 55.0]))["sanity_gap"] == pytest.approx(10.0), \
        "a sanity pair below 50 % is as far off as one above it"
    assert all(math.isnan(v) for v in winrate.judge_trust({}).values())


def test_better_judge_prefers_consistency_then_sanity():
    small, large = _judged([0.05, 0.0], [67.0]), _judged([0.7, 0.5], [55.0])
    assert winrate.better_judge([small, large]) is large
    tie_far, tie_near = _judged([0.5], [70.0]), _judged([0.5], [52.0])
    assert winrate.better_judge([tie_far, tie_near]) is tie_near
    first, second = _judged([0.5], [52.0]), _judged([0.5], [52.0])
    assert winrate.better_judge([first, second]) is first, "a tie on both goes to the first judge named"
    assert winrate.better_judge([{}, {"win_rates": []}]) is None
