"""The chart README's values table (rendered by helm-docs, tests/e2e/test_chart_docs.py) lists every
setting of values.yaml with a description."""

from __future__ import annotations

import re

import yaml

from tests.support import chart_docs


def leaf_keys(value: object, prefix: str = "") -> set[str]:
    """Dotted keys of values.yaml's settings (a non-empty mapping is a group, not a setting)."""
    if isinstance(value, dict) and value and prefix not in FREE_FORM:
        return {k for key, child in value.items() for k in leaf_keys(child, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


FREE_FORM = {"resources.", "podSecurityContext.", "securityContext."}  # defaults that are objects


def test_values_table_lists_every_setting_with_its_description() -> None:
    values = yaml.safe_load((chart_docs.CHART / "values.yaml").read_text())
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| ([\w.]+) \| \w+ \| .*? \| (.+) \|$", chart_docs.README.read_text(), re.M)
    }
    missing = leaf_keys(values) - set(table)
    assert not missing, f"settings without a row in the chart README: {sorted(missing)}"
    assert all(description.strip() for description in table.values())
    assert "monitoring.podMonitor.metricRelabelings" in table and "image.digest" in table
