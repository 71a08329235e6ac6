"""The training loop shared by every model kind.

:func:`train` builds the model from its configuration (or takes one), optimises
``model.forward_loss(batch)`` with AdamW and a warmup + cosine schedule, and writes

* to ``state_dir`` (scratch, outside the workflow's outputs): ``checkpoint.pt`` every
  ``ckpt_every`` steps and at the end (atomic), and ``metrics.jsonl`` as it goes;
* to ``out_dir`` at the end (each file atomic): ``model.safetensors``, ``config.json``,
  ``metrics.jsonl``, ``curves.png``.

A run whose ``state_dir`` holds a checkpoint of the same configuration resumes from it:
weights, optimiser and scheduler state, the random states of every process and the
position in the data stream are restored, so the result equals an uninterrupted run's.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`; every rank reads its slice of the
same global batch; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainharmony.io import InputDataError, PathLike, atomic_path, config_digest, sha256_file
from brainharmony.train import checkpoint as ckpt
from brainharmony.train.config import ModelConfig, resolve_grad_accum
from brainharmony.train.data import SeededItems, StreamBatchSampler, _mix
from brainharmony.train.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    setup,
    teardown,
)
from brainharmony.train.metrics import MetricsLog, plot_curves, read_metrics
from brainharmony.train.optim import (
    build_optimizer,
    build_scheduler,
    decay_exempt_names,
    resolve_precision,
    set_weight_decay,
)

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainResult", "seed_everything", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped."""


@dataclass(frozen=True)
class TrainResult:
    """What a call of :func:`train` did.

    Attributes
    ----------
    step : int
        Optimiser steps completed (in total, across resumes).
    finished : bool
        True when all steps are done and ``out_dir`` was written.
    resumed_from : int
        The checkpoint step this call started from (0 for a fresh run).
    last_loss : float or None
        Loss of the last step run by this call.
    """

    step: int
    finished: bool
    resumed_from: int
    last_loss: float | None


