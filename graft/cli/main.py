"""The ``graft`` command: a thin layer over :mod:`graft.workflows`."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from graft import __version__, catalog
from graft.config import EvaluateConfig, ExtractConfig, FinetuneConfig, PredictConfig, TrainConfig
from graft.errors import ConfigError, GraftError, Note
from graft.serving.config import ServeConfig

__all__ = ["build_parser", "main"]

# Exit codes (also in `graft predict --help`).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


# {parameter: flag} of the command running, for the library's log lines that name parameters
_command_flags: dict[str, str] = {}


def _log(message: str) -> None:
    if isinstance(message, Note):
        message = message.naming(_command_flags)
    print(message, file=sys.stderr, flush=True)


def _require_train(command: str) -> None:
    from graft.extras import require

    require("train", command=command)


def _defaults(config: type) -> dict[str, Any]:
    """A config dataclass's field defaults: what the CLI offers, never restated here."""
    return {f.name: f.default for f in dataclasses.fields(config)}


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{parameter: flag}`` of a command, from its options' destinations (``top_k: --top-k``),
    so a library error naming a parameter names the flag here."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == argparse.SUPPRESS:
            continue
        flag = max(action.option_strings, key=len)
        flags.setdefault(action.dest, flag)  # a dest shared by switches: the first one
        if isinstance(action, argparse._StoreConstAction):  # store_true/false too
            flags[f"{action.dest}={action.const!r}"] = flag  # out_of_core=False: --in-memory
    return flags


def _finish(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
    parser.set_defaults(func=func, flags=_flags(parser))


def _add_threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPUs to use, split between image decoding and ONNX Runtime "
                             "(default: all this process may use, affinity/cgroup aware)")


def _add_cache_arg(parser, what: str) -> None:
    parser.add_argument("--cache-dir", default=None,
                        help=f"{what} (default: $GRAFT_CACHE_DIR, else the user cache dir)")


def _add_backbone_args(parser: argparse.ArgumentParser, config: type, *,
                       mixed: bool = False) -> None:
    """The backbone options of ``extract`` (``mixed``: fp16/bf16 too) and ``train``."""
    defaults = _defaults(config)
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", action="append", default=None, metavar="NAME",
                       help=f"registry or timm model name (default: {catalog.DEFAULT_BACKBONE}; "
                            f"see 'graft backbones'); fuse several with A+B or a repeated "
                            f"--backbone")
    group.add_argument("--layer", action="append", default=None, metavar="LAYER",
                       help="where to cut: 'pool' (default for most), 'logits', a stage, or a "
                            "named cut (vgg16: fc6, fc7, pool5); NAME=LAYER per fused backbone")
    group.add_argument("--pool", default=defaults["pool"], choices=catalog.POOLS,
                       help="reduction of a spatial map (avg/max/avgmax/flatten) or of a "
                            "transformer's tokens (cls, mean, cls+mean, map); avg: the "
                            "network's own pooling (default: the backbone's recipe, see "
                            "'graft backbones')")
    group.add_argument("--normalize", default=defaults["normalize"],
                       choices=catalog.NORMALIZATIONS,
                       help="l2: each feature vector scaled to unit length (CLIP-style; "
                            "default: the backbone's recipe)")
    group.add_argument("--tta", default=defaults["tta"], choices=catalog.TTA,
                       help="flip: average each image's features with its mirror image's "
                            "(twice the extraction cost; predict and serve do the same)")
    group.add_argument("--weights", action="append", default=None, metavar="PATH",
                       help="local .pth/.safetensors/Keras .h5 file or http(s) URL; NAME=PATH per "
                            "fused backbone; default: offline weights shipped with graft, else "
                            "the model hub; 'random' for tests")
    group.add_argument("--image-size", type=int, default=defaults["image_size"],
                       help="input resolution (default: the backbone's)")
    group.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                       help=f"images per forward pass (default: {defaults['batch_size']})")
    _add_threads_arg(group)
    group.add_argument("--precision", default=defaults["precision"],
                       choices=catalog.PRECISIONS if mixed else catalog.MODEL_PRECISIONS,
                       help="fp32 (default), or int8: the backbone quantized with ONNX Runtime, "
                            "calibrated on up to 200 training images (about 1.3x faster "
                            "extraction on an AVX2 CPU; accuracy within a point, measured)"
                            + ("; fp16/bf16: autocast on CUDA (--device cuda), cached apart "
                               "from fp32 features" if mixed else ""))
    group.add_argument("--device", default=defaults["device"],
                       help="auto (CUDA if present, else ONNX Runtime on CPU), cpu, cuda, torch; "
                            "with --engine ray the actors' (cuda: one per GPU of the cluster)")
    _add_engine_args(group, config)
    _add_cache_arg(group, "feature/ONNX cache")


