"""The tiers: tests/unit (no Go, no root), tests/cluster (the control plane), tests/e2e (whole
paths through real processes); helpers they share are in tests/support. Each tier's own fixtures
are in its conftest.py.

The control-plane fixtures (control_plane, kube_nodes, kubectl; the players' player_image and
pod_players; slow_registry) serve both tests/cluster and the e2e speedruns on the control plane,
so they load here: pytest takes `pytest_plugins` only from the root conftest.
"""

pytest_plugins = ["tests.cluster.fixtures", "tests.cluster.players", "tests.cluster.slow_registry"]
