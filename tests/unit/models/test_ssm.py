"""Tests of the selective scan (chunked vs sequential reference) and the Mamba layers."""

from __future__ import annotations

import builtins
import itertools
import math
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from brainharmony.models import ssm, ssm_scan
from brainharmony.models.ssm import (
    Mamba,
    MambaBlock,
    cuda_selective_scan_fn,
    linear_scan,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)
from brainharmony.models.ssm_scan import auto_chunk_size


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Run these tests single-threaded: the tensors are tiny, and intra-op threads only add
    synchronisation stalls (seconds per test when other processes load the 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Upstream mamba_ssm fp32 tolerances (tests/ops/test_selective_scan.py).
RTOL, ATOL = 6e-4, 2e-3
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(
    batch: int,
    dim: int,
    dstate: int,
    length: int,
    b_kind: str,
    c_kind: str,
    has_d: bool = True,
    has_z: bool = True,
    has_bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random inputs drawn like upstream's test (A = -0.5 U, delta = 0.5 U, ...).

    ``b_kind``/``c_kind``: "fixed" (dim, n), "var" (batch, n, L), "grp" (batch, 2, n, L).
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=dtype)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    def bc(kind: str) -> torch.Tensor:
        if kind == "fixed":
            return randn(dim, dstate)
        if kind == "var":
            return randn(batch, dstate, length)
        return randn(batch, 2, dstate, length)

    return {
        "u": randn(batch, dim, length),
        "delta": 0.5 * rand(batch, dim, length),
        "A": -0.5 * rand(dim, dstate),
        "B": bc(b_kind),
        "C": bc(c_kind),
        "D": randn(dim) if has_d else None,
        "z": randn(batch, dim, length) if has_z else None,
        "delta_bias": 0.5 * rand(dim) if has_bias else None,
    }


def run_scan(
    fn,
    inputs: dict[str, torch.Tensor | None],
    softplus: bool,
    last_state: bool,
    seed: int = 1,
    **kwargs,
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``fn`` on leaf copies of ``inputs``; backprop random cotangents; return all."""
    leaves = {
        k: (v.detach().clone().requires_grad_() if v is not None else None)
        for k, v in inputs.items()
    }
    res = fn(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        leaves["D"],
        z=leaves["z"],
        delta_bias=leaves["delta_bias"],
        delta_softplus=softplus,
        return_last_state=last_state,
        **kwargs,
    )
    outs = list(res) if last_state else [res]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return [o.detach() for o in outs], grads


def assert_match(inputs, softplus: bool, last_state: bool, **kwargs) -> None:
    """Chunked == reference: outputs, last state and every gradient."""
    outs_r, grads_r = run_scan(selective_scan_ref, inputs, softplus, last_state)
    outs_c, grads_c = run_scan(selective_scan_chunked, inputs, softplus, last_state, **kwargs)
    assert len(outs_r) == len(outs_c) == (2 if last_state else 1)
    for o_c, o_r in zip(outs_c, outs_r, strict=True):
        assert o_c.shape == o_r.shape and o_c.dtype == o_r.dtype
        torch.testing.assert_close(o_c, o_r, rtol=RTOL, atol=ATOL)
    assert grads_c.keys() == grads_r.keys()
    for name in grads_r:
        assert grads_c[name] is not None and grads_r[name] is not None, name
        torch.testing.assert_close(
            grads_c[name],
            grads_r[name],
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, name=name: f"grad {name}: {m}",
        )


# --------------------------------------------------------------------------------------
# chunked scan == sequential reference
# --------------------------------------------------------------------------------------

BC_KINDS = ("fixed", "var", "grp")


@pytest.mark.parametrize("length", [1, 2, 3, 7, 64, 127])
@pytest.mark.parametrize(("b_kind", "c_kind"), list(itertools.product(BC_KINDS, BC_KINDS)))
def test_chunked_matches_ref_bc_kinds(length: int, b_kind: str, c_kind: str) -> None:
    inputs = make_inputs(2, 4, 8, length, b_kind, c_kind)
    assert_match(inputs, softplus=True, last_state=True)


@pytest.mark.parametrize(
    ("has_d", "has_z", "has_bias", "softplus", "last_state"),
    list(itertools.product([False, True], repeat=5)),
)
def test_chunked_matches_ref_options(
    has_d: bool, has_z: bool, has_bias: bool, softplus: bool, last_state: bool
) -> None:
    # Alternate the B/C kinds and lengths over the 32 option combinations.
    idx = int(has_d) + 2 * int(has_z) + 4 * int(has_bias) + 8 * int(softplus)
    b_kind, c_kind = [("var", "var"), ("grp", "grp"), ("fixed", "var"), ("var", "grp")][idx % 4]
    length = [7, 64, 127][idx % 3]
    inputs = make_inputs(2, 4, 8, length, b_kind, c_kind, has_d, has_z, has_bias, seed=idx)
    assert_match(inputs, softplus=softplus, last_state=last_state)


@pytest.mark.parametrize("length", [256, 1024])
@pytest.mark.parametrize(
    ("b_kind", "c_kind"), [("var", "var"), ("grp", "grp"), ("fixed", "fixed"), ("fixed", "grp")]
)
def test_chunked_matches_ref_long(length: int, b_kind: str, c_kind: str) -> None:
    inputs = make_inputs(2, 4, 8, length, b_kind, c_kind)
    assert_match(inputs, softplus=True, last_state=True)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 16, 64, 127, 500])
def test_chunked_any_chunk_size(chunk_size: int) -> None:
    """Every chunk size (ragged tails, one chunk, chunk longer than L) gives the reference."""
    inputs = make_inputs(2, 4, 8, 127, "grp", "var")
    assert_match(inputs, softplus=True, last_state=True, chunk_size=chunk_size)


@pytest.mark.parametrize("segment_bytes", [1, 5000, 20000])
@pytest.mark.parametrize("grad", [True, False])
def test_chunked_forward_segments(monkeypatch, segment_bytes: int, grad: bool) -> None:
    """The forward's time segments (cache blocking) do not change the result."""
    monkeypatch.setattr(ssm_scan, "SEGMENT_BYTES", segment_bytes)
    inputs = make_inputs(2, 4, 8, 127, "grp", "fixed")
    if grad:
        assert_match(inputs, softplus=True, last_state=True, chunk_size=5)
    else:
        with torch.no_grad():
            out_c, last_c = selective_scan_chunked(
                *inputs.values(), delta_softplus=True, return_last_state=True, chunk_size=5
            )
        out_r, last_r = selective_scan_ref(
            *inputs.values(), delta_softplus=True, return_last_state=True
        )
        torch.testing.assert_close(out_c, out_r, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(last_c, last_r, rtol=RTOL, atol=ATOL)


def test_chunked_strong_decay_is_stable() -> None:
    """Mamba-sized decays (A down to -64, large delta): exp(delta A) underflows to 0."""
    inputs = make_inputs(2, 4, 16, 300, "var", "var")
    inputs["A"] = -torch.exp(torch.linspace(0.0, math.log(64.0), 16)).repeat(4, 1)
    inputs["delta"] = 4.0 * inputs["delta"] + 1e-3
    outs_c, grads_c = run_scan(selective_scan_chunked, inputs, True, True)
    outs_r, grads_r = run_scan(selective_scan_ref, inputs, True, True)
    for t in [*outs_c, *grads_c.values()]:
        assert torch.isfinite(t).all()
    for o_c, o_r in zip(outs_c, outs_r, strict=True):
        torch.testing.assert_close(o_c, o_r, rtol=RTOL, atol=ATOL)
    for name in grads_r:
        torch.testing.assert_close(grads_c[name], grads_r[name], rtol=RTOL, atol=ATOL)


def test_chunked_gradcheck_float64() -> None:
    """The hand-written backward is the exact adjoint (finite differences, float64)."""
    inputs = make_inputs(1, 4, 3, 11, "grp", "var", dtype=torch.float64)
    leaves = [v.clone().requires_grad_() for v in inputs.values() if v is not None]

    def f(u, delta, A, B, C, D, z, bias):
        out, last = selective_scan_chunked(
            u,
            delta,
            A,
            B,
            C,
            D,
            z=z,
            delta_bias=bias,
            delta_softplus=True,
            return_last_state=True,
            chunk_size=3,
        )
        return out, last

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_float64_and_low_precision_dtypes() -> None:
    inputs = make_inputs(2, 4, 8, 40, "var", "fixed", dtype=torch.float64)
    out_c = selective_scan_chunked(*inputs.values(), delta_softplus=True)
    out_r = selective_scan_ref(*inputs.values(), delta_softplus=True)
    assert out_c.dtype == torch.float64
    torch.testing.assert_close(out_c, out_r, rtol=1e-10, atol=1e-10)
    # bfloat16 inputs: computed in float32, returned in bfloat16 (like upstream).
    inputs32 = make_inputs(2, 4, 8, 40, "var", "var")
    half = {
        k: (v.to(torch.bfloat16) if k in ("u", "delta", "z") and v is not None else v)
        for k, v in inputs32.items()
    }
    out_h, last_h = selective_scan_chunked(*half.values(), return_last_state=True)
    assert out_h.dtype == torch.bfloat16 and last_h.dtype == torch.float32
    torch.testing.assert_close(out_h, selective_scan_ref(*half.values()), rtol=0, atol=0)


def test_zero_length() -> None:
    inputs = make_inputs(2, 4, 8, 0, "var", "var")
    out, last = selective_scan_chunked(*inputs.values(), return_last_state=True)
    assert out.shape == (2, 4, 0) and last.shape == (2, 4, 8) and not last.any()


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ({"delta": torch.zeros(2, 4, 5)}, ValueError),
        ({"A": torch.zeros(3, 8)}, ValueError),
        ({"B": torch.zeros(4, 7)}, ValueError),
        ({"C": torch.zeros(2, 8, 5)}, ValueError),
        ({"B": torch.zeros(2, 3, 8, 6)}, ValueError),  # 4 channels not divisible by 3 groups
        ({"D": torch.zeros(5)}, ValueError),
        ({"z": torch.zeros(2, 4, 5)}, ValueError),
        ({"delta_bias": torch.zeros(4, 1)}, ValueError),
        ({"A": torch.zeros(4, 8, dtype=torch.complex64)}, NotImplementedError),
    ],
)
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_input_validation(fn, bad: dict[str, torch.Tensor], exc: type[Exception]) -> None:
    inputs = make_inputs(2, 4, 8, 6, "var", "var")
    inputs.update(bad)
    with pytest.raises(exc):
        fn(*inputs.values())


def test_auto_chunk_size() -> None:
    assert auto_chunk_size(1) == 1 and auto_chunk_size(7) == 7
    for length in (9, 64, 256, 1024, 4096, 10**6):
        t = auto_chunk_size(length)
        assert 4 <= t <= 16 and t & (t - 1) == 0
    assert auto_chunk_size(256) == 8 and auto_chunk_size(1024) == 16


# --------------------------------------------------------------------------------------
# the generic linear scan
# --------------------------------------------------------------------------------------


def naive_linear_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    h = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = a[t] * h + x[t]
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("length", [1, 2, 5, 33, 100])
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 200])
def test_linear_scan(length: int, chunk_size: int | None) -> None:
    g = torch.Generator().manual_seed(length)
    a = torch.rand(length, 3, 2, generator=g, dtype=torch.float64)
    x = torch.randn(length, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, x, chunk_size), naive_linear_scan(a, x))
    if length <= 33:
        assert torch.autograd.gradcheck(
            lambda a, x: linear_scan(a, x, chunk_size),
            (a.requires_grad_(), x.requires_grad_()),
        )


