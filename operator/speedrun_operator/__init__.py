"""speedrun_operator: the kopf operator that reconciles SpeedrunJob resources.

Installed as `speedrun_operator` (never `operator`, which would shadow the standard library).
"""

__version__ = "0.1.0"
