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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from graft import inference
from graft.backbones import Backbone, create_backbone, state_dict_sha256
from graft.bundle import BackboneRecipe, HeadSpec, SplitSpec, TrainingSpec, save_model
from graft.bundle.model import (
    CHECKPOINT_FILE,
    check_replaceable,
    staged_model_dir,
    write_metrics,
)
from graft.config import FinetuneConfig
from graft.data import (
    ImageDataset,
    Sample,
    assign_splits,
    check_output_dir,
    count_by_split,
    scan_dataset,
)
from graft.data.augment import parse_augment
from graft.data.contents import content_hashes
from graft.data.images import decode_image
from graft.data.preprocess import PreprocessConfig
from graft.data.storage import is_uri
from graft.errors import ConfigError, DataError, ImageError, ModelError, Note
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
from graft.system import ThreadPlan, plan_threads

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


@dataclass
class _StageBest:
    """A stage's epoch with the lowest validation loss so far, and the weights it ended with."""

    val_loss: float
    epoch: int | None  # None from older checkpoints, which did not record it
    model: dict[str, torch.Tensor]


@dataclass
class _TrainingState:
    """Where training stands: what the checkpoint saves after every epoch and a resume restores."""

    stage: int = 1
    epoch: int = 0  # epochs done in ``stage``
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_epochs: int = 0  # epochs since the stage's validation loss last fell
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"1": [], "2": []})
    stage_best: dict[str, _StageBest] = field(default_factory=dict)  # keyed by "1", "2"

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's entries: JSON for the counters and history, tensors for the weights,
        so that ``torch.load(weights_only=True)`` reads it back."""
        meta = {"stage": self.stage, "epoch": self.epoch, "history": self.history,
                "bad_epochs": self.bad_epochs, "seconds": self.seconds}
        return {"state": json.dumps(meta), "stage": self.stage,
                "best": None,  # unused; older graft versions read it when resuming
                "stage_best": {k: {"val_loss": v.val_loss, "epoch": v.epoch, "model": v.model}
                               for k, v in self.stage_best.items()}}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> _TrainingState:
        """The state :meth:`to_checkpoint` wrote, from the loaded checkpoint."""
        meta = json.loads(saved["state"])
        stage_best = {k: _StageBest(val_loss=v["val_loss"], epoch=v.get("epoch"),
                                    model=v["model"])
                      for k, v in saved["stage_best"].items() if v is not None}
        return cls(stage=meta["stage"], epoch=meta["epoch"], history=meta["history"],
                   bad_epochs=meta["bad_epochs"], seconds=meta["seconds"],
                   stage_best=stage_best)


@dataclass
class _Finetune:
    """The state one fine-tuning run builds up, step by step."""

    config: FinetuneConfig
    data: str | os.PathLike
    out: Path
    progress: bool
    log: Callable[[str], None]
    device: torch.device
    threads: ThreadPlan
    dataset: ImageDataset  # split, without the images that cannot be decoded
    by_split: dict[str, list[Sample]]
    failures: list[tuple[str, str]]  # (relpath, reason) of each image left out
    backbone: Backbone
    source: str  # the pretrained weights' source (saving replaces the backbone's)
    model: FinetuneModel
    augment: tuple[str, ...]
    loaders: dict[str, DataLoader] = field(default_factory=dict)
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    scaler: torch.amp.GradScaler | None = None
    state: _TrainingState = field(default_factory=_TrainingState)
    optimizer_state: dict[str, Any] | None = None  # a resumed stage's, used once
    stage_test: dict[str, float] = field(default_factory=dict)  # each stage's best, on test

    @property
    def index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.dataset.classes)}

    @property
    def workers(self) -> int:
        if self.config.workers is not None:
            return self.config.workers
        return min(2, self.threads.decode)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def config_json(self) -> str:
        """The options as the checkpoint records them: a resume must use the same."""
        return json.dumps(dataclasses.asdict(self.config), sort_keys=True)

    def loader(self, split: str, train: bool) -> DataLoader:
        """The images of ``split``, augmented and shuffled when ``train``."""
        samples, index = self.by_split[split], self.index
        images = TrainingImages(samples, [index[s.label] for s in samples],
                                self.backbone.preprocess, self.augment if train else ())
        return DataLoader(
            images, batch_size=self.config.batch_size, shuffle=train, num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.config.seed),
            pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
        )

    def save_checkpoint(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Atomically; the optimizer's state only within a stage (stage 2 starts a new one)."""
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save({"config": self.config_json, "model": self.model.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else {},
                    **self.state.to_checkpoint()}, tmp)
        os.replace(tmp, self.checkpoint_path)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_cuda(name)
    return torch.device(name)


