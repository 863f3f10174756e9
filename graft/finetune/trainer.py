"""Fine-tuning end to end: stage 1 trains a new head on a frozen backbone, stage 2 unfreezes the
top blocks at a lower learning rate (the Keras transfer-learning tutorial's recipe)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from graft import inference
from graft.backbones import create_backbone, state_dict_sha256
from graft.bundle import BackboneRecipe, HeadSpec, SplitSpec, TrainingSpec, save_model
from graft.bundle.model import (
    CHECKPOINT_FILE,
    check_replaceable,
    staged_model_dir,
    write_metrics,
)
from graft.data import (
    ImageDataset,
    assign_splits,
    check_output_dir,
    count_by_split,
    scan_dataset,
)
from graft.config import FinetuneConfig
from graft.data.augment import parse_augment
from graft.data.contents import content_hashes
from graft.data.images import decode_image
from graft.data.preprocess import PreprocessConfig
from graft.data.storage import is_uri
from graft.errors import ConfigError, DataError, ImageError, ModelError
from graft.evaluation import ReportInputs, compute_metrics, format_report, write_report
from graft.features.engine import (
    backbone_key,
    check_cuda,
    exact_float32,
    export_backbone_onnx,
)
from graft.finetune.data import TrainingImages
from graft.finetune.model import FinetuneModel
from graft.heads import module_to_onnx
from graft.inference.images import draft_size
from graft.system import plan_threads

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]

CHECKPOINT = CHECKPOINT_FILE
# The largest difference allowed between the trained network's and the saved model's probabilities.
PARITY_TOLERANCE = 1e-4


@dataclass
class FinetuneResult:
    model_dir: Path
    metrics: dict[str, Any]
    report: str
    history: list[dict[str, Any]] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_cuda(name)
    return torch.device(name)


def _splits(data: str | os.PathLike, config: FinetuneConfig) -> ImageDataset:
    """Train/val/test exactly as ``graft train`` makes them for the same --test-size, --seed and
    --group-regex; early stopping needs a val split, so pre-split data without one sets aside a
    stable share (--val-size) of its training images."""
    return assign_splits(scan_dataset(data), test_size=config.test_size,
                         val_size=config.val_size, seed=config.seed,
                         group_regex=config.group_regex)


def _usable(dataset: ImageDataset, preprocess: PreprocessConfig,
            threads: int) -> tuple[ImageDataset, list[tuple[str, str]]]:
    """Drop (and report) files that cannot be decoded, before they can crash a training epoch.

    Decodes as training and prediction do (same pixel limit and JPEG draft size), so a file
    that passes here decodes there too.
    """
    from concurrent.futures import ThreadPoolExecutor

    size = draft_size([preprocess])

    def check(sample):
        try:
            decode_image(sample.path, min_size=size)
            return None
        except ImageError as exc:
            return sample.relpath, exc.reason

    with ThreadPoolExecutor(max(1, threads)) as pool:
        problems = list(pool.map(check, dataset.samples))
    failures = sorted(p for p in problems if p)
    bad = {path for path, _ in failures}
    kept = [s for s in dataset.samples if s.relpath not in bad]
    return dataclasses.replace(dataset, samples=kept), failures


def _run_epoch(model: FinetuneModel, loader, loss_fn, device, optimizer=None, scaler=None,
               desc: str = "", progress: bool = True, forward=None) -> tuple[float, float]:
    """One pass over ``loader``; trains when given an optimizer. ``forward`` replaces
    ``model(images)`` (the head alone, on cached backbone features)."""
    forward = forward or model
    training = optimizer is not None
    model.train(training)
    total_loss, correct, count = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    with torch.set_grad_enabled(training):
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = forward(images)
                loss = loss_fn(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    bar.close()
    return total_loss / max(count, 1), correct / max(count, 1)


_PREFIX_CACHE_BYTES = 2 << 30  # cache frozen-prefix outputs up to 2 GiB in memory


def _prefix_outputs(prefix: nn.Module, loader, device, batch_size: int, seed: int,
                    shuffle: bool) -> torch.utils.data.DataLoader:
    """The frozen prefix's output for every image, computed once, as a loader of (output, label)."""
    prefix.eval()
    outputs, labels = [], []
    with torch.no_grad():
        for images, y in loader:
            outputs.append(prefix(images.to(device)).float())
            labels.append(y.to(device))
    dataset = torch.utils.data.TensorDataset(torch.cat(outputs), torch.cat(labels))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(seed))