# --------------------------------------------------------------------------------------
# dispatch and the lazy mamba_ssm import
# --------------------------------------------------------------------------------------


def test_import_does_not_import_mamba_ssm(tmp_path) -> None:
    """Importing the module never imports mamba_ssm, even when one is installed and broken."""
    fake = tmp_path / "mamba_ssm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'triton'\")\n")
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import brainharmony.models.ssm as ssm
        import brainharmony.models
        assert "mamba_ssm" not in sys.modules, "mamba_ssm imported at module import"
        assert ssm.cuda_selective_scan_fn() is None  # the broken package is tried, then off
        import torch
        u = torch.randn(1, 2, 5)
        out = ssm.selective_scan(u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5),
                                 torch.randn(1, 3, 5))
        assert out.shape == (1, 2, 5)
        print("ok")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.fixture
def fresh_fast_path():
    cuda_selective_scan_fn.cache_clear()
    yield
    cuda_selective_scan_fn.cache_clear()


@pytest.mark.parametrize("error", [ImportError, ModuleNotFoundError, RuntimeError, OSError])
def test_fast_path_disabled_when_import_raises(monkeypatch, fresh_fast_path, error) -> None:
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "mamba_ssm" or name.startswith("mamba_ssm."):
            raise error("mamba_ssm cannot load here (no triton)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    for mod in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, mod)
    assert cuda_selective_scan_fn() is None
    inputs = make_inputs(2, 4, 8, 9, "var", "var")
    torch.testing.assert_close(
        selective_scan(*inputs.values()), selective_scan_chunked(*inputs.values())
    )


def test_fast_path_disabled_when_module_blocked(monkeypatch, fresh_fast_path) -> None:
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm` raise
    assert cuda_selective_scan_fn() is None


def test_fast_path_env_switch(monkeypatch, fresh_fast_path) -> None:
    calls: list[int] = []
    _install_fake_mamba(monkeypatch, calls)
    assert cuda_selective_scan_fn() is not None
    cuda_selective_scan_fn.cache_clear()
    monkeypatch.setenv(ssm.DISABLE_FAST_PATH_ENV, "1")
    assert cuda_selective_scan_fn() is None


def _install_fake_mamba(monkeypatch, calls: list[int]) -> None:
    """Put an importable fake ``mamba_ssm.ops.selective_scan_interface`` in sys.modules."""

    def fake_fn(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the CUDA kernel must not be called for CPU tensors")

    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
    mods = [types.ModuleType(n) for n in names]
    mods[2].selective_scan_fn = fake_fn
    mods[0].ops = mods[1]
    mods[1].selective_scan_interface = mods[2]
    for n, m in zip(names, mods, strict=True):
        monkeypatch.setitem(sys.modules, n, m)


def test_cpu_tensors_never_use_cuda_kernel(monkeypatch, fresh_fast_path) -> None:
    calls: list[int] = []
    _install_fake_mamba(monkeypatch, calls)
    assert cuda_selective_scan_fn() is not None
    inputs = make_inputs(2, 4, 8, 9, "var", "var")
    out = selective_scan(*inputs.values(), delta_softplus=True)
    torch.testing.assert_close(out, selective_scan_chunked(*inputs.values(), delta_softplus=True))
    assert not calls


# --------------------------------------------------------------------------------------
# Mamba module
# --------------------------------------------------------------------------------------

# Written from mamba_ssm/modules/mamba_simple.py (state-spaces/mamba, v1.2 .. 2.3.2):
# Mamba(d_model=16, d_state=16, d_conv=4, expand=2): d_inner = 32, dt_rank = ceil(16/16) = 1.
# Order: nn.Module.state_dict puts a module's own parameters (A_log, D) before those of its
# submodules, which follow in registration order (in_proj, conv1d, x_proj, dt_proj, out_proj).
MAMBA_SSM_TABLE_D16 = [
    ("A_log", (32, 16)),
    ("D", (32,)),
    ("in_proj.weight", (64, 16)),
    ("conv1d.weight", (32, 1, 4)),
    ("conv1d.bias", (32,)),
    ("x_proj.weight", (1 + 2 * 16, 32)),
    ("dt_proj.weight", (32, 1)),
    ("dt_proj.bias", (32,)),
    ("out_proj.weight", (16, 32)),
]
# Mamba(d_model=40, d_state=8, d_conv=3, expand=3, bias=True, conv_bias=False):
# d_inner = 120, dt_rank = ceil(40/16) = 3.
MAMBA_SSM_TABLE_D40 = [
    ("A_log", (120, 8)),
    ("D", (120,)),
    ("in_proj.weight", (240, 40)),
    ("in_proj.bias", (240,)),
    ("conv1d.weight", (120, 1, 3)),
    ("x_proj.weight", (3 + 2 * 8, 120)),
    ("dt_proj.weight", (120, 3)),
    ("dt_proj.bias", (120,)),
    ("out_proj.weight", (40, 120)),
    ("out_proj.bias", (40,)),
]


@pytest.mark.parametrize(
    ("kwargs", "table"),
    [
        ({"d_model": 16}, MAMBA_SSM_TABLE_D16),
        (
            {
                "d_model": 40,
                "d_state": 8,
                "d_conv": 3,
                "expand": 3,
                "bias": True,
                "conv_bias": False,
            },
            MAMBA_SSM_TABLE_D40,
        ),
    ],
)
def test_mamba_state_dict_matches_mamba_ssm(kwargs, table) -> None:
    model = Mamba(**kwargs)
    sd = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == table
    # A state dict written by mamba_ssm (same names/shapes) loads strictly, and ours too.
    g = torch.Generator().manual_seed(0)
    foreign = {k: torch.randn(*shape, generator=g) for k, shape in table}
    model.load_state_dict(foreign, strict=True)
    other = Mamba(**kwargs)
    other.load_state_dict(model.state_dict(), strict=True)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, foreign[k])


def test_mamba_init_semantics() -> None:
    torch.manual_seed(0)
    m = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1, dt_scale=2.0)
    expected_a_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(64, 1)
    torch.testing.assert_close(m.A_log.data, expected_a_log, rtol=0, atol=0)
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    torch.testing.assert_close(m.D.data, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias.data.double())
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    bound = m.dt_rank**-0.5 * 2.0
    assert m.dt_proj.weight.abs().max() <= bound
    assert m.dt_proj.bias._no_reinit and m.A_log._no_weight_decay and m.D._no_weight_decay
    # dt floor and constant init.
    m2 = Mamba(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4, dt_init="constant")
    torch.testing.assert_close(F.softplus(m2.dt_proj.bias.data), torch.full((32,), 1e-4))
    torch.testing.assert_close(m2.dt_proj.weight.data, torch.full((32, 1), 1.0))
    with pytest.raises(ValueError):
        Mamba(16, dt_init="bogus")
    with pytest.raises(ValueError):
        Mamba(16, scan="bogus")
    assert Mamba(16, dtype=torch.float64).in_proj.weight.dtype == torch.float64


def test_mamba_forward_chunked_equals_ref() -> None:
    torch.manual_seed(0)
    model = Mamba(16, d_state=8, scan="chunked")
    x = torch.randn(2, 33, 16)
    x_c = x.clone().requires_grad_()
    y_c = model(x_c)
    grads_c = torch.autograd.grad(y_c.square().sum(), [x_c, *model.parameters()])
    model.scan = "ref"
    x_r = x.clone().requires_grad_()
    y_r = model(x_r)
    grads_r = torch.autograd.grad(y_r.square().sum(), [x_r, *model.parameters()])
    assert y_c.shape == (2, 33, 16)
    torch.testing.assert_close(y_c, y_r, rtol=RTOL, atol=ATOL)
    for g_c, g_r in zip(grads_c, grads_r, strict=True):
        torch.testing.assert_close(g_c, g_r, rtol=RTOL, atol=ATOL)
    model.scan = "auto"  # on CPU: the chunked scan
    torch.testing.assert_close(model(x), y_c.detach(), rtol=0, atol=0)


def test_mamba_is_causal() -> None:
    torch.manual_seed(0)
    model = Mamba(16, d_state=4)
    x = torch.randn(1, 20, 16)
    x2 = x.clone()
    x2[:, 12:] = torch.randn(1, 8, 16)
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    torch.testing.assert_close(y[:, :12], y2[:, :12])
    assert not torch.allclose(y[:, 12:], y2[:, 12:])


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_mamba_block(norm: str) -> None:
    block = MambaBlock(16, norm=norm, d_state=4, layer_idx=3)
    names = [k for k, _ in block.named_parameters()]
    assert names[0] == "norm.weight" and "mixer.A_log" in names
    assert block.mixer.layer_idx == 3
    x = torch.randn(2, 9, 16)
    assert block(x).shape == x.shape
    with pytest.raises(ValueError):
        MambaBlock(16, norm="batchnorm")


def test_mamba_block_stack_overfits_one_batch() -> None:
    """A tiny 2-block stack fits one batch of a recurrent regression (running mean)."""
    torch.manual_seed(0)
    batch, length, d_in, d_model = 4, 24, 3, 16
    x = torch.randn(batch, length, d_in)
    y = torch.cumsum(x[..., :1], dim=1) / torch.arange(1, length + 1).view(1, -1, 1)
    net = torch.nn.Sequential(
        torch.nn.Linear(d_in, d_model),
        MambaBlock(d_model, d_state=8),
        MambaBlock(d_model, d_state=8, norm="rmsnorm"),
        torch.nn.LayerNorm(d_model),
        torch.nn.Linear(d_model, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = F.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
