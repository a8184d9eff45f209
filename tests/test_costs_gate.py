import pytest

from frugalml.contracts import EvalReport
from frugalml.core.config import CostsConfig, Params
from frugalml.core.costs import CostMeter, price
from frugalml.ship.gates import decide as _decide


def test_price_sheet_prices_each_component():
    costs = CostsConfig(vcpus=2)
    entry = {
        "wall_s": 3600,
        "gpu_s": 1800,
        "s3_requests_put": 1000,
        "s3_requests_get": 10000,
        "labeled_images": 100,
        "stored_bytes": 2e9,
    }
    usd = price(entry, costs)
    assert usd["compute_usd"] == round(2 * 0.0446, 6)
    assert usd["gpu_usd"] == round(0.5 * 1.84, 6)
    assert usd["s3_requests_usd"] == round(0.005 + 10 * 0.0004, 6)
    assert usd["labeling_usd"] == 8.0
    assert usd["storage_usd_per_month"] == round(2 * 0.023, 6)
    assert usd["total_usd"] == round(usd["compute_usd"] + usd["gpu_usd"] + usd["s3_requests_usd"] + 8.0, 6)


def test_spot_capacity_is_priced_at_spot_rates_and_against_the_work_kept_on_demand():
    costs = CostsConfig(vcpus=2)
    entry = {"wall_s": 3600, "gpu_s": 3600, "lost_s": 900, "s3_requests_put": 1000}
    spot, on_demand = price(entry, costs, "spot"), price(entry, costs)
    assert spot["compute_usd"] == round(2 * 0.0178, 6) and spot["gpu_usd"] == 0.74
    assert on_demand["compute_usd"] == round(2 * 0.0446, 6) and on_demand["gpu_usd"] == 1.84
    # the counterfactual is the same in both: the 45 minutes kept, on demand, plus the requests
    kept = round(0.75 * (2 * 0.0446 + 1.84) + 0.005, 6)
    assert spot["on_demand_usd"] == on_demand["on_demand_usd"] == kept
    assert spot["total_usd"] < kept < on_demand["total_usd"]


def test_a_spot_row_shows_its_interruption_and_its_saving_vs_on_demand():
    from flows.record import cost_rows
    from flows.stages import StageOutcome
    from frugalml.contracts import CostEntry
    from frugalml.core.config import OrchestrationConfig

    def attempt(wall_s, lost_s):
        entry = {"wall_s": wall_s, "lost_s": lost_s}
        usd = price(entry, CostsConfig(vcpus=2), "spot")
        return CostEntry(stage="train", run_id="r", capacity="spot", **entry, **usd)

    # SIGTERM 10 min after the last checkpoint; the retry spends a minute to resume
    first, retry = attempt(3600, 600), attempt(1800, 60)
    [row] = cost_rows([StageOutcome("train", True, 1900, retry, pool="gpu", interrupted=[first])])
    assert row.capacity == "spot" and row.interruptions == 1 and row.lost_s == 660
    assert row.usd == round(first.total_usd + retry.total_usd, 6)
    assert row.interrupted_usd == first.total_usd
    assert row.lost_usd == pytest.approx(first.total_usd / 6 + retry.total_usd / 30, abs=2e-6)
    assert row.on_demand_usd == pytest.approx((3000 + 1740) / 3600 * 2 * 0.0446, abs=2e-6)
    assert row.saving_usd == round(row.on_demand_usd - row.usd, 6) > 0
    # a node price per pool: spot and on-demand hours of that node instead of the price sheet
    nodes = OrchestrationConfig(pool_usd_per_hour={"gpu": 4.0}, pool_spot_usd_per_hour={"gpu": 1.5})
    [row] = cost_rows([StageOutcome("train", True, 1900, retry, pool="gpu", interrupted=[first])], nodes)
    assert row.usd == round(1.5 * 1.5, 6) and row.on_demand_usd == pytest.approx(4.0 * 4740 / 3600, abs=2e-6)


