"""Promotion as a Prefect flow, so a team can promote (or roll back) from the Prefect UI or API.

Same rules as ``frugalml promote``: a gate-rejected version needs ``force`` and a ``reason``,
and the alias changes by a conditional write (concurrent promotions never lose an update).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from frugalml.core import config
from frugalml.core.registry import Registry
from frugalml.core.store import Store


@flow(name="frugalml-promotion", log_prints=True)
def promotion_flow(
    version: str = "", alias: str = "production", force: bool = False, reason: str = "", rollback: bool = False
) -> dict:
    """Point ``alias`` at ``version`` (or, with ``rollback``, back at its previous version)."""
    if not rollback and not version:
        raise ValueError("promotion_flow needs a version (or rollback=True)")
    cfg = config.load()
    reg = Registry(Store.from_config(cfg.storage), cfg.model.name)
    new = reg.rollback(alias) if rollback else reg.promote(version, alias, force=force, reason=reason)
    get_run_logger().info("%s: %s -> %s", cfg.model.name, alias, new["version"])
    return new
