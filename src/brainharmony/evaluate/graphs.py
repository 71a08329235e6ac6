"""The published graph baselines as harness models: ``brainnetcnn``, ``braingnn``, ``bnt``.

Each reads the same FC input as ``fc_ridge`` (the subject's Fisher-z upper triangle,
:class:`brainharmony.evaluate.data.FeatureTable`), rebuilds the full correlation matrix
(:func:`fc_matrices`: ``r = tanh(z)``, diagonal 1, the Pearson matrices the papers feed
their networks) and trains the network of :mod:`brainharmony.models.graphs` on the fold's
training subjects with its paper's recipe (``evaluate.graphs.<name>``,
:class:`brainharmony.evaluate.settings.GraphSettings`).

Model selection uses the validation partition only: after every epoch the validation
subjects are predicted and scored with the task's selection metric (``select_metric``:
AUC / MAE); the best epoch's weights (ties: the earliest) give the test predictions, and
training stops after ``patience`` epochs without improvement. Test labels are never seen.

Determinism: the initialisation, dropout and batch order come from one seed per
(split seed, fold), as in :mod:`.finetune`; the same fold gives the same predictions.
Classification trains with cross-entropy (probabilities = softmax of the logits);
regression with MSE on the training-standardised target (one output).
"""

from __future__ import annotations

import copy
import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainharmony.evaluate.harness import Fold, FoldOutcome, HarnessModel, ModelInfo, Output
from brainharmony.evaluate.settings import EvalSettings, TaskSpec
from brainharmony.models.graphs import (
    BNTConfig,
    BrainGNN,
    BrainGNNConfig,
    BrainNetCNN,
    BrainNetCNNConfig,
    BrainNetworkTransformer,
    braingnn_regularisers,
    sparsify_positive,
)

logger = logging.getLogger(__name__)


def n_rois_of(n_edges: int) -> int:
    """``R`` with ``R (R - 1) / 2 == n_edges`` (error when there is none)."""
    r = round((1 + math.sqrt(1 + 8 * n_edges)) / 2)
    if r * (r - 1) // 2 != n_edges:
        raise ValueError(
            f"{n_edges} FC values are not the upper triangle of a square matrix "
            "(expected R (R - 1) / 2)"
        )
    return r


