"""AlpacaEval win rates with the `alpaca-eval` package's own pairwise annotator, judge prompt and metrics, and a
pluggable judge: a local Hugging Face model (offline) or an OpenAI-compatible endpoint (the official 2.0 judge).

Every pair is judged in both orders; the reported preference is the mean of the two, and the share of pairs whose
winner does not change with the order (position consistency) is reported beside the win rate, with a sanity pair
(a reference judged against itself, in one order: 50 % for a judge without position bias)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from ..core.design import MODE_NAMES
from ..errors import QLoraError
from ..locations import atomic_write_json

JUDGE_PROMPT_DIR = "alpaca_eval_clf_gpt4_turbo"  # AlpacaEval 2.0's judge prompt (answer "m" or "M")
OFFICIAL_JUDGE = "weighted_alpaca_eval_gpt4_turbo"  # the AlpacaEval 2.0 annotator configuration
PARSER = {"fn_completion_parser": "logprob_parser",
          "completion_parser_kwargs": {"numerator_token": "m", "denominator_tokens": ["m", "M"], "is_binarize": False},
          "completion_key": "completions_all", "batch_size": 1, "is_randomize_output_order": False}


def model_outputs(instructions: Sequence[dict[str, Any]], outputs: Sequence[str], generator: str) -> list[dict]:
    """Outputs in AlpacaEval's model-outputs format (instruction, output, generator, dataset)."""
    if len(instructions) != len(outputs):
        raise QLoraError(f"{len(outputs)} outputs for {len(instructions)} instructions")
    return [{"instruction": r["instruction"], "output": o, "generator": generator, "dataset": r.get("dataset")}
            for r, o in zip(instructions, outputs)]


class LocalJudge:
    """A local causal LM as judge: the next-token log-probabilities of "m" and "M" after AlpacaEval's judge prompt
    (rendered with the model's own chat template), returned in the OpenAI logprobs shape that alpaca-eval's
    `logprob_parser` reads. Called by alpaca-eval as its `fn_completions`."""

    def __init__(self, preset: str = "smollm2-135m-instruct", max_tokens: int = 2048, batch_size: int = 4) -> None:
        from ..core.models import load_model

        self.name, self.max_tokens, self.batch_size = preset, max_tokens, batch_size
        self.loaded = load_model(preset, "bf16")
        tok = self.loaded.tokenizer
        self.token_ids = {t: tok.encode(t, add_special_tokens=False)[0] for t in ("m", "M")}
        self.truncated = 0

    def clip(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """An output cut to its first max_tokens tokens (the judge's context and CPU time are small)."""
        ids = self.loaded.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text, False
        return self.loaded.tokenizer.decode(ids[:max_tokens]) + " …", True

    def prompt_ids(self, prompt: str) -> list[int]:
        """alpaca-eval's ChatML prompt as chat messages through the judge's template; over-long prompts keep their
        end (the question to the judge), and are counted in `truncated`."""
        from alpaca_eval.utils import prompt_to_chatml

        messages = [{"role": m["role"], "content": m["content"]} for m in prompt_to_chatml(prompt)]
        ids = self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]
        if len(ids) > self.max_tokens:
            self.truncated += 1
            ids = ids[-self.max_tokens:]
        return list(ids)

    def next_token_logprobs(self, ids: Sequence[list[int]]) -> list[list[float]]:
        """Log-probabilities of "m" and "M" after each prompt (`metrics.score_candidates`: the judge prompt's long
        shared opening runs once for all prompts)."""
        from ..core.metrics import score_candidates

        candidates = [[self.token_ids[t]] for t in ("m", "M")]
        return score_candidates(self.loaded.model, self.loaded.tokenizer, ids, candidates, self.batch_size,
                                desc=f"judge {self.name}").tolist()

    def __call__(self, prompts: Sequence[str], **_: Any) -> dict[str, list]:
        started = time.perf_counter()
        tokens = ["m", "M"]
        completions, texts = [], []
        for row in self.next_token_logprobs([self.prompt_ids(p) for p in prompts]):
            top = [{"token": t, "logprob": lp} for t, lp in zip(tokens, row)]
            best = max(top, key=lambda x: x["logprob"])
            completions.append({"logprobs": {"content": [{**best, "top_logprobs": top}]}, "text": best["token"]})
            texts.append(best["token"])
        per = (time.perf_counter() - started) / max(1, len(prompts))
        return {"completions": texts, "completions_all": completions, "price_per_example": [0.0] * len(prompts),
                "time_per_example": [per] * len(prompts)}


