"""Fine-tuning a pretrained model through its ``encode`` on the evaluation folds.

Generic over model kinds: the model is rebuilt from its folder (``config.json`` with
``kind`` and ``model``, plus ``model.safetensors``) through
:func:`brainharmony.models.registry.build_model`, and only its
``encode(batch) -> (B, D)`` is used. A head ``LayerNorm(D) -> Linear(D, out)`` (the
papers' ``fc_norm`` + linear head) is trained on the fold's training subjects:

* ``train_encoder: true`` (default; the published BrainHarmonix stage 2): the model's
  parameters that ``encode`` reaches (found by one backward pass: for the Harmonizer
  its hub tokens, input projections, blocks and norms, not its decoders; for
  BrainHarmonix-F the encoder ``encode`` uses) are trained with the head, restarting
  from the pretrained weights in every fold. The inputs of the Harmonizer are the
  frozen S/F tokens, so the S and F encoders never change. Learning rates decay layer
  by layer (:func:`param_groups`), drop-path is switched on in the trained blocks
  (:func:`set_drop_path`, training only).
* ``train_encoder: false``: the encoder is frozen (a linear probe on its features,
  computed once per item and reused by every fold, seed and learning rate).

Per learning rate (``lrs``, the head's peak rate), training runs for up to ``epochs``
epochs (AdamW, ``weight_decay`` on matrices only; cross-entropy with
``label_smoothing``, or MSE on the standardised target), the rate warming up linearly
for ``warmup_epochs`` and then following a cosine to ``min_lr`` (:func:`lr_at`, every
step), and stops after ``patience`` epochs without improvement of the validation
selection metric; the (learning rate, epoch) with the best validation score gives the
test predictions. A subject with several items (sessions, runs) is predicted by the
mean of its items' probabilities / values.

Items come from an *item source*: any object with ``len``, integer indexing that
returns a dict batch item, and ``subjects`` (the subject of every item). The packed
datasets of :mod:`brainharmony.packing` and the fused token files are wrapped by
:func:`item_source`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainharmony.evaluate.harness import Fold, FoldOutcome, HarnessModel, ModelInfo, Output
from brainharmony.evaluate.settings import EvalSettings, TaskSpec
from brainharmony.io import InputDataError, PathLike
from brainharmony.packing import PackedSeriesDataset, PackedVolumeDataset, read_index

logger = logging.getLogger(__name__)


def load_model_folder(model_dir: PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from ``config.json`` + ``model.safetensors`` through the registry.

    Returns
    -------
    model : nn.Module
        In eval mode, on the CPU.
    config : dict
        The parsed ``config.json``.
    """
    from safetensors.torch import load_file

    from brainharmony.models.registry import build_model

    folder = Path(model_dir)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise InputDataError(
                p, "not found (a trained model folder holds config.json and model.safetensors)"
            )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputDataError(cfg_path, f"not valid JSON: {err}") from None
    if "kind" not in config:
        raise InputDataError(cfg_path, "no 'kind' key")
    model = build_model(config["kind"], config.get("model") or {})
    state = load_file(str(weights))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputDataError(weights, f"weights do not match the model: {err}") from None
    if missing or unexpected:
        raise InputDataError(
            weights,
            f"weights do not match the model: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}",
        )
    if not hasattr(model, "encode"):
        raise InputDataError(cfg_path, f"model kind {config['kind']!r} has no encode(batch)")
    return model.eval(), config


class PackedItems:
    """An item source over a packed dataset: items plus the subject of each item."""

    def __init__(self, dataset: Any, subjects: Sequence[str]) -> None:
        if len(subjects) != len(dataset):
            raise ValueError(f"{len(subjects)} subjects for {len(dataset)} items")
        self.dataset = dataset
        self.subjects = np.asarray([str(s) for s in subjects], dtype=object)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[i]


