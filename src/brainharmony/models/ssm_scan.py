"""Pure-PyTorch selective scans (the Mamba-1 S6 recurrence) for CPU, or GPU without mamba_ssm.

Two implementations of the same function are provided:

* :func:`selective_scan_ref`: a sequential loop over time, written to be obviously correct.
  It is the ground truth in the tests and the baseline in ``benchmarks/bench_ssm.py``.
* :func:`selective_scan_chunked`: the fast path. The diagonal linear recurrence
  ``h_t = a_t * h_{t-1} + x_t`` is solved by :func:`linear_scan`, a chunked scan whose
  Python-level step count is about ``2 T + L / T`` instead of ``L`` (``T`` the chunk size),
  with a hand-written backward pass that is the same scan run in reverse time.

Both follow the semantics of ``selective_scan_ref`` in ``mamba_ssm`` (state-spaces/mamba),
re-derived here from the maths (see ``docs/ssm.md``)::

    delta  <- softplus(delta + delta_bias)           (each step optional)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   h_{-1} = 0
    y_t     = sum_n C_t[n] * h_t[n]
    out     = (y + D * u) * silu(z)                  (D and z optional)

Shapes: ``b`` batch, ``d`` channels, ``n`` state size, ``L`` length, ``g`` groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "auto_chunk_size",
    "linear_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]


# --------------------------------------------------------------------------------------
# Input checking shared by both implementations
# --------------------------------------------------------------------------------------


def _check_bc(name: str, X: Tensor, batch: int, dim: int, dstate: int, length: int) -> None:
    """Validate the shape of a B or C argument (fixed, variable, or grouped variable)."""
    if X.is_complex():
        raise NotImplementedError(f"complex {name} is not supported (only real A, B, C)")
    if X.dim() == 2:
        if tuple(X.shape) != (dim, dstate):
            raise ValueError(
                f"fixed {name} must have shape (dim, dstate)={(dim, dstate)}, got {tuple(X.shape)}"
            )
    elif X.dim() == 3:
        if tuple(X.shape) != (batch, dstate, length):
            raise ValueError(
                f"variable {name} must have shape (batch, dstate, L)="
                f"{(batch, dstate, length)}, got {tuple(X.shape)}"
            )
    elif X.dim() == 4:
        groups = X.shape[1]
        if (X.shape[0], X.shape[2], X.shape[3]) != (batch, dstate, length) or groups < 1:
            raise ValueError(
                f"grouped {name} must have shape (batch, groups, dstate, L) with "
                f"batch={batch}, dstate={dstate}, L={length}; got {tuple(X.shape)}"
            )
        if dim % groups != 0:
            raise ValueError(f"dim={dim} is not divisible by the {groups} groups of {name}")
    else:
        raise ValueError(f"{name} must be 2-, 3- or 4-dimensional, got {X.dim()} dims")


def _check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> torch.dtype:
    """Validate shapes and return the compute dtype (float64 if any input is, else float32)."""
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.is_complex():
        raise NotImplementedError("complex A is not supported (only the real S4D/Mamba case)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, dstate), got {tuple(A.shape)}")
    dstate = A.shape[1]
    _check_bc("B", B, batch, dim, dstate, length)
    _check_bc("C", C, batch, dim, dstate, length)
    if D is not None and tuple(D.shape) != (dim,):
        raise ValueError(f"D must have shape (dim,)={(dim,)}, got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}")
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise ValueError(
            f"delta_bias must have shape (dim,)={(dim,)}, got {tuple(delta_bias.shape)}"
        )
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _prepare_delta(
    delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> Tensor:
    """Apply the optional bias and softplus to delta (batch, dim, L) in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(
    y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """Apply the skip term ``D * u`` and the gate ``silu(z)`` to y (batch, dim, L)."""
    out = y if D is None else y + u * D.to(y.dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(y.dtype))
    return out.to(out_dtype)


# --------------------------------------------------------------------------------------
# Sequential reference
# --------------------------------------------------------------------------------------


def selective_scan_ref(
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
    """Sequential selective scan: one step per time point (the ground truth).

    Parameters
    ----------
    u : Tensor, shape (batch, dim, L)
        Input sequence.
    delta : Tensor, shape (batch, dim, L)
        Step sizes (before ``delta_bias`` and ``softplus``).
    A : Tensor, shape (dim, dstate)
        Real state matrix (diagonal per channel); Mamba uses ``A = -exp(A_log)``.
    B, C : Tensor
        Either fixed, shape (dim, dstate); variable, shape (batch, dstate, L), shared by all
        channels; or grouped variable, shape (batch, groups, dstate, L), where channel ``j``
        uses group ``j // (dim // groups)``.
    D : Tensor, shape (dim,), optional
        Skip connection weight: ``out = y + D * u``.
    z : Tensor, shape (batch, dim, L), optional
        Gate: ``out = out * silu(z)``.
    delta_bias : Tensor, shape (dim,), optional
        Added to delta before the softplus.
    delta_softplus : bool
        Apply ``softplus`` to ``delta (+ delta_bias)``.
    return_last_state : bool
        Also return the final state ``h_{L-1}``.

    Returns
    -------
    out : Tensor, shape (batch, dim, L)
        In the dtype of ``u``.
    last_state : Tensor, shape (batch, dim, dstate)
        Only when ``return_last_state``; in the compute dtype.

    Notes
    -----
    Computation is in float32, or float64 when any input is float64 (``mamba_ssm``'s
    reference always computes in float32).
    """
    ct = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    uc = u.to(ct)
    dl = _prepare_delta(delta, delta_bias, delta_softplus, ct)
    Ac = A.to(ct)

    def per_channel(X: Tensor) -> Tensor:
        """Broadcast B or C to (batch, dim, dstate, L) (fixed ones to (1, dim, dstate, 1))."""
        X = X.to(ct)
        if X.dim() == 2:
            return X[None, :, :, None]
        if X.dim() == 3:
            return X[:, None, :, :]
        return X.repeat_interleave(dim // X.shape[1], dim=1)

    Bc, Cc = per_channel(B), per_channel(C)
    # Discretisation, for all steps at once: (batch, dim, L, dstate).
    dA = torch.exp(dl[..., None] * Ac[:, None, :])
    dBu = (dl * uc)[..., None] * Bc.transpose(-1, -2)
    Ct = Cc.transpose(-1, -2)  # (batch or 1, dim, L or 1, dstate)
    h = torch.zeros(batch, dim, dstate, dtype=ct, device=u.device)
    ys = []
    for t in range(length):
        h = dA[:, :, t] * h + dBu[:, :, t]
        c_t = Ct[:, :, t if Ct.shape[2] > 1 else 0]
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(batch, dim, 0)
    out = _finish(y, uc, D, z, u.dtype)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------------------
# Chunked diagonal linear scan
# --------------------------------------------------------------------------------------


def auto_chunk_size(length: int) -> int:
    """Chunk size used by the chunked scan when none is given.

    The chunked scan issues about ``2 T + L / T`` small tensor operations for a length ``L``
    (smallest near ``T = sqrt(L / 2)``); ``T`` is that optimum rounded to a power of two and
    kept in [4, 32]. Timings on CPU are flat within a factor ~1.3 for T in [8, 32] at
    L = 1024 (``benchmarks/bench_ssm.py --sweep``).

    Parameters
    ----------
    length : int
        Sequence length ``L``.

    Returns
    -------
    int
        The chunk size ``T`` (``L`` itself when ``L <= 8``).
    """
    if length <= 8:
        return max(length, 1)
    t = math.sqrt(length / 2.0)
    return int(min(32, max(4, 2 ** round(math.log2(t)))))


def _scan_chunks(
    a: Tensor, x: Tensor, out: Tensor, chunk: int, h_in: Tensor | None, reverse: bool
) -> Tensor:
    """Scan ``nc * chunk`` steps as ``nc`` chunks processed together; write the states.

    ``a``, ``x``, ``out``: shape (nc * chunk, *S), each viewable as (nc, chunk, *S); ``out``
    may be ``x`` itself (in place). ``h_in`` (shape S) is the state entering the first
    processed step (``None``: zero). Returns the state after the last processed step.

    Stages: (1) every chunk scanned from a zero state, all chunks at once, keeping only its
    end state; (2) the true state entering each chunk, by a sequential scan over the chunks
    with each chunk's decay product; (3) every chunk re-scanned from its true entering state,
    all chunks at once, writing the states. Only products of the ``a_t`` (all in [0, 1] for
    Mamba) appear: no division and no exponential of a cumulative sum, so it is exactly as
    stable as the sequential recurrence.
    """
    nc = x.shape[0] // chunk
    shape = (nc, chunk, *x.shape[1:])
    av, xv, ov = a.view(shape), x.view(shape), out.view(shape)
    a_steps, x_steps, o_steps = av.unbind(1), xv.unbind(1), ov.unbind(1)
    steps = range(chunk - 1, -1, -1) if reverse else range(chunk)
    order = range(nc - 1, -1, -1) if reverse else range(nc)
    if nc == 1:
        h = h_in[None] if h_in is not None else None
        for j in steps:
            if h is None:
                if o_steps[j].data_ptr() != x_steps[j].data_ptr():
                    o_steps[j].copy_(x_steps[j])
            else:
                torch.addcmul(x_steps[j], a_steps[j], h, out=o_steps[j])
            h = o_steps[j]
        assert h is not None
        return h[0]
    # (1) end state of every chunk scanned from zero.
    h_loc = torch.empty_like(x_steps[0])
    first_step = True
    for j in steps:
        if first_step:
            h_loc.copy_(x_steps[j])
            first_step = False
        else:
            torch.addcmul(x_steps[j], a_steps[j], h_loc, out=h_loc)
    decay = av.prod(dim=1)  # what a chunk multiplies its entering state by
    # (2) carry the states across chunks.
    h0 = torch.empty_like(h_loc)
    h0_c, loc_c, dec_c = h0.unbind(0), h_loc.unbind(0), decay.unbind(0)
    first, *rest = order
    if h_in is None:
        h0_c[first].zero_()
    else:
        h0_c[first].copy_(h_in)
    prev = first
    for c in rest:
        torch.addcmul(loc_c[prev], dec_c[prev], h0_c[prev], out=h0_c[c])
        prev = c
    final = torch.addcmul(loc_c[prev], dec_c[prev], h0_c[prev])
    # (3) re-scan every chunk from its true entering state.
    h = h0
    for j in steps:
        torch.addcmul(x_steps[j], a_steps[j], h, out=o_steps[j])
        h = o_steps[j]
    return final


def _scan_(
    a: Tensor,
    x: Tensor,
    out: Tensor,
    chunk: int,
    reverse: bool = False,
    h_in: Tensor | None = None,
) -> Tensor:
    """Write into ``out`` every state of a diagonal linear recurrence; return the last one.

    Forward: ``h_t = a_t * h_{t-1} + x_t`` for t = 0..L-1 with ``h_{-1} = h_in``.
    Reverse: ``h_t = a_t * h_{t+1} + x_t`` for t = L-1..0 with ``h_L = h_in``.
    ``a``, ``x``, ``out``: shape (L, *S), contiguous; ``out`` may be ``x`` (in place);
    ``h_in``: shape S or ``None`` (zero). No autograd.
    """
    length = x.shape[0]
    if length == 0:
        return torch.zeros_like(x[0]) if h_in is None else h_in
    chunk = max(1, min(chunk, length))
    full = (length // chunk) * chunk
    h = h_in
    if reverse:  # the ragged tail is processed first, the chunks after it
        tail = range(length - 1, full - 1, -1)
    else:
        h = _scan_chunks(a[:full], x[:full], out[:full], chunk, h, False)
        tail = range(full, length)
    for p in tail:
        if h is None:
            if out[p].data_ptr() != x[p].data_ptr():
                out[p].copy_(x[p])
        else:
            torch.addcmul(x[p], a[p], h, out=out[p])
        h = out[p]
    if reverse:
        h = _scan_chunks(a[:full], x[:full], out[:full], chunk, h, True)
    assert h is not None
    return h


class _LinearScanFn(torch.autograd.Function):
    """Autograd for :func:`linear_scan`: the backward is the transposed (reversed) scan."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        a = a.contiguous()
        h = torch.empty_like(a)
        _scan_(a, x.contiguous(), h, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        a, h = ctx.saved_tensors
        gx = _reverse_grad_scan(a, g.contiguous(), ctx.chunk, inplace=False)
        ga = None
        if ctx.needs_input_grad[0]:
            ga = torch.empty_like(a)
            ga[0].zero_()
            torch.mul(gx[1:], h[:-1], out=ga[1:])  # dL/da_t = dL/dx_t * h_{t-1}
        return ga, gx, None


def _reverse_grad_scan(a: Tensor, g: Tensor, chunk: int, inplace: bool) -> Tensor:
    """Adjoint of the forward scan: ``gx_t = g_t + a_{t+1} gx_{t+1}``, ``gx_{L-1} = g_{L-1}``.

    Run as a reverse scan over t = L-2..0 with coefficients ``a[1:]`` (a view, no copy) and
    the entering state ``g_{L-1}``. With ``inplace`` the result overwrites ``g``.
    """
    gx = g if inplace else g.clone()
    if gx.shape[0] > 1:
        _scan_(a[1:], gx[:-1], gx[:-1], chunk, reverse=True, h_in=gx[-1])
    return gx


def linear_scan(a: Tensor, x: Tensor, chunk_size: int | None = None) -> Tensor:
    """Solve the diagonal linear recurrence ``h_t = a_t * h_{t-1} + x_t`` with ``h_{-1} = 0``.

    Parameters
    ----------
    a, x : Tensor, shape (L, *S)
        Per-step decay and input; time is the **leading** dimension.
    chunk_size : int, optional
        Chunk length ``T``; defaults to :func:`auto_chunk_size`.

    Returns
    -------
    Tensor, shape (L, *S)
        All states ``h_0 .. h_{L-1}``. Differentiable w.r.t. ``a`` and ``x``.
    """
    if a.shape != x.shape:
        raise ValueError(
            f"a and x must have the same shape, got {tuple(a.shape)} and {tuple(x.shape)}"
        )
    if x.dim() == 0:
        raise ValueError("a and x need a leading time dimension")
    chunk = auto_chunk_size(x.shape[0]) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    return _LinearScanFn.apply(a, x, chunk)


# --------------------------------------------------------------------------------------
# Chunked selective scan: one autograd Function for the (L, b, d, n) part
# --------------------------------------------------------------------------------------
#
# Time-major layout: every (L, b, d, n) tensor is viewed as (L*b*G, H, n), with G the groups
# of the variable B or C (H = d / G), so that B/C products are batched matmuls.


def _contract_n(h: Tensor, X: Tensor) -> Tensor:
    """``sum_n h[l,b,d,n] * X[.., n]`` -> (L, b, d).

    ``X`` is fixed (d, n) or variable, time-major (L, b, G, n). (``vecdot`` measured ~2x
    faster than ``bmm`` over L*b tiny matrix-vector products.)
    """
    L, b, d, n = h.shape
    if X.dim() == 2:
        return torch.linalg.vecdot(h, X)
    G = X.shape[2]
    return torch.linalg.vecdot(h.view(L, b, G, d // G, n), X.unsqueeze(3)).view(L, b, d)


def _outer_n(v: Tensor, X: Tensor, out: Tensor | None = None) -> Tensor:
    """``v[l,b,d] * X[.., n]`` -> (L, b, d, n), contiguous (written into ``out`` if given)."""
    L, b, d = v.shape
    if X.dim() == 2:
        return torch.mul(v.unsqueeze(-1), X, out=out)
    G, n = X.shape[2], X.shape[3]
    res = torch.mul(
        v.view(L, b, G, d // G, 1),
        X.unsqueeze(3),
        out=None if out is None else out.view(L, b, G, d // G, n),
    )
    return res.view(L, b, d, n)


def _reduce_d(h: Tensor, v: Tensor, fixed: bool, groups: int) -> Tensor:
    """Gradient of a B/C operand: ``sum h[l,b,d,n] * v[l,b,d]``.

    Fixed operand: summed over (L, b) -> (d, n). Variable: summed over the channels of each
    group -> (L, b, G, n).
    """
    L, b, d, n = h.shape
    if fixed:
        return (h * v.unsqueeze(-1)).sum(dim=(0, 1))
    G = groups
    out = torch.bmm(v.reshape(L * b * G, 1, d // G), h.view(L * b * G, d // G, n))
    return out.view(L, b, G, n)


#: Cache budget of one forward segment's two (segment, b, d, n) buffers (``a`` and ``h``).
SEGMENT_BYTES = 4 << 20


def _segment_length(length: int, chunk: int, bytes_per_step: int) -> int:
    """Forward segment length: a multiple of ``chunk`` with two buffers <= SEGMENT_BYTES."""
    steps = max(1, SEGMENT_BYTES // (2 * max(1, bytes_per_step)))
    seg = max(chunk, (steps // chunk) * chunk)
    return min(seg, length)


class _SelectiveScanFn(torch.autograd.Function):
    """y_t = sum_n C_t h_t with h_t = exp(dt_t A) h_{t-1} + du_t B_t, time-major.

    Inputs: dt, du (L, b, d); A (d, n); Bt, Ct fixed (d, n) or variable (L, b, G, n).
    Outputs: y (L, b, d) and the last state (b, d, n).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        dt: Tensor,
        A: Tensor,
        du: Tensor,
        Bt: Tensor,
        Ct: Tensor,
        chunk: int,
        save: bool,
    ) -> tuple[Tensor, Tensor]:
        L, b, d = dt.shape
        n = A.shape[1]
        # Time is processed in segments whose (a, h) fit in cache, so that the chunked scan
        # and the contraction re-read them from cache rather than from memory. Without
        # autograd, (a, h) live only in per-segment scratch buffers.
        seg = _segment_length(L, chunk, b * d * n * dt.element_size())
        if save:
            a = dt.new_empty(L, b, d, n)
            h = dt.new_empty(L, b, d, n)
        else:
            a_buf = dt.new_empty(seg, b, d, n)
            h_buf = dt.new_empty(seg, b, d, n)
        y = dt.new_empty(L, b, d)
        state: Tensor | None = None
        for s0 in range(0, L, seg):
            s1 = min(L, s0 + seg)
            a_s = a[s0:s1] if save else a_buf[: s1 - s0]
            h_s = h[s0:s1] if save else h_buf[: s1 - s0]
            torch.mul(dt[s0:s1].unsqueeze(-1), A, out=a_s).exp_()
            _outer_n(du[s0:s1], Bt if Bt.dim() == 2 else Bt[s0:s1], out=h_s)  # x = du B
            state = _scan_(a_s, h_s, h_s, chunk, h_in=state).clone()  # states, in place
            y[s0:s1] = _contract_n(h_s, Ct if Ct.dim() == 2 else Ct[s0:s1])
        assert state is not None
        ctx.chunk = chunk
        if save:
            ctx.save_for_backward(dt, A, du, Bt, Ct, a, h)
        return y, state

    @staticmethod
    def backward(  # type: ignore[override]
        ctx, gy: Tensor, glast: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        dt, A, du, Bt, Ct, a, h = ctx.saved_tensors
        need_dt, need_A, need_du, need_B, need_C = ctx.needs_input_grad[:5]
        gdt = gA = gdu = gB = gC = None
        if need_C:
            gC = _reduce_d(h, gy, Ct.dim() == 2, 1 if Ct.dim() == 2 else Ct.shape[2])
        # dL/dh_t (from y_t and the last state), then dL/dx_t by the reversed scan.
        gx = _outer_n(gy.contiguous(), Ct)
        if glast is not None:
            gx[-1].add_(glast)
        _reverse_grad_scan(a, gx, ctx.chunk, inplace=True)
        if need_du:
            gdu = _contract_n(gx, Bt)
        if need_B:
            gB = _reduce_d(gx, du, Bt.dim() == 2, 1 if Bt.dim() == 2 else Bt.shape[2])
        if need_dt or need_A:
            # dL/d(dt A)_t = dL/dx_t * h_{t-1} * a_t   (h_{-1} = 0); reuse gx in place.
            gx[1:].mul_(h[:-1])
            gx[0].zero_()
            gla = gx.mul_(a)
            if need_dt:
                gdt = _contract_n(gla, A)
            if need_A:
                gA = _reduce_d(gla, dt, True, 1)
        return gdt, gA, gdu, gB, gC, None, None


def _time_major_bc(X: Tensor, dtype: torch.dtype) -> Tensor:
    """B or C in the layout of :class:`_SelectiveScanFn`.

    Fixed (dim, n) is returned as is; variable (batch, n, L) becomes (L, batch, 1, n) and
    grouped (batch, G, n, L) becomes (L, batch, G, n), contiguous.
    """
    X = X.to(dtype)
    if X.dim() == 2:
        return X
    if X.dim() == 3:
        X = X.unsqueeze(1)
    return X.permute(3, 0, 1, 2).contiguous()


def _time_major(x: Tensor) -> Tensor:
    """(b, d, L) -> contiguous (L, b, d), as a 2-D transpose (~2x faster than a permute)."""
    b, d, length = x.shape
    return x.reshape(b * d, length).t().contiguous().view(length, b, d)


def selective_scan_chunked(
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
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan: same contract and result as :func:`selective_scan_ref`, faster.

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        As in :func:`selective_scan_ref`.
    chunk_size : int, optional
        Chunk length ``T`` of the scan; defaults to :func:`auto_chunk_size` of ``L``.
        Any value gives the same result up to rounding.

    Returns
    -------
    out : Tensor, shape (batch, dim, L)
        In the dtype of ``u``.
    last_state : Tensor, shape (batch, dim, dstate)
        Only when ``return_last_state``; in the compute dtype.

    Notes
    -----
    The (L, batch, dim, dstate) part (discretisation, scan, contraction with C) is one
    autograd Function with a hand-written backward (like the CUDA kernel's): the adjoint of
    the recurrence is the same chunked scan run backwards in time. It keeps two
    (L, batch, dim, dstate) tensors for the backward pass (``exp(delta A)`` and the states).
    """
    ct = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    uc = u.to(ct)
    if length == 0:
        out = _finish(uc.new_zeros(batch, dim, 0), uc, D, z, u.dtype)
        last = uc.new_zeros(batch, dim, dstate)
        return (out, last) if return_last_state else out
    chunk = auto_chunk_size(length) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    dt = _time_major(_prepare_delta(delta, delta_bias, delta_softplus, ct))
    du = dt * _time_major(uc)
    save = torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, delta_bias) if t is not None
    )
    y, last = _SelectiveScanFn.apply(
        dt, A.to(ct), du, _time_major_bc(B, ct), _time_major_bc(C, ct), chunk, save
    )
    y = y.reshape(length, batch * dim).t().contiguous().view(batch, dim, length)
    out = _finish(y, uc, D, z, u.dtype)
    return (out, last) if return_last_state else out
