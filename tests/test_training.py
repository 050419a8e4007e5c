"""A short QLoRA run on a tiny model really learns, and records what it did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlora_utils.core.adapters import LoraSettings, prepare_for_training
from qlora_utils.core.data import load_task
from qlora_utils.core.models import load_model
from qlora_utils.core.prompts import tokenize_for_training
from qlora_utils.core.training import TrainSettings, effective_optimizer, runtime_optimizer, train
from qlora_utils.errors import QLoraError


def _batch_loss(model, tokenizer, examples) -> float:
    from transformers import DataCollatorForSeq2Seq

    batch = DataCollatorForSeq2Seq(tokenizer, padding=True)(list(examples))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss.item()
    model.train()
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nf4", "bf16"])
def test_short_lora_run_lowers_the_loss_on_a_fixed_batch(tmp_path: Path, data_dir: Path, mode: str) -> None:
    loaded = load_model("tiny-qwen2", mode)
    examples = tokenize_for_training(load_task("sst2", "train", n=32, seed=0, data_dir=data_dir), loaded.tokenizer)
    model = prepare_for_training(loaded, LoraSettings(rank=8, placement="attention_mlp"))
    before = _batch_loss(model, loaded.tokenizer, examples.select(range(8)))
    result = train(model, loaded.tokenizer, examples, TrainSettings(learning_rate=5e-2, max_steps=12, batch_size=8,
                                                                     eval_steps=6), tmp_path,
                   eval_data=examples.select(range(8)), show_progress=False)
    after = _batch_loss(model, loaded.tokenizer, examples.select(range(8)))
    assert after < before - 0.5, (before, after)
    steps = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in steps] == list(range(1, 13))
    assert [h for h in result.history if "eval_loss" in h], "evaluation loss every eval_steps"
    seen = [h["tokens_seen"] for h in steps]
    assert seen == sorted(seen) and result.tokens == seen[-1] > 0
    n_real = sum(len(ids) for ids in examples["input_ids"])  # 12 steps of 8 = 3 passes over 32 examples
    assert result.tokens == 3 * n_real, "tokens/s counts non-padding tokens only"
    assert steps[0]["learning_rate"] < steps[-1]["learning_rate"] == pytest.approx(5e-2)  # warmup, then constant
    assert result.summary()["memory"]["cpu_peak_rss_mib"] > 0
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_full_fine_tuning_also_learns_with_cosine_decay_and_no_checkpointing(tmp_path: Path, data_dir: Path) -> None:
    loaded = load_model("tiny-qwen3", "full")
    examples = tokenize_for_training(load_task("sst2", "train", n=16, seed=0, data_dir=data_dir), loaded.tokenizer)
    model = prepare_for_training(loaded, None, gradient_checkpointing=False)
    assert not model.is_activation_checkpointing
    before = _batch_loss(model, loaded.tokenizer, examples.select(range(8)))
    result = train(model, loaded.tokenizer, examples, TrainSettings(learning_rate=1e-3, max_steps=6, batch_size=8,
                                                                     scheduler="cosine"), tmp_path, show_progress=False)
    assert _batch_loss(model, loaded.tokenizer, examples.select(range(8))) < before - 0.5
    rates = [h["learning_rate"] for h in result.history if "learning_rate" in h]
    peak = rates.index(max(rates))  # after the warmup step
    assert rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] < 0.1 * rates[peak], "cosine decays"


def test_a_non_finite_gradient_fails_the_run_at_its_step_naming_the_value(tmp_path: Path, data_dir: Path) -> None:
    """A learning rate far too high (SmolLM2-135M at 10: the gradient norm reached 6.6e10, then NaN from step 4, and
    the Trainer logged the loss as 0.0 after it; the run counted as done). Injected here: the gradients turn NaN from
    step 4. The run fails there, naming the step and the value, and trains no further."""
    from transformers import TrainerCallback

    loaded = load_model("tiny-qwen2", "bf16")
    examples = tokenize_for_training(load_task("sst2", "train", n=16, seed=0, data_dir=data_dir), loaded.tokenizer)
    model = prepare_for_training(loaded, LoraSettings(rank=4), gradient_checkpointing=False)
    steps = []

    class NaNGradientsFromStep4(TrainerCallback):
        def on_step_begin(self, args, state, control, **_) -> None:
            if state.global_step == 3:
                weight = next(p for p in model.parameters() if p.requires_grad)
                weight.register_hook(lambda grad: grad * float("nan"))

        def on_step_end(self, args, state, control, **_) -> None:
            steps.append(state.global_step)

    with pytest.raises(QLoraError) as caught:
        train(model, loaded.tokenizer, examples, TrainSettings(learning_rate=1e-3, max_steps=8, batch_size=4),
              tmp_path, show_progress=False, callbacks=[NaNGradientsFromStep4()])
    assert str(caught.value) == ("training diverged at step 4: the gradient norm is nan, not a finite number; lower "
                                 "the learning rate (a run that diverged so is never pooled)")
    assert steps == [1, 2, 3, 4], "training stops at the step that broke"


def test_a_finite_divergence_is_kept_and_a_non_finite_one_is_not() -> None:
    from qlora_utils.study.analysis import divergence_step
    from qlora_utils.core.training import non_finite

    finite = [{"step": 1, "loss": 0.7, "grad_norm": 1.2}, {"step": 2, "loss": 0.3, "grad_norm": 6.6e10},
              {"step": 3, "loss": 2.5, "grad_norm": 3e9}]
    assert [non_finite(h) for h in finite] == [None] * 3 and divergence_step(finite) == 3, "recorded, named"
    logged = finite[:2] + [{"step": 3, "loss": 0.2, "grad_norm": float("nan")}, {"step": 4, "loss": float("inf")}]
    assert [non_finite(h) for h in logged][2:] == [("gradient norm", pytest.approx(float("nan"), nan_ok=True)),
                                                   ("training loss", float("inf"))]


def test_paged_optimizer_on_cpu_is_the_same_adamw_from_torch() -> None:
    if torch.cuda.is_available():
        assert effective_optimizer("paged_adamw_32bit") == "paged_adamw_32bit"
        return
    assert runtime_optimizer("paged_adamw_32bit") == "adamw_torch_fused"
    assert "no paging" in effective_optimizer("paged_adamw_32bit")
    assert runtime_optimizer("paged_adamw_8bit") == "paged_adamw_8bit", "torch has no 8-bit AdamW"
    import bitsandbytes as bnb

    torch.manual_seed(0)
    start = torch.randn(64, 32)
    grads = [torch.randn(64, 32) for _ in range(3)]
    weights = []
    for make in (lambda p: bnb.optim.PagedAdamW32bit(p, lr=1e-2, weight_decay=0.01),
                 lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01, fused=True)):
        param = torch.nn.Parameter(start.clone())
        optimizer = make([param])
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        weights.append(param.detach())
    assert not torch.equal(weights[0], start)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)  # the same update, up to rounding


def test_bad_train_settings_are_refused() -> None:
    with pytest.raises(QLoraError, match="learning_rate must be positive"):
        TrainSettings(learning_rate=0)
    with pytest.raises(QLoraError, match="warmup_ratio"):
        TrainSettings(warmup_ratio=3)
    with pytest.raises(QLoraError, match="unknown scheduler 'cosin'.*cosine"):
        TrainSettings(scheduler="cosin")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nf4", "full"])
def test_the_lean_loss_gives_the_models_own_loss_and_training(tmp_path: Path, data_dir: Path, mode: str) -> None:
    """The LM head at the labelled positions only, and the shared opening run once: the same loss as the model's own,
    and the same training (LoRA dropout 0, so that the random masks are the same too)."""
    from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

    from qlora_utils.core.training import AnswerLossTrainer

    losses = {}
    for flags in ((False, False), (True, False), (True, True)):
        set_seed(0)
        loaded = load_model("tiny-qwen2", mode)
        examples = tokenize_for_training(load_task("sst2", "train", n=32, seed=0, data_dir=data_dir),
                                         loaded.tokenizer, add_eos=False)
        set_seed(0)
        model = prepare_for_training(loaded, None if mode == "full" else LoraSettings(rank=8, dropout=0.0))
        settings = TrainSettings(learning_rate=1e-2, max_steps=4, batch_size=8, head_on_labels_only=flags[0],
                                 share_prefix=flags[1])
        if any(flags):
            batch = DataCollatorForSeq2Seq(loaded.tokenizer, padding=True)(list(examples.select(range(8))))
            trainer = AnswerLossTrainer(model=model, args=TrainingArguments(str(tmp_path / "t"), bf16=True,
                                                                            use_cpu=True, report_to="none"),
                                        head_on_labels_only=flags[0], share_prefix=flags[1])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                own = model(**batch).loss.item()
                mine = trainer.compute_loss(model, batch).item()
            assert mine == pytest.approx(own, rel=1e-3)
        result = train(model, loaded.tokenizer, examples, settings, tmp_path / str(flags), show_progress=False)
        losses[flags] = result.train_losses()
    for flags, curve in losses.items():
        assert curve == pytest.approx(losses[False, False], rel=1e-2), (flags, losses)


@pytest.mark.slow
def test_the_lean_loss_under_accumulation_and_the_seed_reaching_the_trainer(tmp_path: Path, data_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With gradient accumulation the lean loss divides by the items of the whole accumulated batch, as the model's
    own does (else each step's loss doubles); the lean trainer runs whenever one rewrite is on; the training seed
    (data order, dropout) is the one the settings give."""
    from transformers import set_seed

    from qlora_utils.core.training import AnswerLossTrainer

    def curve(seed: int = 0, **flags: object) -> list[float]:
        set_seed(0)  # the same weights every time
        loaded = load_model("tiny-qwen2", "full")
        examples = tokenize_for_training(load_task("sst2", "train", n=16, seed=0, data_dir=data_dir),
                                         loaded.tokenizer, add_eos=False)
        model = prepare_for_training(loaded, None, gradient_checkpointing=False)
        settings = TrainSettings(learning_rate=1e-3, max_steps=2, batch_size=4, seed=seed, group_by_length=False,
                                 **{"head_on_labels_only": False, "share_prefix": False, **flags})
        losses = train(model, loaded.tokenizer, examples, settings, tmp_path / str(len(calls)),
                       show_progress=False).train_losses()
        assert torch.initial_seed() == seed
        return losses

    calls: list[int] = []
    lean_loss = AnswerLossTrainer.compute_loss
    monkeypatch.setattr(AnswerLossTrainer, "compute_loss", lambda *a, **k: (calls.append(1), lean_loss(*a, **k))[1])
    accumulated = {flags: curve(grad_accum=2, head_on_labels_only=flags, share_prefix=flags) for flags in (False, True)}
    assert accumulated[True] == pytest.approx(accumulated[False], rel=1e-2), accumulated
    calls.clear()
    curve(head_on_labels_only=True)
    assert calls, "the head on the labels alone runs the lean loss"
    assert curve(seed=0)[0] != curve(seed=1)[0], "another seed, another data order"
