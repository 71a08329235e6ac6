#!/usr/bin/env python
"""One command for the day a GPU is lent: fast kernels against their twins, a bf16 training
step of every model at paper width, and DDP over NCCL.

Run on a machine with CUDA (about 5 minutes on one H100; ``make gpu-check``)::

    python benchmarks/gpu_check.py --json gpu_check.json

It prints one table and exits 1 when any check disagrees (0 when all pass or are skipped
for a stated reason; ``--require-fast-paths`` turns a missing flash-attn or mamba_ssm
into a failure, for a machine where both should be installed):

``attention``
    ``brainharmony.models.attention.attention`` (flash-attn's variable-length kernel on
    CUDA in bf16/fp16, with padded keys) against :func:`attention_reference` in float32,
    outputs and input gradients. The criterion is flash-attn's own test rule
    (Dao-AILab/flash-attention ``tests/test_flash_attn.py``): the fast path's largest
    error from the float32 reference is at most twice that of plain PyTorch attention in
    the same low precision (plus 1e-5).
``selective_scan``
    ``mamba_ssm.selective_scan_fn`` (CUDA) against this package's
    :func:`selective_scan_chunked`, forward and backward, float32, with the tolerances of
    mamba's own test of that function (state-spaces/mamba
    ``tests/ops/test_selective_scan.py``: rtol 6e-4, atol 2e-3 for float32 outputs; its
    gradient checks use twice those).
``train <model>``
    One optimiser step of each model of ``models/<model>_paper.yaml`` on random inputs
    of the paper's shapes, bf16 autocast, after one warm-up step: loss and gradients
    finite, the throughput (samples/s), and the model-FLOP utilisation against the
    card's dense bf16 peak, with FLOPs per sample from ``scripts/gpu_hours.py`` (the same
    count that sizes the presets' GPU-hour estimates; the measured MFU checks its 40 %).
``ddp``
    One process per visible GPU over NCCL: an all-reduce of known values, and one
    DistributedDataParallel step whose parameters must come out identical on every rank
    and equal to the single-process step on the whole batch.

``--cpu`` runs the same checks without a GPU, to keep this script tested: the attention
and scan checks compare the CPU paths with their float64 references, the training
steps use the demo-width models (``models/<model>_demo.yaml``, ``--quick`` shrinks the
volumes) in bf16 autocast on CPU, and DDP runs 2 processes over gloo. GPU-only parts are
reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ("bh_s", "bh_f", "harmonizer", "lmae", "predictor")
#: Dense bf16 tensor-core peaks (FLOP/s) by a substring of ``torch.cuda.get_device_name``.
PEAKS: Mapping[str, float] = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
}
#: mamba's test tolerances for float32 (rtol, atol); gradients use twice these.
SCAN_TOL = (6e-4, 2e-3)


@dataclass
class Row:
    check: str
    device: str
    status: str  # pass | FAIL | skipped
    error: float | None = None
    bound: float | None = None
    detail: str = ""


def _gpu_hours():
    spec = importlib.util.spec_from_file_location("gpu_hours", REPO / "scripts" / "gpu_hours.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------------------ attention


def check_attention(device: torch.device, require_fast: bool) -> list[Row]:
    from brainharmony.models.attention import (
        _flash_usable,
        attention,
        attention_reference,
        flash_attn_varlen_fn,
    )

    gen = torch.Generator().manual_seed(0)
    b, h, n, dh = (2, 12, 1024, 64) if device.type == "cuda" else (2, 3, 96, 32)
    q, k, v, g = (torch.randn(b, h, n, dh, generator=gen) for _ in range(4))
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, n // 3 :] = False  # sample 0: two thirds of its keys are padding
    valid = valid.to(device)

    def run(fn: Callable[..., torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        leaves = [t.detach().to(device, dtype).clone().requires_grad_(True) for t in (q, k, v)]
        out = fn(*leaves, valid)
        (out * g.to(device, dtype)).sum().backward()
        return (out.detach(), *(t.grad for t in leaves))

    rows = []
    if device.type == "cpu":
        fast = run(attention, torch.float32)
        ref = run(attention_reference, torch.float64)
        for name, a, r in zip(("out", "dq", "dk", "dv"), fast, ref, strict=True):
            err, bound = _max_err(a, r), 1e-4 * max(1.0, float(r.abs().max()))
            rows.append(
                Row(
                    f"attention {name}",
                    "cpu",
                    "pass" if err <= bound else "FAIL",
                    err,
                    bound,
                    "SDPA float32 vs explicit float64",
                )
            )
        return rows
    if flash_attn_varlen_fn() is None:
        status = "FAIL" if require_fast else "skipped"
        return [Row("attention", str(device), status, detail="flash_attn not importable")]
    for dtype in (torch.bfloat16, torch.float16):
        probe = q.to(device, dtype)
        if not _flash_usable(probe, probe):
            rows.append(Row(f"attention {dtype}", str(device), "FAIL", detail="flash path unused"))
            continue
        fast = run(attention, dtype)
        plain = run(attention_reference, dtype)  # plain PyTorch in the same precision
        ref = run(attention_reference, torch.float32)
        for name, a, p, r in zip(("out", "dq", "dk", "dv"), fast, plain, ref, strict=True):
            if name == "out":  # padded query rows of a sample are not compared
                a, p, r = a[:, :, : n // 3], p[:, :, : n // 3], r[:, :, : n // 3]
            err, bound = _max_err(a, r), 2 * _max_err(p, r) + 1e-5
            rows.append(
                Row(
                    f"attention {name} {str(dtype)[6:]}",
                    str(device),
                    "pass" if err <= bound else "FAIL",
                    err,
                    bound,
                    "flash-attn varlen vs fp32",
                )
            )
    return rows


# --------------------------------------------------------------------------- selective scan


def check_scan(device: torch.device, require_fast: bool) -> list[Row]:
    from brainharmony.models.ssm import cuda_selective_scan_fn
    from brainharmony.models.ssm_scan import selective_scan_chunked, selective_scan_ref

    gen = torch.Generator().manual_seed(1)
    batch, dim, dstate, length = (2, 256, 16, 1024) if device.type == "cuda" else (2, 16, 8, 200)
    inputs = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": 0.5 * torch.rand(batch, dim, length, generator=gen),
        "A": -torch.rand(dim, dstate, generator=gen) - 0.5,
        "B": torch.randn(batch, dstate, length, generator=gen),
        "C": torch.randn(batch, dstate, length, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "z": torch.randn(batch, dim, length, generator=gen),
        "delta_bias": 0.1 * torch.randn(dim, generator=gen),
    }
    grad_out = torch.randn(batch, dim, length, generator=gen)

    def run(fn: Callable[..., torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        leaves = {
            k: t.detach().to(device, dtype).clone().requires_grad_(True) for k, t in inputs.items()
        }
        out = fn(**leaves, delta_softplus=True)
        (out * grad_out.to(device, dtype)).sum().backward()
        return {"out": out.detach(), **{f"d{k}": t.grad for k, t in leaves.items()}}

    if device.type == "cpu":
        fast, ref, label = (
            run(selective_scan_chunked, torch.float32),
            run(selective_scan_ref, torch.float64),
            "chunked float32 vs sequential float64",
        )
    else:
        fn = cuda_selective_scan_fn()
        if fn is None:
            status = "FAIL" if require_fast else "skipped"
            return [Row("selective_scan", str(device), status, detail="mamba_ssm not importable")]
        fast, ref, label = (
            run(fn, torch.float32),
            run(selective_scan_chunked, torch.float32),
            "mamba_ssm CUDA vs chunked",
        )
    rows = []
    for name in fast:
        rtol, atol = SCAN_TOL if name == "out" else (2 * SCAN_TOL[0], 2 * SCAN_TOL[1])
        a, r = fast[name].float(), ref[name].float()
        excess = float(((a - r).abs() - rtol * r.abs()).max())  # allclose's test, as a margin
        rows.append(
            Row(
                f"selective_scan {name}",
                str(device),
                "pass" if excess <= atol else "FAIL",
                _max_err(a, r),
                atol,
                f"{label}; max(|a-r| - {rtol:g}|r|) = {excess:.2e}",
            )
        )
    return rows


# ------------------------------------------------------------------------- training steps


def model_config(kind: str, *, paper: bool, quick: bool) -> dict[str, Any]:
    """The model YAML of ``kind`` with what a random-input step needs filled in."""
    doc = yaml.safe_load(
        (REPO / "models" / f"{kind}_{'paper' if paper else 'demo'}.yaml").read_text()
    )
    gh = _gpu_hours()
    m = doc["model"]
    if kind == "bh_f":
        m.update(harmonics=None, gradients=None, tables_from_state=True)
    if kind == "bh_s" and m["img_size"] == "auto":
        m["img_size"] = list(gh.AUTO_IMG_SIZE)
    if kind == "harmonizer" and m["s_grid"] == "auto":
        m["s_grid"] = list(gh.AUTO_S_GRID)
    if quick:
        if kind == "bh_s":
            m["img_size"] = [64, 64, 64]
        if kind == "harmonizer":
            m["s_grid"] = [4, 4, 4]
    return doc


def random_batch(kind: str, doc: Mapping[str, Any], batch: int, gen: torch.Generator) -> dict:
    """Random inputs of the shapes the model takes in training (one sample's FLOPs as in
    ``scripts/gpu_hours.py``: series at the finest pretraining TR)."""
    m, data = doc["model"], doc.get("data") or {}
    gh = _gpu_hours()
    if kind == "bh_s":
        return {"x": torch.randn(batch, 1, *m["img_size"], generator=gen)}
    if kind == "harmonizer":
        f, s = math.prod(m["f_grid"]), math.prod(m["s_grid"])
        return {
            "f_tokens": torch.randn(batch, f, m["f_dim"], generator=gen),
            "f_valid": torch.ones(batch, f, dtype=torch.bool),
            "s_tokens": torch.randn(batch, s, m["s_dim"], generator=gen),
        }
    if kind == "bh_f":
        k = round(float(m["tau"]) / gh.FINEST_TR_S)
        frames = int(m["n_patches"]) * k
    else:
        frames = gh.frames(data["duration_s"])
    rois = int(m["n_rois"])
    out = {
        "x": torch.randn(batch, frames, rois, generator=gen),
        "mask": torch.ones(batch, frames, dtype=torch.bool),
        "roi_mask": torch.ones(batch, rois, dtype=torch.bool),
        "tr": torch.full((batch,), gh.FINEST_TR_S, dtype=torch.float64),
    }
    if kind == "predictor":
        out[m["target"]] = torch.linspace(20.0, 80.0, batch)
    return out


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAKS.items() if key in name), None)


def check_training(
    device: torch.device, kinds: Sequence[str], *, paper: bool, quick: bool, batch: int | None
) -> list[Row]:
    from brainharmony.models.registry import build_model

    gh = _gpu_hours()
    rows = []
    for kind in kinds:
        torch.manual_seed(0)
        doc = model_config(kind, paper=paper, quick=quick)
        n = batch or int(doc["train"]["batch_size"])
        data = {
            k: v.to(device)
            for k, v in random_batch(kind, doc, n, torch.Generator().manual_seed(2)).items()
        }
        model = build_model(kind, doc["model"]).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        times, loss = [], torch.tensor(float("nan"))
        try:
            for _ in range(2):  # one warm-up step, one timed step
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    loss, _ = model.forward_loss(data)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grads_ok = all(
                    torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
                )
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError as exc:
            rows.append(
                Row(
                    f"train {kind}",
                    str(device),
                    "FAIL",
                    detail=f"out of memory at batch {n}: {exc}",
                )
            )
            continue
        ok = bool(torch.isfinite(loss)) and bool(grads_ok)
        per_s = n / times[-1]
        flops = gh.flops_per_sample(kind, doc["model"], doc.get("data") or {})
        peak = peak_flops(device)
        mfu = f"MFU {flops * per_s / peak:.1%}" if peak else "MFU n/a (no known peak)"
        mem = (
            f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda"
            else ""
        )
        rows.append(
            Row(
                f"train {kind}",
                str(device),
                "pass" if ok else "FAIL",
                None,
                None,
                f"{'paper' if paper else 'demo'} width, batch {n}: {per_s:.2f} samples/s, "
                f"{mfu}, loss {float(loss.detach()):.4g}{mem}",
            )
        )
        del model, opt, data
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return rows


# ------------------------------------------------------------------------------------ DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_inputs(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(4 * world, 32, generator=gen), torch.randn(4 * world, 8, generator=gen)


def _ddp_model() -> torch.nn.Module:
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))


def _ddp_worker(rank: int, world: int, backend: str, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    model = DistributedDataParallel(
        _ddp_model().to(device), device_ids=[rank] if backend == "nccl" else None
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _ddp_inputs(world)
    part = slice(4 * rank, 4 * rank + 4)
    F.mse_loss(model(x[part].to(device)), y[part].to(device)).backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    torch.save({"sum": float(value), "params": flat}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def check_ddp(device: torch.device) -> list[Row]:
    import torch.multiprocessing as mp

    backend, world = ("nccl", torch.cuda.device_count()) if device.type == "cuda" else ("gloo", 2)
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:  # spawned workers import this file by name (when not __main__)
        sys.path.insert(0, here)
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_ddp_worker, args=(world, backend, _free_port(), out), nprocs=world, join=True)
        got = [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world)]
    model = _ddp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _ddp_inputs(world)
    F.mse_loss(model(x), y).backward()  # equal shards: the mean loss over the whole batch
    opt.step()
    single = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = world * (world + 1) / 2
    spread = max(_max_err(g["params"], got[0]["params"]) for g in got)
    err = _max_err(got[0]["params"], single)
    ok = all(g["sum"] == expected for g in got) and spread == 0.0 and err <= 1e-5
    return [
        Row(
            f"ddp {backend} x{world}",
            str(device),
            "pass" if ok else "FAIL",
            err,
            1e-5,
            f"all-reduce sums {[g['sum'] for g in got]} (expected {expected:g}); "
            f"parameter spread across ranks {spread:.1e}; vs single process {err:.1e}",
        )
    ]


# --------------------------------------------------------------------------------- report


def render(rows: Sequence[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| check | device | status | max error | bound | detail |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = "" if r.error is None else f"{r.error:.2e}"
        bound = "" if r.bound is None else f"{r.bound:.2e}"
        lines.append(f"| {r.check} | {r.device} | {r.status} | {err} | {bound} | {r.detail} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run without a GPU (module docstring)")
    parser.add_argument("--quick", action="store_true", help="with --cpu: smaller volumes")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model kinds")
    parser.add_argument(
        "--batch", type=int, default=None, help="batch per step (default: the YAML's)"
    )
    parser.add_argument("--skip", default="", help="comma-separated: attention,scan,train,ddp")
    parser.add_argument(
        "--require-fast-paths",
        action="store_true",
        help="a missing flash-attn or mamba_ssm is a failure",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible; run with --cpu to check the CPU paths",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    kinds = [k for k in args.models.split(",") if k]
    unknown = sorted(set(kinds) - set(MODELS))
    if unknown:
        parser.error(f"unknown model kind(s) {unknown}; known: {', '.join(MODELS)}")
    skip = {s for s in args.skip.split(",") if s}
    start = time.perf_counter()
    rows: list[Row] = []
    if "attention" not in skip:
        rows += check_attention(device, args.require_fast_paths)
    if "scan" not in skip:
        rows += check_scan(device, args.require_fast_paths)
    if "train" not in skip:
        rows += check_training(
            device, kinds, paper=not args.cpu, quick=args.quick, batch=args.batch
        )
    if "ddp" not in skip:
        rows += check_ddp(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = f"gpu_check on {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s"
    print(render(rows, header))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2)
        )
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