class ConcatItems:
    """Several item sources back to back (e.g. the datasets of a cohort)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0, *(len(s) for s in self.sources)])
        self.subjects = np.concatenate([np.asarray(s.subjects, dtype=object) for s in sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.sources[k][i - int(self.offsets[k])]


def item_source(
    kind: str,
    data_cfg: Mapping[str, Any],
    shards: Sequence[tuple[PathLike, PathLike]] = (),
    tokens: Sequence[PathLike] = (),
    scaling: PathLike | None = None,
) -> Any:
    """Build the item source a model of data kind ``kind`` consumes.

    Parameters
    ----------
    kind : {"series", "volumes", "fused"}
        ``data.kind`` of the model's config.
    data_cfg : mapping
        The model's ``data`` block (``window`` for series).
    shards : sequence of (shard, index)
        Packed series or volume shards with their index TSVs.
    tokens : sequence of path-like
        Index TSVs of fused token files (``fused``).
    scaling : path-like, optional
        Robust-scaling statistics for series.
    """

    sources: list[Any] = []
    if kind == "series":
        stats = None
        if scaling is not None:
            from brainharmony.timeseries.scaling import load_stats

            stats = load_stats(scaling)
        for shard, index in shards:
            idx = read_index(index)
            ds = PackedSeriesDataset(
                shard, idx, window=data_cfg.get("window"), crop="center", scaling=stats
            )
            sources.append(PackedItems(ds, idx["subject"].astype(str).tolist()))
    elif kind == "volumes":
        for shard, index in shards:
            idx = read_index(index)
            ds = PackedVolumeDataset(shard, idx)
            sources.append(PackedItems(ds, idx["subject"].astype(str).tolist()))
    elif kind == "fused":
        from brainharmony.models.harmonizer_data import FusedDataset, read_token_index

        for index in tokens:
            table = read_token_index(index)
            sources.append(PackedItems(FusedDataset(table), table["subject"].tolist()))
    else:
        raise ValueError(f"unknown data kind {kind!r}; expected series, volumes or fused")
    if not sources:
        raise ValueError(f"no input given for data kind {kind!r} (--ft-shard / --ft-tokens)")
    return sources[0] if len(sources) == 1 else ConcatItems(sources)


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from torch.utils.data import default_collate

    return default_collate(list(items))


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------- the recipe

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def lr_at(epoch: float, base: float, epochs: float, warmup: float, min_lr: float) -> float:
    """Learning rate at (fractional) ``epoch``: linear warmup, then half a cosine.

    ``base * epoch / warmup`` for ``epoch < warmup``, then
    ``min_lr + (base - min_lr) * (1 + cos(pi * (epoch - warmup) / (epochs - warmup))) / 2``
    (the MAE/BrainHarmonix ``adjust_learning_rate``).
    """
    if epoch < warmup:
        return base * epoch / warmup
    if epochs <= warmup:
        return base
    t = min((epoch - warmup) / (epochs - warmup), 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def block_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to (``...blocks.<i>.``)."""
    found = _BLOCK.findall(name)
    return int(found[-1]) if found else None


def layer_id(name: str, n_blocks: int) -> int:
    """Layer of a parameter for layer-wise decay: 0 for the inputs (embeddings, input
    projections, hub / modality tokens), ``i + 1`` for block ``i``, ``n_blocks + 1`` for
    the norms after the blocks (``...norm...`` outside a block)."""
    i = block_index(name)
    if i is not None:
        return i + 1
    return n_blocks + 1 if "norm" in name.rsplit(".", 1)[0] else 0


