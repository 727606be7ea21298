"""Replacing one marked section of a markdown file, leaving every other section as it is.

A section is the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`. Several benchmarks
share one file (docs/benchmarks.md), each owning its own section.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from service.errors import SpiritError

DEFAULT_HEADER = "# Benchmarks"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with section `name` holding `body` (appended at the end when absent)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    first, last = text.find(start), text.find(end)
    if first == -1 and last == -1:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if first == -1 or last < first or text.count(start) > 1 or text.count(end) > 1:
        raise SpiritError(f"the markers of section {name!r} are unbalanced: fix them by hand")
    return text[:first] + block + text[last + len(end) :]


def write_section(path: Path, name: str, body: str, header: str = DEFAULT_HEADER) -> None:
    """Replace section `name` of the file (created with `header` when missing), atomically."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else header + "\n"
    try:
        updated = replace_section(text, name, body)
    except SpiritError as error:
        raise SpiritError(f"{path}: {error}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file and a rename: a reader never sees a half-written file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(updated)
    os.chmod(temporary, 0o644)  # mkstemp makes it private; this is a document
    os.replace(temporary, path)