class _LossModule(nn.Module):
    """Routes ``forward`` to ``forward_loss`` so that DDP synchronises its gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.forward_loss(batch)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 (seeding the global state)
    torch.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _digest(cfg: ModelConfig, data_files: Sequence[PathLike] = ()) -> str:
    """What must not change for a checkpoint to be resumed (logging cadence may): the
    configuration and the bytes of the data files (not their names, so a moved or
    copied run still resumes)."""
    doc = cfg.to_dict()
    for key in ("log_every", "ckpt_every", "num_workers"):
        doc["train"].pop(key, None)
    doc["data_files"] = [_content_digest(Path(f)) for f in data_files]
    return config_digest(doc)


def _content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; of a folder's files (names relative to it, sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return config_digest({str(f.relative_to(path)): _file_digest(f) for f in files})
    if not path.is_file():
        raise InputDataError(path, "training input not found")
    return _file_digest(path)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """:func:`sha256_file`, read once per process for a file whose size and mtime stay
    the same (the predictor's cross-validation calls :func:`train` per fold and step)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _readable_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none or it cannot be read.

    Checkpoints are written atomically, so an unreadable one was damaged afterwards
    (a disk fault, a copy cut short). It is kept for inspection as ``<name>.corrupt``
    and training starts over: the result still equals an uninterrupted run's, only the
    progress it held is lost.
    """
    if not path.is_file():
        return None
    try:
        return ckpt.load_checkpoint(path)
    except InputDataError as err:
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(FileNotFoundError):  # another rank moved it first
            os.replace(path, aside)
        logger.warning("%s; moved it to %s and starting over", err, aside.name)
        return None


@contextlib.contextmanager
def _deterministic_kernels(device: str | None):
    """On CPU, PyTorch's deterministic kernels for the duration of a training call.

    Without them, two runs of the tiny BrainHarmonix-F on two threads already differ in the
    last bits after four steps (a backward kernel that accumulates across threads), so a
    resumed run could not equal an uninterrupted one. The flag is global: it is restored
    on the way out. On CUDA the choice is left to the user (it needs
    ``CUBLAS_WORKSPACE_CONFIG`` and slows some kernels).
    """
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train(
    cfg: ModelConfig,
    dataset: Any,
    out_dir: PathLike,
    state_dir: PathLike,
    *,
    model: nn.Module | None = None,
    init_from: PathLike | None = None,
    max_steps_this_call: int | None = None,
    threads: int | None = None,
    device: str | None = None,
    inputs: Sequence[PathLike] = (),
    data_files: Sequence[PathLike] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) one model.

    Parameters
    ----------
    cfg : ModelConfig
        The parsed model YAML.
    dataset : map-style dataset
        Items are dicts collated by default collation; an optional ``batch_groups``
        attribute (list of index arrays) makes every batch come from one group.
    out_dir : path-like
        The model folder written at the end.
    state_dir : path-like
        Scratch folder for the checkpoint and the running metrics.
    model : nn.Module, optional
        Use this model instead of building ``cfg.kind`` from ``cfg.model`` (tests, custom
        models); it must have ``forward_loss``.
    init_from : path-like, optional
        A trained model folder whose matching weights initialise a fresh run (ignored
        when resuming).
    max_steps_this_call : int, optional
        Stop after this many steps without writing ``out_dir`` (as if killed; a later
        call resumes from the last checkpoint).
    threads : int, optional
        ``torch.set_num_threads``.
    device : {"cpu", "cuda"}, optional
        Default: CUDA when available.
    inputs : sequence of path-like
        Data files, recorded in ``config.json``'s provenance.
    data_files : sequence of path-like, optional
        Files (or folders) whose bytes the checkpoint is tied to (default ``inputs``): a
        checkpoint left by training on other data is not resumed. Without this, a
        rerun after the data changed would pick up the finished checkpoint of the old
        data and write its weights again.
    progress : bool
        Show a tqdm progress bar (rank 0).

    Raises
    ------
    NonFiniteLossError
        The loss or gradient norm is not finite; nothing is written for that step.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    ctx = setup(device)
    try:
        with _deterministic_kernels(device):
            return _train(
                cfg,
                dataset,
                Path(out_dir),
                Path(state_dir),
                ctx,
                model=model,
                init_from=init_from,
                max_steps_this_call=max_steps_this_call,
                inputs=inputs,
                data_files=inputs if data_files is None else data_files,
                progress=progress,
            )
    finally:
        teardown(ctx)


def _train(
    cfg: ModelConfig,
    dataset: Any,
    out_dir: Path,
    state_dir: Path,
    ctx: DistContext,
    *,
    model: nn.Module | None,
    init_from: PathLike | None,
    max_steps_this_call: int | None,
    inputs: Sequence[PathLike],
    data_files: Sequence[PathLike],
    progress: bool,
) -> TrainResult:
    from brainharmony.models.registry import build_model

    tc = cfg.train
    total = tc.steps
    # With train.global_batch the accumulation follows the process count, so every
    # optimiser step sees the same number of samples on 1 or N GPUs.
    grad_accum = resolve_grad_accum(tc, ctx.world_size, cfg.name)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    # Identical initial weights on every rank (DDP also broadcasts rank 0's).
    seed_everything(tc.seed)
    torch.backends.cudnn.benchmark = False
    if model is None:
        model = build_model(cfg.kind, cfg.model)
    if not hasattr(model, "forward_loss"):
        raise TypeError(f"model {type(model).__name__} has no forward_loss(batch)")

    ckpt_path = state_dir / ckpt.CHECKPOINT_NAME
    digest = _digest(cfg, data_files)
    state = _readable_checkpoint(ckpt_path)
    if state is not None and state["digest"] != digest:
        # A changed configuration or changed data makes the workflow rerun the job:
        # resuming would mix two trainings (or, from a finished checkpoint, write the old
        # weights again), so the stale state is ignored (and overwritten by the next one).
        logger.warning(
            "%s belongs to a different configuration or other data than %r (model, optim, "
            "train, data settings or the data files changed): starting over",
            ckpt_path,
            cfg.name,
        )
        state = None
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        start = int(state["step"])
        logger.info("resuming %s from step %d (%s)", cfg.name, start, ckpt_path)
    elif init_from is not None:
        missing, unexpected = ckpt.load_weights(
            model, Path(init_from) / ckpt.WEIGHTS_NAME, strict=False
        )
        loaded = len(model.state_dict()) - len(missing)
        if loaded == 0:
            raise ValueError(f"{init_from}: no weights match model {cfg.name!r}")
        logger.info(
            "initialised %d tensors from %s (%d not in it, %d unused)",
            loaded,
            init_from,
            len(missing),
            len(unexpected),
        )
    model.to(ctx.device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_scheduler(scheduler, state["scheduler"])
        rng = state["rng"]
        if len(rng) == ctx.world_size:
            ckpt.restore_rng(rng[ctx.rank])
        else:
            logger.warning(
                "checkpoint was written by %d processes, now %d: random streams reseeded",
                len(rng),
                ctx.world_size,
            )
            seed_everything(_mix(tc.seed, ctx.rank, start))
    else:
        seed_everything(_mix(tc.seed, ctx.rank))
    del state

    autocast_dtype = resolve_precision(tc.precision, ctx.device)
    wrapped: nn.Module = _LossModule(model)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            wrapped, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
        )

    metrics_path = state_dir / "metrics.jsonl"
    log = MetricsLog(metrics_path)
    if ctx.is_main:
        state_dir.mkdir(parents=True, exist_ok=True)
        log.truncate_after(start)

    end = total if max_steps_this_call is None else min(total, start + max_steps_this_call)
    sampler = StreamBatchSampler(
        len(dataset),
        tc.batch_size,
        tc.seed,
        start,
        end,
        rank=ctx.rank,
        world_size=ctx.world_size,
        grad_accum=grad_accum,
        groups=getattr(dataset, "batch_groups", None),
    )
    loader = torch.utils.data.DataLoader(
        SeededItems(dataset, tc.seed),
        batch_sampler=sampler,
        num_workers=tc.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(tc.seed),
    )
    clip = cfg.optim.clip_grad if cfg.optim.clip_grad else float("inf")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    exempt = decay_exempt_names(model)
    bar = None
    if progress and ctx.is_main and start < end:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=start,
            desc=cfg.name,
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
        )
    began = time.perf_counter()
    last_loss: float | None = None
    step = start
    batches = iter(loader)
    try:
        for step in range(start, end):
            wrapped.train()
            optimizer.zero_grad(set_to_none=True)
            lr = float(optimizer.param_groups[0]["lr"])
            wd = set_weight_decay(optimizer, exempt, cfg.optim, step, total)
            loss_acc = torch.zeros((), device=ctx.device)
            logs_acc: dict[str, float] = {}
            for micro in range(grad_accum):
                batch = _to_device(next(batches), ctx.device)
                sync = (
                    wrapped.no_sync()
                    if ctx.distributed and micro < grad_accum - 1
                    else contextlib.nullcontext()
                )
                autocast = (
                    torch.autocast(device_type=ctx.device.type, dtype=autocast_dtype)
                    if autocast_dtype is not None
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast:
                        loss, logs = wrapped(batch)
                    (loss.float() / grad_accum).backward()
                loss_acc += loss.detach().float() / grad_accum
                for key, value in logs.items():
                    logs_acc[key] = logs_acc.get(key, 0.0) + float(value) / grad_accum
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            loss_value = float(all_reduce_mean(loss_acc, ctx))
            if not (_finite(loss_value) and _finite(grad_norm)):
                raise NonFiniteLossError(
                    f"{cfg.name}: non-finite loss {loss_value} (gradient norm {grad_norm}) at "
                    f"step {step + 1}; this step was not applied and nothing was saved for it. "
                    f"The last checkpoint in {state_dir} (if any) is intact. Lower optim.lr, "
                    "raise warmup_steps or check the input data for NaN/inf."
                )
            optimizer.step()
            scheduler.step()
            done = step + 1
            if hasattr(model, "after_step"):
                model.after_step(done, total)
            last_loss = loss_value
            if done == 1 or done % tc.log_every == 0 or done == total:
                record: dict[str, Any] = {"step": done, "loss": loss_value, "lr": lr}
                if wd is not None:  # the cosine weight-decay schedule only
                    record["wd"] = wd
                record["grad_norm"] = grad_norm
                if logs_acc:
                    keys = sorted(logs_acc)
                    values = torch.tensor([logs_acc[k] for k in keys], device=ctx.device)
                    values = all_reduce_mean(values, ctx).tolist()
                    record.update(dict(zip(keys, values, strict=True)))
                record["elapsed_s"] = round(time.perf_counter() - began, 3)
                if ctx.is_main:
                    log.append(record)
                    logger.info(
                        "%s step %d/%d loss %.5g lr %.3g", cfg.name, done, total, loss_value, lr
                    )
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2e}", refresh=False)
            if done % tc.ckpt_every == 0 or done == total:
                rng_states = all_gather_objects(ckpt.capture_rng(), ctx)
                if ctx.is_main:
                    ckpt.save_checkpoint(
                        ckpt_path,
                        model=model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        step=done,
                        rng=rng_states,
                        digest=digest,
                    )
            if bar is not None:
                bar.update(1)
            step = done
    finally:
        if bar is not None:
            bar.close()
    if step < total:
        logger.info("%s: stopped at step %d of %d (max_steps_this_call)", cfg.name, step, total)
        return TrainResult(step=step, finished=False, resumed_from=start, last_loss=last_loss)

    if ctx.is_main:
        _write_model_folder(cfg, model, out_dir, metrics_path, total, inputs)
    return TrainResult(step=total, finished=True, resumed_from=start, last_loss=last_loss)


def _write_model_folder(
    cfg: ModelConfig,
    model: nn.Module,
    out_dir: Path,
    metrics_path: Path,
    steps: int,
    inputs: Sequence[PathLike],
) -> None:
    """``model.safetensors``, ``config.json``, ``metrics.jsonl``, ``curves.png`` (atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_metrics(metrics_path)
    if not records:
        raise RuntimeError(f"{metrics_path}: no metrics were logged")
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_bytes(metrics_path.read_bytes())
    plot_curves(records, out_dir / "curves.png", title=f"{cfg.name} ({cfg.kind})")
    ckpt.write_model_config(out_dir / ckpt.CONFIG_NAME, cfg, trained_steps=steps, inputs=inputs)
    ckpt.save_weights(
        out_dir / ckpt.WEIGHTS_NAME, model, metadata={"name": cfg.name, "kind": cfg.kind}
    )
    logger.info("wrote %s", out_dir)
