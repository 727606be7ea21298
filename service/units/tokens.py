"""Unit dictionaries and Spirit LM speech-token strings (docs/format.md#unit-strings).

Two representations of the same speech:

* `Units`: the three unit streams as integer lists. `Units.to_dict()` gives the reference's
  dictionary of space-separated strings (docs/format.md#units-dictionary), `Units.from_dict()`
  reads it back.
* a token string such as ``[St71][Pi39][Hu99][Hu49]`` (docs/format.md#units-to-token-string), the
  form the language model reads and writes.

`units_to_string` and `string_to_units` convert between them exactly like the reference, with
two deliberate differences in `string_to_units` (and in the incremental `UnitStreamParser`):

1. Tokens are recognised strictly as ``[Hu<digits>]``, ``[Pi<digits>]`` or ``[St<digits>]``;
   everything else, including text glued to a token (``[Hu12]abc`` gives unit 12) and malformed
   tokens (``[Hu1x]``, ``[Hu5`` at the end), is ignored. The reference takes "characters 3 to
   second-to-last" of each ``[``-piece, which turns such input into values that crash the
   vocoder later (docs/format.md#token-string-to-units). With ``strict=True`` a malformed token
   raises `UnitFormatError` instead of being ignored.
2. The random style fallback (step 3 of docs/format.md#token-string-to-units) draws from the
   caller's `random.Random` when one is given; without one it uses Python's global RNG, as the
   reference does.

Unit values are not range-checked here: that is the vocoder's job (it knows its table sizes).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from service.errors import UnitFormatError

StreamKind = Literal["hubert", "pitch", "style"]

TOKEN_PREFIXES: dict[StreamKind, str] = {"hubert": "Hu", "pitch": "Pi", "style": "St"}
_KIND_BY_PREFIX: dict[str, StreamKind] = {prefix: kind for kind, prefix in TOKEN_PREFIXES.items()}

# Timestamp rates (docs/format.md#stream-rates-and-de-duplication). 24.99 = 2499 HuBERT frames
# per 100 s chunk; keep it exact.
STREAM_RATES: dict[StreamKind, float] = {"hubert": 24.99, "pitch": 12.5, "style": 1}
STREAM_DEDUP: dict[StreamKind, bool] = {"hubert": True, "pitch": True, "style": False}
# Concatenation order before the stable sort: ties resolve as style < pitch < hubert.
MERGE_ORDER: tuple[StreamKind, ...] = ("style", "pitch", "hubert")

# Same order as the reference list, so a seeded Random draws the same value as the reference.
FALLBACK_STYLES: tuple[int, ...] = (71, 68, 98)

SPEECH_TOKEN = re.compile(r"\[(Hu|Pi|St)([0-9]+)\]")
# What the reference would take for a speech token: "[" + prefix + a digit (step 1 of
# docs/format.md#token-string-to-units).
_TOKEN_LIKE = re.compile(r"\[(?:Hu|Pi|St)[0-9]")
# A trailing fragment that may still grow into a speech token.
_TOKEN_PREFIX = re.compile(r"\[(?:[HPS]|(?:Hu|Pi|St)[0-9]*)?")
_INTEGER = re.compile(r"-?[0-9]+")
# No unit table comes near 10**18 entries; Python's int() even refuses more than 4300 digits.
MAX_VALUE_DIGITS = 18


@dataclass(frozen=True)
class Units:
    """The unit streams of one utterance. `pitch`/`style` are None when the stream is absent."""

    hubert: list[int]
    pitch: list[int] | None = None
    style: list[int] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Units:
        """Read the dictionary of docs/format.md#units-dictionary (`audio` is ignored)."""
        unknown = sorted(set(data) - {"hubert", "pitch", "style", "audio"})
        if unknown:
            raise UnitFormatError(f"units: unknown field(s) {unknown}")
        if "hubert" not in data:
            raise UnitFormatError("units: field 'hubert' is missing")
        return cls(
            hubert=_parse_int_list(data["hubert"], "hubert"),
            pitch=_parse_int_list(data["pitch"], "pitch") if "pitch" in data else None,
            style=_parse_int_list(data["style"], "style") if "style" in data else None,
        )

    def to_dict(self) -> dict[str, str]:
        """The dictionary of docs/format.md#units-dictionary: absent streams are left out."""
        out = {"hubert": _join(self.hubert)}
        if self.pitch is not None:
            out["pitch"] = _join(self.pitch)
        if self.style is not None:
            out["style"] = _join(self.style)
        return out

    def stream(self, kind: StreamKind) -> list[int] | None:
        return {"hubert": self.hubert, "pitch": self.pitch, "style": self.style}[kind]


