"""Every "§" citation in the repository has a row in docs/spec-sections.md, the key to the spec's section numbers.

The functional spec the code cites lives outside the repository, so a citation is only followable through that
page. Pure file reading: no imports of visionsweep, no Ray, no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = Path("docs") / "spec-sections.md"
SELF = Path("tests") / "test_spec_sections.py"  # its examples of bad citations are deliberate

# folders that are not the repository's own text: virtual environments, git, caches, run outputs, vendored tools
_SKIP_DIRS = {"runs", "mlruns", "build", "__pycache__", "node_modules"}
# "§8.4", "§ 8.4", "§13 A8/A9", "§12 #17"; a trailing "." or "'s" is not part of the number
_CITATION = re.compile(r"§\s?(\d+(?:\.\d+)*)((?:\s+A\d+(?:\s*/\s*A\d+)*)|(?:\s+#\d+))?")
_KEY_ROW = re.compile(r"^\|\s*§(\d+(?:\.\d+)*(?:\s+(?:A|#)\d+)?)\s*\|")


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_DIRS or name.endswith(".egg-info")


def cited(root: Path) -> list[tuple[str, int, str]]:
    """(file relative to ``root``, line, section) for every citation in a .py or .md file, but the key and this file.

    A §13 citation with items ("§13 A8/A9") yields each item ("13 A8", "13 A9"); "§12 #17" yields "12 #17"."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _skipped(d))
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(root)
            if path.suffix not in (".py", ".md") or rel in (KEY, SELF):
                continue
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for m in _CITATION.finditer(line):
                    section, items = m.group(1), (m.group(2) or "").strip()
                    if items.startswith("#"):
                        out.append((rel.as_posix(), lineno, f"{section} {items}"))
                    elif items:
                        out.extend((rel.as_posix(), lineno, f"{section} {a}") for a in re.findall(r"A\d+", items))
                    else:
                        out.append((rel.as_posix(), lineno, section))
    return out


def key_rows(root: Path) -> set[str]:
    """The sections that have a row in the key page: "8.4", "13 A5", "12 #17"."""
    rows = set()
    for line in (root / KEY).read_text(encoding="utf-8").splitlines():
        m = _KEY_ROW.match(line)
        if m:
            rows.add(re.sub(r"\s+", " ", m.group(1)))
    return rows


def unknown(root: Path) -> list[str]:
    """``file:line: §section`` for each citation without a row in the key page."""
    rows = key_rows(root)
    return [f"{f}:{n}: §{s} has no row in {KEY.as_posix()}" for f, n, s in cited(root) if s not in rows]


def test_every_cited_section_has_a_row_in_the_key():
    found = cited(ROOT)
    # guards against a pattern or a walk that silently finds nothing (the repository cites ~400 places)
    assert len(found) > 100, f"only {len(found)} § citations found under {ROOT}: is the pattern or the walk broken?"
    missing = unknown(ROOT)
    assert not missing, ("cited spec sections missing from the key (fix the citation, or add the section's row "
                         "with its title from the spec):\n" + "\n".join(missing))


def test_key_rows_are_unique_and_complete():
    """Each row names the section once, with a title, a summary and a source: four non-empty cells."""
    seen: dict[str, int] = {}
    for lineno, line in enumerate((ROOT / KEY).read_text(encoding="utf-8").splitlines(), 1):
        m = _KEY_ROW.match(line)
        if not m:
            continue
        section = re.sub(r"\s+", " ", m.group(1))
        assert section not in seen, f"{KEY}:{lineno}: §{section} already has a row at line {seen[section]}"
        seen[section] = lineno
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # the main table has 4 cells; the §12 and §13 item tables 3
        assert len(cells) in (3, 4) and all(cells), f"{KEY}:{lineno}: expected 3 or 4 non-empty cells, got {cells}"


def test_a_citation_of_an_unknown_section_is_reported(tmp_path):
    """The check itself: a made-up section, §13 item and §12 row are each named with file and line."""
    (tmp_path / "docs").mkdir()
    (tmp_path / KEY).write_text("| § | title |\n|---|---|\n| §8.4 | Early-termination policies |\n"
                                "| §13 A8 | rounding |\n| §12 #17 | artifacts |\n", encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text('"""Bandit (SPEC §8.4, §13 A8/A9)."""\n# §12 #17, §12 #99\n'
                                             "x = 1  # see §99.1's rule\n", encoding="utf-8")
    (tmp_path / ".venv").mkdir()  # not the repository's own text
    (tmp_path / ".venv" / "lib.py").write_text("# §42\n", encoding="utf-8")
    assert unknown(tmp_path) == [
        "pkg/mod.py:1: §13 A9 has no row in docs/spec-sections.md",
        "pkg/mod.py:2: §12 #99 has no row in docs/spec-sections.md",
        "pkg/mod.py:3: §99.1 has no row in docs/spec-sections.md",
    ]