@dataclass
class Judge:
    """A judge specification: `local:PRESET` (a model preset, for example local:smollm2-135m-instruct) or
    `openai:MODEL` (an OpenAI-compatible endpoint: the official AlpacaEval 2.0 judge is openai:gpt-4-1106-preview;
    OPENAI_API_KEY, and OPENAI_BASE_URL for a local server)."""

    spec: str = "local:smollm2-135m-instruct"

    def __post_init__(self) -> None:
        kind, _, name = self.spec.partition(":")
        if kind not in ("local", "openai") or not name:
            raise QLoraError(f"judge {self.spec!r} not understood; use local:PRESET (for example "
                             f"local:smollm2-135m-instruct) or openai:MODEL (for example openai:gpt-4-1106-preview)")
        self.kind, self.model = kind, name
        self.local: LocalJudge | None = None

    def clip(self, text: str, max_tokens: int | None) -> tuple[str, bool]:
        """An output as the judge sees it: cut to max_tokens for a local judge, whole for an API judge."""
        if self.local is None or max_tokens is None:
            return text, False
        return self.local.clip(text, max_tokens)

    def annotator(self) -> Any:
        """alpaca-eval's PairwiseAnnotator with AlpacaEval 2.0's judge prompt and log-probability parser, with
        output order fixed (both orders are judged explicitly). Its configuration file (which names the prompt's
        path in site-packages) lives in a temporary folder, never in a run directory."""
        import alpaca_eval.constants as constants
        from alpaca_eval.annotators import PairwiseAnnotator

        entry: dict[str, Any] = {"prompt_template": str(constants.EVALUATORS_CONFIG_DIR / JUDGE_PROMPT_DIR
                                                        / "alpaca_eval_clf.txt"), **PARSER}
        kwargs: dict[str, Any] = {}
        if self.kind == "openai":
            if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_CLIENT_CONFIG_PATH"):
                raise QLoraError(f"judge {self.spec!r} needs OPENAI_API_KEY (and OPENAI_BASE_URL for a local "
                                 f"OpenAI-compatible server); offline, use a local judge such as "
                                 f"local:smollm2-135m-instruct")
            official = yaml.safe_load((constants.EVALUATORS_CONFIG_DIR / OFFICIAL_JUDGE / "configs.yaml").read_text())
            entry.update(fn_completions="openai_completions",
                         completions_kwargs={**official[OFFICIAL_JUDGE]["completions_kwargs"], "model_name": self.model})
        else:
            self.local = kwargs["fn_completions"] = LocalJudge(self.model)
        with tempfile.TemporaryDirectory(prefix="qlora-judge-") as config_dir:
            config = Path(config_dir) / "configs.yaml"
            config.write_text(yaml.safe_dump({self.name: entry}))
            return PairwiseAnnotator(annotators_config=str(config), caching_path=None, is_avoid_reannotations=False,
                                     **kwargs)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.model}".replace("/", "_")


def judge_pairs(annotator: Any, instructions: Sequence[str], first: Sequence[str],
                second: Sequence[str]) -> list[float]:
    """alpaca-eval preferences (1: the first output is better, 2: the second, 1.5: a draw; continuous with the
    log-probability judge), in the order given."""
    rows = [{"instruction": i, "output_1": a, "output_2": b} for i, a, b in zip(instructions, first, second)]
    annotated = annotator.annotate_pairs(rows)
    found = {(r["instruction"], r["output_1"], r["output_2"]): r["preference"] for r in annotated}
    return [float(found[(r["instruction"], r["output_1"], r["output_2"])]) for r in rows]


