"""The cost decisions: what a run will cost and what is worth paying for.

Owns the estimate before a run (``estimate``), the sweep (``sweep``: Optuna over DVC experiments,
the Pareto front and the recommendation; ``screen``: the starts ranked on cached features;
``lanes``: workspace copies for trials side by side), and the labels (``labels``: learning curve
and audit; ``annotation``: what to label next, Label Studio import).

Imports: any package below it (core, contracts, data, model, ship).
"""