def fc_matrices(values: np.ndarray) -> np.ndarray:
    """Correlation matrices from Fisher-z upper triangles.

    Parameters
    ----------
    values : ndarray of shape (n, R (R - 1) / 2)
        ``arctanh(r)`` in ``np.triu_indices(R, 1)`` order
        (:func:`brainharmony.evaluate.data.fisher_z_fc`).

    Returns
    -------
    ndarray of shape (n, R, R), float32
        ``tanh`` of the values, symmetric, diagonal 1.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"FC values must be (n_subjects, n_edges); got shape {values.shape}")
    r = n_rois_of(values.shape[1])
    iu = np.triu_indices(r, 1)
    out = np.zeros((values.shape[0], r, r), dtype=np.float32)
    t = np.tanh(values).astype(np.float32)
    out[:, iu[0], iu[1]] = t
    out[:, iu[1], iu[0]] = t
    out[:, np.arange(r), np.arange(r)] = 1.0
    return out


def fold_seed(fold: Fold) -> int:
    """The torch seed of a fold (the formula of :mod:`.finetune`)."""
    return 1_000_003 * int(fold.seed) + 7919 * int(fold.index)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """A shuffled split of ``range(n)`` into ``ceil(n / batch_size)`` near-equal batches
    (never a lone subject while others are left: batch norm needs two)."""
    order = torch.randperm(n, generator=gen).numpy()
    return [b for b in np.array_split(order, max(1, -(-n // batch_size))) if b.size]


class GraphBaseline(HarnessModel):
    """Training loop shared by the graph baselines; subclasses build the network, the
    optimiser and (optionally) extra loss terms.

    Parameters
    ----------
    info, task, settings : see :class:`HarnessModel`
    inputs : mapping
        ``fc``: the FC :class:`~brainharmony.evaluate.data.FeatureTable`.
    """

    #: Attribute of :class:`~brainharmony.evaluate.settings.GraphSettings`.
    key = ""

    def __init__(
        self,
        info: ModelInfo,
        task: TaskSpec,
        settings: EvalSettings,
        inputs: Mapping[str, Any],
    ) -> None:
        super().__init__(info, task, settings, inputs)
        self.cfg = getattr(settings.graphs, self.key)

    # ------------------------------------------------------------------ inputs

    def _table(self) -> Any:
        table = self.inputs.get("fc")
        if table is None:
            raise ValueError(f"{self.name}: no FC input given (--series or --fc-shard)")
        return table

    def available_subjects(self) -> set[str] | None:
        return {str(s) for s in self._table().subjects}

    def matrices(self, subjects: Sequence[str]) -> Tensor:
        """FC matrices ``(n, R, R)`` of ``subjects``, in that order."""
        return torch.from_numpy(fc_matrices(self._table().take(list(subjects))))

    def prepare(self, x: Tensor) -> tuple[Tensor, ...]:
        """The network's inputs from FC matrices (default: the matrices alone)."""
        return (x,)

    # ------------------------------------------------------------------ per model

    @abstractmethod
    def build(self, n_rois: int, n_out: int) -> nn.Module:
        """The network, freshly initialised (from torch's global RNG)."""

    @abstractmethod
    def optimiser(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """Optimiser and an epoch-wise LR scheduler (or None)."""

    def forward(self, model: nn.Module, inputs: Sequence[Tensor]) -> tuple[Tensor, dict]:
        """Outputs ``(B, n_out)`` and what :meth:`extra_loss` needs."""
        return model(*inputs), {}

    def extra_loss(self, model: nn.Module, aux: dict, codes: Tensor | None) -> Tensor:
        """Regularisers added to the task loss (default: none)."""
        return torch.zeros(())

    # ------------------------------------------------------------------ training

    def _predict(
        self,
        model: nn.Module,
        inputs: Sequence[Tensor],
        classes: Sequence[str] | None,
        y_mean: float,
        y_std: float,
    ) -> Output:
        model.eval()
        bs = self.cfg.batch_size  # the training batch bounds the memory of prediction too
        with torch.no_grad():
            outs = [
                self.forward(model, [t[i : i + bs] for t in inputs])[0]
                for i in range(0, inputs[0].shape[0], bs)
            ]
        out = torch.cat(outs).double().numpy()
        if self.task.type == "regression":
            return Output(out[:, 0] * y_std + y_mean)
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return Output(np.asarray(classes, dtype=object)[p.argmax(axis=1)], p)

    def run_fold(self, fold: Fold) -> FoldOutcome:
        classes = fold.classes
        seed = fold_seed(fold)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_train = self.prepare(self.matrices(fold.train))
        x_val = self.prepare(self.matrices(fold.val))
        x_test = self.prepare(self.matrices(fold.test))
        n_rois = int(x_train[0].shape[1])
        y_mean, y_std = 0.0, 1.0
        if self.task.type == "classification":
            assert classes is not None
            pos = {c: i for i, c in enumerate(classes)}
            y = torch.tensor([pos[str(v)] for v in fold.y_train], dtype=torch.long)
            n_out = len(classes)
        else:
            yf = np.asarray(fold.y_train, dtype=float)
            y_mean = float(yf.mean())
            y_std = float(yf.std()) if yf.size > 1 and yf.std() > 0 else 1.0
            y = torch.tensor((yf - y_mean) / y_std, dtype=torch.float32)
            n_out = 1
        model = self.build(n_rois, n_out)
        opt, scheduler = self.optimiser(model)
        best_score, best_epoch = -np.inf, 0
        best_state: dict[str, Any] | None = None
        best_val: Output | None = None
        since = 0
        diverged = False
        for epoch in range(1, self.cfg.epochs + 1):
            model.train()
            for sel in _batches(y.shape[0], self.cfg.batch_size, gen):
                idx = torch.as_tensor(sel)
                out, aux = self.forward(model, [t[idx] for t in x_train])
                target = y[idx]
                if self.task.type == "classification":
                    loss = F.cross_entropy(out, target)
                    codes = target
                else:
                    loss = F.mse_loss(out[:, 0], target)
                    codes = None
                loss = loss + self.extra_loss(model, aux, codes)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if diverged:
                if best_state is None:
                    raise FloatingPointError(
                        f"{self.name}: non-finite training loss in the first epoch "
                        f"(seed {fold.seed}, fold {fold.index}); lower evaluate.graphs."
                        f"{self.key}.lr"
                    )
                logger.warning(
                    "%s seed %d fold %d: non-finite training loss at epoch %d; the best "
                    "epoch so far (%d) is kept",
                    self.name,
                    fold.seed,
                    fold.index,
                    epoch,
                    best_epoch,
                )
                break
            if scheduler is not None:
                scheduler.step()
            val = self._predict(model, x_val, classes, y_mean, y_std)
            score = self.select_score(fold.y_val, val, classes)
            if best_state is None or score > best_score:
                best_score, best_epoch, best_val = score, epoch, val
                best_state = copy.deepcopy(model.state_dict())
                since = 0
            else:
                since += 1
                if since >= self.cfg.patience:
                    break
        assert best_state is not None and best_val is not None
        model.load_state_dict(best_state)
        test = self._predict(model, x_test, classes, y_mean, y_std)
        value = self.select_value(fold.y_val, best_val, classes)
        logger.debug(
            "%s seed %d fold %d: epoch %d chosen", self.name, fold.seed, fold.index, best_epoch
        )
        return FoldOutcome(best_val, test, {"epoch": int(best_epoch)}, float(value))


class BrainNetCNNModel(GraphBaseline):
    """BrainNetCNN (Kawahara et al. 2017): SGD with momentum, the paper's recipe."""

    key = "brainnetcnn"

    def build(self, n_rois: int, n_out: int) -> nn.Module:
        c = self.cfg
        return BrainNetCNN(
            BrainNetCNNConfig(
                n_rois=n_rois,
                n_out=n_out,
                e2e_channels=tuple(c.e2e_channels),
                e2n_channels=c.e2n_channels,
                n2g_channels=c.n2g_channels,
                hidden=tuple(c.hidden),
                dropout=c.dropout,
                negative_slope=c.negative_slope,
            )
        )

    def optimiser(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        c = self.cfg
        opt = torch.optim.SGD(
            model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )
        return opt, None


class BrainGNNModel(GraphBaseline):
    """BrainGNN (Li et al. 2021): sparse positive graphs, the regularised loss, SGD
    (Nesterov) with a step decay, as the official code."""

    key = "braingnn"

    def prepare(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x, sparsify_positive(x, self.cfg.edge_density))

    def build(self, n_rois: int, n_out: int) -> nn.Module:
        c = self.cfg
        return BrainGNN(
            BrainGNNConfig(
                n_rois=n_rois,
                n_out=n_out,
                conv_dims=tuple(c.conv_dims),
                communities=c.communities,
                pool_ratio=c.pool_ratio,
                mlp_hidden=c.mlp_hidden,
                dropout=c.dropout,
            )
        )

    def optimiser(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        c = self.cfg
        opt = torch.optim.SGD(
            model.parameters(),
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            nesterov=c.momentum > 0,
        )
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma)

    def forward(self, model: nn.Module, inputs: Sequence[Tensor]) -> tuple[Tensor, dict]:
        assert isinstance(model, BrainGNN)
        out, scores = model.forward_with_scores(*inputs)
        return out, {"scores": scores}

    def extra_loss(self, model: nn.Module, aux: dict, codes: Tensor | None) -> Tensor:
        assert isinstance(model, BrainGNN)
        reg = braingnn_regularisers(model, aux["scores"], codes)
        c = self.cfg
        return (
            c.unit_weight * reg["unit"]
            + c.topk_weight * reg["topk"]
            + c.consistency_weight * reg["consistency"]
        )


class BNTModel(GraphBaseline):
    """Brain Network Transformer (Kan et al. 2022): Adam with a cosine decay."""

    key = "bnt"

    def build(self, n_rois: int, n_out: int) -> nn.Module:
        c = self.cfg
        return BrainNetworkTransformer(
            BNTConfig(
                n_rois=n_rois,
                n_out=n_out,
                layers=c.layers,
                heads=c.heads,
                ff_dim=c.ff_dim,
                dropout=c.dropout,
                clusters=c.clusters,
                encoder_hidden=c.encoder_hidden,
                reduced_dim=c.reduced_dim,
                hidden=tuple(c.hidden),
            )
        )

    def optimiser(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        c = self.cfg
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs, eta_min=c.min_lr)
        return opt, sched
