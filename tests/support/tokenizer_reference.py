"""The reference tokenizer: transformers 4.x's slow sentencepiece LlamaTokenizer.

transformers 5 no longer has it, so it runs in its own interpreter
(scripts/make_tokenizer_reference_venv.sh; the `reference_python` fixture finds it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.paths import REPO

REFERENCE_SCRIPT = REPO / "tests" / "tools" / "slow_tokenizer_reference.py"
REFERENCE_ENV = "SPIRITLM_TOKENIZER_REFERENCE_PYTHON"
DEFAULT_REFERENCE = REPO / ".cache" / "tokenizer-reference" / "bin" / "python"


def run_reference(
    python: Path, lm_dir: Path, prompts: list[str], decode: list[list[int]]
) -> dict[str, Any]:
    """The slow tokenizer's ids for `prompts` and texts for `decode`, loaded from `lm_dir`."""
    request = {"lm_dir": str(lm_dir), "prompts": prompts, "decode": decode}
    done = subprocess.run(
        [str(python), str(REFERENCE_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["version"].startswith("4."), answer["version"]
    return answer
