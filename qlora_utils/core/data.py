"""Data loaders for SST-2, SQuAD v1.1, Alpaca 52K and AlpacaEval: from the Hugging Face Hub by default, from a local
directory laid out like ../shared/data when one is configured (io.DATA_DIR_WAYS)."""

from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from ..errors import DataUnavailableError, QLoraError
from ..locations import DATA_DIR_ENV, DATA_DIR_WAYS, DATA_LAYOUT, data_dir as resolve_data_dir

TASKS = ("sst2", "squad", "alpaca")  # the tasks a run fine-tunes on (AlpacaEval is only judged)

PathLike = str | os.PathLike[str]


def _read_sst2(path: Path) -> list[dict[str, Any]]:
    """SST-2 as TSV with a `sentence` and a `label` (0 or 1) column; a bad row is named by file and line."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if rows.fieldnames is None or not {"sentence", "label"} <= set(rows.fieldnames):
            raise QLoraError(f"{path}: line 1 must be the header `sentence<TAB>label`, found {rows.fieldnames!r}")
        records = []
        for line, row in enumerate(rows, start=2):
            sentence, label = row.get("sentence"), (row.get("label") or "").strip()
            if sentence is None or not sentence.strip() or label not in ("0", "1"):
                raise QLoraError(f"{path}, line {line}: a row needs a sentence and a label 0 or 1, found "
                                 f"sentence={sentence!r}, label={row.get('label')!r}; fix or remove the row")
            records.append({"sentence": sentence.strip(), "label": int(label)})
    if not records:
        raise QLoraError(f"{path} holds no records (only a header, or nothing)")
    return records


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise QLoraError(f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from None


def _read_squad(path: Path) -> list[dict[str, Any]]:
    """SQuAD v1.1 JSON (data → paragraphs → qas with answers); a bad question is named by its place."""
    records = []
    content = _load_json(path)
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise QLoraError(f"{path}: not SQuAD v1.1 JSON (expected an object with a `data` list of articles)")
    for a, article in enumerate(content["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                try:
                    records.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                                    "question": qa["question"],
                                    "answers": {"text": [x["text"] for x in qa["answers"]],
                                                "answer_start": [x["answer_start"] for x in qa["answers"]]}})
                except (KeyError, TypeError) as exc:
                    raise QLoraError(f"{path}: article {a}, paragraph {p}, question {q} lacks {exc}") from None
    if not records:
        raise QLoraError(f"{path} holds no questions")
    return records


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    """A JSON list of records (Alpaca, AlpacaEval)."""
    content = _load_json(path)
    if not isinstance(content, list) or not content or not all(isinstance(r, dict) for r in content):
        raise QLoraError(f"{path}: expected a non-empty JSON list of records")
    return content


def _hub_dataset(repo: str, split: str, config: str | None = None) -> Callable[[], datasets.Dataset]:
    return lambda: datasets.load_dataset(repo, config, split=split)


def _hub_json(repo: str, filename: str) -> Callable[[], datasets.Dataset]:
    def load() -> datasets.Dataset:
        from huggingface_hub import hf_hub_download

        return datasets.Dataset.from_list(_read_json_list(Path(hf_hub_download(repo, filename, repo_type="dataset"))))
    return load


@dataclass(frozen=True)
class _Source:
    local: str  # path relative to the data directory
    reader: Callable[[Path], list[dict[str, Any]]]
    hub: str  # description of the Hub source
    hub_loader: Callable[[], datasets.Dataset]


SOURCES: dict[tuple[str, str], _Source] = {
    ("sst2", "train"): _Source("sst2/train.tsv", _read_sst2, "stanfordnlp/sst2 (train)",
                               _hub_dataset("stanfordnlp/sst2", "train")),
    ("sst2", "validation"): _Source("sst2/dev.tsv", _read_sst2, "stanfordnlp/sst2 (validation)",
                                    _hub_dataset("stanfordnlp/sst2", "validation")),
    ("squad", "train"): _Source("squad_v1.1/train-v1.1.first11articles.json", _read_squad,
                                "rajpurkar/squad (train)", _hub_dataset("rajpurkar/squad", "train")),
    ("squad", "validation"): _Source("squad_v1.1/dev-v1.1.json", _read_squad, "rajpurkar/squad (validation)",
                                     _hub_dataset("rajpurkar/squad", "validation")),
    ("alpaca", "train"): _Source("alpaca_train/alpaca_data.json", _read_json_list, "tatsu-lab/alpaca (train)",
                                 _hub_dataset("tatsu-lab/alpaca", "train")),
    # AlpacaEval: the 805 instructions with the reference outputs of AlpacaEval 1.0 and 2.0.
    ("alpaca_eval", "text_davinci_003"): _Source(
        "alpaca_eval/text_davinci_003_model_outputs.json", _read_json_list, "tatsu-lab/alpaca_eval alpaca_eval.json",
        _hub_json("tatsu-lab/alpaca_eval", "alpaca_eval.json")),
    ("alpaca_eval", "gpt4_turbo"): _Source(
        "alpaca_eval/gpt4_turbo_model_outputs.json", _read_json_list,
        "tatsu-lab/alpaca_eval alpaca_eval_gpt4_baseline.json",
        _hub_json("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")),
}
# The published number of records of each evaluation split (the same locally and on the Hub): profiles are checked
# against them before a run starts, so an eval_examples larger than its split fails there, not hours into a grid.
EVAL_SIZES = {("sst2", "validation"): 872, ("squad", "validation"): 10570, ("alpaca_eval", "text_davinci_003"): 805,
              ("alpaca_eval", "gpt4_turbo"): 805}
# The published number of records of each training split on the Hub. A configured data directory's file is counted
# instead (once), as it may hold fewer: the SQuAD train file beside the checkout keeps the first 11 articles.
TRAIN_SIZES = {"sst2": 67349, "squad": 87599, "alpaca": 52002}
COLUMNS = {"sst2": ["sentence", "label"], "squad": ["id", "title", "context", "question", "answers"],
           "alpaca": ["instruction", "input", "output"],
           "alpaca_eval": ["instruction", "output", "generator", "dataset"]}


@dataclass
class TaskData:
    """A loaded (and possibly subsampled) split, with where it came from and how many records were read."""

    task: str
    split: str
    dataset: datasets.Dataset
    source: str
    n_available: int
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        """Provenance for a run record and a one-line summary."""
        return {"task": self.task, "split": self.split, "source": self.source, "records_read": self.n_available,
                "records_used": len(self.dataset), "sample_seed": self.seed}

    def __str__(self) -> str:
        sample = f", sampled {len(self)} with seed {self.seed}" if self.seed is not None else ""
        return f"{self.task}/{self.split}: read {self.n_available} records from {self.source}{sample}"


def load_task(task: str, split: str, *, n: int | None = None, seed: int = 0, stratify_by: str | None = None,
              data_dir: PathLike | None = None) -> TaskData:
    """Load a task split (local directory if configured, else the Hub) and optionally take n records by seed."""
    if (task, split) not in SOURCES:
        known = ", ".join(f"{t}/{s}" for t, s in SOURCES)
        raise QLoraError(f"unknown task split {task}/{split}; known: {known}")
    spec = SOURCES[(task, split)]
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / spec.local
        if not path.is_file():
            raise DataUnavailableError(f"{path} is missing: the data directory {root} must hold {spec.local}, "
                                       f"{DATA_LAYOUT}")
        ds = datasets.Dataset.from_list(spec.reader(path))
        source = f"local:{spec.local}"  # relative to the data directory: no machine path in a run record
    else:
        try:
            ds = spec.hub_loader()
        except Exception as exc:  # offline, rate limits, missing credentials: all end here with one message
            raise DataUnavailableError(
                f"could not load {task}/{split} from the Hugging Face Hub ({spec.hub}): {type(exc).__name__}: "
                f"{str(exc)[:200]}. To read a local copy instead, name a folder {DATA_LAYOUT} ({DATA_DIR_WAYS})"
                ) from exc
        ds = ds.map(lambda r: {"sentence": r["sentence"].strip()}) if task == "sst2" else ds
        source = f"hub:{spec.hub}"
    if missing := [c for c in COLUMNS[task] if c not in ds.column_names]:
        raise QLoraError(f"{source}: the records lack the column(s) {missing} that {task} needs")
    ds = ds.select_columns(COLUMNS[task])
    data = TaskData(task, split, ds, source, len(ds))
    print(data)
    return data if n is None else subsample(data, n, seed, stratify_by)


# Model selection needs data that reports no score: a fixed, seeded part of SST-2's training set, never trained on.
SELECTION_SEED = 20230523  # the QLoRA paper's arXiv date; fixed once, the same for every run
SELECTION_SIZE = 500


def at_least_words(data: TaskData, min_words: int) -> TaskData:
    """The SST-2 items of at least `min_words` words (the training set is mostly short phrases, median 7 words; the
    dev set whole sentences, median 19, 90 % of them 9 words or more), named as such in the split."""
    if not min_words:
        return data
    kept = data.dataset.filter(lambda r: len(r["sentence"].split()) >= min_words)
    return TaskData(data.task, f"{data.split} (items of {min_words}+ words)", kept, data.source, data.n_available)


def split_for_selection(data: TaskData, size: int = SELECTION_SIZE,
                        seed: int = SELECTION_SEED) -> tuple[TaskData, TaskData]:
    """(training pool, selection split): `size` records of a training split set aside by a fixed seed, disjoint from
    the pool that training examples are drawn from. The dev set that reports the score is never used to choose."""
    if not 0 < size < len(data.dataset):
        raise QLoraError(f"cannot set aside {size} of the {len(data.dataset)} records of {data.task}/{data.split}")
    order = np.random.default_rng(seed).permutation(len(data.dataset))
    held, pool = sorted(int(i) for i in order[:size]), sorted(int(i) for i in order[size:])
    return (TaskData(data.task, data.split, data.dataset.select(pool), data.source, len(pool)),
            TaskData(data.task, f"{data.split} (selection split)", data.dataset.select(held), data.source, size, seed))


@functools.cache
def _records_in(path: Path, task: str, min_words: int = 0) -> int:
    records = SOURCES[(task, "train")].reader(path)
    return sum(len(r["sentence"].split()) >= min_words for r in records) if min_words else len(records)


def train_pool(task: str, min_words: int = 0) -> tuple[int, str, int | None]:
    """How many records a run of the task can draw its training examples from (the training split, less SST-2's
    selection split; with `min_words`, SST-2's items of that many words only), where that number comes from (the data
    directory's file, counted once, else the Hub's published size), and how many the Hub would give when the local
    file holds fewer (else None). A data directory that is missing or incomplete counts as the Hub here: the runner
    names what is missing; the Hub's count of long items is not known, so it is not checked there."""
    spec, aside = SOURCES[(task, "train")], SELECTION_SIZE if task == "sst2" else 0
    less = f", less the {aside}-sentence selection split" if aside else ""
    value = os.environ.get(DATA_DIR_ENV)
    local = Path(value).expanduser() / spec.local if value else None
    if min_words and local is not None and local.is_file():
        size = _records_in(local.resolve(), task, min_words)
        return size - aside, f"{spec.local} in ${DATA_DIR_ENV} holds {size} items of {min_words}+ words{less}", None
    if local is None or not local.is_file():
        return TRAIN_SIZES[task] - aside, f"{spec.hub} on the Hub holds {TRAIN_SIZES[task]}{less}", None
    size = _records_in(local.resolve(), task)
    hub = TRAIN_SIZES[task] - aside if TRAIN_SIZES[task] > size else None
    return size - aside, f"{spec.local} in ${DATA_DIR_ENV} holds {size}{less}", hub


def subsample(data: TaskData, n: int, seed: int, stratify_by: str | None = None) -> TaskData:
    """n records chosen deterministically by seed; with stratify_by, in proportion to that column's groups."""
    if not 0 < n <= len(data.dataset):
        raise QLoraError(f"cannot take {n} records from {data.task}/{data.split}: {len(data.dataset)} are available "
                         f"from {data.source}")
    rng = np.random.default_rng(seed)
    if stratify_by is None:
        indices = rng.permutation(len(data.dataset))[:n]
    else:
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(data.dataset[stratify_by]):
            groups.setdefault(key, []).append(i)
        quotas = {k: n * len(v) / len(data.dataset) for k, v in groups.items()}
        counts = {k: int(q) for k, q in quotas.items()}
        for k in sorted(quotas, key=lambda k: quotas[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
            counts[k] += 1  # largest remainders get the leftover slots
        indices = np.concatenate([rng.permutation(groups[k])[: counts[k]] for k in sorted(groups, key=str)])
    ds = data.dataset.select(sorted(int(i) for i in indices))
    return TaskData(data.task, data.split, ds, data.source, data.n_available, seed)
