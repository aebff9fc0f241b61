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
    check = cohort.add_parser("check", help="load a cohort and its manifest and say what is wrong, one line each")
    check.add_argument("cohort", type=Path, help="cohort YAML")
    check.add_argument("--files", action="store_true", help="also check that every file the manifest names exists")
    check.set_defaults(func=_cohort_check)
    describe = cohort.add_parser("describe", help="cohort characteristics overall, per split, site and device")
    describe.add_argument("cohort", type=Path, help="cohort YAML")
    describe.add_argument("--out", type=Path, help="folder for cohort_description.{json,md} "
                                                   "(default runs/cohort-<name>)")
    describe.set_defaults(func=_describe)

    _index_parsers(verbs)
    search = verbs.add_parser("search", help="similar cases to a file, a text or an indexed study")
    search.add_argument("--index", type=Path, required=True, help="index folder (medfm index build)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("file", type=Path, nargs="?", help="DICOM file or series folder, WFDB record, PNG/JPEG, "
                       "NIfTI, OCT vendor file, or a zip of one study")
    query.add_argument("--text", help='a finding in words, e.g. "small left pleural effusion"')
    query.add_argument("--study", help="an indexed study id (with --as if it has several modalities)")
    search.add_argument("--as", dest="query_modality", metavar="MODALITY",
                        help="modality of the query file or study, where it cannot be told (NIfTI)")
    search.add_argument("-k", type=int, default=10, help="number of cases (default 10)")
    _filter_arguments(search)
    search.add_argument("--include-own-patient", action="store_true",
                        help="also return the query patient's other studies (left out by default)")
    search.add_argument("--model", type=Path, help="checkpoint (default: the one the index was built with)")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.set_defaults(func=_search)

    serve = verbs.add_parser("serve", help="the similar-case search web page and HTTP API")
    serve.add_argument("--index", type=Path, required=True, help="index folder (medfm index build)")
    serve.add_argument("--model", type=Path, help="checkpoint (default: the one the index was built with)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    access = serve.add_mutually_exclusive_group()
    access.add_argument("--tokens", type=Path, help="tokens file (YAML): each token's name, the SHA-256 of its secret "
                        "and the cohorts it may see (docs/service.md)")
    access.add_argument("--token-file", type=Path, help="file holding one access token that sees every cohort "
                        "(default: the MEDFM_TOKEN environment variable)")
    serve.add_argument("--audit-log", type=Path, help="append every search and case view to this hash-chained log "
                       "(check it with `medfm audit verify`)")
    serve.set_defaults(func=_serve)

    audit = verbs.add_parser("audit", help="the service's audit log").add_subparsers(metavar="ACTION")
    verify = audit.add_parser("verify", help="walk an audit log's hash chain: intact, or the first line that fails")
    verify.add_argument("log", type=Path, help="the file given to `medfm serve --audit-log`")
    verify.set_defaults(func=_audit_verify)

    validate = verbs.add_parser("validate", help="run a validation plan on a pipeline's trained model (no training): "
                                "predictions, statistics, report.html and report.pdf")
    validate.add_argument("plan", type=Path, help="evaluation/plans/*.yaml")
    validate.add_argument("--pipeline", type=Path, help="the pipeline whose cohort and checkpoint are validated "
                          "(default: the plan's pipeline key)")
    validate.add_argument("--out", type=Path, help="run folder (default <pipeline output>/validation-<plan name>)")
    validate.set_defaults(func=_validate)

    checkpoint = verbs.add_parser("checkpoint", help="checkpoints").add_subparsers(metavar="ACTION")
    convert = checkpoint.add_parser("convert", help="rewrite a checkpoint whose weights are a pickle file "
                                    "(.bin, .pt, .pth, .ckpt) as safetensors with recorded hashes")
    convert.add_argument("source", type=Path, help="the checkpoint folder (config.json beside its weights)")
    convert.add_argument("dest", type=Path, help="the new folder")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="required: you trust the source file (it is read with torch.load(weights_only=True))")
    convert.set_defaults(func=_checkpoint_convert)

    report = verbs.add_parser("report", help="validation reports").add_subparsers(metavar="ACTION")
    rebuild = report.add_parser("rebuild", help="recompute a run's analyses from its stored predictions, check them "
                                "against results.json, and write report.html and report.pdf again")
    rebuild.add_argument("run_dir", type=Path, help="a run folder (holding results.json)")
    rebuild.add_argument("--no-pdf", action="store_true", help="write report.html only")
    rebuild.set_defaults(func=_report_rebuild)

    ingest = verbs.add_parser("ingest", help="pull studies into a cohort").add_subparsers(metavar="SOURCE")
    dicomweb = ingest.add_parser("dicomweb", help="from a DICOMweb server (QIDO-RS search, WADO-RS retrieve)")
    dicomweb.add_argument("url", help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    dicomweb.add_argument("--cohort", type=Path, required=True, help="cohort YAML whose storage and manifest "
                          "receive the studies")
    dicomweb.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                          help="QIDO-RS study filter, e.g. ModalitiesInStudy=CR or StudyDate=20240101-20241231")
    dicomweb.add_argument("--limit", type=int, help="at most this many studies")
    dicomweb.add_argument("--index", type=Path, help="also add the new studies to this index")
    dicomweb.add_argument("--model", type=Path, help="checkpoint that embeds them (default: the index's)")
    dicomweb.add_argument("--allow-burned-in", action="store_true",
                          help="also store series marked BurnedInAnnotation=YES (text in the pixels: not removed)")
    dicomweb.set_defaults(func=_ingest_dicomweb)
    return parser


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modality", help="only cases of this modality")
    parser.add_argument("--site")
    parser.add_argument("--device")
    parser.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="studies on or after this date")
    parser.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="studies on or before this date")


