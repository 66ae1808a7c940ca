"""The documentation holds together: links resolve, "DESIGN §N" resolves, the README stays a front page.

Checked: every relative link in ``README.md``, ``CHANGELOG.md`` and ``docs/*.md`` names an existing file, and a
``file.md#anchor`` (or ``#anchor``) one of that file's headings, by GitHub's anchor rule; every "DESIGN §N" in the
repository's ``.py``, ``.yaml`` and ``.md`` files names a heading ``## §N …`` of ``docs/design.md``; ``README.md``
is at most 12 KB and keeps the test command that ``.ci/run`` runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

README_MAX_BYTES = 12 * 1024
DESIGN = REPO / "docs" / "design.md"
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+).*?\1")
_DESIGN_REF = re.compile(r"DESIGN §(\d+)((?:\s*(?:,|and|/|–|-)\s*§\d+)*)")
_DESIGN_HEADING = re.compile(r"^## §(\d+) \S")


def doc_files() -> list[Path]:
    """The Markdown files whose links are checked: README.md, CHANGELOG.md and docs/*.md."""
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of a Markdown text outside fenced code blocks, code spans blanked."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, _CODE_SPAN.sub("", line)))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text: markup dropped, lower case, punctuation removed, spaces to hyphens.

    >>> github_anchor("§2 The DAG")
    '2-the-dag'
    >>> github_anchor("Final models, `ma2mi predict` and the report")
    'final-models-ma2mi-predict-and-the-report'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's ``-1``, ``-2`` … suffixes for repeated ones."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    lines, fenced = path.read_text(encoding="utf-8").splitlines(), False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            slug = github_anchor(match.group(2))
            count = seen.get(slug, 0)
            found.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link in a Markdown file that is not a URL (no scheme, not ``//…``)."""
    links = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", target):
                links.append((number, target))
    return links


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` that names no file, or an anchor its file lacks, as ``file:line: why``."""
    problems = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(REPO)}:{number}: link {target!r}"
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: {linked.relative_to(REPO)} has no heading with anchor #{anchor}")
    return problems


def design_sections() -> set[int]:
    """The numbers N of the ``## §N …`` headings of docs/design.md."""
    text = DESIGN.read_text(encoding="utf-8") if DESIGN.exists() else ""
    return set(section_numbers(text))


def section_numbers(text: str) -> list[int]:
    """The numbers N of the ``## §N …`` headings of a Markdown text, in order, fenced code blocks skipped."""
    return [int(m.group(1)) for _, line in prose_lines(text) if (m := _DESIGN_HEADING.match(line))]


def repository_files() -> list[Path]:
    """The repository's .py, .yaml and .md files: tracked, or untracked and not ignored (git ls-files)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.yaml", "*.yml", "*.md"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return [REPO / name for name in sorted(set(listed)) if (REPO / name).is_file()]


def design_references(path: Path) -> list[tuple[int, int]]:
    """``(line number, N)`` of every "DESIGN §N" in a file, lists such as "DESIGN §5, §6" included."""
    refs = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        for match in _DESIGN_REF.finditer(line):
            refs.extend((number, int(n)) for n in re.findall(r"§(\d+)", match.group(0)))
    return refs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path):
    assert path.exists(), f"{path.relative_to(REPO)} is missing"
    assert broken_links(path) == []


def test_every_design_reference_names_a_heading_of_docs_design():
    sections = design_sections()
    missing = [
        f"{path.relative_to(REPO)}:{number}: DESIGN §{n}"
        for path in repository_files()
        for number, n in design_references(path)
        if n not in sections
    ]
    assert missing == [], f"no '## §N' heading in docs/design.md for: {missing}"


def test_design_has_the_briefs_ten_sections_in_order():
    assert section_numbers(DESIGN.read_text(encoding="utf-8")) == list(range(1, 11))


def test_readme_is_a_front_page_with_the_ci_test_command():
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) <= README_MAX_BYTES, f"README.md is {len(readme):,} bytes; at most {README_MAX_BYTES:,}"
    assert re.search(r"^make test\b", readme.decode(), re.M), "README.md lost its `make test` command (.ci/run)"


def test_the_checks_catch_a_broken_link_a_missing_anchor_and_an_unknown_section(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "design.md").write_text("# Design\n\n## §1 What\n\n```\n## §2 in a code block\n```\n")
    (docs / "page.md").write_text(
        "# Page\n\n## A `code` heading\n\n## A `code` heading\n\n"
        "[ok](design.md#1-what) [ok](#a-code-heading-1) [url](https://x.org/y.md) `[code](nowhere.md)`\n"
        "[gone](nowhere.md) [no anchor](design.md#2-in-a-code-block)\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    (tmp_path / "mod.py").write_text('"""See DESIGN §1 and DESIGN §5, §2."""\n')
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    monkeypatch.setattr(f"{__name__}.DESIGN", docs / "design.md")
    problems = broken_links(docs / "page.md")
    assert len(problems) == 2
    assert "docs/page.md:8: link 'nowhere.md': no file" in problems[0]
    assert "has no heading with anchor #2-in-a-code-block" in problems[1]
    assert design_sections() == {1}
    assert design_references(tmp_path / "mod.py") == [(1, 1), (1, 5), (1, 2)]


def test_the_params_key_reference_is_what_tools_params_doc_writes():
    from tools.params_doc import MARKER, reference

    page = (REPO / "docs" / "params.md").read_text()
    assert MARKER in page
    assert page.split(MARKER)[1] == "\n\n" + reference(), "docs/params.md is out of date: python -m tools.params_doc"


def test_the_params_key_reference_lists_every_key_of_the_schema():
    """Every field of every section has a row (a new field cannot be left out of the page)."""
    from pipeline.config import FinetuneParams, RecipeParams
    from tools.params_doc import reference

    text = reference()
    for cls, path in ((RecipeParams, "finetune.recipe"), (FinetuneParams, "finetune")):
        section = text.split(f"### `{path}`\n")[1].split("### ")[0]
        assert all(f"| `{name}` |" in section for name in cls.model_fields), path
    default_lr = yaml.safe_load((REPO / "params.yaml").read_text())["finetune"]["recipe"]["lr"]
    assert f"| `lr` | float | > 0 | `{default_lr}` |" in text
