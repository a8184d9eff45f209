"""What happens to a run after and around it: its record, its report, reproducing it, and
dispatching its stages to work pools.

Owns run records in the store (``records``), the HTML report of a run or a sweep (``report``),
``frugalml reproduce`` (``reproduce``) and the stage dispatch protocol of work pools
(``dispatch``).

Imports: any package below it (core, contracts, data, model, ship, decide).
"""
