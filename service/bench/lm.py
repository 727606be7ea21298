"""LM generation benchmark: the official way of running against our vLLM path.

Both sides use the same checkpoints, prompts and sampling settings in the same run.

* Baseline, what the reference implementation does (docs/format.md#generation-settings):
  transformers `generate` (float32, on the configured device) with the banned ids of
  docs/format.md#banned-ids-per-output-modality as `bad_words_ids`, one request at a time;
  then the whole output is decoded, parsed and every speech segment is vocoded in one piece
  (`SpeechStack.decode`). A response exists only when all of that is done.
* Ours: the vLLM server (ids in, ids out, modality forced by `allowed_token_ids`) with
  `concurrency` streaming requests in flight; speech is vocoded while it streams by a
  `StreamingVocoder` per request (in this process, on one vocoder thread, like a speech worker).
  Time to first audio is when the first audio chunk is ready.

Workloads: text -> speech (SPEECH output, which cannot stop early, so every request yields
`speech_tokens` units, i.e. >= 5 s of audio at 25 Hz for 125+ tokens) and speech -> text
(TEXT output of up to `text_tokens` ids, prompt = the example audio's units). Speech inputs are
encoded once up front for both sides (encoding is not what this benchmark measures). Prompts are
made distinct per request so that vLLM's prefix cache cannot serve one request from another.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bench.report import RequestTiming, Summary, load_average, summarize
from service.checkpoints.layout import EXPRESSIVE, CheckpointLayout
from service.cpus import pinned, plan_for
from service.lm.client import LMClient, SamplingParams
from service.lm.generation import GenerationResult, Generator
from service.lm.parsing import ModalitySwitch, SpeechSegment, SpeechTokens, TextDelta, parse_output
from service.lm.prompt import OutputModality, SpeechInput, TextInput, build_prompt
from service.lm.tokenizer import SpiritTokenizer
from service.process import free_port, lm_worker_log_path
from service.speech.pipeline import SpeechStack
from service.units.tokens import UnitStreamParser

Progress = Callable[[str], None]

SENTENCES = (
    "The train to the mountains leaves at seven o'clock from the central station.",
    "Every morning she opens the window and makes a cup of tea.",
    "The children are playing in the park near the river.",
    "A good conversation can change the way we think about the world.",
    "In the evening the light will turn orange and red.",
    "Numbers, distance and weight can all be measured.",
    "Yesterday the weather was cold and windy, but today the sun is shining.",
    "What would you like to do next?",
)
_TOKEN = re.compile(r"\[(?:Hu|Pi|St)\d+\]")


@dataclass(frozen=True)
class BenchConfig:
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    requests: int = 8  # per concurrency level; at least the concurrency
    baseline_requests: int = 3
    speech_tokens: int = 150
    text_tokens: int = 50
    # The reference examples' sampling settings (docs/format.md#generation-settings).
    temperature: float = 0.9
    top_p: float = 0.95
    speaker: int = 2
    workloads: tuple[str, ...] = ("text-to-speech", "speech-to-text")

    def requests_at(self, concurrency: int) -> int:
        return max(self.requests, concurrency)


@dataclass(frozen=True)
class Workload:
    name: str
    modality: OutputModality
    max_tokens: int
    prompts: tuple[str, ...]

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]


@dataclass
class WorkloadResult:
    workload: Workload
    baseline: Summary
    ours: dict[int, Summary] = field(default_factory=dict)


@dataclass
class BenchResult:
    model: str
    config: BenchConfig
    lm_url: str | None
    workloads: list[WorkloadResult]
    load: tuple[float | None, float | None] = (None, None)  # at the start and at the end


# ---------------------------------------------------------------------------------------------
# workloads


def rotated(tokens: str, shift: int) -> str:
    """The token string rotated by `shift` tokens: same length, a different prompt."""
    items = _TOKEN.findall(tokens)
    if not items:
        return tokens
    shift %= len(items)
    return "".join(items[shift:] + items[:shift])


def build_workloads(config: BenchConfig, speech_tokens: str, count: int) -> list[Workload]:
    """The configured workloads with `count` distinct prompts each."""
    workloads = []
    for name in config.workloads:
        if name == "text-to-speech":
            prompts = tuple(
                build_prompt([TextInput(f"{SENTENCES[i % len(SENTENCES)]} ({i})")], "speech")
                for i in range(count)
            )
            workloads.append(Workload(name, OutputModality.SPEECH, config.speech_tokens, prompts))
        elif name == "speech-to-text":
            prompts = tuple(
                build_prompt([SpeechInput(rotated(speech_tokens, 3 * i))], "text")
                for i in range(count)
            )
            workloads.append(Workload(name, OutputModality.TEXT, config.text_tokens, prompts))
        else:
            raise ValueError(f"unknown workload {name!r}; expected text-to-speech, speech-to-text")
    return workloads


def sampling(config: BenchConfig, workload: Workload, seed: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=workload.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# baseline: transformers generate, one request at a time, vocoding at the end


class Baseline:
    """The reference's generate-then-decode path on one transformers model."""

    def __init__(self, tokenizer: SpiritTokenizer, stack: SpeechStack, device: str) -> None:
        import torch
        from transformers import LlamaForCausalLM

        self.tokenizer = tokenizer
        self.stack = stack
        self.device = device
        self.model = LlamaForCausalLM.from_pretrained(
            tokenizer.lm_dir, torch_dtype=torch.float32
        ).to(device)
        self.model.eval()

    def request(
        self, config: BenchConfig, workload: Workload, index: int, seed: int
    ) -> RequestTiming:
        started = time.perf_counter()
        prompt = workload.prompt(index)
        prompt_ids = self.tokenizer.encode(prompt)
        output_ids = self._generate(prompt_ids, config, workload, seed)
        full = self.tokenizer.decode_ids(prompt_ids + output_ids)
        generated = full[len(self.tokenizer.decode_ids(prompt_ids)) :]
        samples = self._vocode(prompt, generated, config, workload)
        latency = time.perf_counter() - started
        return RequestTiming(
            latency=latency,
            first_output=latency,  # nothing is returned before the whole response is ready
            tokens=len(output_ids),
            audio_seconds=samples / self.stack.sample_rate,
        )

    def _generate(
        self, prompt_ids: list[int], config: BenchConfig, workload: Workload, seed: int
    ) -> list[int]:
        import torch
        from transformers import set_seed

        # The banned ids plus the padding rows: the reference would sample a padding row now and
        # then and crash decoding it; ours never samples them either (see `prepare_prompt`).
        banned = self.tokenizer.banned_ids(workload.modality, self.stack.expressive)
        banned |= set(range(self.tokenizer.num_tokens, self.tokenizer.vocab_size))
        sampled = config.temperature > 0
        options = {"temperature": config.temperature, "top_p": config.top_p} if sampled else {}
        if sampled:
            set_seed(seed)
        ids = torch.tensor([prompt_ids], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=workload.max_tokens,
                bad_words_ids=[[i] for i in sorted(banned)] or None,
                do_sample=sampled,
                **options,
            )
        return out[0, len(prompt_ids) :].tolist()

    def _vocode(self, prompt: str, generated: str, config: BenchConfig, workload: Workload) -> int:
        """Samples of every kept speech segment, each vocoded in one piece.

        See docs/format.md#parsing-generated-output.
        """
        samples = 0
        segments = parse_output(
            prompt, generated, workload.modality, expressive=self.stack.expressive
        )
        for segment in segments:
            if isinstance(segment, SpeechSegment):
                wav = self.stack.decode(segment.tokens, speaker=config.speaker)
                samples += len(segment.trim.apply(wav) if segment.trim else wav)
        return samples

    def run(self, config: BenchConfig, workload: Workload, progress: Progress) -> Summary:
        self.request(config, workload, 0, seed=0)  # warm-up, not timed
        timings = []
        started = time.perf_counter()
        for index in range(config.baseline_requests):
            timing = self.request(config, workload, index, seed=1000 + index)
            timings.append(timing)
            progress(
                f"  baseline {workload.name} {index + 1}/{config.baseline_requests}: "
                f"{timing.latency:.2f} s, {timing.tokens} tokens"
            )
        return summarize(timings, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# ours: concurrent streaming requests on vLLM, streaming vocoder


class AudioSink:
    """Streaming vocoding of one speech segment; counts the samples it produced."""

    def __init__(self, stack: SpeechStack, speaker: int) -> None:
        self.parser = UnitStreamParser(expressive=stack.expressive)
        self.vocoder = stack.streaming_vocoder(speaker=speaker)
        self.has_pitch = self.vocoder.vocoder.has_pitch
        self.has_style = self.vocoder.vocoder.has_style_codes
        self.samples = 0

    def push(self, text: str) -> int:
        """Feed token text; return the samples that became final now."""
        return self._vocode(self.parser.feed(text))

    def finish(self) -> int:
        produced = self._vocode(self.parser.finish())
        try:
            chunks = self.vocoder.finish()
        except ValueError:
            return produced  # a segment the vocoder cannot render (e.g. no pitch) gives no audio
        return produced + self._count(chunks)

    def _vocode(self, entries: list[Any]) -> int:
        if not entries or (self.has_pitch and any(e.pitch is None for e in entries)):
            return 0
        chunks = self.vocoder.push(
            [e.hubert for e in entries],
            [e.pitch for e in entries] if self.has_pitch else None,
            [e.style for e in entries] if self.has_style else None,
        )
        return self._count(chunks)

    def _count(self, chunks: list[np.ndarray]) -> int:
        produced = sum(len(chunk) for chunk in chunks)
        self.samples += produced
        return produced


class Ours:
    """Streaming requests on the vLLM server, vocoded as they arrive."""

    def __init__(self, generator: Generator, stack: SpeechStack) -> None:
        self.generator = generator
        self.stack = stack
        # One vocoder thread, like one speech worker; torch releases the GIL while it runs.
        self.vocoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocoder")
        # Kernels built before the first request, as a speech worker does before serving.
        stack.vocoder.warm_up_streams(stack.streaming_vocoder().max_chunk_units)

    def close(self) -> None:
        self.vocoding.shutdown(wait=True)

    async def _in_thread(self, function: Callable[..., int], *args: Any) -> int:
        return await asyncio.get_running_loop().run_in_executor(self.vocoding, function, *args)

    async def request(
        self, config: BenchConfig, workload: Workload, index: int, seed: int
    ) -> RequestTiming:
        started = time.perf_counter()
        first: float | None = None
        prepared = self.generator.prepare(workload.prompt(index), workload.modality)
        result = GenerationResult()
        sink: AudioSink | None = None
        samples = 0
        stream = self.generator.stream(prepared, sampling(config, workload, seed), result)
        async for event in stream:
            produced = 0  # samples (speech) or characters (text) of output this event released
            if isinstance(event, ModalitySwitch):
                if sink is not None:
                    produced = await self._in_thread(sink.finish)
                    samples += sink.samples
                sink = AudioSink(self.stack, config.speaker) if event.to == "speech" else None
            elif isinstance(event, SpeechTokens) and sink is not None:
                produced = await self._in_thread(sink.push, "".join(event.tokens))
            elif isinstance(event, TextDelta):
                produced = len(event.text)
            if produced and first is None:
                first = time.perf_counter() - started
        if sink is not None:
            produced = await self._in_thread(sink.finish)
            samples += sink.samples
            if produced and first is None:
                first = time.perf_counter() - started
        return RequestTiming(
            latency=time.perf_counter() - started,
            first_output=first,
            tokens=len(result.output_ids),
            audio_seconds=samples / self.stack.sample_rate,
        )

    async def level(self, config: BenchConfig, workload: Workload, concurrency: int) -> Summary:
        """`requests_at(concurrency)` requests with at most `concurrency` in flight."""
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> RequestTiming:
            async with gate:
                return await self.request(config, workload, index, seed=2000 + index)

        started = time.perf_counter()
        timings = await asyncio.gather(*(one(i) for i in range(config.requests_at(concurrency))))
        return summarize(list(timings), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# the whole run


def _speech_prompt_tokens(stack: SpeechStack, audio: Path) -> str:
    from service.audio.decode import load_audio_file

    return stack.encode_string(load_audio_file(audio))


def run_baseline(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    workloads: list[Workload],
    *,
    device: str,
    progress: Progress,
) -> dict[str, Summary]:
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(variant))
    stack = SpeechStack(layout, variant, device=device)
    baseline = Baseline(tokenizer, stack, device)
    try:
        results = {}
        for workload in workloads:
            progress(f"baseline (transformers, one request at a time): {workload.name}")
            results[workload.name] = baseline.run(config, workload, progress)
        return results
    finally:
        del baseline
        gc.collect()


async def run_ours(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    workloads: list[Workload],
    lm_url: str,
    *,
    device: str,
    progress: Progress,
) -> dict[str, dict[int, Summary]]:
    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(variant))
    stack = SpeechStack(layout, variant, device=device)
    client = LMClient(lm_url, variant)
    ours = Ours(Generator(tokenizer, client, expressive=variant == EXPRESSIVE), stack)
    results: dict[str, dict[int, Summary]] = {}
    try:
        for workload in workloads:
            await ours.request(config, workload, 0, seed=0)  # warm-up, not timed
            results[workload.name] = {}
            for concurrency in config.concurrency:
                summary = await ours.level(config, workload, concurrency)
                results[workload.name][concurrency] = summary
                progress(
                    f"ours {workload.name} concurrency {concurrency}: {summary.requests} "
                    f"requests in {summary.wall:.1f} s, {summary.requests_per_s:.2f} req/s, "
                    f"{summary.tokens_per_s:.0f} tok/s"
                )
    finally:
        ours.close()
        await client.aclose()
    return results


