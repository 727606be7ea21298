"""Interleaved generation on the real vLLM server, checked against transformers.

Every test talks to the unmodified vLLM OpenAI server started once per variant by the session
fixture `servers.lm(...)`, on the embedded tiny checkpoints. The reference is what the official
implementation runs: `LlamaForCausalLM.generate` (float32 here, CPU) with the banned set of
docs/format.md#banned-ids-per-output-modality as single-token `bad_words_ids`.

One deliberate difference is mirrored in the reference: we never let vLLM pick an embedding row
that has no token (the padding rows, docs/format.md#token-vocabulary: 32503-32511 base,
32667-32767 expressive), in any modality, because nothing could decode it (`prepare_prompt` and
`SpiritTokenizer.allowed_ids` leave them out of `allowed_token_ids`). The reference bans them
too through `bad_words_ids`, so greedy outputs must then be identical token for token. The
banned sets (tests/support/token_ids.py) are written from the documented id ranges, not
taken from the code under test. (The equality also depends on vLLM serving the float32
checkpoints in float32: its "auto" dtype would pick bfloat16, and the greedy ids diverge within
a few dozen tokens.)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Coroutine
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.lm.client import LMClient, LMError, SamplingParams
from service.lm.detokenize import IncrementalDecoder
from service.lm.generation import GenerationResult, Generator, PreparedPrompt
from service.lm.parsing import (
    Done,
    Event,
    Segment,
    SpeechSegment,
    TextSegment,
    parse_output_report,
)
from service.lm.prompt import OutputModality, PromptInput, SpeechInput, TextInput, build_prompt
from service.lm.tokenizer import SpiritTokenizer
from tests.support.generate_cli import check_speech_segment, generate_command, run_cli
from tests.support.lm_reference import reference_greedy, reference_model
from tests.support.stream_segments import segments_from_events
from tests.support.token_ids import (
    HUBERT_IDS,
    MARKERS,
    PADDING_ROWS,
    PITCH_IDS,
    STYLE_IDS,
    banned_ids,
)

T = TypeVar("T")
VARIANTS = (BASE, EXPRESSIVE)
TEXT, SPEECH, ARBITRARY = OutputModality.TEXT, OutputModality.SPEECH, OutputModality.ARBITRARY
GREEDY_TOKENS = 32


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 300.0) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def speech_tokens(layout: CheckpointLayout, speech_file: Path) -> dict[str, str]:
    """The real example file encoded by each variant's speech tokenizer (no [Speech] prefix)."""
    from service.audio.decode import load_audio_file
    from service.speech.pipeline import SpeechStack

    wav = load_audio_file(speech_file)
    return {variant: SpeechStack(layout, variant).encode_string(wav) for variant in VARIANTS}


@cache
def _tokenizer(lm_dir: Path) -> SpiritTokenizer:
    return SpiritTokenizer.from_dir(lm_dir)


def tokenizer_of(layout: CheckpointLayout, variant: str) -> SpiritTokenizer:
    return _tokenizer(layout.lm_dir(variant))


async def complete(
    client: LMClient,
    prompt_ids: list[int],
    params: SamplingParams,
    allowed_token_ids: list[int] | None = None,
) -> tuple[list[int], str | None]:
    """One whole request on `client`: its generated ids and finish reason."""
    token_ids: list[int] = []
    finish_reason = None
    async for delta in client.stream(prompt_ids, params, allowed_token_ids):
        token_ids += delta.token_ids
        finish_reason = delta.finish_reason or finish_reason
    return token_ids, finish_reason


def generator_for(url: str, layout: CheckpointLayout, variant: str) -> Generator:
    client = LMClient(url, variant)
    return Generator(tokenizer_of(layout, variant), client, expressive=variant == EXPRESSIVE)


async def generate(
    generator: Generator, prepared: PreparedPrompt, params: SamplingParams
) -> tuple[list[Event], GenerationResult]:
    try:
        return await generator.run(prepared, params)
    finally:
        await generator.lm.aclose()


