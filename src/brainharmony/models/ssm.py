"""Selective state-space (Mamba-1) layers with a pure-PyTorch fallback.

Public API
----------
* :func:`selective_scan`: the S6 selective scan with ``mamba_ssm``'s contract. It uses
  ``mamba_ssm``'s CUDA kernel when that package imports and the tensors are on CUDA,
  otherwise :func:`selective_scan_chunked` (pure PyTorch, any device).
* :func:`selective_scan_ref` (sequential, the truth) and :func:`selective_scan_chunked`,
  re-exported from :mod:`brainharmony.models.ssm_scan`.
* :class:`Mamba`: parameter names, shapes and initialisation identical to
  ``mamba_ssm.modules.mamba_simple.Mamba``, so state dicts load both ways.
* :class:`MambaBlock`: pre-norm residual block ``x + Mamba(Norm(x))``.

``mamba_ssm`` is never imported at module import: it fails to import without triton/CUDA,
so it is imported lazily, once, inside :func:`cuda_selective_scan_fn`, and any exception
there simply disables the fast path.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainharmony.models.ssm_scan import (
    auto_chunk_size,
    linear_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "DISABLE_FAST_PATH_ENV",
    "Mamba",
    "MambaBlock",
    "auto_chunk_size",
    "cuda_selective_scan_fn",
    "linear_scan",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

#: Set this environment variable to ``1`` to never use ``mamba_ssm`` (read once, at the
#: first call of :func:`cuda_selective_scan_fn`).
DISABLE_FAST_PATH_ENV = "BRAINHARMONY_DISABLE_MAMBA_SSM"

ScanName = Literal["auto", "chunked", "ref"]


@functools.cache
def cuda_selective_scan_fn() -> Callable[..., Any] | None:
    """Return ``mamba_ssm``'s CUDA ``selective_scan_fn``, or ``None`` if it is unavailable.

    The import is attempted once (the result is cached; ``cuda_selective_scan_fn.cache_clear()``
    forces a retry). Any exception raised while importing (``ImportError`` when the package
    is absent, but also e.g. a ``ModuleNotFoundError`` for triton or an ``OSError`` from the
    compiled extension) disables the fast path.

    Returns
    -------
    callable or None
        ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` or ``None``.
    """
    if os.environ.get(DISABLE_FAST_PATH_ENV, "").strip() not in ("", "0"):
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # any import-time failure (e.g. no triton) disables the fast path
        return None
    return selective_scan_fn


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan (Mamba S6), dispatching to the fastest available implementation.

    Uses ``mamba_ssm``'s CUDA kernel when it is importable and every tensor is on a CUDA
    device (and none is float64, which the kernel lacks); otherwise
    :func:`selective_scan_chunked`. Semantics are those of
    :func:`selective_scan_ref`::

        delta <- softplus(delta + delta_bias)      (optional steps)
        h_t    = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   h_{-1} = 0
        out_t  = (C_t . h_t + D u_t) * silu(z_t)   (D, z optional)

    Parameters
    ----------
    u : Tensor, shape (batch, dim, L)
        Input.
    delta : Tensor, shape (batch, dim, L)
        Step sizes.
    A : Tensor, shape (dim, dstate)
        Real, normally negative, state matrix.
    B, C : Tensor
        Fixed (dim, dstate), variable (batch, dstate, L), or grouped variable
        (batch, groups, dstate, L) with channel ``j`` in group ``j // (dim // groups)``.
    D : Tensor, shape (dim,), optional
        Skip weight.
    z : Tensor, shape (batch, dim, L), optional
        Gate, applied as ``out * silu(z)``.
    delta_bias : Tensor, shape (dim,), optional
        Bias added to delta.
    delta_softplus : bool
        Apply softplus to delta (after the bias).
    return_last_state : bool
        Also return the final state.

    Returns
    -------
    out : Tensor, shape (batch, dim, L)
        In the dtype of ``u``.
    last_state : Tensor, shape (batch, dim, dstate)
        Only when ``return_last_state``.
    """
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if all(t.is_cuda for t in tensors) and all(t.dtype != torch.float64 for t in tensors):
        fn = cuda_selective_scan_fn()
        if fn is not None:
            return fn(
                u,
                delta,
                A,
                B,
                C,
                D=D,
                z=z,
                delta_bias=delta_bias,
                delta_softplus=delta_softplus,
                return_last_state=return_last_state,
            )
    return selective_scan_chunked(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


_SCANS: dict[str, Callable[..., Any]] = {
    "auto": selective_scan,
    "chunked": selective_scan_chunked,
    "ref": selective_scan_ref,
}


class Mamba(nn.Module):
    """Mamba-1 mixer, parameter-compatible with ``mamba_ssm.modules.mamba_simple.Mamba``.

    Parameters
    ----------
    d_model : int
        Model width ``D``.
    d_state : int
        SSM state size ``n``.
    d_conv : int
        Kernel width of the causal depthwise convolution.
    expand : int
        ``d_inner = expand * d_model``.
    dt_rank : int or "auto"
        Rank of the delta projection; ``"auto"`` is ``ceil(d_model / 16)``.
    dt_min, dt_max : float
        Range of the initial step size ``softplus(dt_proj.bias)`` (log-uniform).
    dt_init : {"random", "constant"}
        Initialisation of ``dt_proj.weight``: uniform in ``±dt_rank**-0.5 * dt_scale`` or
        that constant.
    dt_scale : float
        Scale of the ``dt_proj.weight`` initialisation.
    dt_init_floor : float
        Lower clamp of the initial step size.
    conv_bias : bool
        Bias in the convolution.
    bias : bool
        Bias in ``in_proj`` and ``out_proj``.
    layer_idx : int, optional
        Layer index (kept for API compatibility; no inference cache here).
    device, dtype
        Factory arguments. ``A_log`` and ``D`` stay float32, as upstream.
    use_fast_path : bool, keyword-only
        Accepted for compatibility with upstream configs. ``False`` stops ``scan="auto"``
        from using the CUDA kernel.
    scan : {"auto", "chunked", "ref"}, keyword-only
        Scan implementation: :func:`selective_scan` (dispatching), the pure-PyTorch chunked
        scan, or the sequential reference. Can be changed later via the ``scan`` attribute.

    Notes
    -----
    Parameters (``d_inner = expand * d_model``, ``R = dt_rank``, ``n = d_state``):
    ``in_proj.weight`` (2 d_inner, d_model), ``conv1d.weight`` (d_inner, 1, d_conv),
    ``conv1d.bias`` (d_inner,), ``x_proj.weight`` (R + 2n, d_inner), ``dt_proj.weight``
    (d_inner, R), ``dt_proj.bias`` (d_inner,), ``A_log`` (d_inner, n), ``D`` (d_inner,),
    ``out_proj.weight`` (d_model, d_inner), plus ``in_proj.bias``/``out_proj.bias`` when
    ``bias``. The forward pass is upstream's reference ("slow") path; the recurrent
    ``step``/inference cache of upstream is not implemented.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        use_fast_path: bool = True,
        scan: ScanName = "auto",
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.use_fast_path = use_fast_path
        if scan not in _SCANS:
            raise ValueError(f"scan must be one of {sorted(_SCANS)}, got {scan!r}")
        self.scan: ScanName = scan

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.x_proj = nn.Linear(
            self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs
        )
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt_proj.weight: keeps the variance of delta at initialisation.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt_proj.bias: softplus(bias) log-uniform in [dt_min, dt_max], floored; the bias is
        # the inverse softplus, x + log(1 - exp(-x)) = x + log(-expm1(-x)).
        dt = torch.exp(
            torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

        # S4D-real initialisation: A = -[1, 2, ..., n] for every channel; kept in float32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1).contiguous())
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D = nn.Parameter(torch.ones(self.d_inner, dtype=torch.float32, device=device))
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _scan_fn(self) -> Callable[..., Any]:
        """The scan function selected by ``self.scan`` (and ``self.use_fast_path``)."""
        if self.scan not in _SCANS:
            raise ValueError(f"scan must be one of {sorted(_SCANS)}, got {self.scan!r}")
        if self.scan == "auto" and not self.use_fast_path:
            return selective_scan_chunked
        return _SCANS[self.scan]

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Apply the mixer.

        Parameters
        ----------
        hidden_states : Tensor, shape (batch, L, d_model)

        Returns
        -------
        Tensor, shape (batch, L, d_model)
        """
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"expected (batch, L, {self.d_model}), got {tuple(hidden_states.shape)}"
            )
        seqlen = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :seqlen])  # causal depthwise conv
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, R + 2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L), no bias
        A = -torch.exp(self.A_log.float())  # (d_inner, n)
        y = self._scan_fn()(
            x,
            dt,
            A,
            B.transpose(1, 2),  # (b, n, L)
            C.transpose(1, 2),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: ``x + dropout(Mamba(Norm(x)))``.

    Parameter names follow ``mamba_ssm``'s ``Block``: ``norm.*`` and ``mixer.*``.

    Parameters
    ----------
    d_model : int
        Width.
    norm : {"layernorm", "rmsnorm"}
        Normalisation before the mixer.
    norm_eps : float
        Epsilon of the normalisation.
    dropout : float
        Dropout on the mixer output (before the residual sum).
    layer_idx : int, optional
        Passed to :class:`Mamba`.
    device, dtype
        Factory arguments.
    **mamba_kwargs
        Further arguments of :class:`Mamba` (``d_state``, ``d_conv``, ``expand``, ``scan``...).

    Notes
    -----
    Input and output: (batch, L, d_model). Upstream's ``Block`` returns
    ``(hidden, residual)`` with the add fused into the next block's norm; this block
    returns the summed stream, which is the same computation.
    """

    def __init__(
        self,
        d_model: int,
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **mamba_kwargs: Any,
    ) -> None:
        super().__init__()
        if norm == "layernorm":
            self.norm: nn.Module = nn.LayerNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        elif norm == "rmsnorm":
            self.norm = nn.RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype)
        else:
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
        self.mixer = Mamba(d_model, layer_idx=layer_idx, device=device, dtype=dtype, **mamba_kwargs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Parameters
        ----------
        x : Tensor, shape (batch, L, d_model)

        Returns
        -------
        Tensor, shape (batch, L, d_model)
        """
        return x + self.dropout(self.mixer(self.norm(x)))