def head_to_head(annotator: Any, instructions: Sequence[str], baseline: Sequence[str], model: Sequence[str],
                 baseline_name: str, model_name: str, judge_name: str) -> pd.DataFrame:
    """Each pair judged in both orders. `preference` (alpaca-eval's convention: output_1 = the baseline, 2 = the
    model wins) is the mean of the two orders; `consistent` says whether both orders named the same winner."""
    forward = judge_pairs(annotator, instructions, baseline, model)
    backward = judge_pairs(annotator, instructions, model, baseline)
    df = pd.DataFrame({"instruction": list(instructions), "output_1": list(baseline), "output_2": list(model),
                       "generator_1": baseline_name, "generator_2": model_name, "annotator": judge_name,
                       "preference_baseline_first": forward, "preference_model_first": backward})
    mirrored = 3.0 - df["preference_model_first"]  # back into the baseline-first convention
    df["preference"] = (df["preference_baseline_first"] + mirrored) / 2
    df["consistent"] = np.sign(df["preference_baseline_first"] - 1.5) == np.sign(mirrored - 1.5)
    df["index"] = range(len(df))
    return df


def length_control_unavailable() -> str | None:
    """Why alpaca-eval cannot compute length-controlled win rates here (its GLM needs precomputed instruction
    difficulties, df_gamed.csv, from the tatsu-lab/alpaca_eval data set on the Hub), or None when it can."""
    global _LC_REASON
    from ..locations import offline

    if offline():
        return ("not computed: offline (a local data directory is configured), and alpaca-eval's length control "
                "needs df_gamed.csv from the Hub")
    if _LC_REASON is None:
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download("tatsu-lab/alpaca_eval", "df_gamed.csv", repo_type="dataset")
            _LC_REASON = ""
        except Exception as exc:  # offline: the download fails after its retries
            _LC_REASON = f"not computed: alpaca-eval needs df_gamed.csv from the Hub ({type(exc).__name__})"
    return _LC_REASON or None


_LC_REASON: str | None = None


def win_rate(pairs: pd.DataFrame, length_controlled: bool = True) -> dict[str, Any]:
    """alpaca-eval's win rate (with standard error, in percent) and, where the library can compute it, its
    length-controlled win rate; plus the judge's position consistency on these pairs."""
    from alpaca_eval.metrics import get_winrate
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    out: dict[str, Any] = {k: float(v) for k, v in get_winrate(pairs).items()}
    out["position_consistency"] = float(pairs["consistent"].mean())
    reason = length_control_unavailable() if length_controlled else "not requested"
    if reason is None:
        lc = get_length_controlled_winrate(pairs.copy(), save_weights_dir=None, is_warn_extreme_changes=False)
        out["length_controlled_winrate"] = float(lc["length_controlled_winrate"])
        out["lc_standard_error"] = float(lc["lc_standard_error"])
    else:
        out["length_controlled_winrate"], out["length_controlled_note"] = None, reason
    return out


def sanity_pair(annotator: Any, instructions: Sequence[str], reference: Sequence[str]) -> dict[str, Any]:
    """The reference judged against itself in one order, through the judge directly (alpaca-eval itself scores
    identical outputs as a draw without asking the judge): 50 % for a judge without position bias."""
    from alpaca_eval.metrics import get_winrate
    from alpaca_eval.utils import make_prompts

    single = next(iter(annotator.annotators.values()))
    df = pd.DataFrame({"instruction": list(instructions), "output_1": list(reference), "output_2": list(reference)})
    prompts, _ = make_prompts(df, template=single.prompt_template)
    completions = single.fn_completions(prompts=prompts, **single.completions_kwargs)
    prefs = [single.fn_completion_parser(c)[0] for c in completions[single.completion_key]]
    result = get_winrate([{"preference": p} for p in prefs])
    return {"win_rate": float(result["win_rate"]), "standard_error": float(result["standard_error"]), "n": len(prefs)}


