"""Checks shared by the providers: input length and the vectors they return."""

from __future__ import annotations

import math
from collections.abc import Sequence

from orchestrator.embeddings.base import EmbeddingUnavailable


def text_list(texts: Sequence[str], max_input_chars: int, provider: str) -> list[str]:
    """The texts as a list, after refusing those the provider would not embed whole.

    Chunking is the caller's job: a text over ``max_input_chars`` is a bug in
    the caller (``ValueError``), never truncated silently and never a reason to
    mark the row pending (it would fail the same way on every retry).
    """
    if isinstance(texts, str | bytes):
        raise TypeError("embed() takes a list of texts, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        if len(text) > max_input_chars:
            raise ValueError(
                f"text {i} has {len(text)} characters, over {provider}'s max_input_chars "
                f"({max_input_chars}): chunk it before embedding"
            )
    return texts


def clean_vector(raw: object, where: str) -> list[float]:
    """A unit-length copy of one vector from a provider's answer.

    Anything that is not a non-empty list of finite, not-all-zero numbers is
    a garbage answer: ``EmbeddingUnavailable`` with a one-line reason.
    """
    if not isinstance(raw, list):
        raise EmbeddingUnavailable(f"{where}: vector is {type(raw).__name__}, not a list")
    if not raw:
        raise EmbeddingUnavailable(f"{where}: empty vector")
    values: list[float] = []
    for x in raw:
        # bool is an int subclass; JSON true/false is never a coordinate.
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise EmbeddingUnavailable(f"{where}: non-numeric value {x!r:.40} in vector")
        f = float(x)
        if not math.isfinite(f):
            raise EmbeddingUnavailable(f"{where}: non-finite value {f} in vector")
        values.append(f)
    scale = max(abs(v) for v in values)
    if scale == 0.0:
        raise EmbeddingUnavailable(f"{where}: all-zero vector")
    # Scaled first so that huge coordinates cannot overflow the sum of squares.
    scaled = [v / scale for v in values]
    norm = math.sqrt(math.fsum(v * v for v in scaled))
    return [v / norm for v in scaled]