def param_groups(
    named: Sequence[tuple[str, nn.Parameter]],
    decay: float,
    weight_decay: float,
    n_blocks: int | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise learning-rate decay.

    A parameter of layer ``l`` (:func:`layer_id`) gets ``lr_scale = decay **
    (n_blocks + 1 - l)``: the last block ``decay``, the first ``decay ** n_blocks``, the
    inputs ``decay ** (n_blocks + 1)``, the final norms 1. Matrices get
    ``weight_decay``, vectors (biases, norms) none.
    """
    if n_blocks is None:
        idx = [block_index(n) for n, _ in named]
        n_blocks = max((i for i in idx if i is not None), default=-1) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        lid = layer_id(name, n_blocks)
        no_wd = p.ndim <= 1
        g = groups.setdefault(
            (lid, no_wd),
            {
                "params": [],
                "names": [],
                "layer": lid,
                "lr_scale": float(decay ** (n_blocks + 1 - lid)),
                "weight_decay": 0.0 if no_wd else float(weight_decay),
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def loss_function(task_type: str, label_smoothing: float = 0.0) -> nn.Module:
    """Training loss: cross-entropy with label smoothing (the target gets
    ``1 - eps + eps / K``, every other class ``eps / K``) for classification, MSE on
    the standardised target for regression."""
    if task_type == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return nn.MSELoss()


def reached_parameters(model: nn.Module, batch: Mapping[str, Any]) -> list[str]:
    """Names of the parameters that ``model.encode(batch)`` depends on (one backward)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    model.encode(batch).float().sum().backward()
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    for n, p in model.named_parameters():
        p.grad = None
        p.requires_grad_(flags[n])
    return names


def set_drop_path(model: nn.Module, trained: Sequence[str], rate: float) -> int:
    """Stochastic depth in the trained blocks: block ``i`` of ``n`` drops its residual
    branches with ``rate * i / (n - 1)`` (only in training mode). Returns ``n``."""
    from brainharmony.models.blocks import DropPath

    blocks: dict[int, list[DropPath]] = {}
    for name, module in model.named_modules():
        i = block_index(name)
        if not isinstance(module, DropPath) or i is None:
            continue
        tag = f"blocks.{i}."
        block = name[: name.rindex(tag) + len(tag)]
        if any(t.startswith(block) for t in trained):
            blocks.setdefault(i, []).append(module)
    n = max(blocks, default=-1) + 1
    for i, modules in blocks.items():
        for m in modules:
            m.p = rate * i / max(n - 1, 1)
    return n


def new_head(dim: int, n_out: int, init_std: float) -> nn.Sequential:
    """The fine-tuning head ``LayerNorm(dim) -> Linear(dim, n_out)``: weights
    truncated-normal with ``init_std`` (torch's bounds of +-2), bias 0."""
    head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_out))
    nn.init.trunc_normal_(head[1].weight, std=init_std)
    nn.init.zeros_(head[1].bias)
    return head


