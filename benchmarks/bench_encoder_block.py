"""Training throughput of one transformer encoder block on CPU, against the matmul rate.

What is measured (float32, ``torch.get_num_threads()`` threads, or ``--threads``):

* **block**: forward + backward of one :class:`brainharmony.models.blocks.Block`
  (pre-norm attention + GELU MLP, the ViT-B block by default: width 768, 12 heads, MLP x4)
  on ``(batch, tokens, width)`` inputs that require grad (as inside a stack), with
  ``valid=None`` and, optionally, a padding mask.
* **matmul**: the FLOP rate of plain ``torch.mm`` in the same process, timed interleaved
  with the block (so load drift on a shared machine hits both alike), for two shapes: a
  square ``n x n x n`` GEMM and the block's own largest GEMM (``batch*tokens x width`` by
  ``width x 4*width``). The better of the two is the reference.

Useful FLOPs of the block, per training step: ``3 x`` the forward's matmul FLOPs (the
backward of a matmul costs two matmuls), forward = ``batch * tokens * (24 * width^2 +
4 * tokens * width)`` (qkv 6, projection 2, MLP 16 times ``width^2`` per token; scores and
weighted sum ``2 * tokens * width`` each). LayerNorm, GELU, softmax and the optimiser are
not counted: the fraction is the share of the machine's matmul speed that the block turns
into useful matmul work.

Prints a Markdown table; ``--json`` and ``--md`` write the results.

Usage::

    .venv/bin/python benchmarks/bench_encoder_block.py \\
        --json benchmarks/results/encoder_block.json --md benchmarks/results/encoder_block.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from benchlib import (
    comparison,
    environment,
    fact,
    pin_threads,
    result_document,
    write_result,
)

from brainharmony.models.blocks import Block, init_vit_weights

TARGET = 0.40


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, block: int = 3
) -> dict[str, list[float]]:
    """Wall times (s) of each function, run in interleaved rounds with a warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in fns.items():
            todo = min(block, repeats - len(times[name]))
            if todo <= 0:
                continue
            fn()
            for _ in range(todo):
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
    return times


def block_flops(batch: int, tokens: int, width: int) -> float:
    """Matmul FLOPs of one forward + backward of a ViT block (see the module docstring)."""
    forward = batch * tokens * (24 * width**2 + 4 * tokens * width)
    return 3.0 * forward


def summarise(times: list[float], flops: float) -> dict[str, float]:
    median = statistics.median(times)
    best = min(times)
    return {
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * best,
        "max_ms": 1e3 * max(times),
        "gflops_median": flops / median / 1e9,
        "gflops_best": flops / best / 1e9,
        "repeats": len(times),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    pinned = pin_threads(args.threads) if args.threads else None
    torch.manual_seed(0)
    b, n, d = args.batch, args.tokens, args.width
    block = Block(d, args.heads)
    block.apply(init_vit_weights)
    block.train()
    x = torch.randn(b, n, d, requires_grad=True)
    valid = None
    if args.pad_fraction > 0:
        valid = torch.ones(b, n, dtype=torch.bool)
        valid[:, n - int(n * args.pad_fraction) :] = False

    def train_step() -> None:
        out = block(x, valid)
        out.sum().backward()
        block.zero_grad(set_to_none=True)
        x.grad = None

    square = torch.randn(args.square, args.square), torch.randn(args.square, args.square)
    tall = torch.randn(b * n, d), torch.randn(d, 4 * d)
    out_sq = torch.empty(args.square, args.square)
    out_tall = torch.empty(b * n, 4 * d)

    fns = {
        "block": train_step,
        "mm_square": lambda: torch.mm(*square, out=out_sq),
        "mm_block_shape": lambda: torch.mm(*tall, out=out_tall),
    }
    load_start = os.getloadavg()
    times = time_interleaved(fns, args.repeats)
    load_end = os.getloadavg()
    flops = {
        "block": block_flops(b, n, d),
        "mm_square": 2.0 * args.square**3,
        "mm_block_shape": 2.0 * b * n * d * 4 * d,
    }
    results = {name: summarise(times[name], flops[name]) for name in fns}
    ref_median = max(
        results["mm_square"]["gflops_median"], results["mm_block_shape"]["gflops_median"]
    )
    ref_best = max(results["mm_square"]["gflops_best"], results["mm_block_shape"]["gflops_best"])
    fraction_median = results["block"]["gflops_median"] / ref_median
    fraction_best = results["block"]["gflops_best"] / ref_best
    return {
        "benchmark": "encoder_block",
        "config": {
            "batch": b,
            "tokens": n,
            "width": d,
            "heads": args.heads,
            "mlp_ratio": 4.0,
            "pad_fraction": args.pad_fraction,
            "square_gemm": args.square,
            "dtype": "float32",
            "repeats": args.repeats,
        },
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "pinned": pinned,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "loadavg_start": list(load_start),
            "loadavg_end": list(load_end),
        },
        "results": results,
        "block_training_gflops_per_step": flops["block"] / 1e9,
        "fraction_of_matmul_median": fraction_median,
        "fraction_of_matmul_best": fraction_best,
        "target": TARGET,
        "meets_target": fraction_median >= TARGET,
    }


