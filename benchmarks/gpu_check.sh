#!/usr/bin/env bash
# One prepared check for a lent GPU machine (under 5 minutes). Run from the repo root:
#   bash benchmarks/gpu_check.sh            (expects .venv, or PYTHON=python3 with the deps installed)
# 1. resnet50 at 224 px: training images/s in fp32 vs bf16 autocast + channels_last (target >= 2x);
# 2. the pipeline's train stage on CUDA (builtin digits, 1 epoch): metrics/train.json says cuda + bf16.
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-.frugalml/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

timeout 240 "$PY" - <<'PY' | tee "$OUT/resnet50.json"
import json, time, torch, torchvision
assert torch.cuda.is_available(), "no CUDA device"
dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True

def rate(bf16: bool, batch=128, steps=30, warmup=10) -> float:
    model = torchvision.models.resnet50(num_classes=1000).to(dev)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=dev)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize(); t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        loss.backward(); opt.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
fp32 = rate(False)
bf16 = rate(True)
print(json.dumps({"gpu": torch.cuda.get_device_name(), "resnet50_fp32_images_per_s": round(fp32, 1),
                  "resnet50_bf16_channels_last_images_per_s": round(bf16, 1),
                  "ratio_bf16_to_fp32": round(bf16 / fp32, 2), "target_ratio": 2.0}, indent=2))
PY

WORK=$(mktemp -d)
cat > "$WORK/params.yaml" <<'YAML'
data:
  source: builtin:digits
model:
  arch: resnet18
  image_size: 64
train:
  epochs: 1
  device: cuda
  checkpoint_to_s3: false
evaluate:
  device: cuda
YAML
export PYTHONPATH="$PWD" FRUGALML_S3_ENDPOINT=""
ROOT="$PWD"
( cd "$WORK" && timeout 180 "$ROOT/$PY" -m tasks.ingest && timeout 180 "$ROOT/$PY" -m tasks.validate \
  && timeout 180 "$ROOT/$PY" -m tasks.train && timeout 120 "$ROOT/$PY" -m tasks.evaluate )
cp "$WORK/metrics/train.json" "$OUT/train.json"; cp "$WORK/costs/train.json" "$OUT/train-cost.json"
"$PY" - "$OUT/train.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["device"] == "cuda" and r["precision"] == "bf16", r
print(f"train stage on CUDA: ok ({r['images_per_s']} img/s, {r['precision']}, val acc {r['final_val_acc']})")
PY
