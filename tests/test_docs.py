"""The README and the manual point at files that exist: mkdocs' strict build (`make docs`) checks docs/, but not
the README, which GitHub and PyPI show as the front page."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # code blocks hold no links
    return [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_every_relative_link_of_the_readme_and_docs_points_at_a_file():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    missing = [
        f"{md.relative_to(ROOT)} -> {t}" for md in pages for t in relative_links(md) if not (md.parent / t).exists()
    ]
    assert not missing, missing
    assert "docs/api/index.md" in relative_links(ROOT / "README.md")  # the front page links the API reference


def test_the_small_grid_design_names_a_page_that_exists():
    from vggnet.reproduce.grids import SMALL_DESIGN

    (page,) = re.findall(r"docs/[\w/-]+\.md", SMALL_DESIGN.split("\n\n")[0])
    assert (ROOT / page).is_file()
    assert not re.search(r"\b[0-9a-f]{7}\b", SMALL_DESIGN)  # commit hashes and pilots live in that page, not the report


def test_no_file_cites_a_performance_page_outside_the_repository():
    files = [
        ROOT / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "src").rglob("*.py"),
        *(ROOT / "benchmarks").rglob("*.py"),
    ]
    citing = [str(f.relative_to(ROOT)) for f in files if "PERFORMANCE.md" in f.read_text()]
    assert not citing, f"cite docs/performance.md#reference-measurements instead: {citing}"
