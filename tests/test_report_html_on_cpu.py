# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``report.html`` in a real browser: headless Chromium (Debian's ``chromium``) renders the highlighted tokens.

The page comes from a tiny end-to-end run (random Llama, character tokenizer; see ``test_analyze_e2e_on_cpu.py``). The
screenshot is compared with one of the same page whose token spans lost their role classes: the highlight colours
must cover many more pixels in the real page, so the legend chips alone cannot pass the test.
"""

import html
import re
import shutil
import subprocess

import pytest
from test_analyze_e2e_on_cpu import run_cli, tiny_checkpoint

from verl_rhythm.analyze.report import ROLE_COLORS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


NASTY = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    summary = run_cli(tiny_checkpoint(root / "model"), root / "out", "--prompt", NASTY)
    return root / "out" / "report.html", summary


def screenshot(html_path, png_path, profile):
    """Headless Chromium screenshot of a local page (no network, no GPU, throwaway profile)."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--force-color-profile=srgb", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={png_path}", html_path.as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return png_path


def colour_pixels(png_path) -> dict[str, int]:
    from PIL import Image

    img = Image.open(png_path).convert("RGB")
    counts = dict.fromkeys(ROLE_COLORS, 0)
    targets = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)): role for role, c in ROLE_COLORS.items()}
    for count, rgb in img.getcolors(maxcolors=1 << 24):
        if rgb in targets:
            counts[targets[rgb]] += count
    return counts


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (tests/run.sh installs it)")
def test_chromium_screenshot_shows_highlighted_tokens(page, tmp_path):
    path, summary = page
    seqs = summary["sequences"]
    shot = colour_pixels(screenshot(path, tmp_path / "page.png", tmp_path / "profile1"))
    plain = tmp_path / "plain.html"
    plain.write_text(re.sub(r"<span class='t [^']*'", "<span class='t'", path.read_text(encoding="utf-8")))
    control = colour_pixels(screenshot(plain, tmp_path / "plain.png", tmp_path / "profile2"))
    # roles present in the run must show up as coloured token backgrounds
    assert any(any(s["preplan"]) for s in seqs) and any(any(s["anchor"]) for s in seqs)
    for role in ("preplan", "anchor"):
        assert shot[role] > control[role] + 200, (role, shot, control)
    assert control["anchor"] > 0  # the legend chip is rendered in both


def test_tokens_carry_their_numbers_and_markup_is_escaped(page):
    path, summary = page
    text = path.read_text(encoding="utf-8")
    assert summary["sequences"][-1]["prompt"] == NASTY
    assert "<script>" not in text
    assert html.escape(NASTY, quote=True) in text
    seq = summary["sequences"][0]
    first = re.search(r"<span class='t[^']*' title='([^']*)'>", text).group(1)
    tip = html.unescape(first)
    assert tip.startswith(f"token 0 {seq['tokens'][0]!r}")
    assert f"WAAD {seq['waad'][0]:.3f}" in tip and f"FAI {seq['fai'][0]:.4f}" in tip
    assert f"coupled {seq['gamma']['coupled'][0]:.2f}" in tip