def output_lengths(outputs: Sequence[str]) -> dict[str, float]:
    """Mean and median output length in characters and words."""
    chars = np.array([len(o) for o in outputs], dtype=float)
    words = np.array([len(o.split()) for o in outputs], dtype=float)
    return {"mean_chars": float(chars.mean()), "median_chars": float(np.median(chars)),
            "mean_words": float(words.mean())}


REFERENCES = {"text_davinci_003": "AlpacaEval 1.0 reference (text-davinci-003)",
              "gpt4_turbo": "AlpacaEval 2.0 reference (GPT-4 Turbo)"}


def run_winrates(systems: dict[str, list[dict[str, Any]]], judge: Judge, output_dir: str | os.PathLike[str],
                 references: Sequence[str] = tuple(REFERENCES), base: str | None = "base",
                 max_output_tokens: int | None = 256, data_dir: str | None = None, base_vs_references: bool = True,
                 sanity_examples: int | None = None) -> dict[str, Any]:
    """Judge every system (AlpacaEval-format outputs for the same instructions) against each reference (the base
    model too unless base_vs_references is False) and every other system against `base`, both orders each; a sanity
    pair per baseline on the first `sanity_examples` instructions (all when None). Writes annotations.json and
    metrics.json into output_dir."""
    from ..core.data import load_task
    from ..core.records import RunRecorder

    recorder = RunRecorder(Path(output_dir))
    started = time.perf_counter()
    names = list(systems)
    if not names:
        raise QLoraError("no systems to judge")
    instructions = [o["instruction"] for o in systems[names[0]]]
    for name in names[1:]:
        if [o["instruction"] for o in systems[name]] != instructions:
            raise QLoraError(f"system {name!r} answered other instructions than {names[0]!r}; every system must "
                             f"answer the same AlpacaEval subset in the same order")
    if base is not None and base not in systems:
        raise QLoraError(f"base system {base!r} not among the systems: {', '.join(names)}")
    annotator = judge.annotator()
    clipped = {"outputs": 0, "clipped": 0}

    def seen(outputs: Sequence[str]) -> list[str]:
        texts = [judge.clip(o, max_output_tokens) for o in outputs]
        clipped["outputs"] += len(texts)
        clipped["clipped"] += sum(c for _, c in texts)
        return [t for t, _ in texts]

    answers = {name: seen([o["output"] for o in outs]) for name, outs in systems.items()}
    rows, sanity, tables = [], {}, []
    matchups: list[tuple[str, list[str], str]] = []
    for ref in references:
        by_instruction = {r["instruction"]: r["output"] for r in load_task("alpaca_eval", ref, data_dir=data_dir).dataset}
        missing = [i for i in instructions if i not in by_instruction]
        if missing:
            raise QLoraError(f"{len(missing)} instructions have no {ref} reference, e.g. {missing[0][:60]!r}")
        ref_answers = seen([by_instruction[i] for i in instructions])
        matchups += [(ref, ref_answers, name) for name in names if base_vs_references or name != base]
    if base is not None:
        matchups += [(base, answers[base], name) for name in names if name != base]
    for baseline, baseline_answers, name in matchups:
        if baseline not in sanity:  # the baseline's answers against themselves: 50 % for an unbiased judge
            sanity[baseline] = sanity_pair(annotator, instructions[:sanity_examples],
                                           baseline_answers[:sanity_examples])
        pairs = head_to_head(annotator, instructions, baseline_answers, answers[name], baseline, name, judge.name)
        pairs["dataset"] = [o.get("dataset") for o in systems[name]]
        tables.append(pairs)
        rows.append({"system": name, "baseline": baseline, "n": len(pairs), **win_rate(pairs),
                     "sanity_pair_win_rate": sanity[baseline]["win_rate"]})
    record = {"experiment": "alpacaeval", "judge": {"spec": judge.spec, "name": judge.name,
                                                    "max_output_tokens": max_output_tokens if judge.local else None,
                                                    **clipped},
              "instructions": len(instructions), "win_rates": rows, "sanity_pair": sanity,
              "output_lengths": {name: output_lengths([o["output"] for o in outs]) for name, outs in systems.items()},
              "references": {ref: REFERENCES.get(ref, ref) for ref in references},
              "wall_seconds": round(time.perf_counter() - started, 1)}
    from ..core.environment import environment

    record["environment"] = environment()
    annotations = pd.concat(tables, ignore_index=True).drop(columns=["index"])
    atomic_write_json(Path(output_dir) / "annotations.json", annotations.to_dict(orient="records"))
    recorder.metrics(record)
    return record


