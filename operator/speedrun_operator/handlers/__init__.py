"""The logic behind the kopf decorators in main.py: one module per concern, thin and idempotent.

- operator_startup.py: startup/cleanup, kopf settings, the shared `OperatorContext` in kopf's memo
- children.py:  get-or-create-or-adopt of owned children; Job suspension
- reconcile.py: observe the SpeedrunJob and its Jobs, decide (lifecycle.py), write status, post Events
- periodic.py:  the periodic thread: the safety-net resync and the progress scrape
- scrape.py:    one progress scrape: rank 0's /metrics -> status.progress; the bounded pool they run on
- side_effects.py: what a written status owes its Jobs (TTL, a stop), re-applied until it holds
"""