def _add_engine_args(group, config: type) -> None:
    group.add_argument("--engine", default=_defaults(config)["engine"], choices=catalog.ENGINES,
                       help="local (this process), or ray: decode and run the backbone on a Ray "
                            "cluster (needs graft[ray]); only this process writes the cache")
    group.add_argument("--address", default=None,
                       help="the Ray cluster with --engine ray: auto, HOST:PORT or ray://... "
                            "(default: $RAY_ADDRESS, else a local cluster)")


def _add_split_args(parser: argparse.ArgumentParser, config: type = ExtractConfig,
                    val_help: str = "share of the images held out for validation") -> None:
    defaults = _defaults(config)
    group = parser.add_argument_group("splits (unsplit data; pre-split folders keep theirs)")
    group.add_argument("--test-size", type=float, default=defaults["test_size"],
                       help=f"share of the images held out for the test split (default: "
                            f"{defaults['test_size']}); an image's split depends only on its "
                            f"path and --seed")
    group.add_argument("--val-size", type=float, default=defaults["val_size"],
                       help=f"{val_help} (default: {defaults['val_size']})")
    group.add_argument("--seed", type=int, default=defaults["seed"],
                       help=f"seed of the hash split (default: {defaults['seed']}); the same "
                            f"seed gives the same split every run")
    group.add_argument("--group-regex", default=None, metavar="RE",
                       help="images whose relative paths give the same match (first group, else "
                            "the whole match) stay in one split")


def _extract_parser(sub, common) -> None:
    p = sub.add_parser("extract", parents=[common],
                       help="extract features of an image folder into an HDF5 file")
    p.add_argument("data", help="DATA/<class>/<image>, pre-split DATA/{train,val,test}/..., CSV, "
                                "or s3://BUCKET/DATA")
    p.add_argument("--out", required=True, help="the feature file to write (.h5)")
    _add_backbone_args(p, ExtractConfig, mixed=True)
    _add_split_args(p)
    _finish(p, _cmd_extract)


def _train_parser(sub, common) -> None:
    defaults = _defaults(TrainConfig)
    p = sub.add_parser("train", parents=[common],
                       help="train and evaluate a classifier; write a model directory")
    p.add_argument("data", help="image folder (or s3://BUCKET/DATA), CSV of path,label, or a .h5 "
                                "from 'graft extract'")
    p.add_argument("--out", default="graft-model", help="model directory (default: graft-model)")
    p.add_argument("--head", default=defaults["head"], choices=list(catalog.HEAD_DESCRIPTIONS),
                   help=f"classifier on the features (default: {defaults['head']})")
    p.add_argument("--augment-views", type=int, default=defaults["augment_views"], metavar="K",
                   help="also extract K random augmented views of every training image (cached)")
    p.add_argument("--augment", default=defaults["augment"],
                   help=f"transformations for --augment-views: {', '.join(catalog.AUGMENTATIONS)} "
                        f"(default: {defaults['augment']})")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument("--out-of-core", dest="out_of_core", action="store_const", const=True,
                        default=defaults["out_of_core"],
                        help="train the head from the feature cache a chunk at a time (logreg), "
                             "never holding every feature in memory (default: only when they "
                             "would take more than half of the memory available)")
    memory.add_argument("--in-memory", dest="out_of_core", action="store_const", const=False,
                        help="always hold the features in memory")
    _add_backbone_args(p, TrainConfig)
    _add_split_args(p, TrainConfig)
    _finish(p, _cmd_train)