def _splits(data: str | os.PathLike, config: FinetuneConfig) -> ImageDataset:
    """Train/val/test exactly as ``graft train`` makes them for the same ``test_size``, ``seed``
    and ``group_regex``; early stopping needs a val split, so pre-split data without one sets
    aside a stable share (``val_size``) of its training images."""
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
                    shuffle: bool) -> DataLoader:
    """The frozen prefix's output for every image, computed once, as a loader of (output, label)."""
    prefix.eval()
    outputs, labels = [], []
    with torch.no_grad():
        for images, y in loader:
            outputs.append(prefix(images.to(device)).float())
            labels.append(y.to(device))
    dataset = torch.utils.data.TensorDataset(torch.cat(outputs), torch.cat(labels))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def _cached_prefix_loaders(run: _Finetune) -> tuple[dict[str, DataLoader] | None, nn.Module | None]:
    """With augmentation off: loaders over the frozen prefix's outputs, and the forward of the
    rest; (None, None) when the network cannot be split or the cache would be too large."""
    split = run.model.split_frozen_prefix()
    if split is None:
        return None, None
    prefix, rest = split
    probe = torch.zeros(1, *run.backbone.preprocess.size, 3, dtype=torch.uint8,
                        device=run.device)
    with torch.no_grad():
        per_image = prefix.eval()(probe).numel() * 4
    n_images = len(run.by_split["train"]) + len(run.by_split["val"])
    if per_image * n_images > _PREFIX_CACHE_BYTES:
        run.log(f"  frozen-prefix cache skipped: {per_image * n_images / 2**30:.1f} GiB needed")
        return None, None
    start = time.perf_counter()
    batch_size, seed = run.config.batch_size, run.config.seed
    loaders = {
        "train": _prefix_outputs(prefix, run.loader("train", False), run.device, batch_size,
                                 seed, shuffle=True),
        "val": _prefix_outputs(prefix, run.loaders["val"], run.device, batch_size, seed,
                               shuffle=False),
    }
    run.log(f"  no augmentation: the frozen prefix ({len(prefix.stages)} modules) ran once "
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
    run = _setup(data, out, config or FinetuneConfig(), cache_dir, progress, log)
    _make_loaders(run)
    _resume(run, resume)
    _train_stages(run)
    final_stage = _choose_final(run.model, run.state, run.log)
    return _save_and_score(run, final_stage)


def _setup(data: str | os.PathLike, out: str | os.PathLike, config: FinetuneConfig,
           cache_dir: str | os.PathLike | None, progress: bool,
           log: Callable[[str], None]) -> _Finetune:
    """Step 1: check the options and the output path; split the images, drop those that cannot
    be decoded, and build the network (seeded first: a random head or backbone depends on it)."""
    config.validate()
    check_output_dir(out, data)
    check_replaceable(out)
    torch.manual_seed(config.seed)
    device = _device(config.device)
    threads = plan_threads()
    dataset = _splits(data, config)
    backbone = create_backbone(config.backbone, weights=config.weights,
                               image_size=config.image_size, cache_dir=cache_dir)
    source = backbone.weights_source
    dataset, failures = _usable(dataset, backbone.preprocess, threads.decode)
    for path, reason in failures:
        log(f"  skipped {path}: {reason}")
    by_split = _by_split(dataset)
    model = FinetuneModel(backbone, len(dataset.classes), dropout=config.dropout).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return _Finetune(config=config, data=data, out=Path(out), progress=progress, log=log,
                     device=device, threads=threads, dataset=dataset, by_split=by_split,
                     failures=failures, backbone=backbone, source=source, model=model,
                     augment=parse_augment(config.augment))


def _by_split(dataset: ImageDataset) -> dict[str, list[Sample]]:
    """The images of each split.

    Raises:
        DataError: When a class has no training image, or the validation or test split is empty.
    """
    by_split = {split: [s for s in dataset.samples if s.split == split]
                for split in ("train", "val", "test")}
    missing = [c for c in dataset.classes if not any(s.label == c for s in by_split["train"])]
    if missing or not by_split["test"] or not by_split["val"]:
        raise DataError(
            f"Fine-tuning needs training images of every class (missing: {missing or 'none'}), a "
            f"validation split ({len(by_split['val'])} images) and a test split "
            f"({len(by_split['test'])} images). Add images or adjust test_size/val_size.",
            parameter=("test_size", "val_size"))
    return by_split


def _make_loaders(run: _Finetune) -> None:
    """Step 2: the loaders of each split, the loss (class-weighted with ``class_weights="auto"``)
    and, on CUDA, the gradient scaler of mixed precision."""
    run.loaders = {"train": run.loader("train", True), "val": run.loader("val", False),
                   "test": run.loader("test", False)}
    weight = None
    if run.config.class_weights == "auto":
        from sklearn.utils.class_weight import compute_class_weight

        index = run.index
        y = np.array([index[s.label] for s in run.by_split["train"]])
        weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(index)), y=y),
                              dtype=torch.float32, device=run.device)
    run.loss_fn = nn.CrossEntropyLoss(weight=weight)
    run.scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" else None


