"""The ``medfm`` command: one verb per job.

Errors medfm raises on purpose (bad config, unreadable file, broken checkpoint)
are printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medfm import __version__
from medfm.errors import MedfmError
from medfm.keys import Modality


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except MedfmError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medfm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medfm {__version__}")
    verbs = parser.add_subparsers(metavar="VERB")

    run = verbs.add_parser("run", help="run an end-to-end pipeline (pipelines/*.yaml)")
    run.add_argument("pipeline", type=Path)
    run.add_argument("--fresh", action="store_true", help="train from scratch even if a checkpoint exists")
    run.set_defaults(func=_run)

    pretrain = verbs.add_parser("pretrain", help="pretrain a pipeline's model on its train split "
                                                 "(one process, or every rank under torchrun)")
    pretrain.add_argument("pipeline", type=Path)
    again = pretrain.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the last checkpoint (step or epoch)")
    again.add_argument("--fresh", action="store_true", help="discard an earlier training state and start over")
    pretrain.set_defaults(func=_pretrain)

    inspect = verbs.add_parser("inspect", help="what a file or DICOM series folder holds (never patient identifiers)")
    inspect.add_argument("path", type=Path, help="DICOM file or series folder, NIfTI, PNG/JPEG, WFDB .hea or record, "
                         "OCT vendor file (.vol, .img, .e2e, .fds, .fda)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_inspect)

    cohort = verbs.add_parser("cohort", help="cohort tools").add_subparsers(metavar="ACTION")
    synth = cohort.add_parser("synth", help="write the synthetic demo cohort as DICOM, WFDB and text files")
    synth.add_argument("--out", type=Path, required=True, help="folder to write (manifest.csv and files)")
    synth.add_argument("--patients", type=int, default=600)
    synth.add_argument("--seed", type=int, default=0)
    imaging = [str(m) for m in Modality if m != Modality.REPORT]
    synth.add_argument("--modalities", nargs="+", choices=imaging, metavar="M",
                       help=f"only these (default: all of {' '.join(imaging)})")
    synth.set_defaults(func=_synth)
    describe = cohort.add_parser("describe", help="cohort characteristics overall, per split, site and device")
    describe.add_argument("cohort", type=Path, help="cohort YAML")
    describe.add_argument("--out", type=Path, help="folder for cohort_description.{json,md} "
                                                   "(default runs/cohort-<name>)")
    describe.set_defaults(func=_describe)
    return parser


def _run(args: argparse.Namespace) -> int:
    from medfm.pipeline import run_pipeline

    console = Console()
    results = run_pipeline(args.pipeline, fresh=args.fresh, console=console)
    table = Table(title=f"zero-shot AUROC on the {results['plan']['split']} split")
    for column in ("modality", "finding", "n pos / neg", "AUROC", "single prompts (min-max)"):
        table.add_column(column, justify="left" if column in ("modality", "finding") else "right")
    for task in results["zero_shot_tasks"]:
        spread = task["prompt_auroc"]
        table.add_row(task["modality"], task["finding"], f"{task['n_positive']} / {task['n_negative']}",
                      f"{task['auroc']:.3f}", f"{spread['min']:.3f}-{spread['max']:.3f}")
    console.print(table)
    console.print(f"macro AUROC {results['zero_shot']['macro_auroc']:.3f}  ·  "
                  f"total {results['timing']['total_s']:.0f} s")
    report = Path(results["report_path"])
    shown = report.relative_to(Path.cwd()) if report.is_relative_to(Path.cwd()) else report
    console.print(f"report: [bold]{shown}[/]")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from medfm.pipeline import pretrain_pipeline

    console = Console()
    summary = pretrain_pipeline(args.pipeline, resume=args.resume, fresh=args.fresh, console=console)
    if summary["rank"] == 0:
        last = summary["history"][-1] if summary["history"] else {"loss": float("nan")}
        console.print(f"pretrained {summary['steps']} steps on {summary['world_size']} process(es), "
                      f"{summary['precision']}, final loss {last['loss']:.3f}, resumed from step "
                      f"{summary['resumed_from_step']}  ·  checkpoint: [bold]{summary['checkpoint']}[/]")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from medfm.io.inspect import format_inspection, inspect_path

    info = inspect_path(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspection(info))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from medfm.cohort import assign_splits, describe_cohort, format_description, load_cohort, write_description

    cohort = load_cohort(args.cohort)
    cfg = cohort.config
    split = assign_splits(cohort.table, cfg.split, cfg.patient_column, cfg.labels)
    description = describe_cohort(cohort.table, cfg, split=split)
    print(format_description(description))
    written = write_description(description, args.out or Path("runs") / f"cohort-{cfg.name}")
    Console().print(f"wrote {written['markdown']} and {written['json']}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from medfm.cohort.synth import synthesize_cohort

    manifest = synthesize_cohort(args.out, n_patients=args.patients, seed=args.seed,
                                 modalities=tuple(args.modalities) if args.modalities else None)
    Console().print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
