"""The documentation stays in step with the code: every logged metric has a row in the dashboards page."""

from pathlib import Path

from bifurcation_callback.callback import LOGGED_METRICS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_dashboards_page_lists_every_logged_metric():
    page = (DOCS / "how-to" / "dashboards.md").read_text()
    missing = [key for key in LOGGED_METRICS if f"| `{key}` |" not in page]
    assert not missing, f"docs/how-to/dashboards.md lacks a table row for {missing}"


def test_pictures_referenced_by_the_docs_exist():
    for page in DOCS.rglob("*.md"):
        for line in page.read_text().splitlines():
            if "](" in line and ".png)" in line:
                target = line.split("](", 1)[1].split(")", 1)[0]
                assert (page.parent / target).resolve().is_file(), f"{page}: missing picture {target}"