def _finetune_parser(sub, common) -> None:
    d = _defaults(FinetuneConfig)
    p = sub.add_parser("finetune", parents=[common],
                       help="fine-tune a pretrained network end to end; write a model directory")
    p.add_argument("data", help="image folder, s3://BUCKET/DATA or CSV (pre-split folders keep "
                                "their splits)")
    p.add_argument("--out", default="graft-finetuned",
                   help="model directory (default: graft-finetuned)")
    p.add_argument("--backbone", default=d["backbone"],
                   help=f"registry or timm name (default: {d['backbone']})")
    p.add_argument("--weights", default=None, help="local weights file or URL (see 'train')")
    options = [  # (flag, type, help): each default is FinetuneConfig's
        ("--epochs", int, "stage 1: frozen backbone, new head"),
        ("--fine-tune-epochs", int, "stage 2: top blocks unfrozen; 0 skips it"),
        ("--unfreeze", str, "blocks to unfreeze in stage 2, or 'all'"),
        ("--lr", float, "stage-1 learning rate"),
        ("--fine-tune-lr", float, "stage-2 learning rate"),
        ("--image-size", int, "input resolution (default: the backbone's)"),
        ("--batch-size", int, "images per training step"),
        ("--augment", str, f"comma-separated: {', '.join(catalog.AUGMENTATIONS)}; or 'none'"),
        ("--dropout", float, "dropout before the new dense layer"),
        ("--patience", int, "early stopping, in epochs without a better validation loss"),
        ("--workers", int, "image loading processes (default: up to 2)"),
        ("--device", str, "auto (CUDA if present, else CPU), cpu, cuda"),
    ]
    for flag, kind, text in options:
        default = d[flag[2:].replace("-", "_")]
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(flag, type=kind, default=default, help=text + shown)
    p.add_argument("--class-weights", default=d["class_weights"], choices=catalog.CLASS_WEIGHTS,
                   help="'auto' weights the loss by inverse class frequency (default: none)")
    _add_split_args(p, FinetuneConfig, val_help="share of the training images held out for "
                    "validation when there is no val split")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_cache_arg(p, "weights/ONNX cache")
    _finish(p, _cmd_finetune)


def _predict_parser(sub, common) -> None:
    d = _defaults(PredictConfig)
    p = sub.add_parser(
        "predict", parents=[common], help="top-k predictions for images and folders",
        epilog="Exit status: 0 when every image was predicted, 1 when some could not be read "
               "(each is reported with its reason), 2 on an error (bad model, no images found, "
               "bad option), 130 when interrupted.")
    p.add_argument("model", help="model directory written by 'graft train'")
    p.add_argument("paths", nargs="+",
                   help="image files or folders, local or s3:// (walked recursively)")
    p.add_argument("--top-k", type=int, default=d["top_k"],
                   help=f"labels per image (default: {d['top_k']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help=f"images per forward pass (default: {d['batch_size']})")
    _add_threads_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="write path, label, score and the top-k to FILE")
    _add_engine_args(p, PredictConfig)
    _finish(p, _cmd_predict)