def _resume(run: _Finetune, resume: bool) -> None:
    """Step 3: make ``out`` (the checkpoint lives there during the run) and, with ``resume``,
    continue from its checkpoint if there is one.

    Raises:
        ConfigError: When the checkpoint was written with other options.
    """
    run.out.mkdir(parents=True, exist_ok=True)
    path = run.checkpoint_path
    if not resume:
        return
    if not path.is_file():
        run.log(f"No checkpoint in {run.out} to resume from (a finished run deletes it): "
                f"starting afresh.")
        return
    # weights_only: tensors and plain containers only, so loading the file cannot run code.
    saved = torch.load(path, map_location=run.device, weights_only=True)
    if saved["config"] != run.config_json:
        raise ConfigError(
            f"{path} was written with other options; resume with the same "
            f"options, or start afresh without resume.", parameter="resume"
        )
    if saved["stage"] == 2:
        run.model.unfreeze(run.config.unfreeze)
    run.model.load_state_dict(saved["model"])
    run.optimizer_state = saved["optimizer"]
    run.state = _TrainingState.from_checkpoint(saved)
    run.log(f"Resuming at stage {run.state.stage}, after epoch {run.state.epoch}.")


def _train_stages(run: _Finetune) -> None:
    """Step 4: stage 1, then stage 2, each (or what a resume left of it) with early stopping;
    each ends on its best weights, whose test accuracy is recorded."""
    config, state = run.config, run.state
    stages = ((1, config.epochs, config.lr, "epochs"),
              (2, config.fine_tune_epochs, config.fine_tune_lr, "fine_tune_epochs"))
    for stage, epochs, lr, name in stages:
        if stage < state.stage:
            continue
        if epochs == 0:
            consequence = ("no backbone block is unfrozen and the final model is stage 1's"
                           if stage == 2 else "stage 2 trains the new head from scratch")
            run.log(Note(f"Stage {stage} skipped: {name} is 0, so {consequence}.",
                         parameter=name))
        else:
            _train_stage(run, stage, epochs, lr)
            run.optimizer_state = None  # a resumed optimizer belongs to the stage it was saved in
            best = state.stage_best.get(str(stage))
            if best is not None:
                run.model.load_state_dict(best.model)  # each stage continues from its best epoch
                probs, labels = _predict(run.model, run.loaders["test"], run.device)
                run.stage_test[str(stage)] = float(np.mean(probs.argmax(1) == labels))
        if stage == 1:
            state.stage, state.epoch, state.bad_epochs = 2, 0, 0
            run.save_checkpoint(None)


