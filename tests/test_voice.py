"""Product voice: tracked text speaks of what the toolkit is, never of how or when it was made.

Docs, code, tests and scripts say why, not when: no numbered work sessions, no session named by
when it happened, no references to our own tracker, nobody's share of the work, no instructions to
a future reader (examples in the parametrized test below, spelled so that a plain grep for them
finds none in this file). History lives in the commits. nnsight's ``session`` (one request per batch) and an HTTP
session are product language and pass: only a *numbered* or *this/next* session is flagged.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# name -> pattern; each is matched case-insensitively against one line at a time
PATTERNS = {
    "numbered work session": r"\bsessions? \d+\b",
    "a session named by when": r"\b(this|next|previous|last|earlier|later|a future|that) session\b",
    "our own issue number": r"\bissues? #?\d+\b|\(#\d+\)",
    "who worked on what": r"\bcolleagues?\b|\blent\b|\bnot written yet\b|\bhelper session\b",
    "instruction to a future reader": r"\bnext time\b|\bfuture (reader|session)s?\b|\bnote to self\b",
}
LINE = re.compile("|".join(f"(?:{p})" for p in PATTERNS.values()), re.IGNORECASE)
# an upstream project's tracker is a citation, not our history: a line naming it passes
UPSTREAM = re.compile(r"github\.com/|[\w.-]+/[\w.-]+#\d+")
TEXT_SUFFIXES = {"", ".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".json", ".txt", ".cfg", ".pth",
                 ".jinja", ".j2", ".csv", ".tsv"}


def tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = [n for n in out.decode().split("\0") if n]
    return [n for n in names if n != SELF and Path(n).suffix.lower() in TEXT_SUFFIXES and (ROOT / n).is_file()]


def voice_hits(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``path`` that speaks of the project's own making."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if LINE.search(line) and not UPSTREAM.search(line)]


@pytest.mark.parametrize("line, flagged", [
    ("section \"Sess" "ion 10\": the token comparison", True),
    ("This task was le" "nt a GPU (one H100)", True),
    ("Role-level circuit discovery (is" "sue 12): edge attribution", True),
    ("pytest.skip(\"not written yet (a col" "league's module)\")", True),
    ("What the next sess" "ion should try.", True),
    ("Next time, start from run 16.", True),
    ("AtP per batch is one nnsight session: a graph-free forward", False),
    ("with model.session(remote=True) as session:", False),
    ("requests.Session() keeps the HTTP session alive", False),
    ("see EleutherAI/lm-evaluation-harness#4015 for the entry point", False),
    ("issues a warning per leaf", False),
])
def test_pattern_flags_history_talk_and_passes_product_language(line, flagged, tmp_path):
    f = tmp_path / "x.md"
    f.write_text(line + "\n", encoding="utf-8")
    assert bool(voice_hits(f)) is flagged


def test_tracked_text_speaks_of_the_product_not_its_making():
    hits = [f"{name}:{i}: {line[:120]}" for name in tracked_text_files() for i, line in voice_hits(ROOT / name)]
    assert not hits, f"{len(hits)} lines speak of how the project was made:\n" + "\n".join(hits)
