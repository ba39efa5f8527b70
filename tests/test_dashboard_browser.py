"""The TensorBoard dashboard as a user sees it: a real ``tensorboard`` server and headless Chromium.

A short monitored run (with a planted flip bifurcation, so an event table exists) writes its logs; a
``tensorboard`` subprocess serves them; the HTTP data API must return the bifurcation scalars, the event
text, the figures and the custom-scalars layout; Chromium (through chromedriver and selenium) must render
the Custom Scalars and Text tabs, and the screenshots must not be blank.

Chromium is a system package (``make browser-deps`` installs ``chromium`` and ``chromium-driver``; CI runs
it before ``make test``).  Without it these tests fail with that hint instead of skipping silently.

``UPDATE_DOCS_SCREENSHOT=1`` writes the screenshots to ``docs/images/`` (the pictures in the README and the
docs); otherwise they go to the test's temporary folder, so a test run never changes the git tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from bifurcation_callback.callback import BifurcationMonitor

from .test_callback import flip_at
from .chromium import headless_chromium
from .tiny_modules import TinyRNNModule, plrnn_2d, quiet_trainer_kwargs, random_sequences

pytestmark = pytest.mark.browser

# Flags that make Chromium work as root in a container and keep it off the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
RUN_NAME = "tiny/version_0"
MAX_STEPS = 15
FLIP_STEP = 6  # the planted weight change, inside the batch Lightning logs at step 6: the monitor reports it there
SERVER_TIMEOUT_S = 30.0
RENDER_TIMEOUT_S = 20.0


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory) -> tuple[Path, BifurcationMonitor]:
    """Logs of a 15-step run with a planted flip: the fixed point's multiplier crosses −1 at step 6."""
    root = tmp_path_factory.mktemp("logs")
    rnn = plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2))
    module = TinyRNNModule(rnn, lr=0.05, schedule=flip_at(FLIP_STEP))
    # Async with a queue that drops nothing: results reach TensorBoard from the worker process, at their steps.
    monitor = BifurcationMonitor(max_order=2, log_figures_every_n_steps=5, mode="async", queue_size=None)
    logger = TensorBoardLogger(str(root), name="tiny")
    trainer = pl.Trainer(max_steps=MAX_STEPS, callbacks=[monitor], **quiet_trainer_kwargs(root, logger=logger))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, random_sequences())
    assert Path(logger.log_dir) == root / RUN_NAME
    assert any(event.step == FLIP_STEP for event in monitor.events), monitor.events
    return root, monitor


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(monitored_run, tmp_path_factory) -> Iterator[str]:
    """A ``tensorboard`` server on the run's logs; yields its base URL and always stops it."""
    executable = Path(sys.executable).parent / "tensorboard"
    assert executable.is_file(), f"no tensorboard executable next to {sys.executable}"
    root, _ = monitored_run
    port = _free_port()
    log_file = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    with open(log_file, "w") as log:
        # A new session, so teardown can stop tensorboard together with its data-server child process.
        process = subprocess.Popen(
            [str(executable), "--logdir", str(root), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process, log_file)
        yield url
    finally:
        _stop(process)


def _wait_until_serving(url: str, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tensorboard exited with status {process.returncode}:\n{log_file.read_text()}")
        try:
            with urllib.request.urlopen(url + "/data/runs", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"tensorboard did not answer on {url} within {SERVER_TIMEOUT_S} s:\n{log_file.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def _get(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=5) as response:
        return json.loads(response.read())


def _poll(fetch: Callable[[], Any], ready: Callable[[Any], bool], what: str) -> Any:
    """TensorBoard loads event files in the background: ask again until ``ready`` (bounded)."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while True:
        value = fetch()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"TensorBoard never served {what}; last answer: {json.dumps(value)[:2000]}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------- data API


def test_data_api_serves_scalars_text_images_and_layout(tensorboard, monitored_run):
    _, monitor = monitored_run
    assert RUN_NAME in _get(tensorboard, "/data/runs")

    wanted_scalars = {
        "bifurcation/n_cycles/order_1",
        "bifurcation/n_cycles/order_2",
        "bifurcation/n_stable/total",
        "bifurcation/max_abs_eig/order_1",
        "bifurcation/event",
        "bifurcation/loss",
        "bifurcation/n_loss_jumps",  # written at fit end: the last thing the monitor logs (p_value needs jumps)
    }
    scalar_tags = _poll(
        lambda: _get(tensorboard, "/data/plugin/scalars/tags"),
        lambda tags: wanted_scalars <= set(tags.get(RUN_NAME, {})),
        f"the scalar tags {sorted(wanted_scalars)}",
    )
    assert wanted_scalars <= set(scalar_tags[RUN_NAME])

    # /data/plugin/scalars/scalars answers [[wall_time, step, value], ...]
    counts = _get(tensorboard, "/data/plugin/scalars/scalars", tag="bifurcation/n_cycles/order_1", run=RUN_NAME)
    served = {int(step): value for _, step, value in counts}
    expected = {r["step"]: float(r["n_cycles"]["1"]) for r in monitor.records if "n_cycles" in r}
    assert served == expected and sorted(served) == list(range(MAX_STEPS))
    markers = _get(tensorboard, "/data/plugin/scalars/scalars", tag="bifurcation/event", run=RUN_NAME)
    assert {int(step) for _, step, value in markers if value > 0} == {e.step for e in monitor.events}

    # torch's add_text stores a text summary under "<tag>/text_summary".
    events_tag, summary_tag = "bifurcation/events/text_summary", "bifurcation/summary/text_summary"
    text_tags = _poll(
        lambda: _get(tensorboard, "/data/plugin/text/tags"),
        lambda tags: {events_tag, summary_tag} <= set(tags.get(RUN_NAME, [])),
        "the event and summary text",
    )
    assert {events_tag, summary_tag} <= set(text_tags[RUN_NAME])
    texts = _get(tensorboard, "/data/plugin/text/text", tag=events_tag, run=RUN_NAME)
    flip = next(t for t in texts if t["step"] == FLIP_STEP)
    assert "stability_change (-1)" in flip["text"] and "<table>" in flip["text"]  # Markdown rendered to HTML

    wanted_images = {"bifurcation/timeline", "bifurcation/state_space"}
    image_tags = _poll(
        lambda: _get(tensorboard, "/data/plugin/images/tags"),
        lambda tags: wanted_images <= set(tags.get(RUN_NAME, {})),
        f"the figures {sorted(wanted_images)}",
    )
    assert wanted_images <= set(image_tags[RUN_NAME])
    timeline = _get(tensorboard, "/data/plugin/images/images", tag="bifurcation/timeline", run=RUN_NAME)
    assert timeline and timeline[-1]["step"] == MAX_STEPS - 1  # steps 0 .. MAX_STEPS - 1
    image_url = f"{tensorboard}/data/plugin/images/individualImage?{timeline[-1]['query']}"
    with urllib.request.urlopen(image_url, timeout=5) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"

    layout = _get(tensorboard, "/data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"] for c in layout["category"] for chart in c["chart"]}
    assert charts["cycles per order"] == ["bifurcation/n_cycles/order_1", "bifurcation/n_cycles/order_2"]
    assert {"bifurcation/loss", "bifurcation/event"} <= set(charts["loss and bifurcation events"])
    assert "largest |multiplier| per order" in charts
    assert charts["attractor"][0] == "bifurcation/attractor/period"


# ---------------------------------------------------------------------------------------------------- browser

# Collects visible text and counts elements through every shadow root (TensorBoard's dashboards are Polymer
# components, which plain selectors do not see into).
_DEEP_QUERY = """
const texts = []; let lines = 0;
const walk = (node) => {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const child of node.children || []) {
    if (child.matches('svg path.line')) lines += 1;
    if (child.childElementCount === 0 && !['STYLE', 'SCRIPT', 'NOSCRIPT'].includes(child.tagName)) {
      texts.push((child.textContent || '').trim());
    }
    walk(child);
  }
};
walk(document.documentElement);
return [texts.join(' | '), lines];
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    with headless_chromium(tmp_path_factory.mktemp("chromium-profile"), CHROMIUM_FLAGS, "the dashboard test") as driver:
        yield driver


def _render(driver, url: str, ready: Callable[[str, int], bool], what: str) -> str:
    """Open ``url`` and wait until ``ready(text, n_chart_lines)`` holds on two polls in a row (drawn, settled)."""
    driver.get(url)
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    previous, text = None, ""
    while time.monotonic() < deadline:
        text, lines = driver.execute_script(_DEEP_QUERY)
        if ready(text, lines) and (text, lines) == previous:
            return text
        previous = (text, lines) if ready(text, lines) else None
        time.sleep(0.5)
    pytest.fail(f"TensorBoard's {what} did not render within {RENDER_TIMEOUT_S} s; page text: {text[:1500]}")


def _screenshot_dir(tmp_path: Path) -> Path:
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path


def _assert_not_blank(path: Path) -> None:
    from PIL import Image

    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000, pixels.shape
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) >= 50, f"{path} has only {len(colours)} colours: blank or unstyled page"
    # Below TensorBoard's header, a good share of the page is drawn (charts, text), not background.
    body = pixels[100:]
    background = np.median(body.reshape(-1, 3), axis=0)
    drawn = np.abs(body.astype(int) - background).sum(axis=-1) > 30
    assert drawn.mean() > 0.02, f"{path}: only {drawn.mean():.1%} of the page below the header is drawn"


def test_dashboard_renders_in_headless_chromium(tensorboard, browser, tmp_path):
    # Wait for the data first: the browser test is about rendering, not about the loader's pace.
    _poll(
        lambda: _get(tensorboard, "/data/plugin/scalars/tags"),
        lambda tags: "bifurcation/n_loss_jumps" in tags.get(RUN_NAME, {}),
        "the fit-end scalars",
    )
    out = _screenshot_dir(tmp_path)

    charts = ("loss and bifurcation events", "cycles per order", "largest |multiplier| per order")
    _render(
        browser,
        f"{tensorboard}/?darkMode=false#custom_scalars&_smoothingWeight=0",
        lambda text, lines: all(title in text for title in charts) and lines >= 6,
        "Custom Scalars tab",
    )
    dashboard = out / "dashboard.png"
    assert browser.save_screenshot(str(dashboard))
    _assert_not_blank(dashboard)

    text = _render(
        browser,
        f"{tensorboard}/?darkMode=false#text",
        lambda text, lines: "bifurcation/events/text_summary" in text and "multiplier crossed -1" in text,
        "Text tab",
    )
    assert "stability_change (-1)" in text
    events = out / "dashboard-events.png"
    assert browser.save_screenshot(str(events))
    _assert_not_blank(events)
