"""Transcripts of speech by the LM itself: Spirit LM's speech -> text (``[Speech]<units>[Text]``).

Spirit LM has no separate recogniser; its reference examples do speech recognition by prompting
with the speech tokens followed by ``[Text]`` in TEXT mode. Used for the transcript of generated
speech (``response.output_audio_transcript.*``) and, when the session asks for it, of the user's
turns. Greedy, stopped at the first newline (a text turn ends there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from service.gateway.engine import Engine, TextOut
from service.lm.client import SamplingParams
from service.lm.prompt import OutputModality, SpeechInput, build_prompt

MIN_TOKENS = 16


def transcript_budget(tokens: str, limit: int) -> int:
    # About one text token per two de-duplicated HuBERT tokens covers normal speaking rates.
    return min(limit, MIN_TOKENS + tokens.count("[Hu") // 2)


async def transcribe(
    engine: Engine, model: str, tokens: str, *, affinity: str | None = None
) -> AsyncIterator[str]:
    """Text deltas of the transcript of a speech token string."""
    if "[Hu" not in tokens:
        return
    prompt = build_prompt([SpeechInput(tokens)], OutputModality.TEXT)
    prepared = engine.prepare(prompt, OutputModality.TEXT, model)
    params = SamplingParams(
        max_tokens=transcript_budget(tokens, engine.max_tokens_limit), temperature=0.0
    )
    outputs = engine.run(prepared, params, model, synthesize=False, affinity=affinity)
    async with aclosing(outputs) as stream:
        async for item in stream:
            if not isinstance(item, TextOut):
                continue
            head, newline, _ = item.text.partition("\n")
            if head:
                yield head
            if newline:
                return


async def transcript(engine: Engine, model: str, tokens: str, *, affinity: str | None) -> str:
    return "".join([delta async for delta in transcribe(engine, model, tokens, affinity=affinity)])