MODEL_OUTPUTS, BASE_OUTPUTS = "model_outputs.json", "base_model_outputs.json"


def systems_from_runs(run_dirs: Sequence[str | os.PathLike[str]], base: str = "base") -> dict[str, list[dict]]:
    """The AlpacaEval-format outputs of instruction-tuning runs (rebuilt from their generations.json), by system
    name, the base model first when a run recorded its answers too."""
    from ..core.records import read_run

    systems: dict[str, list[dict]] = {}
    for path in map(Path, run_dirs):
        run = read_run(path)
        gens = run.generations()
        if run.status.get("state") != "done" or run.metrics.get("experiment") != "alpaca" or not gens:
            raise QLoraError(f"{path} is not a finished instruction-tuning run; run it first "
                             f"(python -m qlora_utils run PROFILE --only {path.name})")
        preset, mode = run.metrics["model"]["preset"], run.metrics["model"]["mode"]
        if base not in systems and gens[0].get("zero_shot") is not None:
            systems = {base: model_outputs(gens, [g["zero_shot"] for g in gens], f"{preset}-base"), **systems}
        systems[MODE_NAMES.get(mode, mode)] = model_outputs(gens, [g["fine_tuned"] for g in gens], f"{preset}-{mode}")
    return systems


def judge_trust(record: dict[str, Any]) -> dict[str, float]:
    """A win-rate run's judge trust: its mean position consistency over its comparisons (%) and its sanity pairs'
    largest distance from 50 % (points); NaN where the record has none."""
    consistency = [r["position_consistency"] for r in record.get("win_rates", [])
                   if r.get("position_consistency") is not None]
    gaps = [abs(v["win_rate"] - 50) for v in record.get("sanity_pair", {}).values() if v.get("win_rate") is not None]
    return {"position_consistency": 100 * float(np.mean(consistency)) if consistency else math.nan,
            "sanity_gap": max(gaps) if gaps else math.nan}


def better_judge(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Of win-rate records that judged the same pairs with different judges, the one to report (a rule fixed before
    the judges ran): the higher mean position consistency, then the sanity pair nearer 50 %, then the first."""
    def key(item: tuple[int, dict[str, Any]]) -> tuple[float, float, int]:
        trust = judge_trust(item[1])
        consistency, gap = trust["position_consistency"], trust["sanity_gap"]
        return (-consistency if not math.isnan(consistency) else math.inf,
                gap if not math.isnan(gap) else math.inf, item[0])

    judged = [(i, r) for i, r in enumerate(records) if r.get("win_rates")]
    return min(judged, key=key)[1] if judged else None


def winrate_table(record: dict[str, Any]) -> pd.DataFrame:
    """Every win rate of a win-rate run beside its judge, position consistency and sanity pair, for the book."""
    rows = []
    for r in record.get("win_rates", []):
        lc = r.get("length_controlled_winrate")
        rows.append({"system": r["system"], "against": REFERENCES.get(r["baseline"], r["baseline"]),
                     "win rate %": r["win_rate"], "± s.e.": r["standard_error"],
                     "length-controlled %": f"{lc:.1f}" if lc is not None else "not computed offline",
                     "judge": record["judge"]["spec"], "position consistency %": 100 * r["position_consistency"],
                     "sanity pair %": r["sanity_pair_win_rate"], "n": r["n"]})
    return pd.DataFrame(rows)