def _index_parsers(verbs) -> None:
    index = verbs.add_parser("index", help="similar-case index: build, add, remove, info").add_subparsers(
        metavar="ACTION")
    for action, text in (("build", "embed every study of a cohort into a new index (resumes an interrupted build)"),
                         ("add", "embed the cohort's studies the index lacks")):
        parser = index.add_parser(action, help=text)
        parser.add_argument("--model", type=Path, required=True, help="checkpoint folder")
        parser.add_argument("--cohort", type=Path, required=True, help="cohort YAML")
        parser.add_argument("--out" if action == "build" else "--index", dest="index", type=Path, required=True,
                            help="index folder")
        parser.add_argument("--batch", type=int, default=64, help="studies per chunk (default 64)")
        parser.add_argument("--cache", type=Path, help="preprocessing cache folder to read through")
        if action == "build":
            parser.add_argument("--kind", choices=["auto", "exact", "hnsw"], default="auto",
                                help="exact search, HNSW, or auto: exact below 50,000 cases")
            parser.add_argument("--fresh", action="store_true", help="discard an index or unfinished build there")
        parser.set_defaults(func=_index_update, action=action)
    remove = index.add_parser("remove", help="remove studies (every modality of each)")
    remove.add_argument("--index", type=Path, required=True)
    remove.add_argument("studies", nargs="+", help="study ids")
    remove.set_defaults(func=_index_remove)
    info = index.add_parser("info", help="what an index holds")
    info.add_argument("--index", type=Path, required=True)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_index_info)


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
    precision = "  ".join(f"{m} {d['precision@10']:.2f} (chance {d['chance']:.2f})"
                          for m, d in results["case_search"].items())
    if precision:
        console.print(f"similar-case search precision@10: {precision}")
    index = _shown(Path(results["index"]["path"]))
    console.print(f"case index: [bold]{index}[/] ({results['index']['cases']} cases; "
                  f"medfm serve --index {index})")
    _print_verdict(console, results)
    return 0


