"""TAPE: patch sizes, the PI-resize least-squares property, TR invariance, padding."""

from __future__ import annotations

import math

import pytest
import torch

from brainharmony.models.tape import (
    TAPE,
    naive_resize_kernel,
    patch_frames,
    pi_resize_kernel,
    pi_resize_kernel_lstsq,
    resample_matrix,
)

TAU = 35.28


@pytest.mark.parametrize(
    ("tr", "k"),
    [(0.735, 48), (0.8, 44), (1.47, 24), (1.5, 24), (2.0, 18), (2.205, 16), (2.94, 12), (3.0, 12)],
)
def test_patch_frames_table(tr: float, k: int) -> None:
    assert patch_frames(tr, TAU) == k


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_patch_frames_rejects_bad_tr(bad: float) -> None:
    with pytest.raises(ValueError, match="repetition time"):
        patch_frames(bad)


@pytest.mark.parametrize("interp", ["lanczos3", "bicubic"])
@pytest.mark.parametrize("k", [12, 18, 24, 44, 49, 96])
def test_pi_resize_solves_least_squares(interp: str, k: int) -> None:
    """w_k = argmin ||B^T v - w||: normal equations hold, perturbations do worse."""
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(8, 48, dtype=torch.float64, generator=gen)
    b = resample_matrix(48, k, interp=interp)  # (k, 48)
    wk = pi_resize_kernel(w, k, interp=interp)  # (8, k)
    resid = wk @ b - w  # rows: B^T w_k - w
    # Normal equations B (B^T w_k - w) = 0, relative to the size of the terms.
    normal = resid @ b.T
    assert normal.abs().max() < 1e-9 * (w.abs().max() * b.abs().sum())
    best = resid.norm(dim=1)
    for _ in range(5):
        v = wk + 1e-2 * torch.randn(wk.shape, dtype=torch.float64, generator=gen)
        assert ((v @ b - w).norm(dim=1) >= best - 1e-12).all()
    if k > 48:  # upsampling: B^T has full row rank, so the fit is exact
        assert best.max() < 1e-8 * w.norm(dim=1).max()
    # The expected squared token error for white input equals the residual norm.
    x = torch.randn(20000, 48, dtype=torch.float64, generator=gen)
    mc = ((x @ w.T - (x @ b.T) @ wk.T) ** 2).mean(dim=0)
    torch.testing.assert_close(mc, best**2, rtol=0.05, atol=1e-10)


@pytest.mark.parametrize("tr", [0.72, 0.8, 1.47, 2.0, 2.94])
def test_cached_kernel_matches_lstsq_twin(tr: float) -> None:
    torch.manual_seed(0)
    tape = TAPE(16, k_base=48, tau=TAU, n_patches=4).double()
    k = patch_frames(tr, TAU)
    fast = tape.kernel(tr)
    slow = pi_resize_kernel_lstsq(tape.weight, k, step=tr / tape.tr_base)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-10)
    assert fast.shape == (16, k)
    # Cached: a second call reuses the float64 matrix (one entry per (k, tr)).
    n_cached = len(tape._pinv64)
    tape.kernel(tr)
    assert len(tape._pinv64) == n_cached == 1


def test_base_tr_uses_base_kernel_and_grid_k_keys_on_k() -> None:
    tape = TAPE(8, k_base=48, tau=TAU, n_patches=2)
    assert tape.kernel(0.735) is tape.weight
    tape_k = TAPE(8, k_base=48, tau=TAU, n_patches=2, grid="k")
    tape_k.kernel(1.47)
    tape_k.kernel(1.5)  # same k = 24: same cache entry
    assert list(tape_k._pinv64) == [(24, -1)]