def _parse_int_list(value: object, field: str) -> list[int]:
    if not isinstance(value, str):
        raise UnitFormatError(f"units field '{field}': expected a string, got {type(value)}")
    items = value.split()
    for item in items:
        if not _INTEGER.fullmatch(item):
            raise UnitFormatError(f"units field '{field}': '{item[:20]}' is not an integer")
    return [unit_value(item, f"units field '{field}'") for item in items]


def unit_value(digits: str, where: str) -> int:
    """The integer of a (signed) digit string; `UnitFormatError` when it is absurdly long."""
    significant = digits.lstrip("-").lstrip("0")
    if len(significant) > MAX_VALUE_DIGITS:
        raise UnitFormatError(
            f"{where}: a {len(significant)}-digit value is out of the range of any unit table"
        )
    return int(digits)


def _join(values: Sequence[int]) -> str:
    return " ".join(str(v) for v in values)


def token(kind: StreamKind, value: int) -> str:
    """The token string of one unit, e.g. ``token("pitch", 3) == "[Pi3]"``."""
    return f"[{TOKEN_PREFIXES[kind]}{value}]"


# ---------------------------------------------------------------------------------------------
# Units -> token string (docs/format.md#units-to-token-string)


def units_to_string(units: Units | Mapping[str, str], *, expressive: bool) -> str:
    """Merge the streams into one token string (base: HuBERT only; expressive: all three)."""
    if not isinstance(units, Units):
        units = Units.from_dict(units)
    kinds: tuple[StreamKind, ...] = MERGE_ORDER if expressive else ("hubert",)
    timed: list[tuple[float, str]] = []
    for kind in kinds:
        values = units.stream(kind)
        if values is None:
            raise UnitFormatError(f"units: expressive encoding needs the '{kind}' stream")
        timed.extend(_timed_tokens(values, kind))
    # list.sort is stable, which gives the style < pitch < hubert order on equal timestamps.
    timed.sort(key=lambda item: item[0])
    return "".join(tok for _, tok in timed)


def _timed_tokens(values: Sequence[int], kind: StreamKind) -> list[tuple[float, str]]:
    rate = STREAM_RATES[kind]
    dedup = STREAM_DEDUP[kind]
    out: list[tuple[float, str]] = []
    for i, value in enumerate(values):
        if dedup and i > 0 and value == values[i - 1]:
            continue
        # The index in the original (non-de-duplicated) list sets the time: plain float i / rate.
        out.append((i / rate, token(kind, value)))
    return out


# ---------------------------------------------------------------------------------------------
# Token string -> units (docs/format.md#token-string-to-units)


def iter_speech_tokens(text: str, *, strict: bool = False) -> Iterator[tuple[StreamKind, int]]:
    """The well-formed speech tokens of `text` in order, as (stream, value).

    With `strict`, text between tokens that the reference would take for a token (``[Hu``,
    ``[Pi`` or ``[St`` followed by a digit) raises `UnitFormatError`.
    """
    pos = 0
    for match in SPEECH_TOKEN.finditer(text):
        if strict:
            _check_gap(text, pos, match.start())
        where = f"token string: speech token at {match.start()}"
        yield _KIND_BY_PREFIX[match.group(1)], unit_value(match.group(2), where)
        pos = match.end()
    if strict:
        _check_gap(text, pos, len(text))


