"""Every relative link of the README, docs/, weights/ and results/ pages names a file the repository tracks.

A result file that ``.gitignore`` keeps out of the repository is a broken link for every reader of a clone.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target) or [text](target#anchor)


@functools.cache
def tracked_files() -> frozenset[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(listing.splitlines())


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]


def broken_links(page: Path, tracked: frozenset[str]) -> list[str]:
    broken = []
    for target in relative_links(page):
        path = (page.parent / target).resolve()
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else None
        if rel is None or not (rel in tracked or any(name.startswith(rel + "/") for name in tracked)):
            broken.append(target)
    return broken


PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("weights/*.md"), *ROOT.glob("results/**/*.md")])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_names_a_tracked_file(page):
    assert broken_links(page, tracked_files()) == []


def test_an_untracked_target_is_reported():
    page = ROOT / "docs" / "results.md"
    tracked = tracked_files() - {"results/quant_speed.json"}
    assert "../results/quant_speed.json" in broken_links(page, tracked)