async def generate_many(
    generator: Generator, prepared: list[PreparedPrompt], params: list[SamplingParams]
) -> list[tuple[list[Event], GenerationResult]]:
    """Concurrent requests on one client (vLLM batches them)."""
    try:
        jobs = [generator.run(p, s) for p, s in zip(prepared, params, strict=True)]
        return list(await asyncio.gather(*jobs))
    finally:
        await generator.lm.aclose()


def generated_text(tokenizer: SpiritTokenizer, prompt_ids: list[int], output: list[int]) -> str:
    """The reference's slice of the decoded full sequence
    (docs/format.md#parsing-generated-output)."""
    full = tokenizer.decode_ids(prompt_ids + output)
    return full[len(tokenizer.decode_ids(prompt_ids)) :]


def prompt_cases(speech: str) -> dict[str, tuple[list[PromptInput], OutputModality]]:
    return {
        "text-to-text": ([TextInput("The largest country in the world is")], TEXT),
        "speech-to-text": ([SpeechInput(speech)], TEXT),
        "text-to-speech": ([TextInput("The train to the mountains leaves at seven.")], SPEECH),
        "mixed-to-arbitrary": ([TextInput("Listen to this:"), SpeechInput(speech)], ARBITRARY),
    }


CASE_NAMES = ("text-to-text", "speech-to-text", "text-to-speech", "mixed-to-arbitrary")


# ---------------------------------------------------------------------------------------------
# greedy equality with transformers


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_ids_equal_transformers(
    servers: Any,
    layout: CheckpointLayout,
    speech_tokens: dict[str, str],
    variant: str,
    case: str,
) -> None:
    inputs, modality = prompt_cases(speech_tokens[variant])[case]
    prompt = build_prompt(inputs, modality)
    generator = generator_for(servers.lm(variant), layout, variant)
    prepared = generator.prepare(prompt, modality)
    params = SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0.0)
    _, result = run(generate(generator, prepared, params))

    expected = reference_greedy(layout, variant, prepared.prompt_ids, modality, GREEDY_TOKENS)
    assert result.output_ids == expected
    assert result.usage.prompt_tokens == len(prepared.prompt_ids)
    assert result.usage.completion_tokens == len(expected)
    if modality is SPEECH:  # </s> is banned (docs/format.md#banned-ids-per-output-modality)
        assert result.finish_reason == "length" and len(expected) == GREEDY_TOKENS


