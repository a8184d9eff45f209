"""The training step with torch's default AdamW next to the fused one the train stage uses.

    .venv/bin/python benchmarks/optimizer.py [--arch resnet18] [--image-size 64] [--batch-size 32] [--rounds 3]

A full step (forward, loss, backward, optimizer step) of the same model on the same random
batch, on this machine's CPU with torch's default thread count. On CPU, torch's default AdamW
loops over the parameter tensors one at a time (``foreach`` is the default on CUDA only);
``fused=True`` updates them all in one kernel. Each round times both, alternating, and prints
the optimizer's share of the step; the summary is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step_ms(model, x, y, fused: bool, steps: int) -> tuple[float, float]:
    """Milliseconds per full step and per optimizer step alone, after two warm-up steps."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    loss_fn = torch.nn.CrossEntropyLoss()
    total = only_opt = 0.0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:
            total, only_opt = total + (t2 - t0), only_opt + (t2 - t1)
    return total / steps * 1000, only_opt / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from frugalml.model.modeling import build_model

    torch.manual_seed(0)
    model = build_model(args.arch, 10)
    model.train()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    print(
        f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
    )
    ratios = []
    for r in range(args.rounds):
        plain, plain_opt = step_ms(model, x, y, fused=False, steps=args.steps)
        fused, fused_opt = step_ms(model, x, y, fused=True, steps=args.steps)
        ratios.append(plain / fused)
        print(
            f"round {r + 1}: default AdamW {plain:.1f} ms/step (optimizer {plain_opt:.1f} ms, "
            f"{plain_opt / plain:.0%}); fused {fused:.1f} ms/step (optimizer {fused_opt:.1f} ms, "
            f"{fused_opt / fused:.0%}); step speed-up {plain / fused:.2f}x"
        )
    print(f"median step speed-up, fused over default AdamW: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