def _evaluate_parser(sub, common) -> None:
    d = _defaults(EvaluateConfig)
    p = sub.add_parser("evaluate", parents=[common],
                       help="score a saved model on a labeled image folder")
    p.add_argument("model", help="model directory written by 'graft train'")
    p.add_argument("data", help="labeled image folder, s3://BUCKET/DATA or CSV")
    p.add_argument("--split", default=d["split"], choices=catalog.EVALUATE_SPLITS,
                   help="what to score (default: on the model's own training data, its "
                        "held-out test split, recomputed from graft.json; on other pre-split "
                        "data, its test (else val) folder; on other unsplit data, all)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help=f"images per forward pass (default: {d['batch_size']})")
    _add_threads_arg(p)
    _add_cache_arg(p, "feature cache")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--report", default=d["report"], metavar="DIR",
                   help="write report.html, its figures and metrics.json into DIR")
    _add_engine_args(p, EvaluateConfig)
    _finish(p, _cmd_evaluate)


def _serve_parser(sub, common) -> None:
    d = _defaults(ServeConfig)
    p = sub.add_parser(
        "serve", parents=[common], help="serve models over HTTP (JSON API, KServe/Triton v2, "
        "Prometheus metrics, a web page)",
        description="Serve one or more model directories over HTTP until SIGTERM or Ctrl-C. "
                    "Endpoints: POST /v1/models/NAME/predict (raw image body, multipart 'file' "
                    "fields, or JSON {\"images\": [base64...]}; ?top_k=5), /predict with one "
                    "model, the Open Inference Protocol v2 under /v2 (tritonclient works), "
                    "GET /metrics, and a web page at /.")
    p.add_argument("models", nargs="+", metavar="MODEL_DIR",
                   help="a model directory, served under its directory name, or NAME=DIR")
    p.add_argument("--host", default=d["host"],
                   help=f"address to listen on (default: {d['host']}, this machine only; "
                        f"0.0.0.0 for every interface)")
    options = [  # (flag, type, help): each default is ServeConfig's
        ("--port", int, "port (0: any free)"),
        ("--max-batch-size", int, "most images in one batch through the model"),
        ("--max-delay-ms", float, "longest a batch waits for images still being decoded; a "
                                  "batch runs at once when nothing else is on the way"),
        ("--max-queue", int, "images admitted and not yet answered, per model; more get 503 "
                             "with Retry-After"),
        ("--timeout-s", float, "requests not answered by then get 504"),
        ("--max-body-mb", float, "largest request body in MB; larger gets 413"),
        ("--max-pixels", int, "largest image in pixels (PIL's decompression-bomb limit), "
                              "checked before decoding; larger gets 413"),
    ]
    for flag, kind, text in options:
        default = d[flag[2:].replace("-", "_")]
        shown = f"{default:g}" if kind is float else default
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default: {shown})")
    _add_threads_arg(p)
    _finish(p, _cmd_serve)


def _cache_parser(sub, common) -> None:
    p = sub.add_parser("cache", parents=[common], help="show or trim the feature cache")
    p.add_argument("action", choices=("info", "prune"),
                   help="info: each backbone's cached images and size; prune: delete caches")
    _add_cache_arg(p, "the cache")
    p.add_argument("--json", action="store_true", help="info as JSON")
    p.add_argument("--older-than", dest="older_than_days", type=float, default=None,
                   metavar="DAYS", help="prune: caches not used for DAYS days")
    p.add_argument("--key", dest="keys", action="append", default=None, metavar="KEY",
                   help="prune: the cache with this key (see info; repeatable)")
    p.add_argument("--all", dest="everything", action="store_true", help="prune: every cache")
    p.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    _finish(p, _cmd_cache)