def _train_stage(run: _Finetune, stage: int, epochs: int, lr: float) -> None:
    """Run (or continue, after a resume) one stage's epochs with early stopping."""
    model, state = run.model, run.state
    if stage == 2 and state.epoch == 0:
        model.unfreeze(run.config.unfreeze)
    trainable = model.trainable_parameters()
    run.log(f"Stage {stage}: {trainable:,} trainable parameters, lr {lr:g}, up to {epochs} "
            f"epoch{'s' if epochs != 1 else ''}.")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if run.optimizer_state:
        optimizer.load_state_dict(run.optimizer_state)
    loaders, forward = _epoch_loaders(run, epochs)
    while state.epoch < epochs and state.bad_epochs < max(run.config.patience, 1):
        start = time.perf_counter()
        train = _run_epoch(model, loaders["train"], run.loss_fn, run.device, optimizer,
                           run.scaler, desc=f"stage {stage} epoch {state.epoch + 1}",
                           progress=run.progress, forward=forward)
        val = _run_epoch(model, loaders["val"], run.loss_fn, run.device, progress=False,
                         forward=forward)
        _record_epoch(run, stage, train, val, time.perf_counter() - start)
        run.save_checkpoint(optimizer)


def _epoch_loaders(run: _Finetune,
                   epochs: int) -> tuple[dict[str, DataLoader], nn.Module | None]:
    """The train and val loaders of a stage's epochs, and the forward that replaces the whole
    network's: over cached frozen-prefix outputs when no augmentation changes the images."""
    if not run.augment and run.state.epoch < epochs:
        cached, rest = _cached_prefix_loaders(run)
        if cached is not None:
            return cached, rest
    return {"train": run.loaders["train"], "val": run.loaders["val"]}, None


def _record_epoch(run: _Finetune, stage: int, train: tuple[float, float],
                  val: tuple[float, float], seconds: float) -> None:
    """Log and record an epoch's (loss, accuracy) on train and val; keep its weights when its
    validation loss is the stage's lowest so far, else count it towards early stopping."""
    state = run.state
    state.epoch += 1
    state.seconds[str(stage)].append(seconds)
    state.history.append({"stage": stage, "epoch": state.epoch,
                          "train_loss": train[0], "train_accuracy": train[1],
                          "val_loss": val[0], "val_accuracy": val[1], "seconds": seconds})
    run.log(f"  stage {stage} epoch {state.epoch}: loss {train[0]:.4f} acc {train[1]:.3f} | "
            f"val loss {val[0]:.4f} acc {val[1]:.3f} ({seconds:.1f}s)")
    best = state.stage_best.get(str(stage))
    if best is None or val[0] < best.val_loss:
        state.stage_best[str(stage)] = _StageBest(val_loss=val[0], epoch=state.epoch,
                                                  model=copy.deepcopy(run.model.state_dict()))
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1


def _choose_final(model: FinetuneModel, state: _TrainingState,
                  log: Callable[[str], None]) -> int | None:
    """Step 5: load the weights of the stage with the lowest validation loss; say which and why."""
    finals = state.stage_best
    if not finals:  # validate() refuses a run without epochs
        return None
    chosen = min(finals, key=lambda k: (finals[k].val_loss, k))
    model.load_state_dict(finals[chosen].model)

    def describe(stage: str) -> str:
        best = finals[stage]
        epoch = f" at epoch {best.epoch}" if best.epoch else ""
        return f"{best.val_loss:.4f}{epoch}"

    others = [k for k in sorted(finals) if k != chosen]
    if others:
        losses = "; ".join(f"stage {k}: {describe(k)}" for k in [chosen, *others])
        log(f"Final model: the stage {chosen} weights, with the lowest validation loss "
            f"({losses}).")
    else:
        log(f"Final model: the stage {chosen} weights, the only stage trained (lowest validation "
            f"loss {describe(chosen)}).")
    return int(chosen)


