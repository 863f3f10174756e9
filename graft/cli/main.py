"""The ``graft`` command: a thin layer over :mod:`graft.workflows`."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Sequence

from graft import __version__
from graft.catalog import DEFAULT_BACKBONE, DEFAULT_HEAD, HEAD_DESCRIPTIONS, POOLS
from graft.errors import ConfigError, GraftError

__all__ = ["build_parser", "main"]

# Exit codes (also in `graft predict --help`).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _require_train(command: str) -> None:
    from graft.extras import require

    require("train", command=command)


def _add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPUs to use, split between image decoding and ONNX Runtime "
                             "(default: all this process may use, affinity/cgroup aware)")


def _add_backbone_args(parser: argparse.ArgumentParser, *, mixed: bool = False) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", action="append", default=None, metavar="NAME",
                       help=f"registry or timm model name (default: {DEFAULT_BACKBONE}; see "
                            f"'graft backbones'); fuse several with A+B or a repeated --backbone")
    group.add_argument("--layer", action="append", default=None, metavar="LAYER",
                       help="where to cut: 'pool' (default for most), 'logits', a stage, or a "
                            "named cut (vgg16: fc6, fc7, pool5); NAME=LAYER per fused backbone")
    group.add_argument("--pool", default="avg", choices=POOLS,
                       help="reduction of a spatial map (stages, or 'pool' with max/avgmax/flatten)")
    group.add_argument("--weights", action="append", default=None, metavar="PATH",
                       help="local .pth/.safetensors/Keras .h5 file or http(s) URL; NAME=PATH per "
                            "fused backbone; default: offline weights shipped with graft, else "
                            "the model hub; 'random' for tests")
    group.add_argument("--image-size", type=int, default=None,
                       help="input resolution (default: the backbone's)")
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    _add_threads_arg(group)
    group.add_argument("--precision", default="fp32",
                       choices=("fp32", "int8", "fp16", "bf16") if mixed else ("fp32", "int8"),
                       help="fp32 (default), or int8: the backbone quantized with ONNX Runtime, "
                            "calibrated on up to 200 training images (about 1.3x faster "
                            "extraction on an AVX2 CPU; accuracy within a point, measured)"
                            + ("; fp16/bf16: autocast on CUDA (--device cuda), cached apart "
                               "from fp32 features" if mixed else ""))
    group.add_argument("--device", default="auto",
                       help="auto (CUDA if present, else ONNX Runtime on CPU), cpu, cuda, torch; "
                            "with --engine ray the actors' (cuda: one per GPU of the cluster)")
    _add_engine_args(group)
    group.add_argument("--cache-dir", default=None,
                       help="feature/ONNX cache (default: $GRAFT_CACHE_DIR, else the user cache dir)")


def _add_engine_args(group) -> None:
    group.add_argument("--engine", default="local", choices=("local", "ray"),
                       help="local (this process), or ray: decode and run the backbone on a Ray "
                            "cluster (needs graft[ray]); only this process writes the cache")
    group.add_argument("--address", default=None,
                       help="the Ray cluster with --engine ray: auto, HOST:PORT or ray://... "
                            "(default: $RAY_ADDRESS, else a local cluster)")


def _add_split_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("splits (unsplit data; pre-split folders keep theirs)")
    _add_split_flags(group, val_size=0.0, val_help="share of the images held out for "
                     "validation (default: 0)")


def _add_split_flags(group, *, val_size: float, val_help: str) -> None:
    group.add_argument("--test-size", type=float, default=0.2,
                       help="share of the images held out for the test split (default: 0.2); "
                            "an image's split depends only on its path and --seed")
    group.add_argument("--val-size", type=float, default=val_size, help=val_help)
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the hash split (default: 0); the same seed gives the same "
                            "split every run")
    group.add_argument("--group-regex", default=None, metavar="RE",
                       help="images whose relative paths give the same match (first group, else "
                            "the whole match) stay in one split")


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

    p = sub.add_parser("extract", parents=[common], help="extract features of an image folder into an HDF5 file")
    p.add_argument("data", help="DATA/<class>/<image>, pre-split DATA/{train,val,test}/..., CSV, "
                                "or s3://BUCKET/DATA")
    p.add_argument("--out", required=True, help="the feature file to write (.h5)")
    _add_backbone_args(p, mixed=True)
    _add_split_args(p)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("train", parents=[common], help="train and evaluate a classifier; write a model directory")
    p.add_argument("data", help="image folder (or s3://BUCKET/DATA), CSV of path,label, or a .h5 "
                                "from 'graft extract'")
    p.add_argument("--out", default="graft-model", help="model directory (default: graft-model)")
    p.add_argument("--head", default=DEFAULT_HEAD, choices=list(HEAD_DESCRIPTIONS),
                   help=f"classifier on the features (default: {DEFAULT_HEAD})")
    p.add_argument("--augment-views", type=int, default=0, metavar="K",
                   help="also extract K random augmented views of every training image (cached)")
    p.add_argument("--augment", default="flip,rotate,crop",
                   help="transformations for --augment-views: flip, rotate, crop, color")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument("--out-of-core", dest="out_of_core", action="store_const", const=True,
                        default=None,
                        help="train the head from the feature cache a chunk at a time (logreg), "
                             "never holding every feature in memory (default: only when they "
                             "would take more than half of the memory available)")
    memory.add_argument("--in-memory", dest="out_of_core", action="store_const", const=False,
                        help="always hold the features in memory")
    _add_backbone_args(p)
    _add_split_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", parents=[common],
                       help="fine-tune a pretrained network end to end; write a model directory")
    p.add_argument("data", help="image folder, s3://BUCKET/DATA or CSV (pre-split folders keep "
                                "their splits)")
    p.add_argument("--out", default="graft-finetuned",
                   help="model directory (default: graft-finetuned)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"registry or timm name (default: {DEFAULT_BACKBONE}, whose weights ship "
                        f"with graft)")
    p.add_argument("--weights", default=None, help="local weights file or URL (see 'train')")
    p.add_argument("--epochs", type=int, default=10,
                   help="stage 1: frozen backbone, new head (default: 10)")
    p.add_argument("--fine-tune-epochs", type=int, default=10,
                   help="stage 2: top blocks unfrozen (default: 10; 0 skips it)")
    p.add_argument("--unfreeze", default="2",
                   help="blocks to unfreeze in stage 2, or 'all' (default: 2)")
    p.add_argument("--lr", type=float, default=1e-3, help="stage-1 learning rate (default: 1e-3)")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5,
                   help="stage-2 learning rate (default: 1e-5)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input resolution (default: the backbone's)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per training step (default: 32)")
    p.add_argument("--augment", default="flip,rotate,crop",
                   help="comma-separated: flip, rotate, crop, color; or 'none' (default: "
                        "flip,rotate,crop)")
    p.add_argument("--dropout", type=float, default=0.2,
                   help="dropout before the new dense layer (default: 0.2)")
    p.add_argument("--class-weights", default=None, choices=("auto", "none"),
                   help="'auto' weights the loss by inverse class frequency (default: none)")
    p.add_argument("--patience", type=int, default=3,
                   help="early stopping, in epochs without a better validation loss (default: 3)")
    group = p.add_argument_group("splits (unsplit data; pre-split folders keep theirs)")
    _add_split_flags(group, val_size=0.1, val_help="share of the training images held out for "
                     "validation when there is no val split (default: 0.1)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda")
    p.add_argument("--workers", type=int, default=None,
                   help="image loading processes (default: up to 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--cache-dir", default=None,
                   help="weights/ONNX cache (default: $GRAFT_CACHE_DIR, else the user cache dir)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "predict", parents=[common], help="top-k predictions for images and folders",
        epilog="Exit status: 0 when every image was predicted, 1 when some could not be read "
               "(each is reported with its reason), 2 on an error (bad model, no images found, "
               "bad option), 130 when interrupted.")
    p.add_argument("model", help="model directory written by 'graft train'")
    p.add_argument("paths", nargs="+", help="image files or folders, local or s3:// (walked recursively)")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    _add_threads_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="write path, label, score and the top-k to FILE")
    _add_engine_args(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", parents=[common], help="score a saved model on a labeled image folder")
    p.add_argument("model", help="model directory written by 'graft train'")
    p.add_argument("data", help="labeled image folder, s3://BUCKET/DATA or CSV")
    p.add_argument("--split", default=None, choices=("all", "train", "val", "test"),
                   help="what to score (default: on the model's own training data, its "
                        "held-out test split, recomputed from graft.json; on other pre-split "
                        "data, its test (else val) folder; on other unsplit data, all)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    _add_threads_arg(p)
    p.add_argument("--cache-dir", default=None,
                   help="feature cache (default: $GRAFT_CACHE_DIR, else the user cache dir)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write report.html, its figures and metrics.json into DIR")
    _add_engine_args(p)
    p.set_defaults(func=_cmd_evaluate)

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
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; "
                        "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free)")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="most images in one batch through the model (default: 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0,
                   help="longest a batch waits for images still being decoded (default: 5); a "
                        "batch runs at once when nothing else is on the way")
    p.add_argument("--max-queue", type=int, default=256,
                   help="images admitted and not yet answered, per model; more get 503 with "
                        "Retry-After (default: 256)")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="requests not answered by then get 504 (default: 30)")
    p.add_argument("--max-body-mb", type=float, default=20.0,
                   help="largest request body in MB; larger gets 413 (default: 20)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest image in pixels, checked before decoding; larger gets 413 "
                        "(default: 89,478,485, PIL's decompression-bomb limit)")
    _add_threads_arg(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("cache", parents=[common], help="show or trim the feature cache")
    p.add_argument("action", choices=("info", "prune"),
                   help="info: each backbone's cached images and size; prune: delete caches")
    p.add_argument("--cache-dir", default=None,
                   help="the cache (default: $GRAFT_CACHE_DIR, else the user cache dir)")
    p.add_argument("--json", action="store_true", help="info as JSON")
    p.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="prune: caches not used for DAYS days")
    p.add_argument("--key", action="append", default=None, metavar="KEY",
                   help="prune: the cache with this key (see info; repeatable)")
    p.add_argument("--all", action="store_true", help="prune: every cache")
    p.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("data", parents=[common],
                       help="fetch a tutorial dataset, or check one for leaks and duplicates")
    data_sub = p.add_subparsers(dest="data_command", metavar="{fetch,check}")
    data_sub.required = True
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
    q.add_argument("--cache-dir", default=None,
                   help="where downloads are kept (default: $GRAFT_CACHE_DIR, else the user "
                        "cache dir)")
    q.set_defaults(func=_cmd_data_fetch)
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
    q.set_defaults(func=_cmd_data_check)

    p = sub.add_parser("backbones", parents=[common], help="list the registered backbones")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("heads", parents=[common], help="list the heads")
    p.set_defaults(func=_cmd_heads)
    return parser


def _backbone_kwargs(args: argparse.Namespace) -> dict:
    return {
        "backbone": args.backbone, "layer": args.layer, "pool": args.pool,
        "weights": args.weights, "image_size": args.image_size, "batch_size": args.batch_size,
        "device": args.device, "cache_dir": args.cache_dir, "threads": args.threads,
        "precision": args.precision, "engine": args.engine, "address": args.address,
    }


def _split_kwargs(args: argparse.Namespace) -> dict:
    return {"test_size": args.test_size, "val_size": args.val_size, "seed": args.seed,
            "group_regex": args.group_regex}


def _print_skipped(failures: Sequence[tuple[str, str]]) -> None:
    if failures:
        _log(f"Skipped {len(failures)} file(s) that could not be read:")
        for path, reason in failures:
            _log(f"  {path}: {reason}")


def _cmd_extract(args: argparse.Namespace) -> int:
    _require_train("graft extract")
    from graft.workflows.extract import extract

    path, report = extract(args.data, args.out, progress=not args.quiet,
                           **_backbone_kwargs(args), **_split_kwargs(args))
    _log(report.summary())
    _print_skipped(report.failures)
    _log(f"Features written to {path}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    _require_train("graft train")
    from graft.workflows.train import TrainConfig, train

    config = TrainConfig(head=args.head, augment_views=args.augment_views, augment=args.augment,
                         out_of_core=args.out_of_core, **_backbone_kwargs(args),
                         **_split_kwargs(args))
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
    import dataclasses

    from graft.finetune import FinetuneConfig, finetune

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in fields})
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
        predictions = predict(args.model, args.paths, top_k=args.top_k,
                              batch_size=args.batch_size, threads=args.threads,
                              on_result=bar.update, engine=args.engine, address=args.address)
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

    result = evaluate(args.model, args.data, split=args.split, batch_size=args.batch_size,
                      cache_dir=args.cache_dir, report=args.report, threads=args.threads,
                      progress=not args.quiet, log=_log, engine=args.engine,
                      address=args.address)
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
    from graft.serving import ServeConfig, parse_models, serve

    options = {k: getattr(args, k) for k in ("host", "port", "max_batch_size", "max_delay_ms",
                                             "max_queue", "timeout_s", "max_body_mb", "threads")}
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels
    config = ServeConfig(models=parse_models(args.models), **options).validate()
    for directory in config.models.values():
        load_model_config(directory)  # a bad directory is an error now, not after startup
    try:
        serve(config, log=_log)
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
                                         progress=not args.quiet), **_split_kwargs(args))
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
    removed = prune_cache(args.cache_dir, older_than_days=args.older_than, keys=args.key,
                          everything=args.all, dry_run=args.dry_run)
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
    print(f"{'name':<22} {'default cut':<18} {'input':<8} {'weights':<14} description")
    for row in rows:
        weights = "offline" if row["offline_weights"] else "hub/--weights"
        cut = f"{row['default_layer']} ({row['default_dim']}-d)"
        print(f"{row['name']:<22} {cut:<18} {row['input_size'][1]:<8} {weights:<14} "
              f"{row['description']}")
        cuts = ", ".join(f"{x['layer']} {x['dim']}" for x in row["layers"])
        print(f"{'':<22} layers: {cuts}")
    print("\nAny other timm model name works too (with hub access or --weights PATH); "
          "--json for everything.")
    return EXIT_OK


def _cmd_heads(args: argparse.Namespace) -> int:
    for name, description in HEAD_DESCRIPTIONS.items():
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
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args)
        return args.func(args)
    except GraftError as exc:
        print(f"graft: error: {exc}", file=sys.stderr)
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
