"""``cxr-train``: train, evaluate, list and promote model versions; write the synthetic demo cohort."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import sys
from pathlib import Path

from db import events, migrate, model_versions
from db.clitools import (
    add_db_option,
    add_device_option,
    add_verbose_option,
    field_defaults,
    run_cli,
)
from db.engine import get_engine, read_session, write_session
from db.models import ModelVersion
from model_training import gate
from model_training.config import ARCHITECTURE_NAMES, RecalibrateConfig, TrainConfig
from model_training.metrics import interval_text, too_few_patients_text

log = logging.getLogger("cxr.train")

EXIT_GATE_REFUSED = 3  # `promote`: the promotion gate refused (the comparison is printed)

DEFAULTS = field_defaults(TrainConfig)  # the one source of `cxr-train train`'s defaults
RECALIBRATE = field_defaults(RecalibrateConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, calibrate, write a checkpoint and model card, register it")
    train.add_argument("--data", required=True, metavar="DIR|CSV",
                       help="a folder per class, a folder with labels.csv, or a CSV file,label[,patient_id][,source]")
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--arch", choices=ARCHITECTURE_NAMES, default=DEFAULTS["arch"])
    train.add_argument("--img-size", type=int, default=DEFAULTS["img_size"], help="(default: %(default)s)")
    train.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="(default: %(default)s)")
    train.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="(default: %(default)s)")
    train.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="AdamW learning rate (default: %(default)g)")
    train.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                       help="AdamW weight decay (default: %(default)g)")
    train.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="(default: %(default)s)")
    train.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"],
                       help="share of the patients held out for validation (default: %(default)g)")
    train.add_argument("--patience", type=int, default=DEFAULTS["patience"],
                       help="early stop after N epochs without a better validation macro-F1 (default: %(default)s)")
    train.add_argument("--pretrained", metavar="PATH|imagenet",
                       help="initial weights: a checkpoint, a torchvision or torchxrayvision ResNet state dict, "
                            "or ImageNet from the local torch cache (never downloaded)")
    train.add_argument("--eval-data", metavar="DIR|CSV", help="a fixed evaluation set, never trained on")
    train.add_argument("--include-reviews", action="store_true",
                       help="add reviewed cases from the database with the reviewers' labels")
    recipe = train.add_argument_group(
        "retraining recipe", "each defaults to the retraining recipe with --include-reviews (start from the active "
        "version, 80 % of each epoch's draws from reviewed cases, stem and layer1..layer3 frozen so only layer4 and "
        "the head learn, border-band masking up to 10 % of the side), else off")
    recipe.add_argument("--from-active", action=argparse.BooleanOptionalAction, default=DEFAULTS["from_active"],
                        help="start from the active version's weights (unless --pretrained names others)")
    recipe.add_argument("--review-share", type=float, default=DEFAULTS["review_share"], metavar="F",
                        help="share of each epoch's draws that are reviewed cases, class-balanced (0: no resampling)")
    recipe.add_argument("--freeze-blocks", type=int, default=DEFAULTS["freeze_blocks"], metavar="K",
                        help="keep the stem and layer1..layerK as they are (0: train everything)")
    recipe.add_argument("--border-mask", type=float, default=DEFAULTS["border_mask"], metavar="F",
                        help="augmentation masking a border band of up to F of the side per edge (0: off)")
    train.add_argument("--hflip", action="store_true", help="also augment with left-right flips (off by default)")
    train.add_argument("--no-augment", dest="augment", action="store_false")
    train.add_argument("--workers", type=int, default=DEFAULTS["workers"], metavar="N",
                       help="data-loading processes (default: %(default)s)")
    add_device_option(train, DEFAULTS["device"])
    train.add_argument("--name", help="version name (default: the --out folder's name)")
    train.add_argument("--synthetic", action="store_true",
                       help="mark the version as trained on synthetic data (automatic for the demo cohort)")
    train.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    add_db_option(train)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a labelled set")
    evaluate.add_argument("--model", required=True, type=Path, metavar="CKPT")
    evaluate.add_argument("--data", required=True, metavar="DIR|CSV")
    evaluate.add_argument("--compare", type=Path, metavar="CKPT2", help="a second checkpoint, on the same images")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--resamples", type=int, default=1000, metavar="N",
                          help="bootstrap resamples for the 95%% intervals (default: %(default)s)")
    evaluate.add_argument("--workers", type=int, default=DEFAULTS["workers"], metavar="N",
                          help="data-loading processes (default: %(default)s; 0 decodes in this process, the "
                               "quicker choice for a few dozen images)")
    add_device_option(evaluate)

    listing = commands.add_parser("list", help="the registered model versions")
    add_db_option(listing)
    promote = commands.add_parser("promote", help="make a version the one the scorer uses, if the promotion gate "
                                                  "allows it (exit 3 and the comparison when it does not)")
    promote.add_argument("version", help="id, name, or checkpoint sha256 prefix")
    promote.add_argument("--override-reason", metavar="TEXT",
                         help="promote although the gate refuses; the reason goes to the audit trail")
    promote.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the comparison")
    add_db_option(promote)
    challenge = commands.add_parser("challenge", help="score a version in the shadow of the active one (never "
                                                      "shown to readers), so that the gate can judge it")
    challenge.add_argument("version", help="id, name, or checkpoint sha256 prefix")
    challenge.add_argument("--stop", action="store_true", help="stop scoring it in the shadow")
    add_db_option(challenge)

    recalibrate = commands.add_parser(
        "recalibrate", help="a new version with a version's weights and a temperature and per-class offsets fitted "
        "on the reviewed cases (every pairwise ranking unchanged); registered inactive")
    recalibrate.add_argument("--from", dest="source", required=True, metavar="VERSION|CKPT",
                             help="id, name or sha256 prefix of a registered version, or a checkpoint file")
    recalibrate.add_argument("--out", required=True, metavar="DIR")
    recalibrate.add_argument("--name", help="version name (default: the --out folder's name)")
    recalibrate.add_argument("--min-cases", type=int, default=RECALIBRATE["min_cases"], metavar="N",
                             help="reviewed cases a class needs for its offset to be fitted (default: %(default)s)")
    recalibrate.add_argument("--batch-size", type=int, default=RECALIBRATE["batch_size"])
    recalibrate.add_argument("--workers", type=int, default=RECALIBRATE["workers"], metavar="N")
    add_device_option(recalibrate, RECALIBRATE["device"])
    add_db_option(recalibrate)

    demo = commands.add_parser("demo-data", help="write a synthetic demo cohort (phantoms, not patients)")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--n", type=int, default=240, help="number of labelled phantoms (default: 240)")
    demo.add_argument("--seed", type=int, default=0)
    for command in (train, evaluate, listing, promote, challenge, recalibrate, demo):
        add_verbose_option(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    handlers = {"train": _train, "evaluate": _evaluate, "list": _list, "promote": _promote, "challenge": _challenge,
                "demo-data": _demo_data, "recalibrate": _recalibrate}
    return run_cli(build_parser(), argv, log, lambda args: handlers[args.command](args))


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``cxr-train train``'s arguments: every field has an option of the same name."""
    return TrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)})


