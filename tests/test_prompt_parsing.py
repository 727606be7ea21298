"""Prompt building (docs/format.md#building-prompts, #few-shot-prompts) and output parsing,
batch and streaming (docs/format.md#parsing-generated-output)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.lm.parsing import (
    Done,
    DroppedSpeech,
    Event,
    ModalitySwitch,
    Segment,
    SpeechSegment,
    SpeechTokens,
    StreamParser,
    TextDelta,
    TextSegment,
    Trim,
    parse_output,
    parse_output_report,
)
from service.lm.prompt import (
    OutputModality,
    SpeechInput,
    TextInput,
    asr_prompt,
    build_prompt,
    classification_prompt,
    explicit_prompt,
    few_shot_prompt,
    select_stsp_rows,
    stsp_prompt,
    stsp_reference_prompt,
    tts_prompt,
)
from service.units.tokens import string_to_units
from tests.support import golden
from tests.support.stream_segments import segments_from_events


def hu(*values: int) -> str:
    return "".join(f"[Hu{v}]" for v in values)


def hus(n: int, start: int = 0) -> str:
    return hu(*range(start, start + n))


# ---------------------------------------------------------------------------------------------
# Prompts (docs/format.md#building-prompts)

A = golden.BASE_STRING


@pytest.mark.parametrize(
    ("inputs", "modality", "expected"),
    [
        (
            [TextInput("The largest country in the world is")],
            "TEXT",
            "[Text]The largest country in the world is",
        ),
        ([SpeechInput(A)], OutputModality.TEXT, f"[Speech]{A}[Text]"),
        ([TextInput("T")], "speech", "[Text]T[Speech]"),
        ([SpeechInput(A)], "SPEECH", f"[Speech]{A}"),
        ([SpeechInput(A)], "arbitrary", f"[Speech]{A}"),
        (
            [TextInput("a"), TextInput("b"), SpeechInput(A), TextInput("c")],
            OutputModality.ARBITRARY,
            f"[Text]ab[Speech]{A}[Text]c",
        ),
        ([SpeechInput("[Hu1]"), SpeechInput("[Hu2]")], "text", "[Speech][Hu1][Hu2][Text]"),
        ([TextInput("x")], "text", "[Text]x"),
        ([], "text", "[Text]"),
        ([], "arbitrary", ""),
    ],
)
def test_build_prompt(inputs: list, modality: str, expected: str) -> None:
    assert build_prompt(inputs, modality) == expected


def test_build_prompt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'music' is not one of"):
        build_prompt([TextInput("x")], "music")
    with pytest.raises(TypeError, match="TextInput or SpeechInput"):
        build_prompt(["x"], "text")  # type: ignore[list-item]


def test_explicit_prompt_is_verbatim() -> None:
    assert explicit_prompt("[Text]abc", "speech") == "[Text]abc"
    assert explicit_prompt(golden.LONG[8:], OutputModality.TEXT) == golden.LONG[8:]


def test_modality_parse() -> None:
    assert OutputModality.parse("Arbitrary") is OutputModality.ARBITRARY
    assert OutputModality.parse(OutputModality.TEXT) is OutputModality.TEXT


# ---------------------------------------------------------------------------------------------
# Few-shot prompts (docs/format.md#few-shot-prompts)


def test_stsp_reference_prompt_format() -> None:
    shots = [
        (TextInput("t1"), SpeechInput("s1")),
        (TextInput("t2"), SpeechInput("s2")),
    ]
    assert stsp_reference_prompt(shots) == "[Text]t1[Speech]s1\n[Text]t2[Speech]s2\n"
    text_text = stsp_reference_prompt([(TextInput("prompt"), TextInput("generation"))])
    assert text_text == "[Text]prompt[Text]generation\n"
    query = SpeechInput("[Hu3]")
    assert stsp_prompt(shots, query, "text") == (
        "[Text]t1[Speech]s1\n[Text]t2[Speech]s2\n[Speech][Hu3][Text]"
    )


def test_task_prompts() -> None:
    assert asr_prompt([("[Hu1][Hu2]", "hi"), ("[Hu3]", "yo")], "[Hu4]") == (
        "[Speech][Hu1][Hu2][Text]hi\n[Speech][Hu3][Text]yo\n[Speech][Hu4][Text]"
    )
    assert tts_prompt([("hi", "[Hu1]")], "bye") == "[Text]hi[Speech][Hu1]\n[Text]bye[Speech]"
    assert classification_prompt([("[Hu1]", "happy")], "[Hu2]") == (
        "[Speech][Hu1][Text]happy\n[Speech][Hu2][Text]"
    )
    # Zero shots: just the query with its output prefix.
    assert few_shot_prompt([], TextInput("q"), "speech") == "[Text]q[Speech]"


def test_select_stsp_rows_balances_sentiments() -> None:
    rows = [
        {"sentiment": s, "id": f"{s}{i}"}
        for s in ("positive", "negative", "neutral")
        for i in range(4)
    ]
    chosen = select_stsp_rows(rows, 4, random.Random(0))
    assert [r["sentiment"] for r in chosen] == ["negative"] * 2 + ["neutral"] * 2 + ["positive"] * 2
    assert len({r["id"] for r in chosen}) == 6
    with pytest.raises(ValueError, match="only 4 rows"):
        select_stsp_rows(rows, 13, random.Random(0))


# ---------------------------------------------------------------------------------------------
# Batch parsing (docs/format.md#parsing-generated-output)

TEXT_PROMPT = "[Text]Say something"
SPEECH_PROMPT = "[Speech]" + hus(30, 100)  # p = 30


def test_text_output_is_stripped() -> None:
    assert parse_output(TEXT_PROMPT, "  Russia. \n", "text") == [TextSegment("Russia.")]
    assert parse_output(TEXT_PROMPT, "", "text") == [TextSegment("")]


def test_speech_output_is_one_stripped_segment() -> None:
    assert parse_output("[Text]x[Speech]", " [Hu1][Hu2] ", "speech") == [
        SpeechSegment("[Hu1][Hu2]")
    ]


def test_speech_output_that_cannot_be_vocoded_is_dropped() -> None:
    report = parse_output_report("[Text]x[Speech]", "[St1][Hu1][Hu2]", "speech", expressive=True)
    assert report.segments == []
    assert report.dropped == [DroppedSpeech("[St1][Hu1][Hu2]", "no_pitch")]
    assert parse_output("[Text]x[Speech]", "[St1][Hu1]", "speech") == [SpeechSegment("[St1][Hu1]")]
    empty = parse_output_report("[Text]x[Speech]", "  ", "speech")
    assert empty.dropped == [DroppedSpeech("", "no_units")]


def test_arbitrary_reference_split_example() -> None:
    generated = (
        "[Hu338][Text] and they went out together[Speech][Hu431][Pi0][Hu457][Hu79][Pi11]"
        "[Hu258][Hu85][Hu28][Hu50][Text] and mrs johnson  shoes except in mourning[Speech]"
        "[Pi59][Hu32][Pi20][Hu453][Pi35][Pi26][Hu166]"
    )
    report = parse_output_report(TEXT_PROMPT, generated, "arbitrary")
    # The first chunk has no minimum; later speech chunks need 24 "[Hu" occurrences.
    assert report.segments == [
        SpeechSegment("[Hu338]"),
        TextSegment(" and they went out together"),
        TextSegment(" and mrs johnson  shoes except in mourning"),
    ]
    assert [d.reason for d in report.dropped] == ["short", "short"]


@pytest.mark.parametrize(("count", "kept"), [(23, False), (24, True)])
def test_later_speech_chunk_threshold(count: int, kept: bool) -> None:
    # c + 1 >= 25 with c = occurrences of "[Hu" (the reference's off-by-one).
    segments = parse_output(TEXT_PROMPT, "Hello" + hus(count), "arbitrary")
    assert segments[0] == TextSegment("Hello")
    assert (SpeechSegment(hus(count)) in segments) is kept


def test_overlap_keeps_prompt_context_and_trims() -> None:
    generated = hus(40, 200)
    segments = parse_output(SPEECH_PROMPT, generated, "arbitrary")
    chunk = hus(30, 100) + generated
    assert segments == [SpeechSegment(chunk, Trim(prompt_hubert=30, chunk_hubert=71))]
    # 71 frames of 640 samples: the prompt's 30 of 71 "HuBERT counts" are 19200 samples.
    assert segments[0].trim is not None and segments[0].trim.samples(71 * 640) == 19200


@pytest.mark.parametrize(("count", "kept"), [(23, False), (24, True)])
def test_overlap_threshold(count: int, kept: bool) -> None:
    # (c + 1) - p >= 25, i.e. at least 24 new "[Hu" beyond the prompt's 30.
    report = parse_output_report(SPEECH_PROMPT, hus(count, 200) + " ok", "arbitrary")
    speech = [s for s in report.segments if isinstance(s, SpeechSegment)]
    assert bool(speech) is kept
    assert report.segments[-1] == TextSegment(" ok")
    if not kept:
        assert report.dropped[0].reason == "short_continuation"


def test_overlap_with_leading_space_is_parsed_unstripped() -> None:
    # N starts with speech after stripping, but G[s:] keeps the space: the prompt's run becomes
    # its own chunk (dropped), the space a text chunk, the new speech a later chunk.
    generated = " " + hus(24, 200) + "\n"
    report = parse_output_report(SPEECH_PROMPT, generated, "arbitrary")
    assert report.segments == [TextSegment(" "), SpeechSegment(hus(24, 200)), TextSegment("\n")]
    assert report.dropped == [DroppedSpeech(hus(30, 100), "short_continuation")]


def test_no_overlap_when_output_starts_with_text() -> None:
    segments = parse_output(SPEECH_PROMPT, "  so[Hu1]", "arbitrary")
    assert segments == [TextSegment("so")]  # "[Hu1]" is a later chunk below the minimum


def test_trim_uses_the_reference_float_expression() -> None:
    # ceil(19200 * (23 / 30)) is 14721 in floats although 19200 * 23 / 30 = 14720 exactly.
    assert Trim(23, 30).samples(19200) == 14721
    assert Trim(1, 4).samples(10) == 3
    assert Trim(1, 4).apply(list(range(10))) == list(range(3, 10))


def test_expressive_chunk_without_pitch_is_dropped() -> None:
    generated = "[St5]" + hus(3) + " and " + "[St5]" + hus(30)
    report = parse_output_report(TEXT_PROMPT, generated, "arbitrary", expressive=True)
    assert report.segments == [TextSegment(" and ")]
    assert [d.reason for d in report.dropped] == ["no_pitch", "no_pitch"]
    # The overlap chunk inherits pitch from the prompt's tokens.
    prompt = "[Speech][St5][Pi3]" + hus(10)
    kept = parse_output(prompt, hus(30, 50), "arbitrary", expressive=True)
    assert kept == [SpeechSegment("[St5][Pi3]" + hus(10) + hus(30, 50), Trim(10, 41))]
    assert string_to_units(kept[0].tokens).pitch == [3] * 40


def test_chunk_without_units_is_dropped() -> None:
    report = parse_output_report(TEXT_PROMPT, "[Hub cap] x", "arbitrary")
    assert report.segments == [TextSegment(" x")]
    assert report.dropped == [DroppedSpeech("[Hub cap]", "no_units")]


# ---------------------------------------------------------------------------------------------
# Streaming


def run_stream(prompt: str, pieces: list[str], modality: str, expressive: bool = False) -> list:
    parser = StreamParser(prompt, modality, expressive=expressive)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    return events


def test_stream_text_holds_surrounding_whitespace() -> None:
    parser = StreamParser(TEXT_PROMPT, "text")
    assert parser.feed("  ") == []
    assert parser.feed(" Hello") == [ModalitySwitch("text"), TextDelta("Hello")]
    assert parser.feed(" world\n") == [TextDelta(" world")]
    assert parser.feed(" ") == []
    assert parser.feed("!") == [TextDelta("\n !")]
    assert parser.feed("\n") == []
    assert parser.finish() == [Done()]


def test_stream_holds_later_speech_chunk_until_threshold() -> None:
    parser = StreamParser(TEXT_PROMPT, "arbitrary")
    assert parser.feed("Hi") == [ModalitySwitch("text"), TextDelta("Hi")]
    tokens = [f"[Hu{i}]" for i in range(30)]
    for tok in tokens[:23]:
        assert parser.feed(tok) == []
    assert parser.feed(tokens[23]) == [ModalitySwitch("speech"), SpeechTokens(tokens[:24])]
    assert parser.feed(tokens[24]) == [SpeechTokens([tokens[24]])]
    assert parser.feed("[Text]") == []
    assert parser.feed(" bye") == [ModalitySwitch("text"), TextDelta(" bye")]
    assert parser.finish() == [Done()]


def test_stream_never_emits_a_dropped_chunk() -> None:
    pieces = ["Hi", *[f"[Hu{i}]" for i in range(23)], "[Text]", "!"]
    events = run_stream(TEXT_PROMPT, pieces, "arbitrary")
    assert not any(isinstance(e, SpeechTokens) for e in events)
    assert events == [
        ModalitySwitch("text"),
        TextDelta("Hi"),
        TextDelta("!"),
        Done((DroppedSpeech(hus(23), "short"),)),
    ]


def test_stream_overlap_emits_prompt_context_first() -> None:
    parser = StreamParser(SPEECH_PROMPT, "arbitrary")
    own = [f"[Hu{200 + i}]" for i in range(30)]
    for tok in own[:23]:
        assert parser.feed(tok) == []
    released = parser.feed(own[23])
    assert released == [
        ModalitySwitch("speech"),
        SpeechTokens([f"[Hu{100 + i}]" for i in range(30)], context=True),
        SpeechTokens(own[:24]),
    ]
    events = released + parser.feed(own[24]) + parser.finish()
    expected = parse_output(SPEECH_PROMPT, "".join(own[:25]), "arbitrary")
    assert segments_from_events(events) == expected
    assert expected[0].trim == Trim(30, 56)


def test_stream_expressive_first_chunk_waits_for_pitch() -> None:
    parser = StreamParser("[Text]x[Speech]", "speech", expressive=True)
    assert parser.feed("[St3]") == []
    assert parser.feed("[Hu1]") == []
    assert parser.feed("[Pi2]") == [
        ModalitySwitch("speech"),
        SpeechTokens(["[St3]", "[Hu1]", "[Pi2]"]),
    ]
    assert parser.feed("[Hu4]") == [SpeechTokens(["[Hu4]"])]


def normalized(segments: list[Segment]) -> list[Segment]:
    """Batch segments as a stream shows them: adjacent texts joined, empty text omitted."""
    out: list[Segment] = []
    for segment in segments:
        if isinstance(segment, TextSegment):
            if not segment.text:
                continue
            if out and isinstance(out[-1], TextSegment):
                out[-1] = TextSegment(out[-1].text + segment.text)
                continue
        out.append(segment)
    return out


_SPEECH = st.builds(
    lambda k, v: f"[{k}{v}]", st.sampled_from(["Hu", "Pi", "St"]), st.integers(0, 9)
)
_TEXT = st.sampled_from(
    [" ", "\n", "a", " b", "[", "]", "Hu", "1", "[Te", "xt]", "[Sp", "eech]", "[Hub cap]", "[Hu1x]"]
)
_MARKER = st.sampled_from(["[Text]", "[Speech]"])
_RUN = st.integers(20, 30).map(lambda n: [f"[Hu{i % 7}]" for i in range(n)])
_PIECES = st.lists(
    st.one_of(
        _SPEECH.map(lambda p: [p]), _TEXT.map(lambda p: [p]), _MARKER.map(lambda p: [p]), _RUN
    ),
    max_size=12,
).map(lambda groups: [piece for group in groups for piece in group])


def speech_run(n: int) -> str:
    """n well-formed tokens cycling through the three streams."""
    return "".join(f"[{('St', 'Pi', 'Hu')[i % 3]}{i}]" for i in range(n))


_PROMPTS = st.one_of(
    # Quirky prompts: ends "like" speech without a well-formed token, text inside the last run.
    st.sampled_from(["", TEXT_PROMPT, "[Text]x[Hux]", "[Speech][Hu1]abc[Hu2]]"]),
    st.builds(
        lambda head, n: head + speech_run(n),
        st.sampled_from(["[Speech]", "[Text]hi[Speech]", "abc"]),
        st.integers(1, 40),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    prompt=_PROMPTS,
    pieces=_PIECES,
    modality=st.sampled_from(["text", "speech", "arbitrary"]),
    expressive=st.booleans(),
)
def test_stream_matches_batch(
    prompt: str, pieces: list[str], modality: str, expressive: bool
) -> None:
    events = run_stream(prompt, pieces, modality, expressive)
    report = parse_output_report(prompt, "".join(pieces), modality, expressive=expressive)
    assert isinstance(events[-1], Done)
    assert not any(isinstance(e, Done) for e in events[:-1])
    assert segments_from_events(events) == normalized(report.segments)
    assert list(events[-1].dropped) == report.dropped
