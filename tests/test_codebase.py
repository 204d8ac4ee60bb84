"""Checks on the code itself: imports run one way, and no tracker labels or measured results."""

from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# "issue N", "issue #N", "issues N and M": labels of a tracker the reader cannot see.
TRACKER_LABEL = re.compile(r"\bissues?\s+#?\d+(?:\s*(?:,|and|&|/)\s*#?\d+)*", re.IGNORECASE)

# What a measured figure looks like. Kept narrow, so that a statement of what the code does
# (a whole percentage of the side padded, a threshold, an angle in degrees) is not caught.
MEASURED_RESULT = re.compile(
    "|".join(
        (
            r"\d+\.\d+\s?%",  # N.N%
            r"(?<![\w.])[+\u2212-]\d+(?:\.\d+)?\s*(?:percentage[- ])?points?\b",  # +N.N points
            r"\b\d+(?:\.\d+)?\s*percentage[- ]points?\b",  # N percentage points
            r"\d\s*k?\s*(?:images?|img)\s*/\s*s(?:ec)?\b|\d\s*images\s+(?:per|a)\s+second\b",
            r"\d\s*[GTM]FLOP\s*/\s*s\b|\d\s*[GTM]FLOPS\b",
            r"\d\s*(?:s|sec|seconds?|min|minutes?)\s*(?:/|per\s+)\s*epoch\b",  # N s/epoch
            r"\d\s*(?:CPU-)?ms\s+per\b|\d\s*CPU-ms\b",  # N ms per image, N CPU-ms
            r"\b\d+(?:\.\d+)?\s*(?:x|\u00d7|times)\s+(?:faster|slower)\b",  # N.Nx faster
        )
    ),
    re.IGNORECASE,
)

# Text a reader of the repository sees; reports/ may say which study measured what.
LABEL_FREE = ("*.py", "params.yaml", "dvc.yaml", "studies/*.yaml", "README.md", "docs/*.md")
BENCH_YAML = ("bench/*.yaml", "bench/*.yml")


def repo_files(*patterns: str) -> list[Path]:
    """Files git tracks or would track (untracked, not ignored) that match the patterns."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *patterns],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    names = sorted({name for name in listed.split("\0") if name})
    return [REPO / name for name in names if (REPO / name).is_file()]


def python_prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and docstring; string literals used as data are skipped."""
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                first = node.body[0].lineno
                for offset, line in enumerate(docstring.splitlines()):
                    yield first + offset, line


def yaml_comments(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment: a # at the start of a line or after whitespace."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.search(r"(?:^|\s)(#.*)$", line)
        if match:
            yield number, match.group(1)


def where(path: Path, line: int, text: str) -> str:
    return f"{path.relative_to(REPO)}:{line}: {text.strip()}"


def test_imports_run_one_way() -> None:
    """flows -> stages -> agegap, never back, and no stage imports another (.importlinter)."""
    lint = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))",
            str(REPO / ".importlinter"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_no_tracker_labels() -> None:
    found = []
    for path in repo_files(*LABEL_FREE, *BENCH_YAML):
        if path.relative_to(REPO).parts[0] == "reports":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found.extend(where(path, number, m.group()) for m in TRACKER_LABEL.finditer(line))
    assert not found, "tracker labels; name the feature instead:\n" + "\n".join(found)


def test_no_measured_results_in_code() -> None:
    found = []
    for path in repo_files("*.py"):
        for number, text in python_prose(path):
            found.extend(where(path, number, m.group()) for m in MEASURED_RESULT.finditer(text))
    params = REPO / "params.yaml"
    for number, text in yaml_comments(params):
        found.extend(where(params, number, m.group()) for m in MEASURED_RESULT.finditer(text))
    assert not found, (
        "measured results belong in reports/ and the README, not in code or params.yaml:\n"
        + "\n".join(found)
    )
