"""The tasks the API surfaces share: few-shot ASR and TTS prompts, their budgets, and the end of
a spoken turn.

One ASR prompt serves every transcript: /v1/audio/transcriptions, the transcript of a spoken
chat reply, and realtime's transcripts of the user's and the assistant's speech. It is the shot
format of docs/fewshot.md, ``[Speech]<shot>[Text]<text>\\n ... [Speech]<query>[Text]``, with the
gateway's exemplar bank (zero-shot without one), ended at the first line end. TTS is the mirror
prompt, ``[Text]<shot>[Speech]<units>\\n ... [Text]<input>[Speech]``, ended like every spoken turn
(`spoken_turn_end`). How generations end is decided in service/lm/ending.py; this module only
says which endings a task uses.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing

from service.checkpoints.layout import EXPRESSIVE
from service.gateway.engine import Engine, TextOut
from service.gateway.errors import APIError
from service.gateway.fewshot import ExemplarBank, Shot
from service.gateway.settings import GatewaySettings
from service.lm.client import SamplingParams
from service.lm.ending import ONE_LINE, Ending, EndOfSpeech
from service.lm.generation import PreparedPrompt
from service.lm.prompt import SPEECH_PREFIX, TEXT_PREFIX, OutputModality, asr_prompt, tts_prompt
from service.units.tokens import SPEECH_TOKEN

# Generation budgets. ASR: read speech carries at most ~4 text tokens per second and
# de-duplicated HuBERT runs at ~18 tokens per second, so 2 text tokens per 3 HuBERT tokens leave
# three times that room. TTS: ~15 characters per second of speech, ~18 de-duplicated HuBERT
# tokens per second (base), ~28 with the expressive pitch and style tokens; about twice that.
ASR_TOKENS_PER_HUBERT = 2 / 3
TTS_TOKENS_PER_CHAR = {"base": 2.5, "expressive": 4.0}
BUDGET_MINIMUM = 16


class Tasks:
    """ASR and TTS for one gateway: its engine, its exemplar bank, its end-of-speech settings."""

    def __init__(self, engine: Engine, bank: ExemplarBank, settings: GatewaySettings) -> None:
        self.engine = engine
        self.bank = bank
        self.settings = settings

    async def shots(self, model: str) -> list[Shot]:
        return await self.bank.shots_for(model, self.engine.encode)

    # ---- ASR

    async def asr_prompt(
        self, model: str, query_tokens: str, context: str | None = None
    ) -> PreparedPrompt:
        """Optional ``[Text]<context>`` line, the ASR shots, the query speech, ``[Text]``."""
        shots = await self.shots(model)
        lead = f"{TEXT_PREFIX}{context}\n" if context else ""
        prompt = lead + asr_prompt([(shot.tokens, shot.text) for shot in shots], query_tokens)
        return await self.engine.prepare(prompt, OutputModality.TEXT, model)

    async def transcript(
        self, model: str, tokens: str, *, affinity: str | None = None
    ) -> AsyncIterator[str]:
        """Text deltas of the transcript of a speech token string, greedy (empty without units)."""
        if "[Hu" not in tokens:
            return
        prepared = await self.asr_prompt(model, tokens)
        params = SamplingParams(
            max_tokens=min(asr_budget(tokens), self.engine.max_tokens_limit), temperature=0.0
        )
        outputs = self.engine.run(
            prepared, params, model, synthesize=False, affinity=affinity, ending=ONE_LINE
        )
        async with aclosing(outputs) as stream:
            async for item in stream:
                if isinstance(item, TextOut) and item.text:
                    yield item.text

    # ---- TTS

    async def tts_prompt(self, model: str, text: str, style: int | None) -> PreparedPrompt:
        """The TTS shots, the input text, ``[Speech]``, and the forced style token if any."""
        shots = await self.shots(model)
        prompt = tts_prompt([(shot.text, shot.tokens) for shot in shots], text)
        prompt += f"[St{style}]" if style is not None else ""
        return await self.engine.prepare(prompt, OutputModality.SPEECH, model)

    # ---- spoken turns

    async def spoken_turn_end(self, model: str, stops: tuple[str, ...] = ()) -> Ending:
        """How a spoken reply ends: at the model's turn end (a line end), else at silence after
        speech (when the end-of-speech rule is on), besides `stops` in its text."""
        return Ending(stops=stops, at_line_end=True, end_of_speech=await self.end_of_speech(model))

    async def end_of_speech(self, model: str) -> EndOfSpeech | None:
        silence_tokens = self.settings.end_of_speech_silence_tokens
        if silence_tokens == 0:
            return None
        return EndOfSpeech(
            silence_units=await self.engine.silence_units(model),
            silence_tokens=silence_tokens,
            min_speech_tokens=self.settings.end_of_speech_min_speech_tokens,
        )


def check_prompt_chars(chars: int, param: str, limit: int) -> None:
    """A prompt's text is bounded in characters before it is tokenized (docs/configuration.md,
    max_prompt_chars)."""
    if chars > limit:
        raise APIError(
            400,
            f"{param}: {chars} characters exceed the limit of {limit} (max_prompt_chars)",
            param=param,
            code="string_above_max_length",
        )


def check_text(text: str, param: str, limit: int) -> str:
    """User text for a prompt: bounded, one line, free of Spirit LM control tokens."""
    if len(text) > limit:
        raise APIError(
            400,
            f"{param}: {len(text)} characters exceed the limit of {limit}",
            param=param,
            code="string_above_max_length",
        )
    refuse_control_tokens(text, param)
    # A newline ends a shot in the prompt format; inside the text it would end the query.
    return " ".join(text.split())


def refuse_control_tokens(text: str, param: str, specials: Iterable[str] = ()) -> None:
    """A 400 naming the first Spirit LM marker, `specials` token (a tokenizer's <s>, </s>) or
    speech token in user text: the tokenizer would turn it into that id, not into text."""
    for marker in (TEXT_PREFIX, SPEECH_PREFIX, *sorted(specials)):
        if marker in text:
            raise APIError(400, f"{param} contains the control token {marker}", param=param)
    match = SPEECH_TOKEN.search(text)
    if match:
        raise APIError(400, f"{param} contains the speech token {match.group(0)}", param=param)


def asr_budget(tokens: str) -> int:
    """Text tokens an ASR answer may take for a speech token string."""
    return BUDGET_MINIMUM + math.ceil(tokens.count("[Hu") * ASR_TOKENS_PER_HUBERT)


def tts_budget(text: str, model: str) -> int:
    rate = TTS_TOKENS_PER_CHAR["expressive" if model == EXPRESSIVE else "base"]
    return BUDGET_MINIMUM + math.ceil(len(text) * rate)