def _check_gap(text: str, start: int, end: int) -> None:
    bad = _TOKEN_LIKE.search(text, start, end)
    if bad is not None:
        at = bad.start()
        fragment = text[at : min(end, at + 16)]
        raise UnitFormatError(f"token string: malformed speech token at {at}: {fragment!r}")


class _StringToUnits:
    """The docs/format.md#token-string-to-units state machine.

    Entries are [hubert, pitch, style] with None = not known yet.
    """

    def __init__(self, duplicate_hubert_for_multiple_pitch: bool) -> None:
        self.duplicate = duplicate_hubert_for_multiple_pitch
        self.entries: list[list[int | None]] = []
        self.last: dict[str, int | None] = {"hubert": None, "pitch": None, "style": None}
        self.first: dict[str, int | None] = {"hubert": None, "pitch": None, "style": None}
        self.previous_was_pitch = False

    def add(self, kind: StreamKind, value: int) -> None:
        if self.first[kind] is None:
            self.first[kind] = value
        if kind == "hubert":
            self.entries.append([value, self.last["pitch"], self.last["style"]])
            self.previous_was_pitch = False
        elif kind == "pitch":
            if self.duplicate and self.previous_was_pitch:
                self.entries.append([self.last["hubert"], value, self.last["style"]])
            self.previous_was_pitch = True
        self.last[kind] = value

    def draw_missing_style(self, rng: random.Random | None) -> None:
        # Step 3 of docs/format.md#token-string-to-units: pitch without any style token would
        # leave the expressive vocoder without style codes, so the reference picks one of the most
        # common styles.
        if self.first["pitch"] is not None and self.first["style"] is None:
            choice = rng.choice if rng is not None else random.choice
            self.first["style"] = choice(FALLBACK_STYLES)

    def backfill(self, entries: list[list[int | None]]) -> list[UnitEntry]:
        """Fill unknown values with the first value of their stream.

        Entries without any HuBERT value (duplicate mode, pitch but no HuBERT token at all) are
        dropped: the reference would crash joining None; there is nothing to vocode anyway.
        """
        first = self.first
        out = []
        for hubert, pitch, style in entries:
            hubert = first["hubert"] if hubert is None else hubert
            if hubert is not None:
                pitch = first["pitch"] if pitch is None else pitch
                style = first["style"] if style is None else style
                out.append(UnitEntry(hubert, pitch, style))
        return out


class UnitEntry(NamedTuple):
    """One aligned position of the decoded units: a HuBERT unit with its pitch and style."""

    hubert: int
    pitch: int | None
    style: int | None


def units_from_entries(entries: Sequence[UnitEntry], *, pitch: bool, style: bool) -> Units:
    """Collect aligned entries into `Units`; `pitch`/`style` say whether the stream exists."""
    return Units(
        hubert=[e.hubert for e in entries],
        pitch=[_known(e.pitch) for e in entries] if pitch else None,
        style=[_known(e.style) for e in entries] if style else None,
    )


def _known(value: int | None) -> int:
    if value is None:
        raise ValueError("unit entry lacks a value for a stream said to exist")
    return value


def string_to_units(
    text: str,
    *,
    duplicate_hubert_for_multiple_pitch: bool = False,
    rng: random.Random | None = None,
    strict: bool = False,
) -> Units:
    """Decode a token string into units with one entry per HuBERT token.

    The rules are in docs/format.md#token-string-to-units.

    `pitch` is present iff a pitch token was seen; `style` iff a style token was seen or drawn.
    """
    state = _StringToUnits(duplicate_hubert_for_multiple_pitch)
    for kind, value in iter_speech_tokens(text, strict=strict):
        state.add(kind, value)
    state.draw_missing_style(rng)
    entries = state.backfill(state.entries)
    return units_from_entries(
        entries, pitch=state.first["pitch"] is not None, style=state.first["style"] is not None
    )


