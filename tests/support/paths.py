"""Where the repository and the test speech file are."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEECH_FILE = Path(
    os.environ.get("SPIRITLM_TEST_AUDIO", REPO.parent / "shared" / "data" / "7143-88743-0029.flac")
)
if not SPEECH_FILE.is_file():  # a fresh clone outside the workspace: use the copy in tests/data
    SPEECH_FILE = REPO / "tests" / "data" / "7143-88743-0029.flac"
