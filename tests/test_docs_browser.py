"""The documentation site renders its formulas offline: MathJax ships inside the built site.

A module fixture builds the site (``mkdocs build --strict``, the docs extra) into a temporary folder.  The static
test checks that no page loads a script from the network and that the MathJax component is in the site; the
browser test opens every built page with formulas as a file:// URL in headless Chromium whose network is cut
off (every host name resolves to nothing) and asserts that MathJax typeset each formula: an ``mjx-container``
with an SVG inside every ``.arithmatex`` element, no TeX error, and no raw ``\\(``, ``\\[`` or ``$$`` left in
the page's visible text.  With MathJax loaded from a CDN instead, the formulas stay raw TeX and this test fails.

Without mkdocs (the docs extra is not installed) the tests skip with that reason; ``make test`` installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .chromium import headless_chromium

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
    # No network: every host name fails to resolve, so a CDN script cannot load even where one is reachable.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
TYPESET_TIMEOUT_S = 20.0

# Per page: the formulas pymdownx.arithmatex marked, how many of them hold a typeset MathJax container with an
# SVG, the TeX errors MathJax rendered, and whether raw TeX delimiters are still visible.
_MATH_STATE = r"""
const formulas = Array.from(document.querySelectorAll('.arithmatex'));
const typeset = formulas.filter(el => el.querySelector('mjx-container svg') !== null).length;
const errors = Array.from(document.querySelectorAll('mjx-container [data-mjx-error], mjx-merror'))
  .map(el => el.getAttribute('data-mjx-error') || el.textContent);
const text = document.body.innerText;
const raw = ['\\(', '\\[', '$$'].filter(delim => text.includes(delim));
return {formulas: formulas.length, typeset: typeset, errors: errors, raw: raw,
        mathjax: typeof window.MathJax === 'object' && typeof window.MathJax.typesetPromise === 'function'};
"""


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The docs site built with ``mkdocs build --strict`` into a temporary folder (the git tree stays clean)."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: the docs extra (`pip install -e '.[docs]'`)")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


def _pages_with_math(site: Path) -> list[Path]:
    return sorted(page for page in site.rglob("*.html") if 'class="arithmatex"' in page.read_text())


def test_built_site_ships_mathjax_and_loads_no_script_from_the_network(built_site):
    assert (built_site / "javascripts" / "mathjax" / "tex-svg.js").is_file(), "MathJax is not in the built site"
    remote = [
        f"{page.relative_to(built_site)}: {line.strip()}"
        for page in built_site.rglob("*.html")
        for line in page.read_text().splitlines()
        if "<script" in line and ('src="http' in line or "src=\"//" in line)
    ]
    assert not remote, "pages load scripts from the network:\n" + "\n".join(remote)
    assert any(page.name == "concepts.html" for page in _pages_with_math(built_site)), "concepts page has no math"


@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory) -> Iterator[Any]:
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile"), OFFLINE_CHROMIUM_FLAGS, "the docs math test") as driver:
        yield driver


@pytest.mark.browser
def test_formulas_are_typeset_offline_from_file_urls(built_site, offline_browser):
    pages = _pages_with_math(built_site)
    assert pages, "no built page contains a formula (pymdownx.arithmatex output)"
    failures = []
    for page in pages:
        offline_browser.get(page.as_uri())
        deadline = time.monotonic() + TYPESET_TIMEOUT_S
        state = offline_browser.execute_script(_MATH_STATE)
        while state["typeset"] < state["formulas"] and time.monotonic() < deadline:
            time.sleep(0.25)
            state = offline_browser.execute_script(_MATH_STATE)
        name = page.relative_to(built_site).as_posix()
        if not state["mathjax"]:
            failures.append(f"{name}: MathJax did not load")
        if state["typeset"] < state["formulas"]:
            failures.append(f"{name}: {state['typeset']} of {state['formulas']} formulas typeset")
        if state["raw"]:
            failures.append(f"{name}: raw TeX delimiters {state['raw']} visible")
        if state["errors"]:
            failures.append(f"{name}: MathJax TeX errors {state['errors']}")
    assert not failures, "formulas not rendered offline:\n" + "\n".join(failures)