def run_lm_benchmark(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    *,
    audio: Path,
    lm_url: str | None = None,
    device: str = "cpu",
    progress: Progress = print,
) -> BenchResult:
    """Baseline first (with no vLLM server running when we start it), then ours."""
    from service.lm.worker import is_cpu_vllm, start_lm_worker

    load_at_start = load_average()
    stack = SpeechStack(layout, variant, device=device)
    stack.load()
    progress(f"encoding the speech prompt {audio}")
    speech = _speech_prompt_tokens(stack, audio)
    count = max(config.baseline_requests, *(config.requests_at(c) for c in config.concurrency))
    workloads = build_workloads(config, speech, count)
    baseline = run_baseline(layout, variant, config, workloads, device=device, progress=progress)

    worker = None
    url = lm_url
    # Ours runs as `spiritlm-serve up` places it: vLLM's threads and the vocoder on their own
    # cores (service/cpus.py). The baseline ran alone, on every core.
    split = plan_for(os.environ, is_cpu_vllm()) if url is None else None
    if url is None:
        port = free_port()
        progress(f"LM worker log: {lm_worker_log_path(port)}")
        worker = start_lm_worker(
            layout.lm_dir(variant),
            variant,
            port=port,
            env=split.lm_env() if split else None,
            log_path=lm_worker_log_path(port),
            progress=progress,
            cores=split.lm if split else None,
        )
        url = f"http://127.0.0.1:{port}"
    try:
        with pinned(split.speech if split else None):
            ours = asyncio.run(
                run_ours(layout, variant, config, workloads, url, device=device, progress=progress)
            )
    finally:
        if worker is not None:
            worker.stop()
    results = [WorkloadResult(w, baseline[w.name], ours[w.name]) for w in workloads]
    return BenchResult(variant, config, lm_url, results, (load_at_start, load_average()))
