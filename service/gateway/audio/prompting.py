"""Few-shot ASR/TTS prompts for the audio endpoints, and where their generations stop.

Both tasks use the shot format of `service.lm.prompt` (docs/fewshot.md): every shot ends with a
newline, so the answer to the query is complete at the first newline (or end of sequence). The
LM worker has no tokenizer, so stopping is done with token ids: the ids whose piece contains a
newline, plus EOS, are vLLM stop tokens. SPEECH output bans every text id (§3), newline
included; TTS allows these few ids back so that the model can end the utterance the way the
shots do instead of always running to `max_tokens`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

from service.checkpoints.layout import EXPRESSIVE
from service.gateway.engine import Engine
from service.gateway.errors import APIError
from service.gateway.fewshot import Shot
from service.lm.generation import PreparedPrompt
from service.lm.prompt import SPEECH_PREFIX, TEXT_PREFIX, OutputModality, asr_prompt, tts_prompt
from service.lm.tokenizer import SpiritTokenizer
from service.units.tokens import SPEECH_TOKEN

NEWLINE_BYTE = "<0x0A>"
# Generation budgets. ASR: read speech carries at most ~4 text tokens per second; TTS: ~15
# characters per second of speech, ~18 deduplicated HuBERT tokens per second (base), ~28 with
# the expressive pitch and style tokens. Each budget leaves about twice that room.
ASR_TOKENS_PER_SECOND = 12
TTS_TOKENS_PER_CHAR = {"base": 2.5, "expressive": 4.0}
BUDGET_MINIMUM = 16


@lru_cache(maxsize=8)
def line_end_ids(tokenizer: SpiritTokenizer) -> tuple[int, ...]:
    """Ids that end an answer: pieces containing a newline, and EOS."""
    ids = [
        token_id
        for token_id in tokenizer.text_ids
        if token_id < tokenizer.num_tokens
        and (
            tokenizer.token_string(token_id) == NEWLINE_BYTE
            or "\n" in tokenizer.token_string(token_id)
        )
    ]
    return tuple(sorted({*ids, tokenizer.eos_id}))


def prepare_until_line_end(
    engine: Engine, prompt: str, modality: OutputModality, model: str
) -> PreparedPrompt:
    """The prompt prepared for `modality`, with the line-end ids allowed."""
    prepared = engine.prepare(prompt, modality, model)
    ends = line_end_ids(engine.tokenizer(model))
    allowed = prepared.allowed_token_ids
    if allowed is not None:
        allowed = sorted({*allowed, *ends})
    return dataclasses.replace(prepared, allowed_token_ids=allowed)


def check_text(text: str, param: str, limit: int) -> str:
    """User text for a prompt: bounded, one line, free of Spirit LM control tokens."""
    if len(text) > limit:
        raise APIError(
            400,
            f"{param}: {len(text)} characters exceed the limit of {limit}",
            param=param,
            code="string_above_max_length",
        )
    for marker in (TEXT_PREFIX, SPEECH_PREFIX):
        if marker in text:
            raise APIError(400, f"{param} contains the control token {marker}", param=param)
    match = SPEECH_TOKEN.search(text)
    if match:
        raise APIError(400, f"{param} contains the speech token {match.group(0)}", param=param)
    # A newline ends a shot in the prompt format; inside the text it would end the query.
    return " ".join(text.split())


def transcription_prompt(shots: list[Shot], query_tokens: str, context: str | None) -> str:
    """Optional `[Text]<context>` line, the ASR shots, then the query speech and `[Text]`."""
    lead = f"{TEXT_PREFIX}{context}\n" if context else ""
    return lead + asr_prompt([(shot.tokens, shot.text) for shot in shots], query_tokens)


def speech_prompt(shots: list[Shot], text: str, style: int | None) -> str:
    """The TTS shots, the query text, `[Speech]`, and the forced style token if any."""
    prompt = tts_prompt([(shot.text, shot.tokens) for shot in shots], text)
    return prompt + (f"[St{style}]" if style is not None else "")


def transcription_budget(seconds: float) -> int:
    return BUDGET_MINIMUM + math.ceil(seconds * ASR_TOKENS_PER_SECOND)


def speech_budget(text: str, model: str) -> int:
    rate = TTS_TOKENS_PER_CHAR["expressive" if model == EXPRESSIVE else "base"]
    return BUDGET_MINIMUM + math.ceil(len(text) * rate)


def max_tokens_for(engine: Engine, requested: int | None, default: int) -> int:
    """A requested max_tokens must be within the limit; the default budget is capped to it."""
    if requested is not None:
        return engine.check_max_tokens(requested)
    return min(default, engine.max_tokens_limit)


def served_model(engine: Engine, name: str | None) -> str:
    """The model a request names, which an LM worker must serve (404 otherwise)."""
    model = engine.resolve_model(name)
    served = engine.served_models()
    if model not in served:
        raise APIError(
            404,
            f"model '{model}' is not served by this gateway; served: {', '.join(served)}",
            param="model",
            code="model_not_found",
        )
    return model
