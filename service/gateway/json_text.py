"""Text in JSON that is not Unicode: lone UTF-16 surrogates, found and named.

JSON may spell half of a UTF-16 surrogate pair on its own (``"\\ud800"``), and Python's parser
turns it into a str that nothing downstream can take: sentencepiece refuses it and UTF-8
encoding raises, deep inside the work, as a 500 (and in a realtime session, an item that fails
every later response). Such text is refused where requests come in, naming the field: the
gateway's JSON bodies (middleware/json_text.py) and realtime client events
(realtime/protocol.py). Only input that spells a surrogate escape at all is searched
(`may_hold_surrogates`, a regular expression over the raw text), so other requests pay nothing;
a pair spelt as two escapes (an emoji sent ASCII-only) parses to one code point and passes.
"""

from __future__ import annotations

import re
from typing import Any

_ESCAPE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
_ESCAPE_TEXT = re.compile(_ESCAPE)
_ESCAPE_BYTES = re.compile(_ESCAPE.encode())


def may_hold_surrogates(raw: str | bytes) -> bool:
    """Whether raw JSON spells a surrogate escape (paired or not)."""
    pattern = _ESCAPE_BYTES if isinstance(raw, bytes) else _ESCAPE_TEXT
    return pattern.search(raw) is not None  # type: ignore[arg-type]


def lone_surrogate_path(data: Any) -> str | None:
    """The dotted path (``messages.0.content``) of the first string or key of parsed JSON that
    holds a lone surrogate; ``""`` for the document itself, None when all text is Unicode."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return ".".join(path)
        elif isinstance(value, dict):
            for key in value:
                if not _is_unicode(key):
                    return ".".join((*path, key.encode("utf-8", "backslashreplace").decode()))
            stack += reversed([((*path, key), item) for key, item in value.items()])
        elif isinstance(value, list):
            stack += reversed([((*path, str(index)), item) for index, item in enumerate(value)])
    return None


def lone_surrogate_message(path: str) -> str:
    where = path or "the body"
    return (
        f"{where}: the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), "
        "which is not Unicode; send valid text"
    )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