def _shown(path: Path) -> Path:
    """A path relative to the working folder when it lies inside it."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


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


def _cohort_check(args: argparse.Namespace) -> int:
    from medfm.cohort import load_cohort

    cohort = load_cohort(args.cohort, check_files=args.files)
    checked = "every file exists, " if args.files else ""
    patients = cohort.table[cohort.config.patient_column].nunique()
    Console().print(f"{args.cohort}: {len(cohort.table)} studies of {patients} patients, {cohort.excluded} excluded "
                    f"by inclusion rules; {checked}no problem found", highlight=False, soft_wrap=True)
    return 0


def _checkpoint_convert(args: argparse.Namespace) -> int:
    from medfm.models import MultimodalModel

    if not args.trust_pickle:
        raise MedfmError(f"{args.source}: converting reads its pickle weights, which can run code; pass "
                         "--trust-pickle if you trust where they came from")
    if args.dest.exists() and any(args.dest.iterdir()):
        raise MedfmError(f"{args.dest}: not empty; give a new folder")
    MultimodalModel.from_pretrained(args.source, trust_pickle=args.trust_pickle).save_pretrained(args.dest)
    Console().print(f"{args.dest}: safetensors with recorded hashes; load it without --trust-pickle", highlight=False)
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


def _index_update(args: argparse.Namespace) -> int:
    from medfm.heads.cases import update_index
    from medfm.heads.retrieval import IndexConfig

    if args.action == "add" and not (args.index / "CURRENT").is_file():
        raise MedfmError(f"{args.index}: no index there; create one with `medfm index build`")
    config = IndexConfig(kind=args.kind) if args.action == "build" else None
    summary = update_index(args.index, args.model, args.cohort, config=config, batch_size=args.batch,
                           cache_dir=args.cache, fresh=getattr(args, "fresh", False))
    recall = "" if summary["recall_at_10"] is None else f", recall@10 vs exact {summary['recall_at_10']:.3f}"
    Console().print(f"added {summary['added']} cases ({summary['skipped_existing']} already indexed, "
                    f"{summary['quarantined']} unreadable files skipped); {summary['cases']} cases, "
                    f"{summary['kind']} search{recall}  ·  index: [bold]{args.index}[/]")
    return 0


def _index_remove(args: argparse.Namespace) -> int:
    from medfm.heads.cases import remove_studies

    removed = remove_studies(args.index, args.studies)
    Console().print(f"removed {removed} cases of {len(args.studies)} studies")
    return 0 if removed else 1


def _index_info(args: argparse.Namespace) -> int:
    import json

    from medfm.heads.retrieval import CaseIndex

    index = CaseIndex.load(args.index)
    counts = dict(index.db.execute("SELECT modality, COUNT(*) FROM cases GROUP BY modality ORDER BY modality"))
    info = {"cases": len(index), "by_modality": counts, "kind": index.kind, "dim": index.dim,
            "recall_at_10": index.recall_at_10, "model": index.info.get("model"),
            "cohorts": index.info.get("cohorts", [])}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>13}: {value}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import json

    from medfm.heads.query import CaseSearch, hit_json, report_excerpt

    engine = CaseSearch.open(args.index, args.model)
    if args.text is not None:
        query = engine.text_query(args.text)
    elif args.study is not None:
        query = engine.case_query(args.study, args.query_modality)
    else:
        query = engine.file_query(args.file, args.query_modality)
    filters = {k: getattr(args, k) for k in ("modality", "site", "device", "date_from", "date_to")}
    hits = engine.search(query, args.k, include_own_patient=args.include_own_patient, **filters)
    if args.json:
        print(json.dumps({"query": {"kind": query.kind, "modality": query.modality},
                          "results": [hit_json(h) for h in hits]}, indent=2))
        return 0
    table = Table(title=f"{len(hits)} similar cases to the {query.modality} {query.kind}")
    for column in ("#", "similarity", "study", "modality", "site", "device", "date", "findings", "report"):
        table.add_column(column, justify="right" if column in ("#", "similarity") else "left",
                         no_wrap=column != "report", max_width=70 if column == "report" else None)
    for rank, hit in enumerate(hits, 1):
        c = hit.case
        table.add_row(str(rank), f"{hit.score:.3f}", c.study_id, c.modality, c.site or "", c.device or "",
                      c.date or "", c.findings or "", report_excerpt(c.report))
    Console().print(table)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from medfm.service import serve
    from medfm.service.tokens import load_tokens

    tokens = None
    if args.tokens is not None:
        if os.environ.get("MEDFM_TOKEN"):
            raise MedfmError("MEDFM_TOKEN is set and --tokens given: unset MEDFM_TOKEN, or leave out --tokens")
        tokens = load_tokens(args.tokens)
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("MEDFM_TOKEN")
    serve(args.index, model_dir=args.model, host=args.host, port=args.port, token=token or None, tokens=tokens,
          audit_log=args.audit_log)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from medfm.service.audit import verify

    if not args.log.is_file():
        raise MedfmError(f"{args.log}: no such audit log")
    result = verify(args.log)
    print(f"{result.records} records, chain intact")
    print(f"last record sha256: {result.last}" + ("" if result.head_checked else
          " (no head file beside the log: lines removed from its end would go unnoticed)"))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from medfm.pipeline import validate_plan

    console = Console()
    results = validate_plan(args.plan, pipeline=args.pipeline, out=args.out, console=console)
    _print_verdict(console, results)
    return 0


def _print_verdict(console: Console, results: dict) -> None:
    validation = results["validation"]
    verdict = {True: "PASS", False: "NOT PASSED", None: "no acceptance criteria"}[validation["passed"]]
    console.print(f"validation plan {results['plan']['name']} v{results['plan']['version']}: {verdict}")
    for criterion in validation["acceptance"]:
        endpoint = criterion["criterion"]["endpoint"]
        value = "n/a" if criterion["value"] is None else f"{criterion['value']:.3f}"
        console.print(f"  {criterion['verdict']:<12} {endpoint['metric']} of {endpoint['task']} ({endpoint['head']}), "
                      f"{criterion['criterion']['bound']} bound {value}", highlight=False)
    console.print(f"report: [bold]{_shown(Path(results['report_path']))}[/] and "
                  f"[bold]{_shown(Path(results['report_pdf']))}[/]")


def _report_rebuild(args: argparse.Namespace) -> int:
    from medfm.evaluation.report import rebuild_report

    done = rebuild_report(args.run_dir, pdf=not args.no_pdf)
    console = Console()
    console.print(f"{done['numbers_compared']} numbers recomputed from the stored predictions: all equal "
                  "to results.json", highlight=False)
    for kind in ("html", "pdf"):
        if kind in done:
            console.print(f"report: [bold]{_shown(Path(done[kind]))}[/]")
    return 0


def _ingest_dicomweb(args: argparse.Namespace) -> int:
    from medfm.cohort.dicomweb import ingest_dicomweb

    filters = {}
    for item in args.filter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedfmError(f"--filter {item!r}: expected KEY=VALUE, e.g. ModalitiesInStudy=CR")
        filters[key] = value
    summary = ingest_dicomweb(args.url, args.cohort, filters=filters, limit=args.limit, index_dir=args.index,
                              model_dir=args.model, allow_burned_in=args.allow_burned_in)
    Console().print(summary["message"], soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
