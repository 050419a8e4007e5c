"""Command line of the study.

  run PROFILE      execute a profile's grid with papermill (resumable; --force, --only PATTERN, --jobs N,
                   --executor slurm|local: one scheduler job per run)
  status PROFILE   done / running / stale / failed / interrupted / partial / corrupt / missing, per run
  reproduce P RUN  re-run one finished run in a scratch folder; compare its numbers, losses and outputs
  bench            time training and scoring side by side with a reference recipe on identical work
  speedup P RUN    one run at an older commit and at this one, started together on this machine: new/old time
  pilot PROFILE    protocol v2's pilot: the study's size, the rates per arm, seeds by power, the grid's time
  validate [P...]  check profiles' parameters against the notebooks (all profiles by default)
  book             build the Jupyter Book for a profile into _build/html
  gpu-check        on a GPU: the planner's verdict rows trained for real, SST-2 and SQuAD end to end on CUDA
  plan             predict peak training memory of a model/mode/shape and whether it fits a GPU
  sst2|squad|alpaca  one experiment from the command line, printing its figures"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .core.data import TASKS
from .errors import QLoraError

# The model stack (torch, transformers, peft) takes seconds to import: each command imports what it uses, and the
# parser builds the options of the heavy commands (bench, plan, sst2|squad|alpaca, whose defaults come from the model
# modules) only when that command is asked for. `--help`, `status` and a grid's one-run runners start at once.


def positive_int(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argument that must be a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, where it has one (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def command(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose help shows the defaults."""
    return sub.add_parser(name, formatter_class=DefaultsShown, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand; with `only`, the options of the heavy subcommands are added only for
    that one (the others still parse their name and show their help line)."""
    from .grid.cluster import EXECUTORS

    def wanted(name: str) -> bool:
        return only is None or only == name

    parser = argparse.ArgumentParser(prog="python -m qlora_utils", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = command(sub, "run", help="execute a profile's grid (done runs are skipped)")
    run.add_argument("profile", help="profile name (profiles/NAME.yaml) or path")
    run.add_argument("--force", action="store_true", help="re-run runs that are done and current")
    run.add_argument("--only", action="append", metavar="PATTERN",
                     help="a run name to execute (a shell pattern, quoted: 'week2-*'); repeat the flag for more")
    run.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    run.add_argument("--jobs", type=positive_int, default=1, help="runs at once, each with cores/jobs threads")
    run.add_argument("--planned", action="store_true",
                     help="also run the profile's planned entries (committed before they run; skipped otherwise)")
    run.add_argument("--cores", type=positive_int, default=None,
                     help="cores the grid may use (default: all); --cores 1 on 2 cores leaves one for other work")
    run.add_argument("--allow-dirty", action="store_true",
                     help="run with uncommitted changes to tracked code (each run is marked +dirty and keeps the diff)")
    run.add_argument("--no-validate", action="store_true", help=argparse.SUPPRESS)  # children of --jobs
    run.add_argument("--executor", choices=EXECUTORS, default=None,
                     help="submit one job per run through submitit (slurm: sbatch with dependencies; local: local "
                          "processes) instead of running them here")
    run.add_argument("--partition", default=None, help="with --executor slurm: the partition to submit to")
    run.add_argument("--no-wait", action="store_true", help="with --executor: return once the jobs are submitted")
    bench = command(sub, "bench", help="time this project's training and scoring against a reference recipe")
    if wanted("bench"):
        _add_bench_options(bench)
    again = command(sub, "reproduce", help="re-run one finished run into a scratch folder and compare its outcome")
    again.add_argument("profile", help="profile name (profiles/NAME.yaml) or path")
    again.add_argument("run", help="run name, e.g. week2-qlora-seed0")
    again.add_argument("--allow-dirty", action="store_true",
                       help="re-run a run of the checked-out commit with uncommitted changes to tracked files")
    speed = command(sub, "speedup", help="one run at an older commit and at a newer one, started together "
                                           "(one thread each): both wall times and their ratio")
    speed.add_argument("profile", help="profile name (each commit's own profiles/NAME.yaml)")
    speed.add_argument("run", help="run name, e.g. week2-sweep-lr3e-4")
    speed.add_argument("--old", required=True, help="the earlier commit")
    speed.add_argument("--new", default="HEAD", help="the later commit")
    speed.add_argument("--output", default=None,
                       help="folder for both runs, their logs and speedup.json (default: a temporary folder)")
    status = command(sub, "status", help="list every run of a profile with its state")
    status.add_argument("profile", help="profile name (profiles/NAME.yaml) or path")
    pilot = command(sub, "pilot", help="protocol v2's pilot: sizes, the study's size, rates per arm, the grid's time")
    pilot.add_argument("profile", help="profile name (profiles/NAME.yaml) or path")
    validate = command(sub, "validate", help="check profiles against the notebooks' parameters cells")
    validate.add_argument("profiles", nargs="*", help="default: every profile in profiles/")
    book = command(sub, "book", help="build the Jupyter Book from a profile's runs")
    book.add_argument("--profile", default="cpu", help="profile whose committed runs the book shows")
    book.add_argument("--output", default=None, help="folder that receives _build/ (default: the repository)")
    book.add_argument("--no-strict", action="store_true", help="do not treat warnings as errors")
    book.add_argument("--partial", action="store_true",
                      help="build although some runs are not finished; the landing page names them")
    gpu = command(sub, "gpu-check", help="measure the CUDA code paths and the planner's verdicts on a GPU")
    gpu.add_argument("--output", required=True, help="folder of the checks' run records (resumable)")
    gpu.add_argument("--only", default=None, help="run only the checks whose name contains this")
    gpu.add_argument("--budget", type=positive_float, default=None,
                     help="seconds after which no further check starts")
    gpu.add_argument("--drop-models", action="store_true",
                     help="delete each random-weight model from the cache after its last check")
    plan = command(sub, "plan", help="predict peak training memory and whether it fits a GPU")
    if wanted("plan"):
        _add_plan_options(plan)
    for task in TASKS:
        _add_experiment_parser(sub, task, options=wanted(task))
    return parser


def _add_bench_options(bench: argparse.ArgumentParser) -> None:
    from .study.bench import VARIANTS

    bench.add_argument("--model", default="smollm2-135m-instruct", help="model preset name")
    bench.add_argument("--train-examples", type=positive_int, default=1000, help="SST-2 training sentences")
    bench.add_argument("--repeats", type=positive_int, default=2,
                       help="timed trainings of each side, alternating; the best counts")
    bench.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: one epoch)")
    bench.add_argument("--eval-examples", type=int, default=0, help="dev sentences to score (0: all 872)")
    bench.add_argument("--output", default="runs/adhoc/bench", help="folder for the trainers' scratch files")
    bench.add_argument("--variants", nargs="+", default=["project"], choices=list(VARIANTS),
                       help="the project's training with its speed-ups switched on one at a time (project: all on)")
    bench.add_argument("--no-noise-floor", action="store_true",
                       help="skip the second reference (the other attention kernel) that measures how far rounding alone moves "
                            "the per-step losses")


def _add_plan_options(plan: argparse.ArgumentParser) -> None:
    from .core.adapters import PLACEMENTS
    from .core.models import MODES

    plan.add_argument("--model", required=True, help="preset name, e.g. qwen3-8b or random-qwen2.5-7b")
    plan.add_argument("--mode", default="nf4", choices=MODES, help="nf4 (QLoRA), fp4, bf16 (16-bit LoRA) or full")
    plan.add_argument("--batch", type=positive_int, default=1, help="sequences per step")
    plan.add_argument("--seq", type=positive_int, default=512, help="tokens per sequence")
    plan.add_argument("--rank", type=positive_int, default=64, help="LoRA rank")
    plan.add_argument("--placement", default="attention_mlp", choices=sorted(PLACEMENTS), help="which layers get adapters")
    plan.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    plan.add_argument("--optimizer", default="paged_adamw_32bit", help="transformers optimizer name (its state's size)")
    plan.add_argument("--gpu-gib", type=positive_float, default=24.0, help="GPU memory to fit in (GiB)")


def _add_experiment_parser(sub: argparse._SubParsersAction, task: str, options: bool = True) -> None:
    what = {"sst2": "accuracy before/after", "squad": "exact match and F1 before/after",
            "alpaca": "AlpacaEval answers before/after (judge them with a winrates run)"}[task]
    p = command(sub, task, help=f"fine-tune on {task} and report {what}, memory and throughput")
    if not options:
        return
    from .core.adapters import PLACEMENTS, LoraSettings
    from .study.experiments import Experiment
    from .core.models import MODES

    exp, lora = Experiment(), LoraSettings()  # the defaults are the dataclasses': set once, there
    p.add_argument("--model", default=exp.preset, help="model preset name")
    p.add_argument("--mode", default=exp.mode, choices=MODES, help="nf4 (QLoRA), fp4, bf16 (16-bit LoRA) or full")
    p.add_argument("--rank", type=positive_int, default=lora.rank, help="LoRA rank")
    p.add_argument("--alpha", type=positive_int, default=lora.alpha, help="LoRA alpha (scale alpha / rank)")
    p.add_argument("--dropout", type=float, default=lora.dropout, help="LoRA dropout")
    p.add_argument("--placement", default=lora.placement, choices=sorted(PLACEMENTS), help="which layers get adapters")
    p.add_argument("--train-examples", type=positive_int, default=exp.train_examples, help="training records")
    p.add_argument("--eval-examples", type=int, default=0, help="evaluation records (0, the default: the whole "
                   "validation split)")
    p.add_argument("--max-length", type=int, default=None, help="drop training examples longer than this")
    p.add_argument("--lr", type=positive_float, default=exp.train.learning_rate, help="peak learning rate")
    p.add_argument("--scheduler", default=exp.train.scheduler,
                   help="learning-rate schedule after warmup (the QLoRA paper's constant; the cpu profile uses cosine)")
    p.add_argument("--no-checkpointing", action="store_true", help="train without gradient checkpointing")
    p.add_argument("--batch-size", type=positive_int, default=exp.train.batch_size, help="sequences per step")
    p.add_argument("--epochs", type=positive_float, default=exp.train.epochs, help="passes over the training records")
    p.add_argument("--seed", type=int, default=exp.train.seed, help="seed of data order, adapters and dropout")
    p.add_argument("--data-dir", default=None, help="local data directory (default: $QLORA_DATA_DIR, else the Hub)")
    p.add_argument("--output", default=f"runs/adhoc/{task}", help="folder for metrics.json, history.json, adapter")


PIPE_CLOSED = 141  # 128 + SIGPIPE: how a Unix tool ends when the reader of its output went away


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad inputs end with one line on stderr and exit status 2; Ctrl-C and SIGTERM with one line and
    130; output into a pipe whose reader went away (`| head -3`) ends quietly, as Unix tools do, with 141."""
    try:
        try:
            return _command(argv)
        finally:
            sys.stdout.flush()  # here, where a reader that left is caught, not in the interpreter's last flush
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # nothing more reaches the pipe, the last flush included
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PIPE_CLOSED


def _command(argv: list[str] | None) -> int:
    """Parse the command line and run the command (see `main`)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=argv[0] if argv else "").parse_args(argv)
    try:
        if args.command in ("run", "status", "validate", "pilot"):
            from .grid.profiles import available_profiles, load_profile, validate_profile
            from .grid.runner import run_profile, state_detail, status
        if args.command == "run" and not args.executor and (args.partition or args.no_wait):
            raise QLoraError("--partition and --no-wait apply to jobs submitted with --executor (local or slurm); "
                             "add --executor slurm, or leave them out to run here")
        if args.command == "run" and args.executor:
            from .grid.cluster import JobSettings, submit_profile

            if args.force or args.jobs != 1 or args.keep_going:
                raise QLoraError("--executor submits every run that is not done as its own job: --force, --jobs and "
                                 "--keep-going do not apply (resources come from the profile's `cluster:` block)")
            profile = load_profile(args.profile)
            submitted = submit_profile(profile, args.executor, JobSettings.from_profile(profile,
                                                                                        partition=args.partition),
                                       only=args.only, allow_dirty=args.allow_dirty, wait=not args.no_wait)
            for name, job in submitted.items():
                print(f"{name:45s} {job if not job.isdigit() and '_' not in job else 'job ' + job}")
            if not args.no_wait:
                states = dict(status(profile))
                bad = {n: states[n] for n in submitted if states[n] != "done"}
                for name, state in bad.items():
                    print(f"{name:45s} ended {state}: see `python -m qlora_utils status {args.profile}`")
                return 1 if bad else 0
        elif args.command == "run":
            results = run_profile(load_profile(args.profile), force=args.force, only=args.only,
                                  keep_going=args.keep_going, jobs=args.jobs, cores=args.cores,
                                  planned=args.planned,
                                  validate=not args.no_validate, allow_dirty=args.allow_dirty)
            for name, outcome in results.items():
                print(f"{name:45s} {outcome}")
            if any(o.startswith("failed") for o in results.values()):
                return 1
        elif args.command == "bench":
            from .study.bench import BenchSettings, run_bench, table

            result = run_bench(BenchSettings(preset=args.model, train_examples=args.train_examples,
                                             repeats=args.repeats, max_steps=args.max_steps,
                                             eval_examples=args.eval_examples, variants=tuple(args.variants),
                                             noise_floor=not args.no_noise_floor),
                               args.output)
            print(table(result).to_string(index=False, float_format="{:.2f}".format))
            print(f"{result['threads']} torch thread(s); the load is the highest 1-minute load average before a timed "
                  "training of that row")
        elif args.command == "reproduce":
            import tempfile

            from .grid.profiles import load_profile
            from .grid.reproduce import reproduce

            with tempfile.TemporaryDirectory(prefix="qlora-reproduce-") as scratch:
                found = reproduce(load_profile(args.profile), args.run, Path(scratch), allow_dirty=args.allow_dirty)
            for line in found.differences:
                print(f"differs: {line}")
            print(found.machines)
            print(f"{args.run}: " + ("reproduced exactly (headline numbers, per-step losses, every per-example output)"
                                     if not found.differences else f"{len(found.differences)} difference(s)"))
            if found.differences:
                return 1
        elif args.command == "speedup":
            import tempfile

            from .grid.speedup import describe, side_by_side

            with tempfile.TemporaryDirectory(prefix="qlora-speedup-") as scratch:
                result = side_by_side(args.profile, args.run, args.old, args.new, Path(args.output or scratch))
            print(describe(result))
        elif args.command == "status":
            profile = load_profile(args.profile)
            states = status(profile)
            from .grid.cluster import describe, job_records
            from .core.records import STATES

            jobs = job_records(profile)
            for entry, (name, state) in zip(profile.entries, states):
                detail = "; ".join(filter(None, [state_detail(profile, entry, state),
                                                 describe(jobs[name]) if name in jobs else ""]))
                print(f"{name:45s} {state}" + (f"  {detail}" if detail else ""))
            counts = {s: sum(1 for _, x in states if x == s) for s in STATES}
            print(f"{profile.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        elif args.command == "pilot":
            from .study.pilot import report
            from .core.records import read_runs

            print(report(read_runs(load_profile(args.profile).runs_dir())))
        elif args.command == "validate":
            for name in args.profiles or available_profiles():
                profile = load_profile(name)
                validate_profile(profile)
                print(f"{profile.name}: {len(profile.entries)} runs valid")
        elif args.command == "book":
            from .book.build import build_book

            html = build_book(args.profile, args.output, strict=not args.no_strict, partial=args.partial)
            print(f"book built: {html / 'index.html'}")
        elif args.command == "gpu-check":
            from .study.gpucheck import run_checks

            rows = run_checks(args.output, only=args.only, budget_seconds=args.budget, drop_models=args.drop_models)
            print(json.dumps(rows, indent=1))
            return 0 if all(r["state"].startswith("done") for r in rows) else 1
        elif args.command == "plan":
            from .core.adapters import LoraSettings
            from .study.inventory import config_of
            from .study.planner import plan_memory, verdict

            lora = None if args.mode == "full" else LoraSettings(rank=args.rank, placement=args.placement)  # the plan's α
            memory = plan_memory(config_of(args.model), args.mode, lora, args.batch, args.seq,
                                 not args.no_checkpointing, args.optimizer)
            for row in memory.table():
                print(f"{row['component']:24s} {row['GiB']:8.2f} GiB")
            fit = verdict(memory, args.gpu_gib)
            word = "fits" if fit["fits"] else "does not fit"
            print(f"{args.model} {args.mode}: {word} in {args.gpu_gib:g} GiB (margin {fit['margin GiB']:+.2f} GiB, "
                  "1 GiB kept for the CUDA context)")
        elif args.command in TASKS:
            from .core.adapters import LoraSettings
            from .study.experiments import Experiment
            from .core.training import TrainSettings

            lora = None if args.mode == "full" else LoraSettings(args.rank, args.alpha, args.dropout, args.placement)
            exp = Experiment(task=args.command, preset=args.model, mode=args.mode, lora=lora,
                             train_examples=args.train_examples, eval_examples=args.eval_examples,
                             max_length=args.max_length, data_dir=args.data_dir,
                             gradient_checkpointing=not args.no_checkpointing,
                             train=TrainSettings(learning_rate=args.lr, batch_size=args.batch_size,
                                                 epochs=args.epochs, seed=args.seed, scheduler=args.scheduler))
            record = _run_replacing(exp, Path(args.output))
            print(json.dumps(_headline(record), indent=2))
    except QLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        import gc
        import logging

        # an interrupted notebook client leaves a task whose kernel died: finalize it now, silently, so that this
        # message stays the last line
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None  # nor an "Exception ignored in" traceback of what is collected
        gc.collect()
        print("interrupted: the runs in progress are recorded as interrupted; finished runs are kept. Run the same "
              "command again to resume.", file=sys.stderr)
        return 130
    return 0


def _run_replacing(exp: Any, output: Path) -> dict:
    """Run an ad-hoc experiment in a fresh staging folder that replaces `output` only once it has finished: nothing
    of an earlier run into the same folder mixes with this one's files, and an interrupted run leaves the earlier
    one intact (its attempt stays in the hidden staging folder beside it)."""
    import shutil

    from .study.experiments import run_experiment
    from .core.records import replace_run, staging_dir

    staging = staging_dir(output)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    record = run_experiment(exp, staging)
    replace_run(staging, output)
    return record


def _headline(record: dict) -> dict:
    """What the command line prints: the run's headline numbers, then how it trained."""
    from .study.analysis import headline

    training = record["training"]
    return {**headline(record), "eval_examples": record["fine_tuned"]["n"], "optimizer": training["optimizer"],
            "train_peak_memory": training["memory"], "wall_seconds": record["wall_seconds"]}


if __name__ == "__main__":
    sys.exit(main())