def _save_and_score(run: _Finetune, final_stage: int | None) -> FinetuneResult:
    """Step 6: save, load back through the one inference pipeline, score what was saved, and
    replace ``out`` (and the checkpoint in it, a torch pickle that is no part of the model) only
    if every step succeeds: a failed check leaves ``out`` as it was, checkpoint included."""
    with exact_float32(run.device):
        torch_probabilities, y_test = _predict(run.model, run.loaders["test"], run.device)
    test_paths = [s.path for s in run.by_split["test"]]
    samples = run.dataset.samples
    counts = count_by_split([s.split for s in samples], [s.label for s in samples])
    state = run.state
    info = {
        "n_train": len(run.by_split["train"]), "n_val": len(run.by_split["val"]),
        "history": state.history,
        "seconds_per_epoch": {k: float(np.mean(v)) for k, v in state.seconds.items() if v},
        "stage_test_accuracy": run.stage_test,
        "final_stage": final_stage,
        "skipped": [{"path": p, "reason": r} for p, r in run.failures],
    }
    with staged_model_dir(run.out) as staging:
        _save(run, counts, info, staging)
        probabilities, difference = _score_saved_model(staging, run.out, test_paths,
                                                       torch_probabilities)
        run.log(f"Saved model checked: its test probabilities match the trained network's "
                f"(max difference {difference:.1e}).")
        metrics = {**compute_metrics(y_test, probabilities, run.dataset.classes),
                   "scored_with": "saved model (graft.inference)",
                   "artifact_max_abs_difference": difference, **info}
        write_metrics(staging, metrics)
        _write_report(run, staging, metrics, counts, y_test, probabilities)
    return FinetuneResult(model_dir=run.out, metrics=metrics,
                          report=format_report(y_test, probabilities, run.dataset.classes),
                          history=state.history)


def _write_report(run: _Finetune, directory: Path, metrics: dict[str, Any],
                  counts: dict[str, dict[str, int]], y_test: np.ndarray,
                  probabilities: np.ndarray) -> None:
    """The model directory's report: test scores, the options, the data and learning curves."""
    config, backbone, train = run.config, run.backbone, run.by_split["train"]
    index = run.index
    write_report(directory, ReportInputs(
        title=f"{run.out.name}: fine-tuned {backbone.name}", metrics=metrics,
        labels=run.dataset.classes, y_true=y_test, probabilities=probabilities,
        test_paths=[s.path for s in run.by_split["test"]],
        config={"data": str(run.dataset.root), "backbone": backbone.name, "weights": run.source,
                **{k.replace("_", " "): v for k, v in dataclasses.asdict(config).items()
                   if k not in ("backbone", "weights")}},
        counts=counts,
        train_paths=[s.path for s in train],
        train_labels=[index[s.label] for s in train],
        history=run.state.history,
    ))


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


def _save(run: _Finetune, counts: dict[str, dict[str, int]], info: dict[str, Any],
          directory: Path) -> None:
    """The model directory; ``info`` is its metrics.json until the test scores replace it."""
    model = run.model.cpu().to(memory_format=torch.contiguous_format).eval()
    backbone, data, dataset = run.backbone, run.data, run.dataset
    backbone.weights_sha256 = state_dict_sha256(backbone.model)
    backbone.weights_source = f"finetuned from {run.source}"
    backbone_config = backbone.config()
    backbone_config["weights"] = None
    onnx_path = export_backbone_onnx(backbone, directory / ".backbone-export.onnx")
    head = nn.Sequential(copy.deepcopy(model.classifier), nn.Softmax(dim=1))
    # The images the network was fitted or selected on, so evaluation can detect overlap.
    seen = [s.path for split in ("train", "val") for s in run.by_split[split]]
    try:
        save_model(
            directory,
            backbone_onnx=[onnx_path],
            head_onnx=module_to_onnx(head, backbone.num_features),
            labels=dataset.classes,
            backbones=[BackboneRecipe.from_dict(backbone_config)],
            feature_keys=[backbone_key(backbone_config)],
            head=HeadSpec("finetune", class_name="Linear",
                          params=dataclasses.asdict(run.config)),
            metrics=info,
            training=TrainingSpec(
                source=data if is_uri(data) else str(Path(data).expanduser().resolve()),
                data=str(dataset.root), counts=counts, n_skipped=len(info["skipped"])),
            split=SplitSpec.from_params(dataset.split_source, dataset.split_params),
            train_content_hashes=content_hashes(seen, workers=run.threads.cpus),
        )
    finally:
        onnx_path.unlink(missing_ok=True)
