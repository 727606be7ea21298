"""The LM's token id map and banned sets, written out from docs/format.md#token-vocabulary and
docs/format.md#banned-ids-per-output-modality rather than taken from the code under test."""

from __future__ import annotations

from service.checkpoints.layout import BASE, EXPRESSIVE
from service.lm.prompt import OutputModality

TEXT_IDS = set(range(0, 32000))
MARKERS = {32000, 32001}
HUBERT_IDS = set(range(32002, 32503))
PITCH_IDS = set(range(32503, 32567))
STYLE_IDS = set(range(32567, 32667))
PADDING_ROWS = {BASE: set(range(32503, 32512)), EXPRESSIVE: set(range(32667, 32768))}


def banned_ids(modality: OutputModality, variant: str) -> set[int]:
    """The ids a forced output modality must never produce (the padding rows are not in it)."""
    if modality is OutputModality.TEXT:
        units = HUBERT_IDS | (PITCH_IDS | STYLE_IDS if variant == EXPRESSIVE else set())
        return MARKERS | units
    if modality is OutputModality.SPEECH:
        return MARKERS | TEXT_IDS
    return set()
