"""POST /v1/audio/classifications: few-shot speech classification by label likelihood.

The paper evaluates speech classification with few-shot prompts; the reference release has no
code for it. The prompt has the ASR shape (`service.lm.prompt.classification_prompt`):
``[Speech]<shot units>[Text]<label>\\n ... [Speech]<query units>[Text]``. Instead of
generating, every candidate label is scored: the LM worker returns the log-probability of the
prompt followed by ``<label>\\n`` token by token, and the label whose tokens (with the line end
that closes the answer, so that a label cannot win by being the prefix of a longer answer) are
most likely wins. One request per label; vLLM runs them as one batch.
"""

from __future__ import annotations

import asyncio
import math

from service.gateway.audio.protocol import ClassificationForm, ClassificationOut, LabelScore
from service.gateway.errors import APIError
from service.gateway.state import GatewayState
from service.gateway.tasks import check_text
from service.gateway.uploads import decode_upload, read_upload
from service.lm.prompt import classification_prompt
from service.lm.tokenizer import SpiritTokenizer

MAX_LABELS = 32
MAX_LABEL_CHARS = 200


async def classify(form: ClassificationForm, state: GatewayState) -> ClassificationOut:
    engine = state.engine
    model = engine.served_model(form.model)
    bank = state.classification
    labels = candidate_labels(form.labels or [e.text for e in bank.exemplars])
    data = await read_upload(form.file)
    audio = await decode_upload(data, state.settings, form.file.filename)
    shots = await bank.shots_for(model, engine.encode)
    encoded = await engine.encode(audio, model)
    prompt = classification_prompt([(shot.tokens, shot.text) for shot in shots], encoded.tokens)
    # One thread for all the encoding: request-sized CPU work stays off the event loop.
    prompt_ids, answers = await asyncio.to_thread(
        prompt_and_answers, engine.tokenizer(model), prompt, labels
    )
    per_token = await asyncio.gather(
        *(engine.prompt_logprobs(prompt_ids + answer, model) for answer in answers)
    )
    logprobs = [
        math.fsum(value for value in values[len(prompt_ids) :] if value is not None)
        for values in per_token
    ]
    return ClassificationOut(
        label=labels[logprobs.index(max(logprobs))],
        scores=ranked(labels, logprobs),
        shots=len(shots),
        usage={"prompt_tokens": len(prompt_ids), "label_tokens": sum(map(len, answers))},
    )


def candidate_labels(given: list[str]) -> list[str]:
    """Distinct, checked labels in their first order; at least one is needed."""
    if not given:
        raise APIError(
            400, "labels: give the candidate labels (no classification bank is configured)",
            param="labels",
        )  # fmt: skip
    labels: list[str] = []
    for index, value in enumerate(given):
        label = check_text(value, f"labels[{index}]", MAX_LABEL_CHARS)
        if not label:
            raise APIError(400, f"labels[{index}] is empty", param="labels")
        if label != value:  # answered as given, so never rewritten
            raise APIError(
                400,
                f"labels[{index}] must be one line without leading, trailing or repeated spaces",
                param="labels",
            )
        if label not in labels:
            labels.append(label)
    if len(labels) > MAX_LABELS:
        raise APIError(
            400, f"labels: {len(labels)} distinct labels exceed the limit of {MAX_LABELS}",
            param="labels",
        )  # fmt: skip
    return labels


def prompt_and_answers(
    tokenizer: SpiritTokenizer, prompt: str, labels: list[str]
) -> tuple[list[int], list[list[int]]]:
    """The prompt's ids, and the ids each label's answer adds after it."""
    prompt_ids = tokenizer.encode(prompt)
    return prompt_ids, [answer_ids(tokenizer, prompt, prompt_ids, label) for label in labels]


def answer_ids(
    tokenizer: SpiritTokenizer, prompt: str, prompt_ids: list[int], label: str
) -> list[int]:
    """The ids that `<label>\\n` adds after the prompt, tokenized in context."""
    ids = tokenizer.encode(prompt + label + "\n")
    if ids[: len(prompt_ids)] != prompt_ids:  # the prompt ends with [Text], a fixed boundary
        raise APIError(400, f"label {label!r} does not tokenize apart from the prompt")
    return ids[len(prompt_ids) :]


def ranked(labels: list[str], logprobs: list[float]) -> list[LabelScore]:
    top = max(logprobs)
    weights = [math.exp(value - top) for value in logprobs]
    total = math.fsum(weights)
    scores = [
        LabelScore(label=label, logprob=value, probability=weight / total)
        for label, value, weight in zip(labels, logprobs, weights, strict=True)
    ]
    return sorted(scores, key=lambda score: -score.logprob)