def _fetch_parser(data_sub, common) -> None:
    q = data_sub.add_parser(
        "fetch", parents=[common], help="download a dataset into the layout graft trains on",
        epilog="Offline: download the file(s) by hand and pass them with --from; the pinned "
               "checksums still apply.")
    q.add_argument("name", nargs="?", help="the dataset (see --list)")
    q.add_argument("--to", default=".", metavar="DIR",
                   help="where DIR/NAME is made (default: the current folder)")
    q.add_argument("--list", action="store_true",
                   help="list the datasets: size, classes, licence, citation, source")
    q.add_argument("--from", dest="from_files", action="append", default=[], metavar="FILE",
                   help="a file downloaded by hand (repeat for several), instead of the URL")
    q.add_argument("--mirror", default=None, metavar="BASE_URL",
                   help="fetch the same file names from this base URL "
                        "(default: $GRAFT_DATA_MIRROR)")
    q.add_argument("--sha256", action="append", default=None, metavar="[FILE=]HEX",
                   help="require this checksum instead of the pinned one (a file you trust)")
    q.add_argument("--split", default=None, choices=("30-per-class",),
                   help="caltech101: 30 training images per class, the rest for testing")
    q.add_argument("--seed", type=int, default=0, help="seed of --split (default: 0)")
    _add_cache_arg(q, "where downloads are kept")
    _finish(q, _cmd_data_fetch)


def _check_parser(data_sub, common) -> None:
    q = data_sub.add_parser(
        "check", parents=[common],
        help="counts, sizes, unreadable files, duplicates, leaks across splits, label conflicts",
        epilog="Exit status: 0 when no leak or label conflict was found, 1 when some were, 2 on "
               "an error. Unsplit folders are checked under the split 'graft train' makes with "
               "the same --test-size, --val-size, --seed and --group-regex.")
    q.add_argument("data", help="image folder, pre-split folder, CSV or .npz")
    q.add_argument("--json", action="store_true", help="print everything found as JSON")
    q.add_argument("--html", default=None, metavar="FILE",
                   help="also write an HTML page with thumbnails of every leak and duplicate")
    q.add_argument("--no-near", dest="near", action="store_false",
                   help="skip near duplicates (exact ones only)")
    q.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    _add_split_args(q)
    _finish(q, _cmd_data_check)


def _data_parser(sub, common) -> None:
    p = sub.add_parser("data", parents=[common],
                       help="fetch a tutorial dataset, or check one for leaks and duplicates")
    data_sub = p.add_subparsers(dest="data_command", metavar="{fetch,check}")
    data_sub.required = True
    _fetch_parser(data_sub, common)
    _check_parser(data_sub, common)


def _listing_parsers(sub, common) -> None:
    p = sub.add_parser("backbones", parents=[common], help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    _finish(p, _cmd_backbones)
    p = sub.add_parser("heads", parents=[common], help="list the heads")
    _finish(p, _cmd_heads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Transfer learning for image classification: pretrained CNN features, "
                    "trained heads, honest evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--verbose", "-v", action="store_true",
                        help="also log how many threads decode and run the network")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_extract_parser, _train_parser, _finetune_parser, _predict_parser,
                _evaluate_parser, _serve_parser, _cache_parser, _data_parser, _listing_parsers):
        add(sub, common)
    return parser


def _options(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The parsed options that are fields of ``config``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config)
            if hasattr(args, f.name)}


def _print_skipped(failures: Sequence[tuple[str, str]]) -> None:
    if failures:
        _log(f"Skipped {len(failures)} file(s) that could not be read:")
        for path, reason in failures:
            _log(f"  {path}: {reason}")


