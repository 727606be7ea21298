"""Refusing request fields the gateway does not honour, by name (docs/audio-api.md).

A client migrating from OpenAI must learn at once what we lack, not from a silently different
answer. The OpenAI-shaped request models keep unknown fields (`extra="allow"`, in pydantic's
`model_extra`) so that `refuse_unknown` can name the first one in a 400 like OpenAI's
"Unrecognized request argument"; fields OpenAI defines that we do not honour are declared in the
models and refused by each route's checks with `refuse`, saying why.
"""

from __future__ import annotations

import re
import typing
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from pydantic import BaseModel

from service.gateway.errors import APIError


def refuse(param: str, why: str) -> APIError:
    """The 400 for a field the gateway does not honour."""
    return APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def unknown_fields(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the fields a request gave that its model does not declare, nested models
    (and lists of them, as `messages[2].tool_calls`) included.

    Multipart forms spell arrays and objects as `include[]` or `chunking_strategy[type]`: the
    name before the first bracket is the field. A field given as null is not given (clients
    send back response messages with `tool_calls: null`).
    """
    for name, value in (model.model_extra or {}).items():
        if value is not None:
            yield prefix + name.split("[", 1)[0]
    for name in type(model).model_fields:
        yield from _nested(getattr(model, name), f"{prefix}{name}")


def _nested(value: object, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from unknown_fields(value, path + ".")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield from unknown_fields(item, f"{path}[{index}].")


def refuse_unknown_keys(value: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    """The same 400 for a plain JSON object (chat content parts) with a key not in `allowed`."""
    for key, item in value.items():
        if key not in allowed and item is not None:
            raise _unrecognized(f"{where}.{key}")


def refuse_unknown(model: BaseModel, known: Mapping[str, str] | None = None) -> None:
    """Raise a 400 naming the first field `model` does not declare.

    `known` gives the reason for fields of OpenAI's API that the model leaves out on purpose,
    keyed by their path without list indices (`messages.tool_calls`); any other field is
    "unrecognized".
    """
    for path in unknown_fields(model):
        why = (known or {}).get(re.sub(r"\[\d+\]", "", path))
        if why is not None:
            raise refuse(path, why)
        raise _unrecognized(path)


def _unrecognized(path: str) -> APIError:
    return APIError(
        400, f"Unrecognized request argument supplied: {path}", param=path, code="unknown_parameter"
    )


def refuse_repeated(model_type: type[BaseModel], names: Iterable[str]) -> None:
    """Raise a 400 naming a multipart field sent more than once that `model_type` holds once
    (the parser would silently keep the last copy). List fields (`labels`, `include[]`) repeat
    by design; names the model does not know are left to `refuse_unknown`."""
    single = {
        key
        for name, field in model_type.model_fields.items()
        if typing.get_origin(field.annotation) is not list
        for key in (name, field.alias or name)
    }
    for name, count in Counter(names).items():
        if count > 1 and name in single:
            raise APIError(
                400, f"{name}: given {count} times; send it once", param=name, code="invalid_value"
            )
