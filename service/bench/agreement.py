"""How far two encodings of the same audio agree, frame by frame (bench windows, precision)."""

from __future__ import annotations

import numpy as np

from service.units.tokens import Units


def frames_equal(reference: Units, other: Units, expressive: bool) -> dict[str, float]:
    """Per stream (HuBERT; pitch and style too for the expressive model), the share of frames
    of `other` equal to `reference`'s. The streams must have the same frame counts."""
    shares: dict[str, float] = {}
    for kind in ("hubert", "pitch", "style") if expressive else ("hubert",):
        a, b = reference.stream(kind) or [], other.stream(kind) or []  # type: ignore[arg-type]
        if len(a) != len(b):
            raise AssertionError(f"{kind}: {len(b)} frames against {len(a)} in the reference")
        shares[kind] = float(np.mean(np.equal(a, b))) if a else 1.0
    return shares


def format_shares(shares: dict[str, float]) -> str:
    """'97.4% / 100.0% / 100.0%': the shares in stream order, for a table cell."""
    return " / ".join(f"{100 * share:.1f}%" for share in shares.values())
