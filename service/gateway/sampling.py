"""Sampling fields and stop strings shared by the generation-style request models."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.gateway.errors import APIError
from service.lm.client import SamplingParams
from service.lm.stops import stops_problem


class SamplingFields(BaseModel):
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # Bounded like every number that reaches vLLM: past 2**64 its serializer overflows.
    top_k: int = Field(default=0, ge=0, le=2**31 - 1, description="0 = no top-k filtering")
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


def parse_stops(stop: str | list[str] | None) -> tuple[str, ...]:
    """Validate a request's `stop` (a string or up to 4 non-empty strings)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    problem = stops_problem(stops)
    if problem is not None:
        raise APIError(400, problem, param="stop")
    return tuple(stops)
