"""`bench streams`: the in-process vocoder-stream benchmark produces truthful rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.bench.streams import (
    Report,
    StreamConfig,
    markdown_section,
    markdown_table,
    parse_config,
    run_benchmark,
)
from service.checkpoints.layout import BASE, CheckpointLayout


def test_configs_use_the_speech_worker_flag_names() -> None:
    config = parse_config("fast: --vocoder-batch-size 4 --vocoder-dtype bfloat16")
    assert config == StreamConfig("fast", vocoder_batch_size=4, vocoder_dtype="bfloat16")
    assert parse_config("plain:") == StreamConfig("plain")
    for bad in ("no colon", ": --chunk-units 3", "x: --vocoder-dtype float16", "x: --nope 1"):
        with pytest.raises(ValueError):
            parse_config(bad)


def small_run(
    layout: CheckpointLayout,
    configs: list[StreamConfig],
    levels: list[int],
    *,
    unit_rate: float,
    encode_seconds: float = 0.0,
) -> Report:
    """40 units per stream on the embedded tiny vocoder, one thread."""
    return run_benchmark(
        configs,
        levels,
        checkpoints=layout.root,
        variant=BASE,
        device="cpu",
        threads=1,
        units=40,
        unit_rate=unit_rate,
        piece=5,
        time_budget=600.0,
        progress=lambda _: None,
        encode_seconds=encode_seconds,
    )


def test_levels_run_through_the_scheduler(layout: CheckpointLayout, tmp_path: Path) -> None:
    configs = [
        StreamConfig("per-chunk", max_chunk_units=25, first_chunk_units=4, chunk_units=8),
        StreamConfig("batched", vocoder_batch_size=4, first_chunk_units=4, chunk_units=8),
    ]
    report = small_run(layout, configs, [1, 3], unit_rate=2000.0)
    assert [(level.config, level.streams) for level in report.levels] == [
        ("per-chunk", 1), ("per-chunk", 3), ("batched", 1), ("batched", 3)
    ]  # fmt: skip
    for level in report.levels:
        assert len(level.results) == level.streams
        assert all(r.first_chunk is not None and r.first_chunk > 0 for r in level.results)
        assert all(r.audio_seconds > 0 for r in level.results)
        assert sum(level.batches) >= level.streams  # every stream's chunks went through
        assert not math.isinf(level.worst_stall)
    per_chunk = [lv for lv in report.levels if lv.config == "per-chunk"]
    assert all(size == 1 for lv in per_chunk for size in lv.batches)  # CPU default: 1
    assert all(size <= 4 for lv in report.levels for size in lv.batches)
    table = markdown_table(report)
    assert table.count("\n") == 2 + len(report.levels)
    section = markdown_section(report, configs, "spiritlm-serve bench streams")
    assert "per-chunk (`" in section and "batched (`" in section


def test_encodes_run_beside_the_streams_on_their_thread(
    layout: CheckpointLayout, tmp_path: Path
) -> None:
    config = parse_config("no deadlines: --deadline-lead-seconds 0")
    assert config == StreamConfig("no deadlines", deadline_lead_seconds=0.0)
    configs = [StreamConfig("defaults", first_chunk_units=4, chunk_units=8), config]
    report = small_run(layout, configs, [2], unit_rate=100.0, encode_seconds=2.0)
    for level in report.levels:
        assert all(r.first_chunk is not None for r in level.results)
        assert level.encodes and all(seconds > 0 for seconds in level.encodes)
    assert report.levels[1].steps_aside == 0  # deadlines off: nothing ever steps aside
    table = markdown_table(report)
    assert "Encodes beside" in table and table.count("\n") == 2 + len(report.levels)