def test_end_of_sequence_stops_like_transformers(servers: Any, layout: CheckpointLayout) -> None:
    """With only </s> allowed both engines emit it once and stop; vLLM reports "stop"."""
    generator = generator_for(servers.lm(BASE), layout, BASE)
    prompt = "[Text]The end"
    prepared = PreparedPrompt(prompt, tokenizer_of(layout, BASE).encode(prompt), ARBITRARY, [2])
    events, result = run(generate(generator, prepared, SamplingParams(max_tokens=8, temperature=0)))

    import torch

    model = reference_model(layout.lm_dir(BASE))
    ids = torch.tensor([prepared.prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=8,
            bad_words_ids=[[i] for i in range(32512) if i != 2],
        )
    assert result.output_ids == out[0, ids.shape[1] :].tolist() == [2]
    assert result.finish_reason == "stop"
    assert events == [Done()]


def test_refused_requests_raise_lm_error_and_the_engine_lives(
    servers: Any, layout: CheckpointLayout
) -> None:
    url = servers.lm(BASE)
    client = LMClient(url, BASE)

    async def refusals() -> list[LMError | None]:
        errors: list[LMError | None] = []
        try:
            for params, allowed in [
                (SamplingParams(max_tokens=5000), None),  # refused before streaming (HTTP 400)
                (SamplingParams(max_tokens=2), [40000]),  # refused by an error event after 200
            ]:
                try:
                    await complete(client, [1, 100], params, allowed)
                    errors.append(None)
                except LMError as error:
                    errors.append(error)
        finally:
            await client.aclose()
        return errors

    too_long, out_of_vocab = run(refusals())
    assert too_long is not None and too_long.status == 400 and "max_tokens" in str(too_long)
    assert out_of_vocab is not None and out_of_vocab.status == 400
    assert "allowed_token_ids" in str(out_of_vocab)

    # A prompt id outside the vocabulary would kill vLLM's engine: it never leaves the generator.
    generator = generator_for(url, layout, BASE)
    bad = PreparedPrompt("[Text]x", [1, 32600], TEXT, None)
    with pytest.raises(ValueError, match="32600"):
        run(generate(generator, bad, SamplingParams(max_tokens=2)))
    assert httpx.get(f"{url}/health", timeout=5.0).status_code == 200


def test_incremental_decoder_matches_full_decode(layout: CheckpointLayout) -> None:
    """Streamed text deltas join to the reference's slice, whatever ids arrive
    (docs/format.md#parsing-generated-output).

    Random ids include byte-fallback pieces, so characters split over tokens, invalid byte
    sequences and an unfinished character at the very end all occur.
    """
    rng = np.random.default_rng(0)
    for variant in VARIANTS:
        tokenizer = tokenizer_of(layout, variant)
        pools = [np.arange(3, 259), np.arange(3, 32000), np.array(sorted(HUBERT_IDS | MARKERS))]
        prompt_ids = tokenizer.encode("[Text]Streaming text \u00e9t\u00e9 ")
        for trial in range(40):
            length = int(rng.integers(1, 40))
            ids = [int(rng.choice(pools[int(rng.integers(0, 3))])) for _ in range(length)]
            if trial % 4 == 0:
                ids.append(0xE3 + 3)  # a lead byte that never gets its continuation
            decoder = IncrementalDecoder(tokenizer.decode_ids, prompt_ids)
            pieces = []
            position = 0
            while position < len(ids):
                step = int(rng.integers(1, 4))
                pieces.append(decoder.push(ids[position : position + step]))
                position += step
            pieces.append(decoder.finish())
            expected = generated_text(tokenizer, prompt_ids, ids)
            assert "".join(pieces) == expected, (variant, ids)


# ---------------------------------------------------------------------------------------------
# forced modalities


@pytest.mark.parametrize("modality", [TEXT, SPEECH], ids=["text", "speech"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_sampled_forced_modality_never_emits_a_banned_token(
    servers: Any, layout: CheckpointLayout, variant: str, modality: OutputModality
) -> None:
    # Unmasked sampling at temperature 1 over ~32.5k ids would hit a banned id within these
    # 4 x 96 tokens with near certainty (speech ids are ~2% of the vocabulary, text ids ~98%).
    prompt = build_prompt([TextInput("Every morning she opens the window")], modality)
    generator = generator_for(servers.lm(variant), layout, variant)
    prepared = generator.prepare(prompt, modality)
    seeds = [1, 2, 3, 4]
    params = [SamplingParams(max_tokens=96, temperature=1.0, seed=seed) for seed in seeds]
    outputs = run(generate_many(generator, [prepared] * len(seeds), params))

    forbidden = banned_ids(modality, variant) | PADDING_ROWS[variant]
    for seed, (_, result) in zip(seeds, outputs, strict=True):
        assert result.output_ids, f"seed {seed}: nothing generated"
        bad = sorted(set(result.output_ids) & forbidden)
        assert not bad, f"seed {seed}: forbidden ids {bad[:10]}"
        assert max(result.output_ids) < 32768
    distinct = {tuple(result.output_ids) for _, result in outputs}
    assert len(distinct) == len(seeds), "different seeds gave identical samples"


# ---------------------------------------------------------------------------------------------
# client abort


def vllm_metrics(url: str) -> dict[str, float]:
    """The few vLLM counters the abort test reads, summed over their labels."""
    wanted = (
        "vllm:num_requests_running",
        "vllm:request_success_total",
        "vllm:generation_tokens_total",
    )
    totals = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        match = re.match(r"([a-z_:]+)(?:\{[^}]*\})? (\S+)$", line)
        if match and match.group(1) in totals:
            totals[match.group(1)] += float(match.group(2))
    return totals


async def read_then_close(generator: Generator, prepared: PreparedPrompt, deltas: int) -> int:
    """Read a few events of a long stream, then leave it; return the ids received."""
    result = GenerationResult()
    seen = 0
    stream = generator.stream(
        prepared, SamplingParams(max_tokens=4000, temperature=1.0, seed=7), result
    )
    try:
        async for _ in stream:
            seen += 1
            if seen >= deltas:
                break
    finally:
        await stream.aclose()
        await generator.lm.aclose()
    return len(result.output_ids)


def test_client_abort_cancels_the_vllm_request(servers: Any, layout: CheckpointLayout) -> None:
    url = servers.lm(BASE)
    before = vllm_metrics(url)
    assert before["vllm:num_requests_running"] == 0
    generator = generator_for(url, layout, BASE)
    # SPEECH output cannot stop early (</s> banned), so only an abort ends it before 4000 ids.
    prepared = generator.prepare(build_prompt([TextInput("Hello")], SPEECH), SPEECH)
    received = run(read_then_close(generator, prepared, deltas=3))
    assert 0 < received < 4000

    deadline = time.monotonic() + 5.0
    while True:
        now = vllm_metrics(url)
        if now["vllm:num_requests_running"] == 0:
            break
        assert time.monotonic() < deadline, f"request still running 5 s after close: {now}"
        time.sleep(0.2)
    time.sleep(0.5)
    settled = vllm_metrics(url)
    # Generation stopped for good, far from the limit, and the request did not finish normally
    # (vLLM 0.32 counts client aborts in none of request_success_total's reasons).
    assert settled["vllm:generation_tokens_total"] == now["vllm:generation_tokens_total"]
    assert settled["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] < 1000
    assert settled["vllm:request_success_total"] == before["vllm:request_success_total"]
    assert settled["vllm:num_requests_running"] == 0


# ---------------------------------------------------------------------------------------------
# streaming events against batch parsing


def join_text(segments: list[Segment]) -> list[Segment]:
    """Adjacent text segments joined, as the stream emits them (a dropped chunk leaves none)."""
    joined: list[Segment] = []
    for segment in segments:
        previous = joined[-1] if joined else None
        if isinstance(segment, TextSegment) and isinstance(previous, TextSegment):
            joined[-1] = TextSegment(previous.text + segment.text)
        else:
            joined.append(segment)
    return joined


def interleaving_ids(tokenizer: SpiritTokenizer, variant: str) -> list[int]:
    """A narrow ARBITRARY id set on which the random tiny LM interleaves text and speech.

    Mostly unit tokens (long speech runs, some long enough to keep, some dropped), a few words
    and both markers, so every branch of docs/format.md#parsing-generated-output sees real vLLM
    output.
    """
    words = tokenizer.encode(" the cat sat on a mat")[1:]
    units = sorted(HUBERT_IDS)[:160]
    if variant == EXPRESSIVE:
        units += sorted(PITCH_IDS)[:40] + sorted(STYLE_IDS)[:8]
    return sorted(set(words) | MARKERS | set(units))


def assert_stream_matches_batch(
    tokenizer: SpiritTokenizer,
    prepared: PreparedPrompt,
    events: list[Event],
    result: GenerationResult,
    expressive: bool,
) -> None:
    generated = generated_text(tokenizer, prepared.prompt_ids, result.output_ids)
    report = parse_output_report(
        prepared.prompt, generated, prepared.modality, expressive=expressive
    )
    expected = join_text(report.segments)
    if prepared.modality is TEXT and expected == [TextSegment("")]:
        expected = []
    assert segments_from_events(events) == expected
    assert events[-1] == Done(tuple(report.dropped))
    assert sum(isinstance(event, Done) for event in events) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_stream_events_match_batch_parsing(
    servers: Any, layout: CheckpointLayout, speech_tokens: dict[str, str], variant: str
) -> None:
    tokenizer = tokenizer_of(layout, variant)
    expressive = variant == EXPRESSIVE
    generator = generator_for(servers.lm(variant), layout, variant)
    prepared: list[PreparedPrompt] = []
    for inputs, modality in prompt_cases(speech_tokens[variant]).values():
        prepared.append(generator.prepare(build_prompt(inputs, modality), modality))
    # The prompt ends with speech, so an output starting with speech takes the overlap path.
    mixed = build_prompt(
        [TextInput("Listen to this:"), SpeechInput(speech_tokens[variant])], ARBITRARY
    )
    narrow = PreparedPrompt(
        prompt=mixed,
        prompt_ids=tokenizer.encode(mixed),
        modality=ARBITRARY,
        allowed_token_ids=interleaving_ids(tokenizer, variant),
    )
    text_first = PreparedPrompt(
        prompt="[Text]Once upon a time",
        prompt_ids=tokenizer.encode("[Text]Once upon a time"),
        modality=ARBITRARY,
        allowed_token_ids=interleaving_ids(tokenizer, variant),
    )
    jobs = [(p, SamplingParams(max_tokens=48, temperature=1.0, seed=11)) for p in prepared]
    jobs += [(narrow, SamplingParams(max_tokens=160, temperature=1.0, seed=s)) for s in (1, 2, 3)]
    jobs += [(text_first, SamplingParams(max_tokens=160, temperature=1.0, seed=4))]
    outputs = run(generate_many(generator, [p for p, _ in jobs], [s for _, s in jobs]))

    kept_speech = 0
    for (prompt, _), (events, result) in zip(jobs, outputs, strict=True):
        assert_stream_matches_batch(tokenizer, prompt, events, result, expressive)
        kept_speech += sum(isinstance(s, SpeechSegment) for s in segments_from_events(events))
    # The narrow set must really have produced kept speech next to text (else the test is weak).
    assert kept_speech > len(prepared)


# ---------------------------------------------------------------------------------------------
# the `spiritlm-serve generate` command


def test_cli_generate_text_to_speech(
    servers: Any, layout: CheckpointLayout, child_env: dict[str, str], tmp_path: Path
) -> None:
    text = "The train to the mountains leaves at seven."
    prefix = tmp_path / "tts"
    record, _ = run_cli(
        ["--model", BASE, "--lm-url", servers.lm(BASE), "--input", f"text:{text}"]
        + ["--output-modality", "speech", "--max-tokens", "60", "-o", str(prefix)],
        child_env,
        timeout=300,
    )
    tokenizer = tokenizer_of(layout, BASE)
    assert record["prompt"] == build_prompt([TextInput(text)], SPEECH)
    assert record["prompt_token_ids"] == tokenizer.encode(record["prompt"])
    expected = reference_greedy(layout, BASE, record["prompt_token_ids"], SPEECH, 60)
    assert record["output_token_ids"] == expected
    assert record["finish_reason"] == "length"
    [segment] = record["segments"]
    assert segment["type"] == "speech"
    assert segment["tokens"] == tokenizer.decode_ids(expected).strip()
    assert Path(segment["audio"]) == Path(f"{prefix}_0.wav")
    check_speech_segment(layout, BASE, segment)


def test_cli_generate_speech_to_text(
    servers: Any,
    layout: CheckpointLayout,
    child_env: dict[str, str],
    speech_file: Path,
    speech_tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    record, _ = run_cli(
        ["--model", EXPRESSIVE, "--lm-url", servers.lm(EXPRESSIVE)]
        + ["--input", f"speech:{speech_file}", "--output-modality", "text", "--max-tokens", "24"]
        + ["-o", str(tmp_path / "asr")],
        child_env,
        timeout=300,
    )
    tokenizer = tokenizer_of(layout, EXPRESSIVE)
    assert record["prompt"] == build_prompt([SpeechInput(speech_tokens[EXPRESSIVE])], TEXT)
    assert record["prompt_token_ids"] == tokenizer.encode(record["prompt"])
    expected = reference_greedy(layout, EXPRESSIVE, record["prompt_token_ids"], TEXT, 24)
    assert record["output_token_ids"] == expected
    generated = generated_text(tokenizer, record["prompt_token_ids"], expected)
    assert record["segments"] == [{"type": "text", "text": generated.strip()}]
    usage = {"prompt_tokens": len(record["prompt_token_ids"]), "completion_tokens": len(expected)}
    assert record["usage"] == usage


def test_cli_generate_ends_at_a_stop_string(
    servers: Any, layout: CheckpointLayout, child_env: dict[str, str], tmp_path: Path
) -> None:
    args = ["--model", BASE, "--lm-url", servers.lm(BASE), "--input", "text:Once upon a time"]
    args += ["--output-modality", "text", "--max-tokens", "40", "--temperature", "0"]
    full, _ = run_cli([*args, "-o", str(tmp_path / "full")], child_env, timeout=300)
    [segment] = full["segments"]
    text = segment["text"]
    assert len(text) >= 12, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped, _ = run_cli(
        [*args, "--stop", stop, "--stop", "never in the text", "-o", str(tmp_path / "stop")],
        child_env,
        timeout=300,
    )
    ids = stopped["output_token_ids"]
    assert stopped["finish_reason"] == "stop"
    assert ids == full["output_token_ids"][: len(ids)]
    # The ids end with the token that completed the stop string, not later.
    tokenizer = tokenizer_of(layout, BASE)
    prompt_ids = stopped["prompt_token_ids"]
    assert stop in generated_text(tokenizer, prompt_ids, ids)
    assert stop not in generated_text(tokenizer, prompt_ids, ids[:-1])
    assert stopped["segments"] == [{"type": "text", "text": text[: text.index(stop)]}]
    assert stopped["usage"]["completion_tokens"] == len(ids)


@pytest.mark.parametrize(
    ("stops", "message"),
    [(["a"] * 5, "--stop: at most 4 stop strings"), ([""], "--stop[0]: a stop string must")],
)
def test_cli_generate_refuses_bad_stops(
    child_env: dict[str, str], stops: list[str], message: str
) -> None:
    args = ["--model", BASE, "--input", "text:hi"]
    completed = generate_command(args + [a for stop in stops for a in ("--stop", stop)], child_env)
    assert completed.returncode == 2
    assert message in completed.stderr and "Traceback" not in completed.stderr


def test_cli_generate_reports_a_refused_request(
    servers: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    """vLLM refuses a prompt longer than the model's context: one error line, exit 1."""
    completed = generate_command(
        ["--model", BASE, "--lm-url", servers.lm(BASE), "--input", "text:" + "word " * 5000]
        + ["--output-modality", "text", "-o", str(tmp_path / "long")],
        child_env,
        timeout=300,
    )
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    [error] = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert "maximum context length" in error or "max_model_len" in error, error
    assert servers.lm(BASE) in error


@pytest.mark.slow
# Last: if vLLM's chunked-prefill crash came back, it would take the shared server down.
def test_seeded_long_prompts_keep_the_engine_alive(servers: Any) -> None:
    """Seeded requests whose prompts exceed vLLM's default 2048-token CPU prefill budget.

    With chunked prefill (vLLM's default) the CPU runner dies on them ("CPU Generator does not
    use offset"); the worker's flags must keep every prompt in one prefill step.
    """
    url = servers.lm(BASE)
    client = LMClient(url, BASE)
    long_prompt = [1] + [32002 + (7 * i) % 500 for i in range(3000)]
    prompts = [long_prompt] + [long_prompt[: 600 + 50 * k] for k in range(4)]

    async def seeded() -> list[Any]:
        try:
            jobs = [
                complete(client, ids, SamplingParams(max_tokens=4, temperature=1.0, seed=k))
                for k, ids in enumerate(prompts)
            ]
            return list(await asyncio.gather(*jobs))
        finally:
            await client.aclose()

    completions = run(seeded())
    assert [reason for _, reason in completions] == ["length"] * len(prompts)
    assert all(len(token_ids) == 4 for token_ids, _ in completions)
    assert httpx.get(f"{url}/health", timeout=5.0).status_code == 200