def _band_limited(times: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n independent sums of 20 random sinusoids in 0.01-0.1 Hz at ``times`` (s)."""
    gen = torch.Generator().manual_seed(seed)
    freq = 0.01 + 0.09 * torch.rand(n, 20, 1, dtype=torch.float64, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 20, 1, dtype=torch.float64, generator=gen)
    return torch.sin(2 * math.pi * freq * times + phase).sum(dim=1).T  # (T, n)


@pytest.mark.parametrize(("tr", "bound"), [(1.47, 0.12), (2.0, 0.1), (2.205, 0.17), (2.94, 0.2)])
def test_tokens_of_band_limited_signal_stay_close_across_trs(tr: float, bound: float) -> None:
    """The first patch's tokens at a coarser TR match those at 0.735 s; naive does not."""
    torch.manual_seed(1)
    tape = TAPE(64, k_base=48, tau=TAU, n_patches=1).double()
    with torch.no_grad():
        tape.bias.zero_()
    n_sig = 64
    k = patch_frames(tr, TAU)
    x_ref = _band_limited(torch.arange(48, dtype=torch.float64) * 0.735, n_sig, seed=7)[None]
    x_tr = _band_limited(torch.arange(k, dtype=torch.float64) * tr, n_sig, seed=7)[None]
    with torch.no_grad():
        ref, _ = tape(x_ref, 0.735)
        tok, valid = tape(x_tr, tr)
        naive = torch.einsum("kr,dk->rd", x_tr[0], naive_resize_kernel(tape.weight, k))
    assert valid.all()
    err = ((tok - ref).norm() / ref.norm()).item()
    err_naive = ((naive - ref[0, :, 0]).norm() / ref.norm()).item()
    assert err < bound
    assert err_naive > 0.5
    assert err < err_naive / 4


def test_lanczos_tr_grid_beats_official_bicubic() -> None:
    torch.manual_seed(2)
    errs = {}
    for interp, grid in (("lanczos3", "tr"), ("bicubic", "k")):
        tape = TAPE(32, k_base=48, tau=TAU, n_patches=1, interp=interp, grid=grid).double()
        with torch.no_grad():
            tape.weight.copy_(torch.randn(32, 48, dtype=torch.float64))
            tape.bias.zero_()
        x_ref = _band_limited(torch.arange(48, dtype=torch.float64) * 0.735, 32, seed=3)[None]
        x_tr = _band_limited(torch.arange(12, dtype=torch.float64) * 2.94, 32, seed=3)[None]
        with torch.no_grad():
            ref, _ = tape(x_ref, 0.735)
            tok, _ = tape(x_tr, 2.94)
        errs[interp] = ((tok - ref).norm() / ref.norm()).item()
    assert errs["lanczos3"] < 0.6 * errs["bicubic"]


def test_padding_and_validity() -> None:
    torch.manual_seed(3)
    tape = TAPE(8, k_base=12, tau=12 * 1.0, n_patches=4)  # k = 12 at TR 1 s
    x = torch.randn(2, 40, 5)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :30] = True  # patches 0, 1 full; patch 2 half (6 of 12); patch 3 empty
    mask[1, :40] = True  # patches 0-2 full; patch 3: 4 of 12 frames
    roi_mask = torch.ones(2, 5, dtype=torch.bool)
    roi_mask[1, 2] = False
    tr = torch.tensor([1.0, 1.0], dtype=torch.float64)
    tokens, valid = tape(x, tr, mask, roi_mask)
    assert tokens.shape == (2, 5, 4, 8) and valid.shape == (2, 5, 4)
    assert valid[0].all(dim=0).tolist() == [True, True, False, False]
    assert valid[1, 0].tolist() == [True, True, True, False]
    assert not valid[1, 2].any()
    assert (tokens[~valid] == 0).all()
    # Padded frame values never matter (exactly).
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 5) * 1e3
    tokens2, valid2 = tape(x2, tr, mask, roi_mask)
    assert torch.equal(tokens, tokens2) and torch.equal(valid, valid2)
    # A lower threshold admits the half-filled patch.
    tape.min_valid_fraction = 0.5
    _, valid3 = tape(x, tr, mask, roi_mask)
    assert valid3[0, 0].tolist() == [True, True, True, False]


def test_mixed_tr_batch_equals_items_alone() -> None:
    torch.manual_seed(4)
    tape = TAPE(8, k_base=48, tau=TAU, n_patches=3, overflow="crop")
    x = torch.randn(3, 100, 6)
    mask = torch.ones(3, 100, dtype=torch.bool)
    tr = torch.tensor([2.0, 0.735, 2.0], dtype=torch.float64)
    tokens, valid = tape(x, tr, mask)
    for i in range(3):
        t_i, v_i = tape(x[i : i + 1], tr[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(tokens[i : i + 1], t_i)
        assert torch.equal(valid[i : i + 1], v_i)
    # TR 2.0 s: k = 18, 100 frames fill 5 patches; only 3 are kept (crop).
    assert valid[0, 0].tolist() == [True, True, True]
    # TR 0.735 s: k = 48; 100 frames -> 2 full patches and 4 of 48 frames.
    assert valid[1, 0].tolist() == [True, True, False]


def test_overflow_error_names_the_problem() -> None:
    tape = TAPE(4, k_base=48, tau=TAU, n_patches=2)
    x = torch.randn(1, 60, 3)
    with pytest.raises(ValueError, match="past frame 36"):
        tape(x, 2.0)
    # Frames past the grid that are padding are fine.
    mask = torch.zeros(1, 60, dtype=torch.bool)
    mask[0, :36] = True
    _, valid = tape(x, 2.0, mask)
    assert valid.all()


def test_gradient_reaches_the_base_kernel() -> None:
    tape = TAPE(4, k_base=48, tau=TAU, n_patches=2)
    tokens, _ = tape(torch.randn(2, 30, 3), 2.205)
    tokens.sum().backward()
    assert tape.weight.grad is not None and tape.weight.grad.abs().sum() > 0


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="grid='k'"):
        TAPE(4, interp="bicubic", grid="tr")
    with pytest.raises(ValueError, match="min_valid_fraction"):
        TAPE(4, min_valid_fraction=0.0)
    with pytest.raises(ValueError, match="overflow"):
        TAPE(4, overflow="wrap")  # type: ignore[arg-type]