# ---------------------------------------------------------------------------------------------
# Incremental versions for streaming


class SpeechTokenScanner:
    """Finds well-formed speech tokens in text that arrives in arbitrary pieces.

    A token split across pieces (``"[Hu1"`` then ``"2]"``) is recognised once complete; the
    tokens found over all pieces are those `iter_speech_tokens` finds in their concatenation.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[tuple[StreamKind, int]]:
        buffer = self._pending + text
        found: list[tuple[StreamKind, int]] = []
        end = 0
        for match in SPEECH_TOKEN.finditer(buffer):
            value = unit_value(match.group(2), "token string: speech token")
            found.append((_KIND_BY_PREFIX[match.group(1)], value))
            end = match.end()
        # A token contains one "[" and no "]" before its end, so only a tail starting at the
        # last "[" (with no "]" after it) can still complete into a token.
        tail = buffer[end:]
        start = tail.rfind("[")
        keep = start != -1 and _TOKEN_PREFIX.fullmatch(tail, start) is not None
        self._pending = tail[start:] if keep else ""
        return found

    def finish(self) -> list[tuple[StreamKind, int]]:
        self._pending = ""
        return []


class UnitStreamParser:
    """Incremental `string_to_units`: yields aligned `UnitEntry`s as soon as they are final.

    Expressive: an entry is final once the first pitch and the first style value are known
    (entries before them are back-filled); if a stream never shows up, entries wait until
    `finish()`, which applies the random style fallback with the same rule as `string_to_units`.
    For the same `rng` state, the concatenated output equals `string_to_units` of the
    concatenated input.

    Base (`expressive=False`): pitch and style tokens are ignored (the base vocoder has no such
    streams) and every HuBERT token is emitted at once as ``(unit, None, None)``.
    """

    def __init__(
        self,
        *,
        expressive: bool,
        duplicate_hubert_for_multiple_pitch: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.expressive = expressive
        self._rng = rng
        self._scanner = SpeechTokenScanner()
        self._state = _StringToUnits(duplicate_hubert_for_multiple_pitch)
        self._finished = False

    @property
    def has_pitch(self) -> bool:
        """Whether the decoded units have a pitch stream (so far)."""
        return self.expressive and self._state.first["pitch"] is not None

    @property
    def has_style(self) -> bool:
        """Whether the decoded units have a style stream (so far; final after `finish()`)."""
        return self.expressive and self._state.first["style"] is not None

    def feed(self, text: str) -> list[UnitEntry]:
        """Feed a piece of token string (any split, tokens may straddle pieces)."""
        self._check_open()
        out: list[UnitEntry] = []
        for kind, value in self._scanner.feed(text):
            out.extend(self.feed_unit(kind, value))
        return out

    def feed_unit(self, kind: StreamKind, value: int) -> list[UnitEntry]:
        """Feed one already-parsed token."""
        self._check_open()
        if not self.expressive:
            return [UnitEntry(value, None, None)] if kind == "hubert" else []
        self._state.add(kind, value)
        return self._release() if self._ready() else []

    def finish(self) -> list[UnitEntry]:
        """End of input: resolve the entries still waiting for a first pitch/style value."""
        self._check_open()
        self._finished = True
        self._scanner.finish()
        if not self.expressive:
            return []
        self._state.draw_missing_style(self._rng)
        return self._release()

    def _ready(self) -> bool:
        first = self._state.first
        known = first["pitch"] is not None and first["style"] is not None
        return known and (not self._state.duplicate or first["hubert"] is not None)

    def _release(self) -> list[UnitEntry]:
        entries = self._state.backfill(self._state.entries)
        self._state.entries = []
        return entries

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("UnitStreamParser: input after finish()")