def markdown(doc: dict[str, Any]) -> str:
    c, e, r = doc["config"], doc["env"], doc["results"]
    lines = [
        "# Encoder block training throughput (CPU)",
        "",
        f"Block: width {c['width']}, {c['heads']} heads, MLP x4, batch {c['batch']} x "
        f"{c['tokens']} tokens, float32, forward + backward; torch {e['torch']}, "
        f"{e['threads']} thread(s) on {e['cpu_count']} cores; load average at start "
        f"{e['loadavg_start'][0]:.2f}, at end {e['loadavg_end'][0]:.2f}.",
        "",
        "| what | median ms | best ms | GFLOP/s (median) | GFLOP/s (best) |",
        "|---|---|---|---|---|",
    ]
    for name, res in r.items():
        lines.append(
            f"| {name} | {res['median_ms']:.2f} | {res['min_ms']:.2f} | "
            f"{res['gflops_median']:.1f} | {res['gflops_best']:.1f} |"
        )
    lines += [
        "",
        f"Block useful matmul work per training step: {doc['block_training_gflops_per_step']:.2f}"
        " GFLOP.",
        "",
        f"**Fraction of the matmul rate: {100 * doc['fraction_of_matmul_median']:.0f}% "
        f"(medians), {100 * doc['fraction_of_matmul_best']:.0f}% (best times)**; target "
        f"{100 * doc['target']:.0f}%.",
        "",
    ]
    return "\n".join(lines)


def comparisons(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The block's useful FLOP rate vs the same process's matmul rate (see :mod:`benchlib`)."""
    c, r = doc["config"], doc["results"]
    ref = max(("mm_square", "mm_block_shape"), key=lambda k: r[k]["gflops_median"])
    ref_label = (
        f"torch.mm {c['square_gemm']}^3 (square GEMM)"
        if ref == "mm_square"
        else f"torch.mm {c['batch'] * c['tokens']}x{c['width']} by {c['width']}x{4 * c['width']} "
        "(the block's MLP GEMM)"
    )
    return [
        comparison(
            key="block_vs_matmul",
            what="encoder block training step (forward + backward), useful matmul FLOP rate "
            "vs plain torch.mm",
            ours_label="brainharmony.models.blocks.Block (pre-norm attention + GELU MLP)",
            ours_value=r["block"]["gflops_median"],
            unit="GFLOP/s",
            higher_is_better=True,
            peer_label=ref_label + ", the faster of two GEMM shapes",
            peer_package="torch",
            peer_version=doc["env"]["torch"],
            peer_value=r[ref]["gflops_median"],
            size=f"width {c['width']}, {c['heads']} heads, batch {c['batch']} x "
            f"{c['tokens']} tokens, float32",
            repeats=r["block"]["repeats"],
            peer_repeats=r[ref]["repeats"],
            threads=doc["env"]["threads"],
            warmup=1,
            target=(">=", doc["target"]),
            target_source="issue 6",
            accuracy_criterion="none: the peer is a FLOP-rate floor (plain GEMMs), not the "
            "same computation",
        )
    ]


NOTES = [
    "Useful FLOPs per step: 3x the forward's matmul FLOPs (batch * tokens * (24 * width^2 + "
    "4 * tokens * width)); LayerNorm, GELU, softmax and the optimiser are not counted. The "
    "ratio is the share of the machine's matmul speed the block turns into useful work.",
    "Block and GEMMs are timed interleaved in the same process.",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=300, help="300 = BH-S visible tokens")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--pad-fraction", type=float, default=0.0)
    parser.add_argument("--square", type=int, default=1024, help="square GEMM size")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    env = environment()
    doc = run(args)
    doc["env"].update({"numpy": env["numpy"]})
    doc["command"] = "bench_encoder_block.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, 0)
    )
    text = markdown(doc)
    print(text)
    result = result_document(
        benchmark="encoder_block",
        title="Training: encoder block throughput vs the matmul rate",
        comparisons=comparisons(doc),
        env=doc["env"],
        facts=[
            fact(
                "block useful matmul work per training step",
                doc["block_training_gflops_per_step"],
                "GFLOP",
            ),
            fact("fraction of the matmul rate, best times", doc["fraction_of_matmul_best"]),
        ],
        notes=NOTES,
        details=doc,
    )
    write_result(args.json, result)
    if args.md:
        from brainharmony.io import write_text

        write_text(args.md, text)


if __name__ == "__main__":
    main()
