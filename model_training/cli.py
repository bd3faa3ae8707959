"""``cxr-train``: train, evaluate, list and promote model versions; write the synthetic demo cohort."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from db import migrate
from db.clitools import run_database_command, setup_logging
from db.engine import get_engine, read_session, write_session
from model_training import data, registry
from model_training.train import TrainConfig, TrainError
from scoring.model import DeviceUnavailable

log = logging.getLogger("cxr.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, calibrate, write a checkpoint and model card, register it")
    train.add_argument("--data", required=True, metavar="DIR|CSV",
                       help="a folder per class, a folder with labels.csv, or a CSV file,label[,patient_id]")
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    train.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"], default="resnet18")
    train.add_argument("--img-size", type=int, default=224)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--patience", type=int, default=5, help="early stop after N epochs without a better "
                                                               "validation macro-F1 (default: 5)")
    train.add_argument("--pretrained", metavar="PATH|imagenet",
                       help="initial weights: a checkpoint, a torchvision state dict, or ImageNet from the local "
                            "torch cache (never downloaded)")
    train.add_argument("--eval-data", metavar="DIR|CSV", help="a fixed evaluation set, never trained on")
    train.add_argument("--include-reviews", action="store_true",
                       help="add reviewed cases from the database with the reviewers' labels")
    train.add_argument("--hflip", action="store_true", help="also augment with left-right flips (off by default)")
    train.add_argument("--no-augment", dest="augment", action="store_false")
    train.add_argument("--workers", type=int, default=2, metavar="N", help="data-loading processes")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--name", help="version name (default: the --out folder's name)")
    train.add_argument("--synthetic", action="store_true",
                       help="mark the version as trained on synthetic data (automatic for the demo cohort)")
    train.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    train.add_argument("--db", metavar="URL", help="database URL (default: $CXR_DB_URL or $CXR_HOME/cxr.db)")

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a labelled set")
    evaluate.add_argument("--model", required=True, type=Path, metavar="CKPT")
    evaluate.add_argument("--data", required=True, metavar="DIR|CSV")
    evaluate.add_argument("--compare", type=Path, metavar="CKPT2", help="a second checkpoint, on the same images")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")

    listing = commands.add_parser("list", help="the registered model versions")
    listing.add_argument("--db", metavar="URL")
    promote = commands.add_parser("promote", help="make a version the one the scorer uses")
    promote.add_argument("version", help="id, name, or checkpoint sha256 prefix")
    promote.add_argument("--db", metavar="URL")

    demo = commands.add_parser("demo-data", help="write a synthetic demo cohort (phantoms, not patients)")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--n", type=int, default=240, help="number of labelled phantoms (default: 240)")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "evaluate": _evaluate, "list": _list, "promote": _promote,
                "demo-data": _demo_data}
    try:
        return run_database_command(log, getattr(args, "db", None), lambda: handlers[args.command](args))
    except (TrainError, DeviceUnavailable, data.DataError, registry.RegistryError) as exc:
        log.error("%s", exc)
        return 2


def _train(args: argparse.Namespace) -> int:
    from model_training.train import train

    config = TrainConfig(
        data=str(args.data), out=str(args.out), arch=args.arch, img_size=args.img_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, val_fraction=args.val_fraction,
        patience=args.patience, pretrained=args.pretrained, include_reviews=args.include_reviews,
        eval_data=args.eval_data, hflip=args.hflip, augment=args.augment, workers=args.workers,
        device=args.device, db=args.db, name=args.name, synthetic=args.synthetic)
    result = train(config, resume=args.resume, progress=sys.stderr.isatty())
    validation = result.metrics["validation"]
    print(json.dumps({"checkpoint": str(result.checkpoint), "model_version_id": result.model_version_id,
                      "validation_accuracy": validation["accuracy"], "validation_macro_f1": validation["macro_f1"],
                      "validation_macro_auroc": validation["macro_auroc"],
                      "temperature": result.metrics["temperature"]}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model_training.evaluation import comparison_table, evaluate_checkpoint

    items = data.load_labelled(args.data)
    readable, rejected = data.readable(items)
    for path, reason in rejected:
        log.warning("left out (%s): %s", reason, Path(path).name)
    first = evaluate_checkpoint(args.model, readable, device=args.device)
    second = evaluate_checkpoint(args.compare, readable, device=args.device) if args.compare else None
    if args.json:
        print(json.dumps(first if second is None else {"model": first, "compare": second}))
    elif second is None:
        print(_summary_text(first))
    else:
        print(comparison_table(first, second))
    return 0


def _summary_text(metrics: dict) -> str:
    lines = [f"{metrics.get('name') or metrics['checkpoint']} on {metrics['n']} images",
             f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
             f"macro-AUROC {_num(metrics['macro_auroc'])}  ECE {metrics['ece']:.4f}"]
    for name, cls in metrics["per_class"].items():
        lines.append(f"  {name:<12} precision {cls['precision']:.3f}  recall {cls['recall']:.3f}  "
                     f"F1 {cls['f1']:.3f}  AUROC {_num(cls['auroc'])}  n={cls['support']}")
    lines.append("per source (a source holding one class only shows whether the model recognises the source):")
    for source, group in metrics.get("per_source", {}).items():
        lines.append(f"  {source:<12} accuracy {group['accuracy']:.3f}  n={group['n']}  "
                     f"classes {', '.join(group['classes'])}")
    return "\n".join(lines)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _engine(args: argparse.Namespace):
    engine = get_engine(args.db)
    migrate.require_current(engine)
    return engine


def _list(args: argparse.Namespace) -> int:
    with read_session(_engine(args)) as session:
        for v in registry.list_versions(session):
            auroc = (v.metrics or {}).get("validation", {}).get("macro_auroc")
            flags = " ".join(f for f, on in (("ACTIVE", v.is_active), ("synthetic", v.is_synthetic)) if on)
            print(f"{v.id:>4}  {v.name or '-':<24} {v.architecture:<9} {v.input_size:>4}px  "
                  f"val macro-AUROC {_num(auroc)}  {v.created_at:%Y-%m-%d %H:%M}  {v.sha256[:12]}  {flags}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    with write_session(_engine(args)) as session:
        version, previous = registry.promote(session, args.version)
        log.info("model version %d (%s) is now active%s", version.id, version.name or version.sha256[:12],
                 f"; it replaces version {previous.id}" if previous and previous.id != version.id else "")
        if version.is_synthetic:
            log.warning("version %d was trained on synthetic demo data: its predictions mean nothing clinically",
                        version.id)
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from model_training.demo_data import write_demo_cohort

    cohort = write_demo_cohort(args.dir, n=args.n, seed=args.seed)
    log.info("wrote %s", cohort.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