def _train(args: argparse.Namespace) -> int:
    from model_training.train import train

    result = train(train_config(args), resume=args.resume, progress=sys.stderr.isatty())
    validation = result.metrics["validation"]
    print(json.dumps({"checkpoint": str(result.checkpoint), "model_version_id": result.model_version_id,
                      "validation_accuracy": validation["accuracy"], "validation_macro_f1": validation["macro_f1"],
                      "validation_macro_auroc": validation["macro_auroc"],
                      "temperature": result.metrics["temperature"]}))
    return 0


def _recalibrate(args: argparse.Namespace) -> int:
    from model_training.recalibrate import recalibrate

    result = recalibrate(RecalibrateConfig(**{f.name: getattr(args, f.name)
                                              for f in dataclasses.fields(RecalibrateConfig)}))
    fitted = result.metrics["recalibration"]
    print(json.dumps({"checkpoint": str(result.checkpoint), "model_version_id": result.model_version_id,
                      "temperature": fitted["temperature"], "offsets": fitted["offsets"],
                      "cases_per_class": fitted["cases_per_class"]}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model_training import data
    from model_training.evaluation import compare_checkpoints, comparison_table, evaluate_checkpoint

    items = data.load_labelled(args.data)
    readable, rejected = data.readable(items)
    data.log_left_out(rejected, "evaluate")
    options = dict(device=args.device, n_resamples=args.resamples, workers=args.workers)
    if args.compare:
        comparison = compare_checkpoints(args.model, args.compare, readable, **options)
        print(json.dumps(comparison) if args.json else comparison_table(comparison))
        return 0
    metrics = evaluate_checkpoint(args.model, readable, **options)
    print(json.dumps(metrics) if args.json else _summary_text(metrics))
    return 0


def _summary_text(metrics: dict) -> str:
    intervals = metrics.get("intervals", {})
    lines = [f"{metrics.get('name') or metrics['checkpoint']} on {metrics['n']} images",
             f"accuracy {_ci(intervals, 'accuracy', metrics['accuracy'])}  "
             f"balanced accuracy {_ci(intervals, 'balanced_accuracy', metrics.get('balanced_accuracy'))}  "
             f"macro-F1 {metrics['macro_f1']:.4f}  "
             f"macro-AUROC {_ci(intervals, 'macro_auroc', metrics['macro_auroc'])}  ECE {metrics['ece']:.4f}"]
    for name, cls in metrics["per_class"].items():
        lines.append(f"  {name:<12} precision {cls['precision']:.3f}  recall {cls['recall']:.3f}  "
                     f"F1 {cls['f1']:.3f}  AUROC {_ci(intervals, 'auroc_' + name, cls['auroc'])}  "
                     f"n={cls['support']}")
    pairs = [key for key in intervals if "_vs_" in key and intervals[key]["estimate"] is not None]
    for key in pairs:
        first, second = key.removeprefix("auroc_").split("_vs_")
        lines.append(f"  {first} vs {second} AUROC (images of these two classes) {_ci(intervals, key, None)}")
    lines.append("per source (a source holding one class only shows whether the model recognises the source):")
    for source, group in metrics.get("per_source", {}).items():
        lines.append(f"  {source:<12} accuracy {group['accuracy']:.3f}  n={group['n']}  "
                     f"classes {', '.join(group['classes'])}")
    method = intervals.get("_method")
    if method:
        lines.append(f"[95% intervals: {method['interval']} bootstrap, {method['resamples']} resamples, "
                     f"seed {method['seed']}, stratified by {method['stratified_by']}]")
        small = too_few_patients_text(method)
        if small:
            lines.append(f"[{small}]")
    return "\n".join(lines)


def _ci(intervals: dict, key: str, fallback) -> str:
    found = intervals.get(key)
    return interval_text(found) if found and found.get("estimate") is not None else _num(fallback)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _engine(args: argparse.Namespace):
    engine = get_engine(args.db)
    migrate.require_current(engine)
    return engine


def _list(args: argparse.Namespace) -> int:
    with read_session(_engine(args)) as session:
        for v in model_versions.list_versions(session):
            auroc = (v.metrics or {}).get("validation", {}).get("macro_auroc")
            flags = " ".join(f for f, on in (("ACTIVE", v.is_active), ("challenger", v.is_challenger),
                                             ("synthetic", v.is_synthetic)) if on)
            print(f"{v.id:>4}  {v.name or '-':<24} {v.architecture:<9} {v.input_size:>4}px  "
                  f"val macro-AUROC {_num(auroc)}  {v.created_at:%Y-%m-%d %H:%M}  {v.sha256[:12]}  {flags}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    with write_session(_engine(args)) as session:
        result = gate.promote(session, args.version, by=_operator(), override_reason=args.override_reason,
                              via="cxr-train", resamples=args.resamples)
        comparison = result.decision.comparison
        if comparison is not None:
            print(gate.comparison_text(comparison), flush=True)
        if not result.promoted:
            log.error("not promoted: %s. `--override-reason TEXT` promotes anyway (audited)", result.decision.reason)
            return EXIT_GATE_REFUSED
        version = session.get(ModelVersion, result.version_id)
        log.info("model version %d (%s) is now active%s (%s)", version.id, version.name or version.sha256[:12],
                 f"; it replaces version {result.previous_id}" if result.previous_id not in (None, version.id) else "",
                 "overriding the gate: " + result.decision.reason if result.overridden else result.decision.reason)
        if version.is_synthetic:
            log.warning("version %d was trained on synthetic demo data: its predictions mean nothing clinically",
                        version.id)
    return 0


def _operator() -> str:
    """Who ran the command, for the audit trail (a container may have no user name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _challenge(args: argparse.Namespace) -> int:
    with write_session(_engine(args)) as session:
        version = model_versions.set_challenger(session, args.version, not args.stop)
        events.record(session, events.CHALLENGE, username=_operator(),
                      details={"version": version.id, "challenger": not args.stop, "from": "cxr-train"})
        log.info("model version %d %s", version.id,
                 "is no longer scored in the shadow" if args.stop else
                 "is scored in the shadow of the active version from the next `cxr-score` run")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from model_training.demo_cohort import write_demo_cohort

    cohort = write_demo_cohort(args.dir, n=args.n, seed=args.seed)
    log.info("wrote %s", cohort.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
