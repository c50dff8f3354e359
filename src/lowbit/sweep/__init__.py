"""Sweeps of quantize-and-evaluate trials on Ray, with a results store (SQLite) that survives
crashes: :mod:`spec` (the sweep file), :mod:`grid` (its trials), :mod:`store` (the store),
:mod:`executors` (Ray tasks or this process), :mod:`driver` (resume logic), :mod:`results`
(filter, export, Pareto front)."""
