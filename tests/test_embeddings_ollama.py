"""The Ollama embedding client against a real HTTP server started in the test.

The server plays Ollama: it records every request it gets and answers what
each test tells it to, so that the tests check the exact request shapes and
every failure path (404 fallback, 5xx retries, timeouts, garbage, refused).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from orchestrator.embedded.procs import free_port
from orchestrator.embeddings import (
    DimensionUnknown,
    EmbeddingProvider,
    EmbeddingUnavailable,
    OllamaEmbeddings,
)

Handler = Callable[[dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class FakeOllama:
    """A real aiohttp server on 127.0.0.1; ``routes`` maps a path to a handler."""

    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        handler = self.routes.get(request.path)
        if handler is None:
            # What Go's mux answers on an unknown path (old Ollama on /api/embed).
            return web.Response(status=404, text="404 page not found")
        return await handler(body)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    server = FakeOllama()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., OllamaEmbeddings]]:
    made: list[OllamaEmbeddings] = []

    def make(url: str, model: str = "test-embed", **kwargs: Any) -> OllamaEmbeddings:
        kwargs.setdefault("backoff", 0.01)
        client = OllamaEmbeddings(url, model, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def _json(data: Any, status: int = 200) -> web.Response:
    # allow_nan: Ollama is Go and would never send NaN, but a broken proxy might.
    return web.Response(
        status=status, text=json.dumps(data, allow_nan=True), content_type="application/json"
    )


def _vector_for(text: str) -> list[float]:
    """A distinct, not normalised 3-d vector per text (length encodes it)."""
    return [float(len(text)), 1.0, 2.0]


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


async def _embed_ok(body: dict[str, Any]) -> web.Response:
    return _json({"model": body["model"], "embeddings": [_vector_for(t) for t in body["input"]]})


async def _legacy_ok(body: dict[str, Any]) -> web.Response:
    return _json({"embedding": _vector_for(body["prompt"])})


def _same(got: list[list[float]], want: list[list[float]]) -> bool:
    return len(got) == len(want) and all(
        g == pytest.approx(w, abs=1e-12) for g, w in zip(got, want, strict=True)
    )


# --- the happy path ---------------------------------------------------------------
async def test_embed_request_shape_and_unit_vectors(ollama: FakeOllama, client_for: Any) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url)
    assert client.name == "ollama:test-embed"

    vectors = await client.embed(["hello", "hi"])

    assert ollama.requests == [("/api/embed", {"model": "test-embed", "input": ["hello", "hi"]})]
    assert _same(vectors, [_unit(_vector_for("hello")), _unit(_vector_for("hi"))])
    for v in vectors:
        assert math.fsum(x * x for x in v) == pytest.approx(1.0)
    assert client.dimension == 3  # learned from the first answer
    assert isinstance(client, EmbeddingProvider)
    assert not client.legacy_endpoint


async def test_base_url_trailing_slash_and_empty_list(ollama: FakeOllama, client_for: Any) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url + "/")
    assert await client.embed([]) == []
    assert ollama.requests == []  # nothing to embed, nothing sent
    await client.embed(["x"])
    assert ollama.paths() == ["/api/embed"]


async def test_known_model_dimension_before_any_answer(client_for: Any) -> None:
    assert client_for("http://127.0.0.1:1", "nomic-embed-text").dimension == 768
    assert client_for("http://127.0.0.1:1", "nomic-embed-text:latest").dimension == 768
    assert client_for("http://127.0.0.1:1", "mxbai-embed-large").dimension == 1024
    assert client_for("http://127.0.0.1:1", "test-embed", dimension=5).dimension == 5
    with pytest.raises(DimensionUnknown, match="not known until its first answer"):
        _ = client_for("http://127.0.0.1:1", "test-embed").dimension
    assert issubclass(DimensionUnknown, EmbeddingUnavailable)


async def test_probe_learns_the_dimension(ollama: FakeOllama, client_for: Any) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url)
    assert await client.probe() == 3
    assert ollama.requests == [
        ("/api/embed", {"model": "test-embed", "input": ["dimension probe"]})
    ]


async def test_large_lists_are_sent_in_batches_in_order(
    ollama: FakeOllama, client_for: Any
) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url, batch_size=2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = await client.embed(texts)
    assert [body["input"] for _, body in ollama.requests] == [
        ["a", "bb"],
        ["ccc", "dddd"],
        ["eeeee"],
    ]
    assert _same(vectors, [_unit(_vector_for(t)) for t in texts])


async def test_text_over_the_limit_is_refused_not_truncated(
    ollama: FakeOllama, client_for: Any
) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url)
    assert client.max_input_chars == 8000
    await client.embed(["x" * 8000])
    with pytest.raises(ValueError, match=r"8001 characters.*chunk it"):
        await client.embed(["ok", "x" * 8001])
    assert len(ollama.requests) == 1  # the refused call sent nothing
    with pytest.raises(TypeError):
        await client.embed("a string, not a list")  # type: ignore[arg-type]


# --- the fallback for servers older than /api/embed ---------------------------------------
async def test_404_falls_back_to_api_embeddings_and_remembers(
    ollama: FakeOllama, client_for: Any
) -> None:
    ollama.routes["/api/embeddings"] = _legacy_ok  # no /api/embed: plain 404 from the mux
    client = client_for(ollama.url)

    vectors = await client.embed(["one", "three"])

    assert ollama.requests == [
        ("/api/embed", {"model": "test-embed", "input": ["one", "three"]}),
        ("/api/embeddings", {"model": "test-embed", "prompt": "one"}),
        ("/api/embeddings", {"model": "test-embed", "prompt": "three"}),
    ]
    assert _same(vectors, [_unit(_vector_for("one")), _unit(_vector_for("three"))])
    assert client.legacy_endpoint

    ollama.requests.clear()
    await client.embed(["again"])
    assert ollama.requests == [("/api/embeddings", {"model": "test-embed", "prompt": "again"})]


async def test_model_not_found_is_not_taken_for_an_old_server(
    ollama: FakeOllama, client_for: Any
) -> None:
    async def missing(body: dict[str, Any]) -> web.Response:
        return _json({"error": f'model "{body["model"]}" not found, try pulling it first'}, 404)

    ollama.routes["/api/embed"] = missing
    ollama.routes["/api/embeddings"] = _legacy_ok
    client = client_for(ollama.url)
    with pytest.raises(EmbeddingUnavailable, match=r"no model 'test-embed' \(run: ollama pull"):
        await client.embed(["x"])
    assert ollama.paths() == ["/api/embed"]
    assert not client.legacy_endpoint


async def test_neither_endpoint(ollama: FakeOllama, client_for: Any) -> None:
    client = client_for(ollama.url)
    with pytest.raises(EmbeddingUnavailable, match="neither /api/embed nor /api/embeddings"):
        await client.embed(["x"])
    assert ollama.paths() == ["/api/embed", "/api/embeddings"]


# --- retries, timeouts, outages -------------------------------------------------------------
async def test_500_is_retried_then_succeeds(ollama: FakeOllama, client_for: Any) -> None:
    answers = iter([500, 503])

    async def flaky(body: dict[str, Any]) -> web.Response:
        status = next(answers, 200)
        if status != 200:
            return _json({"error": "model is loading"}, status)
        return await _embed_ok(body)

    ollama.routes["/api/embed"] = flaky
    client = client_for(ollama.url, retries=2)
    vectors = await client.embed(["abc"])
    assert _same(vectors, [_unit(_vector_for("abc"))])
    assert ollama.paths() == ["/api/embed"] * 3
    # Every attempt is the same request.
    assert all(body == {"model": "test-embed", "input": ["abc"]} for _, body in ollama.requests)


async def test_500_retries_are_bounded(ollama: FakeOllama, client_for: Any) -> None:
    async def broken(body: dict[str, Any]) -> web.Response:
        return _json({"error": "CUDA out of memory\nsecond line"}, 500)

    ollama.routes["/api/embed"] = broken
    client = client_for(ollama.url, retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(EmbeddingUnavailable) as info:
        await client.embed(["x"])
    assert ollama.paths() == ["/api/embed"] * 3
    assert info.value.reason == (
        "ollama answered HTTP 500 on /api/embed: CUDA out of memory second line (after 3 attempts)"
    )
    assert "\n" not in info.value.reason
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff 0.05 then 0.1


async def test_4xx_is_not_retried(ollama: FakeOllama, client_for: Any) -> None:
    async def bad_request(body: dict[str, Any]) -> web.Response:
        return _json({"error": "invalid input type"}, 400)

    ollama.routes["/api/embed"] = bad_request
    client = client_for(ollama.url, retries=3)
    with pytest.raises(EmbeddingUnavailable, match="HTTP 400 on /api/embed: invalid input type"):
        await client.embed(["x"])
    assert ollama.paths() == ["/api/embed"]


async def test_slow_server_times_out(ollama: FakeOllama, client_for: Any) -> None:
    release = asyncio.Event()

    async def slow(body: dict[str, Any]) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return await _embed_ok(body)

    ollama.routes["/api/embed"] = slow
    client = client_for(ollama.url, timeout=0.3, retries=2)
    started = time.monotonic()
    try:
        with pytest.raises(EmbeddingUnavailable, match=r"did not answer /api/embed within 0\.3s"):
            await client.embed(["x"])
        assert time.monotonic() - started < 2.0
        assert ollama.paths() == ["/api/embed"]  # a timeout is not retried
    finally:
        release.set()


async def test_connection_refused(client_for: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = client_for(url, retries=1)
    with pytest.raises(EmbeddingUnavailable) as info:
        await client.embed(["x"])
    assert info.value.reason.startswith(f"cannot reach ollama at {url}: ")
    assert info.value.reason.endswith("(after 2 attempts)")


async def test_recovers_when_the_server_comes_back(client_for: Any) -> None:
    server = FakeOllama(routes={"/api/embed": _embed_ok})
    port = free_port()
    client = client_for(f"http://127.0.0.1:{port}", retries=0)
    with pytest.raises(EmbeddingUnavailable, match="cannot reach"):
        await client.embed(["x"])
    await server.start(port)
    try:
        assert _same(await client.embed(["x"]), [_unit(_vector_for("x"))])
    finally:
        await server.stop()


async def test_close_then_embed_again(ollama: FakeOllama, client_for: Any) -> None:
    ollama.routes["/api/embed"] = _embed_ok
    client = client_for(ollama.url)
    await client.embed(["x"])
    await client.close()
    await client.close()  # idempotent
    await client.embed(["y"])
    assert ollama.paths() == ["/api/embed", "/api/embed"]


# --- garbage answers --------------------------------------------------------------------------
def _raw(text: str) -> Handler:
    async def handler(body: dict[str, Any]) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    return handler


def _answer(embeddings: Any) -> Handler:
    async def handler(body: dict[str, Any]) -> web.Response:
        return _json({"embeddings": embeddings})

    return handler


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_raw("<html>bad gateway</html>"), "answer is not JSON: '<html>bad gateway</html>'"),
        (_raw('{"embeddings": [[1, 2'), "answer is not JSON"),
        (_raw('["a list"]'), "has no 'embeddings' list"),
        (_raw('{"embedding": [1, 2]}'), "has no 'embeddings' list"),
        (_answer("nope"), "has no 'embeddings' list"),
        (_answer([[1.0, 2.0]]), "returned 1 vectors for 2 texts"),
        (_answer([[1.0], [2.0], [3.0]]), "returned 3 vectors for 2 texts"),
        (_answer([[1.0, "x"], [1.0, 2.0]]), "vector 0: non-numeric value 'x'"),
        (_answer([[1.0, 2.0], [True, 2.0]]), "vector 1: non-numeric value True"),
        (_answer([[1.0, None], [1.0, 2.0]]), "non-numeric value None"),
        (_answer([[1.0, float("nan")], [1.0, 2.0]]), "vector 0: non-finite value nan"),
        (_answer([[1.0, 2.0], [float("inf"), 2.0]]), "vector 1: non-finite value inf"),
        (_answer([[], []]), "vector 0: empty vector"),
        (_answer([[1.0, 2.0], [0.0, 0.0]]), "vector 1: all-zero vector"),
        (_answer([[1.0, 2.0], 7]), "vector 1: vector is int, not a list"),
        (_answer([[1.0, 2.0], [1.0, 2.0, 3.0]]), r"different sizes in one answer: \[2, 3\]"),
    ],
)
async def test_garbage_answers_are_unavailable(
    ollama: FakeOllama, client_for: Any, handler: Handler, reason: str
) -> None:
    ollama.routes["/api/embed"] = handler
    client = client_for(ollama.url, retries=2)
    with pytest.raises(EmbeddingUnavailable, match=reason) as info:
        await client.embed(["a", "b"])
    assert "\n" not in info.value.reason
    assert ollama.paths() == ["/api/embed"]  # garbage is not retried
    with pytest.raises(DimensionUnknown):
        _ = client.dimension  # nothing learned from garbage


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"embedding": []}, "empty vector"),
        ({"embedding": [0, 0, 0]}, "all-zero vector"),
        ({"embedding": [1, "NaN"]}, "non-numeric"),
        ({"error": "nothing"}, "has no 'embedding': nothing"),
    ],
)
async def test_garbage_from_the_legacy_endpoint(
    ollama: FakeOllama, client_for: Any, answer: dict[str, Any], reason: str
) -> None:
    async def legacy(body: dict[str, Any]) -> web.Response:
        return _json(answer)

    ollama.routes["/api/embeddings"] = legacy
    client = client_for(ollama.url)
    with pytest.raises(EmbeddingUnavailable, match=reason):
        await client.embed(["a"])


async def test_dimension_change_between_answers(ollama: FakeOllama, client_for: Any) -> None:
    sizes = iter([3, 3, 4])

    async def shifting(body: dict[str, Any]) -> web.Response:
        size = next(sizes)
        return _json({"embeddings": [[1.0] * size for _ in body["input"]]})

    ollama.routes["/api/embed"] = shifting
    client = client_for(ollama.url)
    await client.embed(["a"])
    await client.embed(["b"])
    with pytest.raises(EmbeddingUnavailable, match=r"returned 4-dimensional vectors .* expected 3"):
        await client.embed(["c"])
    assert client.dimension == 3


async def test_known_dimension_mismatch_is_refused(ollama: FakeOllama, client_for: Any) -> None:
    ollama.routes["/api/embed"] = _embed_ok  # 3-d, but nomic-embed-text is 768-d
    client = client_for(ollama.url, "nomic-embed-text")
    with pytest.raises(
        EmbeddingUnavailable, match=r"3-dimensional .* nomic-embed-text, expected 768"
    ):
        await client.embed(["a"])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        OllamaEmbeddings("127.0.0.1:11434")
    with pytest.raises(ValueError, match="timeout"):
        OllamaEmbeddings("http://x", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        OllamaEmbeddings("http://x", retries=-1)
    with pytest.raises(ValueError, match="model"):
        OllamaEmbeddings("http://x", "")
