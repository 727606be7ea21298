"""Unit dictionaries, token strings and boundary helpers (docs/format.md#unit-strings,
#speech-token-boundary-tests, #splitting-into-chunks and #golden-vectors)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import UnitFormatError
from service.units.boundaries import (
    ends_with_speech_token,
    last_speech_run_start,
    next_item,
    split_chunks,
    starts_with_speech_token,
)
from service.units.tokens import (
    FALLBACK_STYLES,
    UnitEntry,
    Units,
    UnitStreamParser,
    string_to_units,
    units_from_entries,
    units_to_string,
)
from tests.support import golden

# ---------------------------------------------------------------------------------------------
# Units dictionary (docs/format.md#units-dictionary)


def test_units_dict_round_trip() -> None:
    units = Units.from_dict(golden.UNITS_7_1)
    assert (len(units.hubert), len(units.pitch or []), len(units.style or [])) == (228, 114, 10)
    assert units.hubert[:5] == [99, 49, 38, 149, 149]
    assert units.to_dict() == golden.UNITS_7_1


def test_units_dict_base_and_audio_key() -> None:
    units = Units.from_dict({"audio": "/x.wav", "hubert": "1 2 3"})
    assert units == Units(hubert=[1, 2, 3])
    assert units.to_dict() == {"hubert": "1 2 3"}
    assert Units.from_dict({"hubert": ""}).hubert == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pitch": "1"}, "'hubert' is missing"),
        ({"hubert": "1 x 3"}, "'x' is not an integer"),
        ({"hubert": "1", "pitch": "1_0"}, "field 'pitch'"),
        ({"hubert": "1", "speed": "2"}, "unknown field"),
        ({"hubert": [1, 2]}, "expected a string"),
    ],
)
def test_units_dict_rejects_bad_input(data: dict, message: str) -> None:
    with pytest.raises(UnitFormatError, match=message):
        Units.from_dict(data)


# ---------------------------------------------------------------------------------------------
# Units -> string (docs/format.md#units-to-token-string)


def test_golden_expressive_string() -> None:
    encoded = units_to_string(Units.from_dict(golden.UNITS_7_1), expressive=True)
    assert encoded == golden.EXPRESSIVE_STRING
    assert len(encoded) == 1654
    assert (encoded.count("[St"), encoded.count("[Pi"), encoded.count("[Hu")) == (10, 82, 167)


def test_golden_base_string_ignores_pitch_and_style() -> None:
    assert units_to_string(golden.UNITS_7_1, expressive=False) == golden.BASE_STRING
    base_only = {"hubert": golden.UNITS_HUBERT}
    assert units_to_string(base_only, expressive=False) == golden.BASE_STRING


def test_reference_docstring_example_gives_algorithm_result() -> None:
    # The reference's docstring shows another string; the algorithm gives this one
    # (docs/format.md#units-to-token-string).
    units = {"hubert": "78 42 81 159 316 259", "pitch": "13 13 13 13 13 3", "style": "81 " * 6}
    assert units_to_string(units, expressive=True) == (
        "[St81][Pi13][Hu78][Hu42][Hu81][Hu159][Hu316][Hu259][Pi3][St81][St81][St81][St81][St81]"
    )


def test_equal_timestamps_sort_style_pitch_hubert() -> None:
    # 2499 / 24.99, 1250 / 12.5 and 100 / 1 are all exactly 100.0
    # (docs/format.md#stream-rates-and-de-duplication).
    hubert = [i % 2 for i in range(2500)]
    pitch = [i % 2 for i in range(1251)]
    style = [5] * 101
    encoded = units_to_string(Units(hubert, pitch, style), expressive=True)
    assert encoded.startswith("[St5][Pi0][Hu0][Hu1]")
    # t = 100.0: style 100, pitch 1250 and hubert 2499 tie; before them hubert 2498 (t = 99.96).
    assert encoded.endswith("[Hu0][St5][Pi0][Hu1]")


def test_expressive_needs_all_streams() -> None:
    with pytest.raises(UnitFormatError, match="needs the 'style' stream"):
        units_to_string(Units(hubert=[1]), expressive=True)
    with pytest.raises(UnitFormatError, match="needs the 'pitch' stream"):
        units_to_string(Units(hubert=[1], style=[2]), expressive=True)


# ---------------------------------------------------------------------------------------------
# String -> units (docs/format.md#token-string-to-units)


def test_golden_decoding_of_expressive_string() -> None:
    units = string_to_units(golden.EXPRESSIVE_STRING)
    assert units.to_dict() == {
        "hubert": golden.DECODED_HUBERT,
        "pitch": golden.DECODED_PITCH,
        "style": golden.DECODED_STYLE,
    }
    assert len(units.hubert) == 167


def test_reference_example_row() -> None:
    units = string_to_units("[St81][Hu78][Pi13][Hu42][Hu81][Hu159][Hu316][Pi3][Hu259]")
    assert units.to_dict() == {
        "hubert": "78 42 81 159 316 259",
        "pitch": "13 13 13 13 13 3",
        "style": "81 81 81 81 81 81",
    }


@pytest.mark.parametrize(
    ("text", "duplicate", "hubert", "pitch"),
    [
        ("[Hu1][Pi2][Pi3][Hu4]", False, [1, 4], [2, 3]),
        ("[Hu1][Pi2][Pi3][Hu4]", True, [1, 1, 4], [2, 3, 3]),
        ("[Pi5][Pi6][Pi7][Hu1]", True, [1, 1, 1], [6, 7, 7]),
        ("[Pi5][Hu1][Hu2]", False, [1, 2], [5, 5]),
        # A style token between two pitch tokens does not reset the duplicate rule.
        ("[Hu1][Pi2][St9][Pi3][Hu4]", True, [1, 1, 4], [2, 3, 3]),
    ],
)
def test_spec_table_with_random_style(
    text: str, duplicate: bool, hubert: list[int], pitch: list[int]
) -> None:
    units = string_to_units(
        text, duplicate_hubert_for_multiple_pitch=duplicate, rng=random.Random(7)
    )
    assert units.hubert == hubert
    assert units.pitch == pitch
    assert units.style is not None and len(units.style) == len(hubert)
    if "[St" not in text:
        drawn = random.Random(7).choice(FALLBACK_STYLES)
        assert units.style == [drawn] * len(hubert)


def test_random_style_is_one_of_the_common_ones_and_follows_the_rng() -> None:
    draws = {string_to_units("[Pi1][Hu1]", rng=random.Random(seed)).style[0] for seed in range(40)}
    assert draws == {71, 68, 98}
    random.seed(11)
    from_global = string_to_units("[Pi1][Hu1]").style
    assert from_global == [random.Random(11).choice((71, 68, 98))]


def test_hubert_only_and_style_only() -> None:
    assert string_to_units("[Hu1][Hu2]") == Units(hubert=[1, 2])
    assert string_to_units("[Hu1][St4][Hu2]") == Units(hubert=[1, 2], style=[4, 4])
    assert string_to_units("") == Units(hubert=[])


def test_pitch_without_any_hubert() -> None:
    rng = random.Random(0)
    assert string_to_units("[Pi5]", rng=rng) == Units(hubert=[], pitch=[], style=[])
    # Duplicate mode: entries without any HuBERT value are dropped (the reference crashes).
    units = string_to_units("[Pi5][Pi6]", duplicate_hubert_for_multiple_pitch=True, rng=rng)
    assert units == Units(hubert=[], pitch=[], style=[])


def test_markers_and_text_are_ignored() -> None:
    units = string_to_units("[Speech][Hu3] hello [Text]x[Hu4]")
    assert units.hubert == [3, 4]


def test_malformed_tokens_are_decided_per_token() -> None:
    # Deliberate difference (docs/format.md#token-string-to-units): text after "]" no longer
    # corrupts the value, and malformed tokens are ignored instead of producing values that crash
    # the vocoder.
    units = string_to_units("[Hu12]abc[Hu1x][Hu7][Hu9")
    assert units.hubert == [12, 7]
    assert string_to_units("[Hu012]").hubert == [12]


def test_strict_mode_rejects_malformed_tokens() -> None:
    assert string_to_units("[Hu12]abc[Hub cap][Speech]", strict=True).hubert == [12]
    with pytest.raises(UnitFormatError, match=r"at 6: '\[Hu1x\]"):
        string_to_units("[Hu12][Hu1x]", strict=True)
    with pytest.raises(UnitFormatError, match="malformed"):
        string_to_units("[Hu12][Pi3", strict=True)


# ---------------------------------------------------------------------------------------------
# Incremental decoding


def _stream(text_pieces: list[str], **kwargs: object) -> tuple[list[UnitEntry], UnitStreamParser]:
    parser = UnitStreamParser(**kwargs)  # type: ignore[arg-type]
    entries: list[UnitEntry] = []
    for piece in text_pieces:
        entries += parser.feed(piece)
    entries += parser.finish()
    return entries, parser


def test_stream_parser_golden_token_by_token() -> None:
    tokens = golden.EXPRESSIVE_STRING.replace("]", "]\n").split()
    entries, parser = _stream(tokens, expressive=True)
    units = units_from_entries(entries, pitch=parser.has_pitch, style=parser.has_style)
    assert units == string_to_units(golden.EXPRESSIVE_STRING)


def test_stream_parser_emits_as_soon_as_final() -> None:
    parser = UnitStreamParser(expressive=True)
    assert parser.feed("[St71][Pi39]") == []
    assert parser.feed("[Hu99]") == [UnitEntry(99, 39, 71)]
    assert parser.feed_unit("hubert", 5) == [UnitEntry(5, 39, 71)]
    assert parser.feed("[Pi4][H") == []
    assert parser.feed("u6]") == [UnitEntry(6, 4, 71)]
    assert parser.finish() == []


def test_stream_parser_holds_entries_until_backfill_is_known() -> None:
    parser = UnitStreamParser(expressive=True)
    assert parser.feed("[Hu1][Hu2]") == []
    assert parser.feed("[Pi3]") == []
    assert parser.feed("[St4]") == [UnitEntry(1, 3, 4), UnitEntry(2, 3, 4)]


def test_stream_parser_random_fallback_at_finish() -> None:
    parser = UnitStreamParser(expressive=True, rng=random.Random(3))
    assert parser.feed("[Pi2][Hu1][Hu8]") == []
    style = random.Random(3).choice(FALLBACK_STYLES)
    assert parser.finish() == [UnitEntry(1, 2, style), UnitEntry(8, 2, style)]
    with pytest.raises(RuntimeError):
        parser.feed("[Hu1]")


def test_stream_parser_base_ignores_prosody() -> None:
    parser = UnitStreamParser(expressive=False)
    assert parser.feed("[St1][Pi2][Hu3]") == [UnitEntry(3, None, None)]
    assert not parser.has_pitch
    assert parser.finish() == []


_PIECES = st.one_of(
    st.builds(lambda k, v: f"[{k}{v}]", st.sampled_from(["Hu", "Pi", "St"]), st.integers(0, 120)),
    st.sampled_from(["[Speech]", "[Text]", " ", "ab", "[", "]", "Hu", "Pi", "St", "1", "[Hu1x]"]),
)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(_PIECES, max_size=40),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    duplicate=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_stream_parser_matches_batch(
    pieces: list[str], cuts: list[int], duplicate: bool, seed: int
) -> None:
    text = "".join(pieces)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    expected = string_to_units(
        text, duplicate_hubert_for_multiple_pitch=duplicate, rng=random.Random(seed)
    )
    entries, parser = _stream(
        chunks,
        expressive=True,
        duplicate_hubert_for_multiple_pitch=duplicate,
        rng=random.Random(seed),
    )
    assert units_from_entries(entries, pitch=parser.has_pitch, style=parser.has_style) == expected
    base_entries, _ = _stream(chunks, expressive=False)
    assert [e.hubert for e in base_entries] == string_to_units(text).hubert


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n_hubert=st.integers(1, 120))
def test_encoded_string_reparses_to_the_units_in_effect(data: st.DataObject, n_hubert: int) -> None:
    """Each kept (de-duplicated) HuBERT unit decodes with the pitch/style in effect at its time."""
    values = st.integers(0, 3)  # few values, so de-duplication happens
    hubert = data.draw(st.lists(values, min_size=n_hubert, max_size=n_hubert))
    pitch = data.draw(st.lists(values, min_size=1, max_size=n_hubert // 2 + 1))
    style = data.draw(st.lists(values, min_size=1, max_size=n_hubert // 25 + 1))
    decoded = string_to_units(units_to_string(Units(hubert, pitch, style), expressive=True))

    kept = [i for i in range(len(hubert)) if i == 0 or hubert[i] != hubert[i - 1]]
    assert decoded.hubert == [hubert[i] for i in kept]

    def in_effect(stream: list[int], rate: float, t: float) -> int:
        return stream[max(k for k in range(len(stream)) if k / rate <= t)]

    assert decoded.pitch == [in_effect(pitch, 12.5, i / 24.99) for i in kept]
    assert decoded.style == [in_effect(style, 1, i / 24.99) for i in kept]
    base = string_to_units(units_to_string(Units(hubert), expressive=False))
    assert base == Units(hubert=[hubert[i] for i in kept])


# ---------------------------------------------------------------------------------------------
# Boundary helpers (docs/format.md#speech-token-boundary-tests) and chunk splitting
# (docs/format.md#splitting-into-chunks), on the golden vectors (docs/format.md#golden-vectors)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("]]", False),
        ("[]", False),
        ("[Hu100]", True),
        ("abc[]", False),
        ("[St1][Pi234][Hu123][Hu45][Text][abc]", False),
        ("abc[Text]def", False),
        ("[Pi9]", True),
        ("[St0]", True),
        (None, False),
        ("[Hub cap]", True),  # digits are not checked
        ("[Hu1234567]", True),  # "[" 10 characters from the end is still looked at
        ("[Hu12345678]", False),
    ],
)
def test_ends_with_speech_token(text: str | None, expected: bool) -> None:
    assert ends_with_speech_token(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[", False),
        ("[]", False),
        ("[Hu100]", True),
        ("abc[]", False),
        ("[St1][Pi234][Hu123][Hu45][Text][abc]", True),
        ("abc[Text]def", False),
        ("[Pi9]", True),
        ("[St0]", True),
        (None, False),
        ("[Speech][Hu1]", False),
        ("[Hux]", True),  # digits are not checked
        ("[]Hu1]", False),  # first "]" too early, skipped; next at 5 → characters 1-2 are "]H"
        ("[Hu1234567]", True),  # "]" at position 10 is still found
        ("[Hu12345678]", False),
    ],
)
def test_starts_with_speech_token(text: str | None, expected: bool) -> None:
    assert starts_with_speech_token(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc[Hu123][Hu456][Pi23][St2]", 3),
        ("[Hu123]abc[Hu123][Hu456][Pi23][St2]", 10),
        ("[Hu123][Hu456][Pi23][St2]", 0),
        ("abc", None),
        (golden.LONG, 8),
        ("[Hu1][Hu2]tail[Hux]", 0),  # the last run need not end the string
        ("[Hu1][Speech][Hu2]", 13),
    ],
)
def test_last_speech_run_start(text: str, expected: int | None) -> None:
    assert last_speech_run_start(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "abc[Speech][St1][Pi234][Hu123][Hu45][Text]hello world[",
            [("abc", "text"), ("[St1][Pi234][Hu123][Hu45]", "speech"), ("hello world[", "text")],
        ),
        ("[St1][Pi234][Hu123][Hu45]", [("[St1][Pi234][Hu123][Hu45]", "speech")]),
        ("abc", [("abc", "text")]),
        ("abc[]", [("abc[]", "text")]),
        (
            "[St1][Pi234][Hu123][Hu45][Text][abc",
            [("[St1][Pi234][Hu123][Hu45]", "speech"), ("[abc", "text")],
        ),
        ("abc[Text]def", [("abcdef", "text")]),
        (
            "[Hu338][Text] and they went out together[Speech][Hu431][Pi0][Hu457][Hu79][Pi11]"
            "[Hu258][Hu85][Hu28][Hu50][Text] and mrs johnson  shoes except in mourning[Speech]"
            "[Pi59][Hu32][Pi20][Hu453][Pi35][Pi26][Hu166]",
            [
                ("[Hu338]", "speech"),
                (" and they went out together", "text"),
                ("[Hu431][Pi0][Hu457][Hu79][Pi11][Hu258][Hu85][Hu28][Hu50]", "speech"),
                (" and mrs johnson  shoes except in mourning", "text"),
                ("[Pi59][Hu32][Pi20][Hu453][Pi35][Pi26][Hu166]", "speech"),
            ],
        ),
        ("[Hub cap] x", [("[Hub cap]", "speech"), (" x", "text")]),
        ("a[Hu12", [("a", "text"), ("[Hu12", "speech")]),
        ("[Speech][Text]", []),
        ("x[Speech]y", [("xy", "text")]),
        ("[Hu1][Text][Hu2]", [("[Hu1][Hu2]", "speech")]),
        ("[Te[Hu1]", [("[Te", "text"), ("[Hu1]", "speech")]),
        ("[Pi[Hu3]z", [("[Pi[Hu3]", "speech"), ("z", "text")]),
        ("", []),
    ],
)
def test_split_chunks(text: str, expected: list[tuple[str, str]]) -> None:
    assert split_chunks(text) == expected


@pytest.mark.parametrize(
    ("text", "kind", "end"),
    [
        ("[", None, None),
        ("[Te", None, None),
        ("[Spe", None, None),
        ("[H", None, None),
        ("[Hu12", None, None),
        ("[x", "text", 1),
        ("[Sx", "text", 1),
        ("ab[", "text", 2),
        ("[Text]", None, 6),
        ("[Hu12]", "speech", 6),
    ],
)
def test_next_item_waits_only_while_undecidable(
    text: str, kind: str | None, end: int | None
) -> None:
    item = next_item(text, 0, final=False)
    if end is None:
        assert item is None
        assert next_item(text, 0, final=True) is not None
    else:
        assert item is not None and (item.kind, item.end) == (kind, end)
