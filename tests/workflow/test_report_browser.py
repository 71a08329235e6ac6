"""The HTML report in headless Chromium: no console or page errors, every image renders.

Chromium is Debian's ``chromium`` package (requirements/apt.txt, installed by
scripts/install-system-deps.sh). The page itself has no script; the test loads an
instrumented copy whose first element records page errors (``error`` events,
including resources that fail to load) and ``console.error`` calls, and on ``load``
writes the number of images and those without a decoded bitmap
(``complete && naturalWidth > 0``) into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from brainharmony.evaluate.report import build_report
from tests.unit.evaluate.test_report import synthetic_results

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

PROBE = """<script>
window.__bhErrors = [];
window.addEventListener("error", function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.href)) || "resource";
  window.__bhErrors.push("error: " + String(what).slice(0, 120));
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__bhErrors.push("unhandledrejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__bhErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt; });
  var widths = imgs.map(function (i) { return i.naturalWidth; });
  var pre = document.createElement("pre");
  pre.id = "bh-probe";
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, widths: widths,
                                    errors: window.__bhErrors});
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium binary on PATH (tried " + ", ".join(BROWSERS) + "); install Debian's "
        "'chromium' (requirements/apt.txt, scripts/install-system-deps.sh)"
    )
    raise AssertionError  # unreachable


def _open(browser: str, page: Path, profile: Path) -> tuple[dict, str]:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        page.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    match = re.search(r'<pre id="bh-probe">(.*?)</pre>', out.stdout, flags=re.S)
    assert match, "the probe did not run (no load event?)\n" + out.stderr[-3000:]
    return json.loads(html.unescape(match.group(1))), out.stderr


def _instrument(report: Path) -> Path:
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text, "the report is expected to be script-free"
    probe = report.with_name("probe.html")
    probe.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    return probe


def test_report_opens_in_chromium_without_errors_and_images_render(tmp_path):
    browser = _browser()
    results = synthetic_results(tmp_path)
    centroids = np.random.default_rng(0).normal(0, 40, (20, 3))
    report = build_report(results / "report" / "index.html", results, centroids=centroids)
    state, stderr = _open(browser, _instrument(report), tmp_path / "profile")
    assert state["errors"] == [], state["errors"]
    assert state["images"] >= 10
    assert state["broken"] == [], state["broken"]
    assert min(state["widths"]) > 0
    console_errors = [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)
    ]
    assert console_errors == []


def test_probe_detects_a_broken_image_and_a_script_error(tmp_path):
    """The check can fail: a corrupt image and a throwing script are both reported."""
    browser = _browser()
    page = tmp_path / "index.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<img alt='corrupt' src='data:image/png;base64,AAAA'>"
        "<img alt='missing' src='does-not-exist.png'>"
        "</body></html>"
    )
    probe = _instrument(page)
    probe.write_text(
        probe.read_text().replace(
            "</body>", "<script>console.error('boom'); undefinedFunction();</script></body>"
        )
    )
    state, _ = _open(browser, probe, tmp_path / "profile")
    assert sorted(state["broken"]) == ["corrupt", "missing"]
    assert any("boom" in e for e in state["errors"])
    assert any("undefinedFunction" in e for e in state["errors"])
