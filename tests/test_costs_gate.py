from frugalml.config import CostsConfig, Params
from frugalml.costs import CostMeter, price
from tasks.gate import decide


def test_price_sheet_prices_each_component():
    costs = CostsConfig(vcpus=2)
    entry = {"wall_s": 3600, "gpu_s": 1800, "s3_requests_put": 1000, "s3_requests_get": 10000,
             "labeled_images": 100, "stored_bytes": 2e9}
    usd = price(entry, costs)
    assert usd["compute_usd"] == round(2 * 0.0446, 6)
    assert usd["gpu_usd"] == round(0.5 * 1.84, 6)
    assert usd["s3_requests_usd"] == round(0.005 + 10 * 0.0004, 6)
    assert usd["labeling_usd"] == 8.0
    assert usd["storage_usd_per_month"] == round(2 * 0.023, 6)
    assert usd["total_usd"] == round(usd["compute_usd"] + usd["gpu_usd"] + usd["s3_requests_usd"] + 8.0, 6)


def test_meter_measures_cpu_and_wall():
    with CostMeter("x", "run") as m:
        sum(i * i for i in range(2_000_000))
        m.add(labeled_images=3)
    assert m.entry["wall_s"] > 0 and m.entry["cpu_s"] > 0 and m.entry["peak_rss_mb"] > 10
    assert m.entry["labeled_images"] == 3 and m.entry["run_id"] == "run"


def test_gate_lists_every_check_and_decides():
    cfg = Params.model_validate({"gates": {"min_accuracy": 0.9, "min_macro_f1": 0.95}})
    ok = decide(cfg, {"accuracy": 0.97, "macro_f1": 0.96})
    assert ok["decision"] == "accept" and len(ok["checks"]) == 2
    bad = decide(cfg, {"accuracy": 0.97, "macro_f1": 0.5})
    assert bad["decision"] == "reject" and bad["failed"] == ["min_macro_f1"]