def _cached_prefix_loaders(model: FinetuneModel, make_loader, val_loader, device,
                           config: FinetuneConfig, n_images: int, log):
    """With augmentation off: loaders over the frozen prefix's outputs, and the forward of the
    rest; (None, None) when the network cannot be split or the cache would be too large."""
    split = model.split_frozen_prefix()
    if split is None:
        return None, None
    prefix, rest = split
    probe = torch.zeros(1, *model.backbone.preprocess.size, 3, dtype=torch.uint8, device=device)
    with torch.no_grad():
        per_image = prefix.eval()(probe).numel() * 4
    if per_image * n_images > _PREFIX_CACHE_BYTES:
        log(f"  frozen-prefix cache skipped: {per_image * n_images / 2**30:.1f} GiB needed")
        return None, None
    start = time.perf_counter()
    loaders = {
        "train": _prefix_outputs(prefix, make_loader("train", False), device, config.batch_size,
                                 config.seed, shuffle=True),
        "val": _prefix_outputs(prefix, val_loader, device, config.batch_size, config.seed,
                               shuffle=False),
    }
    log(f"  no augmentation: the frozen prefix ({len(prefix.stages)} modules) ran once "
        f"({time.perf_counter() - start:.1f}s); each epoch runs only the trainable part")
    return loaders, rest