def _cmd_extract(args: argparse.Namespace) -> int:
    _require_train("graft extract")
    from graft.workflows.extract import extract

    path, report = extract(args.data, args.out, ExtractConfig(**_options(args, ExtractConfig)),
                           progress=not args.quiet)
    _log(report.summary())
    _print_skipped(report.failures)
    _log(f"Features written to {path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    _require_train("graft train")
    from graft.workflows.train import train

    config = TrainConfig(**_options(args, TrainConfig))
    result = train(args.data, out=args.out, config=config, progress=not args.quiet, log=_log)
    metrics = result.metrics
    print(f"\nHeld-out test split: {metrics['n_test']} images "
          f"(trained on {metrics['n_train']}), scored with the saved model\n")
    print(result.report)
    if result.extraction is not None:
        _print_skipped(result.extraction.failures)
    print(f"Model written to {result.model_dir} (open report.html in it)")
    return EXIT_OK


def _cmd_finetune(args: argparse.Namespace) -> int:
    _require_train("graft finetune")
    from graft.finetune import finetune

    config = FinetuneConfig(**_options(args, FinetuneConfig))
    result = finetune(args.data, out=args.out, config=config, resume=args.resume,
                      cache_dir=args.cache_dir, progress=not args.quiet, log=_log)
    metrics = result.metrics
    stages = ", ".join(f"stage {k}: {v:.3f}" for k, v in metrics["stage_test_accuracy"].items())
    print(f"\nHeld-out test split: {metrics['n_test']} images ({stages}), scored with the "
          f"saved model\n")
    print(result.report)
    print(f"Model written to {result.model_dir} (open report.html in it)")
    return EXIT_OK


class _PredictionWriter:
    """Prints predictions as text, JSON lines or CSV rows, and counts the failures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.handle = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else None
        self.csv = csv.writer(self.handle) if self.handle else None
        if self.csv:
            self.csv.writerow(["path", "label", "score", "top_k", "error"])
        self.count = self.failed = 0

    def write(self, prediction) -> None:
        self.count += 1
        self.failed += prediction.error is not None
        if self.csv:
            top = prediction.predictions or []
            self.csv.writerow([
                prediction.path,
                top[0]["label"] if top else "",
                f"{top[0]['score']:.6f}" if top else "",
                ";".join(f"{p['label']}:{p['score']:.6f}" for p in top),
                prediction.error or "",
            ])
        if self.json:
            print(json.dumps(prediction.to_dict()), flush=True)
        elif not self.csv:
            if prediction.error:
                print(f"{prediction.path}: ERROR {prediction.error}", flush=True)
            else:
                ranked = ", ".join(f"{p['label']} ({p['score']:.3f})"
                                   for p in prediction.predictions)
                print(f"{prediction.path}: {ranked}", flush=True)

    def close(self) -> None:
        if self.handle:
            self.handle.close()


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from graft.errors import DataError
    from graft.workflows.predict import predict

    # The bar appears only for long runs (after 2 s), on stderr, so output stays clean.
    bar = tqdm(unit="img", desc="Predicting", disable=args.quiet, delay=2.0, file=sys.stderr,
               dynamic_ncols=True, leave=False)
    try:  # the model loads first: a bad model leaves an existing --csv file untouched
        predictions = predict(args.model, args.paths,
                              PredictConfig(**_options(args, PredictConfig)), on_result=bar.update)
    except BaseException:
        bar.close()
        raise
    writer = _PredictionWriter(args)
    try:
        for prediction in predictions:
            writer.write(prediction)
    finally:
        bar.close()
        writer.close()
    if writer.count == 0:
        raise DataError(
            f"No images found in {' '.join(args.paths)} (JPEG, PNG, GIF, BMP, WebP or TIFF)."
        )
    if writer.failed:
        _log(f"{writer.failed} of {writer.count} file(s) could not be read (see the errors above"
             f"{' and in ' + args.csv if args.csv else ''}).")
        return EXIT_SOME_FAILED
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from graft.workflows.evaluate import evaluate

    result = evaluate(args.model, args.data, EvaluateConfig(**_options(args, EvaluateConfig)),
                      progress=not args.quiet, log=_log)
    metrics = result.metrics
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['n_test']} images ({result.split}) from {metrics['data']}\n")
        print(result.report)
    _print_skipped(result.extraction.failures)
    if args.report:
        _log(f"Report written to {os.path.join(args.report, 'report.html')}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from graft.extras import require

    require("serve", command="graft serve")
    from graft.bundle.model import load_model_config
    from graft.serving import parse_models, serve

    options = _options(args, ServeConfig)
    options["models"] = parse_models(args.models)
    config = ServeConfig(**options).validate()
    for directory in config.models.values():
        load_model_config(directory)  # a bad directory is an error now, not after startup
    try:
        serve(config, log=_log, names=args.flags)  # error answers name the flags typed
    except KeyboardInterrupt:  # Ctrl-C: uvicorn drained the requests in flight, then re-raised
        _log("graft serve: stopped")
    return EXIT_OK


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from graft.data.fetch import fetch_dataset, list_datasets

    if args.list:
        for info in list_datasets():
            size = f"{info.size / 1e6:,.0f} MB" if all(f.size for f in info.files) else \
                "size not published"
            print(f"{info.name}  ({size}, {info.classes} classes, "
                  f"{info.images:,} images)\n  layout:   {info.layout}\n  licence:  "
                  f"{info.licence}\n  cite:     {info.citation}")
            for remote in info.files:
                pinned = remote.sha256 or "none published (printed when fetched)"
                print(f"  source:   {remote.url}\n  sha256:   {pinned}")
        return EXIT_OK
    if not args.name:
        raise ConfigError("graft data fetch needs a dataset name (see 'graft data fetch "
                          "--list').")
    path = fetch_dataset(args.name, args.to, from_files=args.from_files, mirror=args.mirror,
                         sha256=args.sha256, split=args.split, seed=args.seed,
                         cache_dir=args.cache_dir, progress=not args.quiet, log=_log)
    print(f"{args.name} is in {path}: graft train {path}")
    return EXIT_OK


def _cmd_data_check(args: argparse.Namespace) -> int:
    from graft.data import assign_splits, scan_dataset
    from graft.data.check import check_dataset, write_check_page

    dataset = assign_splits(scan_dataset(args.data, cache_dir=args.cache_dir,
                                         progress=not args.quiet),
                             **ExtractConfig(**_options(args, ExtractConfig)).split_params)
    report = check_dataset(dataset, near=args.near, progress=not args.quiet)
    if args.html:
        _log(f"Page written to {write_check_page(report, args.html)}")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_check(report)
    return 1 if report.leaks or report.label_conflicts else EXIT_OK


def _print_check(report) -> None:
    summary = report.summary_counts()
    classes = sorted({c for counts in report.counts.values() for c in counts})
    print(f"{report.root}: {summary['images']:,} images, {len(classes)} classes, splits: "
          f"{report.split_source}\n")
    width = max(9, *(len(c) + 2 for c in classes[:50]))
    print(f"{'class':<{width}}" + "".join(f"{s:>8}" for s in report.counts))
    for name in classes[:50]:
        print(f"{name:<{width}}" + "".join(f"{report.counts[s].get(name, 0):>8}"
                                          for s in report.counts))
    if len(classes) > 50:
        print(f"... {len(classes) - 50} more classes (all in --json)")
    print(f"{'imbalance':<{width}}" + "".join(f"{report.imbalance[s]:>8}" for s in report.counts))
    print("\nsizes (longer side): " + ", ".join(f"{k}: {v}" for k, v in report.sizes.items()))
    print("modes: " + ", ".join(f"{k}: {v}" for k, v in report.modes.items()))
    print(f"\nunreadable files: {len(report.unreadable)}")
    for item in report.unreadable[:20]:
        print(f"  {item['path']}: {item['reason']}")
    near = [g for g in report.near_duplicates if not g["across_splits"]]
    exact = [g for g in report.exact_duplicates if not g["across_splits"]]
    print(f"duplicates within a split: {len(exact)} exact, {len(near)} near")
    for title, groups in (("LEAKS across splits", report.leaks),
                          ("LABEL CONFLICTS", report.label_conflicts),
                          ("duplicates within a split", exact + near)):
        if not groups:
            continue
        print(f"\n{title}: {len(groups)}")
        for group in groups[:20]:
            print(f"  [{group['kind']}] " + "  =  ".join(
                f"{m['path']} ({m['split']}, {m['class']})" for m in group["images"]))
        if len(groups) > 20:
            print(f"  ... {len(groups) - 20} more (all in --json)")
    if not report.leaks and not report.label_conflicts:
        print("\nNo leak across splits and no label conflict.")


def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from graft.config import resolve_cache_dir
    from graft.features.admin import cache_entries, prune_cache

    if args.action == "info":
        entries = cache_entries(args.cache_dir)
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=2))
            return EXIT_OK
        print(f"Feature cache: {resolve_cache_dir(args.cache_dir)}")
        print(f"{'key':<22}{'backbone':<34}{'images':>9}{'failed':>8}{'features':>12}"
              f"{'graphs':>11}  last used")
        for e in entries:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)) \
                if e.last_used else "?"
            images = "?" if e.images < 0 else f"{e.images:,}"
            failed = "?" if e.failures < 0 else f"{e.failures:,}"
            print(f"{e.key:<22}{e.backbone[:33]:<34}{images:>9}{failed:>8}"
                  f"{_megabytes(e.bytes):>12}{_megabytes(e.graph_bytes):>11}  {used}")
        if not entries:
            print("(empty)")
        if any(e.images < 0 for e in entries):
            print("?: not indexed yet (written by an older graft); the next run that uses it "
                  "indexes it.")
        return EXIT_OK
    removed = prune_cache(args.cache_dir, older_than_days=args.older_than_days, keys=args.keys,
                          everything=args.everything, dry_run=args.dry_run)
    verb = "Would delete" if args.dry_run else "Deleted"
    total = sum(e.bytes + e.graph_bytes for e in removed) if args.dry_run else None
    for e in removed:
        images = "?" if e.images < 0 else f"{e.images:,}"
        print(f"{verb} {e.key} ({e.backbone}, {images} images, "
              f"{_megabytes(e.bytes)} of features)")
    print(f"{verb} {len(removed)} cache(s)" + (f", {_megabytes(total)}" if total else "") + ".")
    return EXIT_OK


def _cmd_backbones(args: argparse.Namespace) -> int:
    _require_train("graft backbones")
    from graft.backbones import describe_backbone, list_backbones

    rows = [describe_backbone(spec.name) for spec in list_backbones()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max(len(row["name"]) for row in rows)
    print(f"{'name':<{width}} {'default cut':<18} {'input':<6} {'pool':<12} {'weights':<14} "
          f"description")
    for row in rows:
        weights = "offline" if row["offline_weights"] else "hub/--weights"
        cut = f"{row['default_layer']} ({row['default_dim']}-d)"
        pool = row["pool"] + (f", {row['normalize']}" if row["normalize"] != "none" else "")
        print(f"{row['name']:<{width}} {cut:<18} {row['input_size'][1]:<6} {pool:<12} "
              f"{weights:<14} {row['description']}")
        cuts = ", ".join(f"{x['layer']} {x['dim']}" for x in row["layers"])
        print(f"{'':<{width}} layers: {cuts}")
    print("\nAny other timm model name works too (with hub access or --weights PATH); "
          "--json for everything.")
    return EXIT_OK


def _cmd_heads(args: argparse.Namespace) -> int:
    for name, description in catalog.HEAD_DESCRIPTIONS.items():
        print(f"{name:<14} {description}")
    return EXIT_OK


def _setup_logging(args: argparse.Namespace) -> None:
    """graft's own log lines (the thread plan...) on stderr with --verbose."""
    logger = logging.getLogger("graft")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("graft: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if getattr(args, "verbose", False) else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``graft`` command; return its exit status (see ``graft predict --help``)."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        _command_flags.clear()
        _command_flags.update(getattr(args, "flags", {}))
        _setup_logging(args)
        return args.func(args)
    except GraftError as exc:
        # the library names its parameters (top_k); here they are the flags typed (--top-k)
        print(f"graft: error: {exc.naming(getattr(args, 'flags', {}))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("graft: interrupted (extracted features are kept; re-run to resume)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `graft predict ... | head`: the reader went away; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
