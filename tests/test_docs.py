"""The docs a newcomer reads: a short README, topic pages whose links resolve, a flag page generated from the
config that is never stale, and code blocks that use only the public API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "RESULTS.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule: lower case, punctuation dropped, spaces
    to hyphens)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 310


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {target} (no such heading)"


def test_the_flag_page_is_generated_from_the_config():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "flag_reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("recipe", ["digits", "text_classification", "image_classification"])
def test_every_flag_that_help_prints_is_on_the_flag_page(recipe):
    from framework.core.config import format_help

    config = __import__(recipe).RECIPE.config_class
    flags = set(re.findall(r"^  (--\w+)", format_help(config, recipe), re.M)) - {"--config"}
    page = (REPO / "docs" / "flags.md").read_text()
    missing = sorted(f for f in flags if f"`{f}`" not in page)
    assert len(flags) > 40 and not missing, missing


def test_code_blocks_import_only_the_public_api():
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            assert not re.search(r"(from|import) framework\.", block), (page.name, block[:200])


def test_the_recipes_import_only_the_public_api():
    for script in sorted((REPO / "recipes").rglob("*.py")):
        assert not re.search(r"^\s*(from|import) framework\.", script.read_text(), re.M), script
