"""The chart's README.md, rendered by helm-docs from README.md.gotmpl and values.yaml's comments.

helm-docs (tests/support/go_tool.py builds it from its Go module) writes the values table from the
`# --` comment above each setting, in file order. The README is committed, so that it reads on
GitHub and in Artifact Hub; tests/e2e/test_chart_docs.py fails when it drifts from what helm-docs
renders now.

    python tests/support/chart_docs.py           # regenerate charts/speedrun-operator/README.md
    python tests/support/chart_docs.py --check   # exit 1 when it differs
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import go_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "speedrun-operator"
README = CHART / "README.md"
HELM_DOCS_ARGS = ["--template-files", "README.md.gotmpl", "--sort-values-order", "file", "--log-level", "warning"]


def render_readme(chart: Path = CHART) -> str:
    """What helm-docs writes as the chart's README.md (in a scratch copy; the chart is untouched)."""
    helm_docs = go_tool.tool_path("helm-docs")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / chart.name
        shutil.copytree(chart, copy, ignore=shutil.ignore_patterns("README.md"))
        proc = subprocess.run(
            [str(helm_docs), "--chart-search-root", str(copy), *HELM_DOCS_ARGS],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"helm-docs failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return (copy / "README.md").read_text()


def main(argv: list[str]) -> int:
    rendered = render_readme()
    if "--check" in argv:
        if not README.exists() or README.read_text() != rendered:
            print(f"{README.relative_to(ROOT)} is stale: run `python tests/support/chart_docs.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