def _predict(model: FinetuneModel, loader, device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, labels = [], []
    with torch.no_grad():
        for images, y in loader:
            probs.append(torch.softmax(model(images.to(device)).float(), 1).cpu().numpy())
            labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def finetune(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "graft-finetuned",
    config: FinetuneConfig | None = None,
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> FinetuneResult:
    """Fine-tune a pretrained backbone on an image folder and write a model directory.

    Stage 1 trains global pooling + dropout + a dense layer on a frozen backbone; stage 2
    unfreezes the top ``unfreeze`` blocks and continues at ``fine_tune_lr``. Each stage validates
    every epoch, stops early after ``patience`` epochs without a lower validation loss, and keeps
    its best weights; the final model is the stage with the lower validation loss. A checkpoint
    after every epoch lets ``resume=True`` continue an interrupted run; it is deleted when the
    run succeeds.

    The result is the same model directory as ``graft train`` writes, and its test scores come
    from that directory through :func:`graft.inference.load`, after checking that it reproduces
    the trained network's probabilities.

    Raises:
        ModelError: When the saved model's probabilities differ from the trained network's by
            more than :data:`PARITY_TOLERANCE` on a test image.
    """
    config = config or FinetuneConfig()
    config.validate()
    check_output_dir(out, data)
    check_replaceable(out)
    out = Path(out)
    torch.manual_seed(config.seed)
    device = _device(config.device)
    threads = plan_threads()
    workers = config.workers if config.workers is not None else min(2, threads.decode)

    dataset = _splits(data, config)
    backbone = create_backbone(config.backbone, weights=config.weights,
                               image_size=config.image_size, cache_dir=cache_dir)
    source = backbone.weights_source
    dataset, failures = _usable(dataset, backbone.preprocess, threads.decode)
    for path, reason in failures:
        log(f"  skipped {path}: {reason}")
    index = {label: i for i, label in enumerate(dataset.classes)}
    by_split = {split: [s for s in dataset.samples if s.split == split]
                for split in ("train", "val", "test")}
    missing = [c for c in dataset.classes if not any(s.label == c for s in by_split["train"])]
    if missing or not by_split["test"] or not by_split["val"]:
        raise DataError(
            f"Fine-tuning needs training images of every class (missing: {missing or 'none'}), a "
            f"validation split ({len(by_split['val'])} images) and a test split "
            f"({len(by_split['test'])} images). Add images or adjust test_size/val_size.",
            parameter=("test_size", "val_size"))

    model = FinetuneModel(backbone, len(dataset.classes), dropout=config.dropout).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = parse_augment(config.augment)

    def loader(split: str, train: bool) -> torch.utils.data.DataLoader:
        samples = by_split[split]
        ds = TrainingImages(samples, [index[s.label] for s in samples], backbone.preprocess,
                            augment if train else ())
        generator = torch.Generator().manual_seed(config.seed)
        return torch.utils.data.DataLoader(
            ds, batch_size=config.batch_size, shuffle=train, num_workers=workers,
            generator=generator, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    loaders = {"train": loader("train", True), "val": loader("val", False),
               "test": loader("test", False)}
    weight = None
    if config.class_weights == "auto":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.array([index[s.label] for s in by_split["train"]])
        weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(index)), y=y),
                              dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

    state = {"stage": 1, "epoch": 0, "history": [], "best": None, "bad_epochs": 0,
             "stage_best": {}, "seconds": {"1": [], "2": []}}
    out.mkdir(parents=True, exist_ok=True)  # the checkpoint lives there during the run
    checkpoint_path = out / CHECKPOINT
    config_json = json.dumps(dataclasses.asdict(config), sort_keys=True)
    optimizer_state = None
    if resume and checkpoint_path.is_file():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if saved["config"] != config_json:
            raise ConfigError(
                f"{checkpoint_path} was written with other options; resume with the same "
                f"options, or start afresh without resume.", parameter="resume"
            )
        if saved["stage"] == 2:
            model.unfreeze(config.unfreeze)
        model.load_state_dict(saved["model"])
        optimizer_state = saved["optimizer"]
        state = json.loads(saved["state"])
        state["best"] = saved["best"]
        state["stage_best"] = saved["stage_best"]
        log(f"Resuming at stage {state['stage']}, after epoch {state['epoch']}.")
    elif resume:
        log(f"No checkpoint in {out} to resume from (a finished run deletes it): starting afresh.")

    def save_checkpoint(optimizer) -> None:
        """Atomically; the optimizer's state only within a stage (stage 2 starts a new one)."""
        meta = {k: v for k, v in state.items() if k not in ("best", "stage_best")}
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save({"config": config_json, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else {},
                    "state": json.dumps(meta),
                    "stage": state["stage"], "best": state["best"],
                    "stage_best": state["stage_best"]}, tmp)
        os.replace(tmp, checkpoint_path)

    stage_test: dict[str, float] = {}
    stages = ((1, config.epochs, config.lr, "--epochs"),
              (2, config.fine_tune_epochs, config.fine_tune_lr, "--fine-tune-epochs"))
    for stage, epochs, lr, flag in stages:
        if stage < state["stage"]:
            continue
        if epochs == 0:
            consequence = ("no backbone block is unfrozen and the final model is stage 1's"
                           if stage == 2 else "stage 2 trains the new head from scratch")
            log(f"Stage {stage} skipped: {flag} is 0, so {consequence}.")
        else:
            _train_stage(model, stage, epochs, lr, state, loaders, loader, loss_fn, scaler,
                         device, config, augment, by_split, optimizer_state, save_checkpoint,
                         progress, log)
            optimizer_state = None
            best = state["stage_best"].get(str(stage))
            if best is not None:
                model.load_state_dict(best["model"])  # each stage continues from its best epoch
                probs, labels = _predict(model, loaders["test"], device)
                stage_test[str(stage)] = float(np.mean(probs.argmax(1) == labels))
        if stage == 1:
            state.update(stage=2, epoch=0, bad_epochs=0)
            save_checkpoint(None)

    final_stage = _choose_final(model, state, log)
    with exact_float32(device):
        torch_probabilities, y_test = _predict(model, loaders["test"], device)
    test_paths = [s.path for s in by_split["test"]]
    counts = count_by_split([s.split for s in dataset.samples],
                            [s.label for s in dataset.samples])
    info = {
        "n_train": len(by_split["train"]), "n_val": len(by_split["val"]),
        "history": state["history"],
        "seconds_per_epoch": {k: float(np.mean(v)) for k, v in state["seconds"].items() if v},
        "stage_test_accuracy": stage_test,
        "final_stage": final_stage,
        "skipped": [{"path": p, "reason": r} for p, r in failures],
    }
    # Save, load back through the one inference pipeline, score what was saved, and replace
    # ``out`` (and the checkpoint in it, a torch pickle that is no part of the model) only if
    # every step succeeds: a failed check leaves ``out`` as it was, checkpoint included.
    with staged_model_dir(out) as staging:
        _save(model, backbone, source, config, data, dataset, by_split, counts, info, staging,
              threads.cpus)
        probabilities, difference = _score_saved_model(staging, out, test_paths,
                                                       torch_probabilities)
        log(f"Saved model checked: its test probabilities match the trained network's "
            f"(max difference {difference:.1e}).")
        metrics = {**compute_metrics(y_test, probabilities, dataset.classes),
                   "scored_with": "saved model (graft.inference)",
                   "artifact_max_abs_difference": difference, **info}
        write_metrics(staging, metrics)
        write_report(staging, ReportInputs(
            title=f"{out.name}: fine-tuned {backbone.name}", metrics=metrics,
            labels=dataset.classes, y_true=y_test, probabilities=probabilities,
            test_paths=test_paths,
            config={"data": str(dataset.root), "backbone": backbone.name, "weights": source,
                    **{k.replace("_", " "): v for k, v in dataclasses.asdict(config).items()
                       if k not in ("backbone", "weights")}},
            counts=counts,
            train_paths=[s.path for s in by_split["train"]],
            train_labels=[index[s.label] for s in by_split["train"]],
            history=state["history"],
        ))
    return FinetuneResult(model_dir=out, metrics=metrics,
                          report=format_report(y_test, probabilities, dataset.classes),
                          history=state["history"])


def _train_stage(model: FinetuneModel, stage: int, epochs: int, lr: float, state: dict[str, Any],
                 loaders, make_loader, loss_fn, scaler, device, config: FinetuneConfig,
                 augment: tuple[str, ...], by_split, optimizer_state, save_checkpoint,
                 progress: bool, log: Callable[[str], None]) -> None:
    """Run (or continue, after a resume) one stage's epochs with early stopping."""
    if stage == 2 and state["epoch"] == 0:
        model.unfreeze(config.unfreeze)
    trainable = model.trainable_parameters()
    log(f"Stage {stage}: {trainable:,} trainable parameters, lr {lr:g}, up to {epochs} "
        f"epoch{'s' if epochs != 1 else ''}.")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    epoch_loaders, forward = {"train": loaders["train"], "val": loaders["val"]}, None
    if not augment and state["epoch"] < epochs:
        cached, rest = _cached_prefix_loaders(
            model, make_loader, loaders["val"], device, config,
            len(by_split["train"]) + len(by_split["val"]), log)
        if cached is not None:
            epoch_loaders, forward = cached, rest
    while state["epoch"] < epochs and state["bad_epochs"] < max(config.patience, 1):
        start = time.perf_counter()
        train_loss, train_acc = _run_epoch(model, epoch_loaders["train"], loss_fn, device,
                                           optimizer, scaler, desc=f"stage {stage} epoch "
                                           f"{state['epoch'] + 1}", progress=progress,
                                           forward=forward)
        val_loss, val_acc = _run_epoch(model, epoch_loaders["val"], loss_fn, device,
                                       progress=False, forward=forward)
        seconds = time.perf_counter() - start
        state["epoch"] += 1
        state["seconds"][str(stage)].append(seconds)
        state["history"].append({"stage": stage, "epoch": state["epoch"],
                                 "train_loss": train_loss, "train_accuracy": train_acc,
                                 "val_loss": val_loss, "val_accuracy": val_acc,
                                 "seconds": seconds})
        log(f"  stage {stage} epoch {state['epoch']}: loss {train_loss:.4f} acc "
            f"{train_acc:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f} ({seconds:.1f}s)")
        best = state["stage_best"].get(str(stage))
        if best is None or val_loss < best["val_loss"]:
            state["stage_best"][str(stage)] = {"val_loss": val_loss, "epoch": state["epoch"],
                                               "model": copy.deepcopy(model.state_dict())}
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        save_checkpoint(optimizer)


def _choose_final(model: FinetuneModel, state: dict[str, Any],
                  log: Callable[[str], None]) -> int | None:
    """Load the weights of the stage with the lowest validation loss; say which and why."""
    finals = {k: v for k, v in state["stage_best"].items() if v is not None}
    if not finals:  # validate() refuses a run without epochs
        return None
    chosen = min(finals, key=lambda k: (finals[k]["val_loss"], k))
    model.load_state_dict(finals[chosen]["model"])

    def describe(stage: str) -> str:
        best = finals[stage]
        epoch = f" at epoch {best['epoch']}" if best.get("epoch") else ""
        return f"{best['val_loss']:.4f}{epoch}"

    others = [k for k in sorted(finals) if k != chosen]
    if others:
        losses = "; ".join(f"stage {k}: {describe(k)}" for k in [chosen, *others])
        log(f"Final model: the stage {chosen} weights, with the lowest validation loss "
            f"({losses}).")
    else:
        log(f"Final model: the stage {chosen} weights, the only stage trained (lowest validation "
            f"loss {describe(chosen)}).")
    return int(chosen)


def _score_saved_model(model_dir: Path, out: Path, test_paths: list[Path],
                       expected: np.ndarray) -> tuple[np.ndarray, float]:
    """The saved model's test probabilities, through the one inference pipeline, checked
    against the trained network's on every test image.

    Raises:
        ModelError: When they differ by more than :data:`PARITY_TOLERANCE`.
    """
    with inference.load(model_dir) as predictor:
        probabilities = predictor.predict_proba(test_paths)
    if probabilities.shape != expected.shape:
        raise ModelError(
            f"The saved model gave probabilities of shape {probabilities.shape} for the test "
            f"split; the trained network gave {expected.shape}. The model was not saved to "
            f"{out}. Please report this with the command you ran."
        )
    gaps = np.abs(probabilities.astype(np.float64) - expected.astype(np.float64))
    difference = float(gaps.max()) if gaps.size else 0.0
    if not difference <= PARITY_TOLERANCE:
        worst = test_paths[int(np.unravel_index(gaps.argmax(), gaps.shape)[0])]
        raise ModelError(
            f"The saved model does not reproduce the trained network: their test probabilities "
            f"differ by up to {difference:.2e} (tolerance {PARITY_TOLERANCE:g}; worst image: "
            f"{worst}). The model was not saved to {out}, because its scores would not be the "
            f"shipped model's; the checkpoint there is kept. Try another backbone, or report "
            f"this with the command you ran.", parameter="backbone"
        )
    return probabilities, difference


def _save(model: FinetuneModel, backbone, source: str, config: FinetuneConfig,
          data: str | os.PathLike, dataset: ImageDataset, by_split: dict[str, list],
          counts: dict[str, dict[str, int]], info: dict[str, Any], directory: Path,
          threads: int) -> None:
    """The model directory; ``info`` is its metrics.json until the test scores replace it."""
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    backbone.weights_sha256 = state_dict_sha256(backbone.model)
    backbone.weights_source = f"finetuned from {source}"
    backbone_config = backbone.config()
    backbone_config["weights"] = None
    onnx_path = export_backbone_onnx(backbone, directory / ".backbone-export.onnx")
    head = nn.Sequential(copy.deepcopy(model.classifier), nn.Softmax(dim=1))
    # The images the network was fitted or selected on, so evaluation can detect overlap.
    seen = [s.path for split in ("train", "val") for s in by_split[split]]
    try:
        save_model(
            directory,
            backbone_onnx=[onnx_path],
            head_onnx=module_to_onnx(head, backbone.num_features),
            labels=dataset.classes,
            backbones=[BackboneRecipe.from_dict(backbone_config)],
            feature_keys=[backbone_key(backbone_config)],
            head=HeadSpec("finetune", class_name="Linear", params=dataclasses.asdict(config)),
            metrics=info,
            training=TrainingSpec(
                source=data if is_uri(data) else str(Path(data).expanduser().resolve()),
                data=str(dataset.root), counts=counts, n_skipped=len(info["skipped"])),
            split=SplitSpec.from_params(dataset.split_source, dataset.split_params),
            train_fingerprints=content_hashes(seen, workers=threads),
        )
    finally:
        onnx_path.unlink(missing_ok=True)
