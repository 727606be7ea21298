"""service/lm/ending.py: the end conditions on token ids and text, without an LM."""

from __future__ import annotations

import pytest

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.lm.ending import Ending, EndOfSpeech, EndWatcher, line_end_ids
from service.lm.tokenizer import SpiritTokenizer

SILENCE = frozenset({7, 8})


@pytest.fixture(scope="module")
def tokenizer(layout: CheckpointLayout) -> SpiritTokenizer:
    return SpiritTokenizer.from_dir(layout.lm_dir(EXPRESSIVE))


def _watcher(
    tokenizer: SpiritTokenizer, silence_tokens: int = 3, min_speech: int = 2
) -> EndWatcher:
    rule = EndOfSpeech(SILENCE, silence_tokens=silence_tokens, min_speech_tokens=min_speech)
    return EndWatcher(Ending(end_of_speech=rule), tokenizer)


def _feed(watcher: EndWatcher, tokenizer: SpiritTokenizer, tokens: list[tuple[str, int]]) -> int:
    """How many tokens were fed when the watcher ended (-1: it did not)."""
    for count, (stream, value) in enumerate(tokens, start=1):
        watcher.token(tokenizer.unit_id(stream, value))
        if watcher.ended:
            return count
    return -1


def hu(*values: int) -> list[tuple[str, int]]:
    return [("hubert", value) for value in values]


def test_silence_after_enough_speech_ends_at_the_last_silence_token(
    tokenizer: SpiritTokenizer,
) -> None:
    watcher = _watcher(tokenizer)
    assert _feed(watcher, tokenizer, hu(1, 2, 7, 8, 7, 3)) == 5
    assert watcher.end == "end_of_speech"


def test_silence_before_speech_or_broken_by_speech_does_not_end(
    tokenizer: SpiritTokenizer,
) -> None:
    # Leading silence does not count, nor does a run that speech interrupts.
    assert _feed(_watcher(tokenizer), tokenizer, hu(7, 8, 7, 7, 1, 7, 8, 2, 7)) == -1
    # Two speech tokens are needed first: one is not enough.
    assert _feed(_watcher(tokenizer), tokenizer, hu(1, 7, 7, 7)) == -1


def test_pitch_and_style_tokens_neither_count_nor_interrupt(tokenizer: SpiritTokenizer) -> None:
    tokens = [*hu(1, 2, 7), ("pitch", 3), ("style", 1), *hu(8), ("pitch", 4), *hu(7)]
    assert _feed(_watcher(tokenizer), tokenizer, tokens) == len(tokens)


def test_a_text_token_resets_the_rule(tokenizer: SpiritTokenizer) -> None:
    watcher = _watcher(tokenizer)
    _feed(watcher, tokenizer, hu(1, 2, 7, 7))
    watcher.token(tokenizer.encode("hello")[-1])
    assert _feed(watcher, tokenizer, hu(7, 7, 7)) == -1  # no speech since the text
    assert _feed(watcher, tokenizer, hu(3, 4, 7, 7, 7)) == 5


def test_without_the_rule_silence_never_ends(tokenizer: SpiritTokenizer) -> None:
    watcher = EndWatcher(Ending(at_line_end=True), tokenizer)
    assert _feed(watcher, tokenizer, hu(1, 2, *[7] * 50)) == -1


def test_line_end_cuts_the_text_and_its_trailing_spaces(tokenizer: SpiritTokenizer) -> None:
    watcher = EndWatcher(Ending(stops=("STOP",), at_line_end=True), tokenizer)
    # (Trailing spaces of a delta are held by the parser until text follows, so they arrive
    # with the next delta, line break included.)
    assert watcher.text("hello") == "hello"
    assert watcher.text(" wor") == " wor"
    assert watcher.text("ld  \nnext") == "ld"
    assert watcher.end == "line_end"
    assert watcher.text("more") == ""


def test_a_stop_string_split_over_deltas(tokenizer: SpiritTokenizer) -> None:
    watcher = EndWatcher(Ending(stops=("Q:",), at_line_end=True), tokenizer)
    assert watcher.text("answer Q") == "answer "
    assert watcher.text(": next\n") == ""
    assert watcher.end == "stop_string"


def test_held_text_is_released_at_a_segment_end(tokenizer: SpiritTokenizer) -> None:
    watcher = EndWatcher(Ending(stops=("Q:",)), tokenizer)
    assert watcher.text("so Q") == "so "
    assert watcher.segment_end() == "Q"
    assert not watcher.ended


def test_vllm_ends_are_named_by_the_last_id(layout: CheckpointLayout) -> None:
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(BASE))
    newline = next(i for i in line_end_ids(tokenizer) if i != tokenizer.eos_id)
    with_line_end = EndWatcher(Ending(at_line_end=True), tokenizer)
    assert with_line_end.finished("stop", [5, newline]) == "line_end"
    assert with_line_end.finished("stop", [5, tokenizer.eos_id]) == "eos"
    assert with_line_end.finished("length", [5, 6]) == "max_tokens"
    assert EndWatcher(Ending(), tokenizer).finished("stop", [5, newline]) is None


@pytest.mark.parametrize(
    ("text", "ending", "cut"),
    [
        ("one two  \nthree", Ending(at_line_end=True), "one two"),
        ("one Q: two\n", Ending(stops=("Q:",), at_line_end=True), "one "),
        ("one\rtwo", Ending(at_line_end=True), "one"),
        ("one\ntwo", Ending(stops=("x",)), "one\ntwo"),
        ("plain", Ending(), "plain"),
    ],
)
def test_cut_text_of_a_whole_segment(text: str, ending: Ending, cut: str) -> None:
    assert ending.cut_text(text) == cut