class FineTune(HarnessModel):
    """Head (and optionally encoder) training through ``encode`` on each fold."""

    def __init__(
        self,
        info: ModelInfo,
        task: TaskSpec,
        settings: EvalSettings,
        inputs: Mapping[str, Any],
    ) -> None:
        super().__init__(info, task, settings, inputs)
        dirs = inputs.get("model_dir", {})
        if info.name not in dirs:
            raise ValueError(f"{info.name}: no model folder given (--finetune NAME=DIR)")
        self.model_dir = Path(dirs[info.name])
        self.encoder, self.config = load_model_folder(self.model_dir)
        self.pretrained = copy.deepcopy(self.encoder.state_dict())
        factory = inputs.get("finetune_data")
        if factory is None:
            raise ValueError(f"{info.name}: no fine-tuning data given (--ft-shard / --ft-tokens)")
        data_cfg = dict(self.config.get("data") or {})
        self.source = (
            factory(str(data_cfg.get("kind", "series")), data_cfg) if callable(factory) else factory
        )
        self.ft = settings.finetune
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._features: torch.Tensor | None = None
        self._dim: int | None = None  # width of ``encode``'s output
        items: dict[str, list[int]] = {}
        for i, s in enumerate(self.source.subjects):
            items.setdefault(str(s), []).append(i)
        self._by_subject = {k: np.asarray(v, dtype=np.int64) for k, v in items.items()}
        #: names of the trained model parameters (those ``encode`` reaches)
        self.trained: list[str] = []
        self.n_blocks = 0
        if self.ft.train_encoder:
            self.encoder.to(self.device)
            probe = _to(_collate([self.source[0]]), self.device)
            self.trained = reached_parameters(self.encoder, probe)
            if not self.trained:
                raise ValueError(f"{info.name}: encode reaches no parameter to fine-tune")
            wanted = set(self.trained)
            for n, p in self.encoder.named_parameters():
                p.requires_grad_(n in wanted)
            self.n_blocks = set_drop_path(self.encoder, self.trained, self.ft.drop_path)

    def available_subjects(self) -> set[str] | None:
        return set(self._by_subject)

    # ------------------------------------------------------------------ features

    def _encode(self, indices: np.ndarray, grad: bool) -> torch.Tensor:
        bs = self.ft.batch_size
        outs = []
        for start in range(0, indices.size, bs):
            batch = _to(
                _collate([self.source[int(i)] for i in indices[start : start + bs]]), self.device
            )
            with torch.set_grad_enabled(grad):
                feats = self.encoder.encode(batch)
            if feats.ndim != 2:
                raise ValueError(
                    f"{self.name}: encode returned shape {tuple(feats.shape)}; expected (B, D)"
                )
            outs.append(feats.float())
        return torch.cat(outs)

    def _frozen_features(self) -> torch.Tensor:
        if self._features is None:
            self.encoder.to(self.device).eval()
            with torch.no_grad():
                self._features = self._encode(np.arange(len(self.source)), grad=False)
        return self._features

    # ------------------------------------------------------------------ training

    def _items(self, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item indices of ``subjects`` and, for each item, the subject's position."""
        idx, owner = [], []
        for j, s in enumerate(subjects):
            items = self._by_subject[str(s)]
            idx.append(items)
            owner.append(np.full(items.size, j))
        return np.concatenate(idx), np.concatenate(owner)

    def _targets(self, y: np.ndarray, classes: Sequence[str] | None) -> torch.Tensor:
        if self.task.type == "classification":
            pos = {c: i for i, c in enumerate(classes or ())}
            return torch.tensor([pos[str(v)] for v in y], dtype=torch.long)
        return torch.tensor(np.asarray(y, dtype=float), dtype=torch.float32)

    def _predict(
        self,
        head: nn.Module,
        subjects: np.ndarray,
        classes: Sequence[str] | None,
        y_mean: float,
        y_std: float,
        frozen: bool,
    ) -> Output:
        idx, owner = self._items(subjects)
        head.eval()
        self.encoder.eval()
        with torch.no_grad():
            feats = (
                self._frozen_features()[torch.as_tensor(idx)]
                if frozen
                else self._encode(idx, grad=False)
            )
            out = head(feats.to(self.device)).cpu().double().numpy()
        n = subjects.size
        if self.task.type == "regression":
            values = out[:, 0] * y_std + y_mean
            sums = np.bincount(owner, weights=values, minlength=n)
            return Output(sums / np.bincount(owner, minlength=n))
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        proba = np.zeros((n, p.shape[1]))
        np.add.at(proba, owner, p)
        proba /= np.bincount(owner, minlength=n)[:, None]
        labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        return Output(labels, proba)

    def _train_one(self, fold: Fold, lr: float) -> tuple[float, int, Output, Output]:
        """Train with one learning rate; return best val score, epoch and outputs."""
        frozen = not self.ft.train_encoder
        classes = fold.classes
        seed = 1_000_003 * fold.seed + 7919 * fold.index  # same fold, same run
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # head initialisation
        if not frozen:
            self.encoder.load_state_dict(self.pretrained)
            self.encoder.to(self.device)
        tr_idx, tr_owner = self._items(fold.train)
        y = self._targets(fold.y_train, classes)
        y_mean, y_std = 0.0, 1.0
        if self.task.type == "regression":
            y_mean = float(y.mean())
            y_std = float(y.std()) if y.numel() > 1 and float(y.std()) > 0 else 1.0
            y = (y - y_mean) / y_std
        item_y = y[torch.as_tensor(tr_owner)]
        feats0 = self._frozen_features() if frozen else None
        if feats0 is not None:
            dim = int(feats0.shape[1])
        else:
            if self._dim is None:  # one encoding, once: the width does not change
                self._dim = int(self._encode(tr_idx[:1], grad=False).shape[1])
            dim = self._dim
        n_out = len(classes) if self.task.type == "classification" and classes else 1
        head = new_head(dim, n_out, self.ft.head_init_std).to(self.device)
        groups = [
            {**g, "lr_scale": 1.0}
            for g in param_groups(
                [(f"head.{n}", p) for n, p in head.named_parameters()],
                self.ft.layer_decay,
                self.ft.weight_decay,
                n_blocks=0,
            )
        ]
        if not frozen:
            params = dict(self.encoder.named_parameters())
            groups += param_groups(
                [(n, params[n]) for n in self.trained],
                self.ft.layer_decay,
                self.ft.weight_decay,
                n_blocks=self.n_blocks,
            )
        for g in groups:
            g["lr"] = 0.0
        opt = torch.optim.AdamW(groups)
        steps = max(1, -(-tr_idx.size // self.ft.batch_size))
        loss_fn = loss_function(self.task.type, self.ft.label_smoothing)
        best_score, best_epoch, best_val = -np.inf, 0, None
        best_state: dict[str, Any] | None = None
        since = 0
        bs = self.ft.batch_size
        for epoch in range(1, self.ft.epochs + 1):
            head.train()
            if not frozen:
                self.encoder.train()
            order = torch.randperm(tr_idx.size, generator=gen).numpy()
            for step, start in enumerate(range(0, order.size, bs)):
                sel = order[start : start + bs]
                now = lr_at(
                    epoch - 1 + step / steps,
                    lr,
                    self.ft.epochs,
                    self.ft.warmup_epochs,
                    self.ft.min_lr,
                )
                for g in opt.param_groups:
                    g["lr"] = now * g["lr_scale"]
                if feats0 is not None:
                    feats = feats0[torch.as_tensor(tr_idx[sel])].to(self.device)
                else:
                    feats = self._encode(tr_idx[sel], grad=True)
                out = head(feats)
                target = item_y[torch.as_tensor(sel)].to(self.device)
                loss = loss_fn(out if n_out > 1 else out[:, 0], target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val = self._predict(head, fold.val, classes, y_mean, y_std, frozen)
            score = self.select_score(fold.y_val, val, classes)
            if best_state is None or score > best_score:
                # the first epoch is kept even when its score is undefined (-inf)
                best_score, best_epoch, best_val = score, epoch, val
                best_state = {
                    "head": copy.deepcopy(head.state_dict()),
                    "encoder": None if frozen else copy.deepcopy(self.encoder.state_dict()),
                }
                since = 0
            else:
                since += 1
                if since >= self.ft.patience:
                    break
        assert best_state is not None and best_val is not None
        head.load_state_dict(best_state["head"])
        if best_state["encoder"] is not None:
            self.encoder.load_state_dict(best_state["encoder"])
        test = self._predict(head, fold.test, classes, y_mean, y_std, frozen)
        return float(best_score), int(best_epoch), best_val, test

    def run_fold(self, fold: Fold) -> FoldOutcome:
        results = []
        for lr in self.ft.lrs:
            score, epoch, val, test = self._train_one(fold, float(lr))
            results.append((score, {"lr": float(lr), "epoch": epoch}, val, test))
        best_i = 0
        for i, r in enumerate(results):
            if r[0] > results[best_i][0]:
                best_i = i
        _, params, val, test = results[best_i]
        value = self.select_value(fold.y_val, val, fold.classes)
        params["train_encoder"] = bool(self.ft.train_encoder)
        return FoldOutcome(val, test, params, float(value))
