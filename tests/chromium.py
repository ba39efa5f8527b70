"""Headless Chromium for the browser tests (the TensorBoard dashboard and the docs site's formulas).

Debian's chromium and chromium-driver packages (`make browser-deps`) are driven through Selenium with an
explicit driver path, so Selenium Manager never looks for (or downloads) a driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))


@contextmanager
def headless_chromium(profile_dir: Path, flags: Sequence[str], purpose: str) -> Iterator[Any]:
    """A Selenium Chrome driver on Debian's Chromium with ``flags``; fails (never skips) when it is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"headless Chromium is needed for {purpose} but {', '.join(missing)} is missing: "
            "run `make browser-deps` (Debian packages chromium and chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: install the dev extra (`pip install -e '.[dev]'`)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in flags:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