def test_spot_needs_every_price_it_will_bill():
    with pytest.raises(ValueError, match="pool_spot_usd_per_hour.gpu"):
        Params.model_validate(
            {
                "train": {"capacity": "spot"},
                "orchestration": {"pools": {"default": "local", "train": "gpu"}, "pool_usd_per_hour": {"gpu": 4.0}},
            }
        )
    with pytest.raises(ValueError, match="spot_usd_per_gpu_hour"):
        Params.model_validate(
            {"train": {"capacity": "spot"}, "costs": {"gpu_type": "l4", "prices": {"usd_per_gpu_hour": {"l4": 0.8}}}}
        )
    with pytest.raises(ValueError, match="no price in costs.prices.usd_per_gpu_hour"):
        Params.model_validate({"costs": {"gpu_type": "l4"}})


def test_meter_measures_cpu_and_wall():
    with CostMeter("x", "run") as m:
        sum(i * i for i in range(2_000_000))
        m.add(labeled_images=3)
    assert m.entry["wall_s"] > 0 and m.entry["cpu_s"] > 0 and m.entry["peak_rss_mb"] > 10
    assert m.entry["labeled_images"] == 3 and m.entry["run_id"] == "run"


EV = {
    "accuracy": 0.97,
    "macro_f1": 0.96,
    "latency_ms_p50": 4.0,
    "latency_ms_p95": 6.0,
    "model_size_bytes": 45_000_000,
    "per_class": {"a": {"recall": 0.99}, "b": {"recall": 0.8}},
}
# The fields the gates do not read, so that EV validates as a whole EvalReport
FILLER = {"test_images": 10, "top3_accuracy": 1.0, "ece": 0.01, "device": "cpu", "parameters": 1}
FILLER.update(throughput_images_per_s=100.0, throughput_batch_size=16)


def decide(cfg, ev: dict, train_usd: float = 0.0) -> dict:
    """The gate on a (partial) evaluation report, as the JSON it writes."""
    per_class = {c: {"precision": 1.0, "f1": 1.0, "support": 1, **v} for c, v in ev["per_class"].items()}
    report = EvalReport.model_validate({**FILLER, **ev, "per_class": per_class})
    return _decide(cfg, report, train_usd).model_dump(mode="json", exclude_none=True)


def test_gate_lists_every_check_and_decides():
    cfg = Params.model_validate({"gates": {"min_accuracy": 0.9, "min_macro_f1": 0.95}})
    ok = decide(cfg, EV)
    assert ok["decision"] == "accept" and [c["name"] for c in ok["checks"]] == ["min_accuracy", "min_macro_f1"]
    bad = decide(cfg, {**EV, "macro_f1": 0.5})
    assert bad["decision"] == "reject" and bad["failed"] == ["min_macro_f1"]


def test_quality_cost_and_speed_gates():
    cfg = Params.model_validate(
        {
            "gates": {
                "min_class_recall": 0.85,
                "max_latency_ms_p95": 5.0,
                "max_model_size_mb": 50,
                "max_train_usd": 0.01,
                "max_serving_usd_per_1k": 0.0001,
            }
        }
    )
    res = decide(cfg, EV, train_usd=0.02)
    by = {c["name"]: c for c in res["checks"]}
    assert by["min_class_recall"]["value"] == 0.8 and by["min_class_recall"]["note"] == "class b"
    assert not by["max_latency_ms_p95"]["passed"] and by["max_model_size_mb"]["passed"]
    assert not by["max_train_usd"]["passed"]
    # 4 ms per prediction on a $0.0893/h replica: 1000 x 0.004 s x 0.0893 / 3600 = $0.0000992 per 1k
    assert by["max_serving_usd_per_1k"]["value"] == pytest.approx(0.0000992, rel=1e-3)
    assert by["max_serving_usd_per_1k"]["passed"]
    assert sorted(res["failed"]) == ["max_latency_ms_p95", "max_train_usd", "min_class_recall"]


def test_regression_against_the_champion():
    cfg = Params.model_validate({"gates": {"max_regression": 0.01}})
    worse = decide(cfg, {**EV, "champion": {"version": "v1", "comparable": True, "accuracy": 0.99}})
    assert worse["failed"] == ["max_regression"] and worse["champion"] == "v1"
    none = decide(cfg, {**EV, "champion": None})
    assert [c["name"] for c in none["checks"]] == ["min_accuracy"]
