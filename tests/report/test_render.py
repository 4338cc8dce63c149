"""The report as a browser renders it: headless Chromium (Debian's ``chromium``) loads report.html from disk.

The report has no JavaScript, so to read the rendered page the test loads a copy with one probe script added
at the end: on ``load`` it writes every ``img.plot``'s decoded size and every section's rendered height into
the DOM, which ``--dump-dom`` then prints. A broken data URI decodes to naturalWidth 0; a section hidden or
lost by bad markup has no height. A screenshot of the unmodified report checks that it paints at all.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_fakes import write_basic_run

from longshort.report.html import SECTIONS, build_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: apt-get install -y chromium")

PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.querySelectorAll("img.plot")].map(i => ({
    alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width,
    section: i.closest("section") ? i.closest("section").id : null}));
  const sections = [...document.querySelectorAll("section")].map(s => ({
    id: s.id, height: s.getBoundingClientRect().height, notes: s.querySelectorAll("p.absent").length,
    errors: s.querySelectorAll("p.error").length}));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({imgs, sections, title: document.title});
  document.body.appendChild(pre);
});
</script>"""


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", "--mute-audio", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def rendered(report: Path, tmp: Path) -> dict[str, object]:
    """What the probe saw when Chromium rendered (a copy of) the report."""
    page = report.read_text()
    assert "<script" not in page  # the report itself needs none; the probe goes into a copy
    wrapper = tmp / "probe.html"
    wrapper.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp, "--virtual-time-budget=10000", "--dump-dom", wrapper.as_uri()).stdout
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the probe did not run: " + dom[-500:]
    return json.loads(html.unescape(m.group(1)))


def png_sizes(page: str) -> list[tuple[int, int]]:
    """Width and height of every embedded PNG, from its IHDR chunk."""
    out = []
    for data in re.findall(r'<img class="plot" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page):
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        out.append(struct.unpack(">II", raw[16:24]))
    return out


def test_every_section_renders_and_every_plot_decodes(full_report: Path, tmp_path: Path) -> None:
    seen = rendered(full_report, tmp_path)
    sections = {s["id"]: s for s in seen["sections"]}  # type: ignore[index, union-attr]
    assert list(sections) == [sid for sid, _ in SECTIONS]
    for sid, s in sections.items():
        assert s["height"] > 40, f"section {sid} is not laid out"
        assert s["errors"] == 0, sid
    imgs = seen["imgs"]
    expected = png_sizes(full_report.read_text())
    assert len(imgs) == len(expected) == 13  # type: ignore[arg-type]
    for img, (w, h) in zip(imgs, expected, strict=True):  # type: ignore[call-overload]
        assert (img["w"], img["h"]) == (w, h), img["alt"]  # decoded by the browser, at the PNG's own size
        assert img["shown"] > 100, img["alt"]
    with_plots = {i["section"] for i in imgs}  # type: ignore[union-attr]
    assert with_plots == {sid for sid, _ in SECTIONS} - {"summary", "inputs"}
    assert seen["title"] == "longshort run run"


def test_missing_diagnostics_render_as_notes(tmp_path: Path) -> None:
    report = build_report(write_basic_run(tmp_path / "bare"))
    seen = rendered(report, tmp_path)
    notes = {s["id"]: s["notes"] for s in seen["sections"]}  # type: ignore[union-attr]
    for sid in ("gradient-norms", "gate-statistics", "memory-utilisation", "reliability", "attention",
                "loss-landscape", "parameter-space", "information-flow"):
        assert notes[sid] == 1, sid
    assert notes["learning-curves"] == 0 and notes["confusion-matrix"] == 0
    assert all(i["w"] > 0 for i in seen["imgs"])  # type: ignore[union-attr]
    assert {i["section"] for i in seen["imgs"]} == {"learning-curves", "learning-rate", "confusion-matrix"}  # type: ignore[union-attr]


def test_screenshot_is_not_blank(full_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", full_report.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(rgb[10, 10] - [0x1D, 0x35, 0x57]).max() < 8  # the header band: the inline CSS applied
    gray = rgb.mean(axis=2)
    assert gray.std() > 20
    ink = (np.abs(rgb - rgb[-1, -1]).sum(axis=2) > 60).mean()  # pixels unlike the page background
    assert ink > 0.05
    q = rgb[200:] // 16
    colours = len(np.unique(q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]))
    assert colours > 40  # plots, not just text on a flat page
