"""Text encoder at inference time: all-MiniLM-L6-v2 as an ONNX graph run by ONNX Runtime (no torch).

The graph (made by `index.export.text_encoder`) takes token ids and an attention mask and returns mean-pooled,
L2-normalised 384-d sentence embeddings, exactly what sentence-transformers returns for this model.

Texts longer than MAX_TOKENS word pieces are truncated, as sentence-transformers truncates them: queries silently
(a query that long is rare and its start says what it asks), catalog texts too, but `count_truncated` says how many,
so that the index build can record it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from index.runtime.files import verify_files
from index.runtime.lru import LruCache
from index.runtime.ort_session import CPU, make_session

# Word pieces per text, [CLS] and [SEP] included; the rest is cut off. 256 is sentence-transformers' own limit for
# all-MiniLM-L6-v2 (max_seq_length in the package's sentence_bert_config.json; "input text longer than 256 word
# pieces is truncated", says its model card), so these embeddings are the ones sentence-transformers gives for any
# text. The model was fine-tuned on 128-token pairs, but its position embeddings go to 512, and the words past 128
# still help: MiniLM query-text cosine over the 1,460 CISI abstracts (median 144 word pieces, 875 over 128, 131 over
# 256) gives nDCG@10 0.421 and recall@100 0.471 at 256 against 0.417 and 0.458 at 128 (76 judged queries), for
# about 1.7x the encoding time of such long texts. Texts of at most 128 word pieces embed as before (cosine to the
# 128-limit vector >= 0.999999; the SYNTHETIC titles are at most 24).
MAX_TOKENS = 256
COUNT_BATCH = 4096  # texts tokenised at a time by count_truncated (untruncated encodings of long texts are big)
INT8_FILE = "model.int8.onnx"
INT8_MIN_COSINE = 0.99  # mean cosine to fp32 an int8 variant must have recorded to be used
# How long the idle session's pool threads spin for more work before they sleep. ONNX Runtime's default spin keeps a
# core busy for milliseconds after every run; without spinning, waking the second thread for each of MiniLM's
# operators made an encode slower than on one thread. Against one thread, at one never-seen request at a time on
# this 2-core machine (BENCHMARKS.md, "MiniLM on the idle cores"): no spin 3.06/2.98 ms encode p50 against
# 2.72/2.61; 300 us 1.89/1.88; 1000 us 1.81/1.83; 5000 us 2.14/1.72, with a p99 of 6.4 ms.
IDLE_SPIN_US = 1000


class TextEncoder:
    """Encodes strings to unit-norm MiniLM embeddings with ONNX Runtime; holds an LRU cache for repeated queries."""

    max_tokens = MAX_TOKENS  # longer texts are embedded from their start only

    def __init__(
        self,
        model_dir: Path,
        *,
        cache_size: int = 0,
        providers: list[str] | None = None,
        variant: str = "fp32",
        check_cosine: bool = True,
        threads: int = 1,
        idle_threads: int = 1,
    ) -> None:
        model_dir = Path(model_dir)
        info_path = model_dir / "encoder.json"
        if not info_path.exists():
            raise FileNotFoundError(
                f"{model_dir} is not a text-encoder directory (no encoder.json); run `make encoder`"
            )
        self.info = json.loads(info_path.read_text())
        self.name: str = self.info["name"]
        self.dim: int = int(self.info["dim"])
        self.variant = variant
        model_name = self._model_file(variant, check_cosine)
        files = self.info.get("files", {})
        verify_files(model_dir, {n: files[n] for n in ("tokenizer.json", model_name) if n in files}, "text encoder")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        # A second tokenizer that neither truncates nor pads (tokenizer.json itself asks for both, at 128), to
        # measure texts; separate, so measuring never changes how `encode` tokenises, on any thread.
        self._measuring = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._measuring.no_truncation()
        self._measuring.no_padding()
        if variant == "int8":
            # Its quantised matmuls have CPU kernels only: on the CUDA provider the graph ran in pieces, with copies
            # between host and GPU at every layer (never-seen encode p50 5.4 ms on an H200 host, BENCHMARKS "GPU").
            providers = [CPU]
        self.session: ort.InferenceSession = make_session(model_dir / model_name, providers=providers, threads=threads)
        # A second session of the same graph with more intra-op threads, for when nothing else needs the cores
        # (`encode(..., idle=True)`). Its embeddings equal the one-thread session's bit for bit (tests check it, for
        # both variants), so which session made a cached embedding never changes a ranking.
        self.threads, self.idle_threads = threads, max(threads, idle_threads)
        self.idle_session: ort.InferenceSession | None = None
        if self.idle_threads > threads:
            self.idle_session = make_session(
                model_dir / model_name, providers=providers, threads=self.idle_threads, spin_us=IDLE_SPIN_US
            )
        # The service reads it on three threads (see `cached`).
        self._cache: LruCache[str, np.ndarray] = LruCache(cache_size)

    def _model_file(self, variant: str, check_cosine: bool) -> str:
        if variant == "fp32":
            return "model.onnx"
        if variant != "int8":
            raise ValueError(f"text encoder variant must be fp32 or int8, got {variant!r}")
        recorded = self.info.get("int8", {}).get("cosine_to_fp32", {}).get("mean")
        if check_cosine and (recorded is None or recorded < INT8_MIN_COSINE):
            raise ValueError(f"the int8 text encoder's recorded cosine to fp32 is {recorded}, below {INT8_MIN_COSINE}")
        return INT8_FILE

    def encode(self, texts: list[str], batch_size: int = 64, *, idle: bool = False) -> np.ndarray:
        """Embeddings (N, dim) float32, unit norm, in input order. The int8 graph embeds one text per call: dynamic
        quantisation scales each call's activations by that call's range, so in a batch a text's embedding would
        depend on the texts beside it (and on their padding); alone, it is the same in training, in the service's
        encode stage, batched or not, and in evaluation. `idle`: the caller has the machine's other cores to spare,
        so run on the idle session's threads when there is one (the same embeddings, sooner)."""
        session = self.idle_session if idle and self.idle_session is not None else self.session
        if self.variant == "int8":
            batch_size = 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            encodings = self.tokenizer.encode_batch(chunk)
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out[start : start + len(chunk)] = session.run(None, feeds)[0]
        return out

    def threads_for(self, idle: bool) -> int:
        """The intra-op threads `encode(..., idle=idle)` runs on."""
        return self.idle_threads if idle else self.threads

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """Word pieces of each text, [CLS] and [SEP] included, before truncation (int64, in input order)."""
        out = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), COUNT_BATCH):
            encodings = self._measuring.encode_batch(texts[start : start + COUNT_BATCH])
            out[start : start + len(encodings)] = [len(e.ids) for e in encodings]
        return out

    def cut(self, texts: list[str], max_tokens: int, from_end: bool = False) -> tuple[list[str], np.ndarray]:
        """Each text cut to at most `max_tokens` word pieces ([CLS] and [SEP] counted, as MAX_TOKENS counts them),
        keeping its start (or with `from_end`, its end), at a word-piece boundary; and each text's word pieces
        before the cut. Texts within the limit come back unchanged."""
        counts = np.empty(len(texts), dtype=np.int64)
        out = list(texts)
        keep = max(0, max_tokens - 2)
        for start in range(0, len(texts), COUNT_BATCH):
            encodings = self._measuring.encode_batch(texts[start : start + COUNT_BATCH])
            for i, encoding in enumerate(encodings, start=start):
                counts[i] = len(encoding.ids)
                if counts[i] <= max_tokens:
                    continue
                spans = encoding.offsets[1:-1]  # the text's own word pieces, without [CLS] and [SEP]
                if keep == 0:
                    out[i] = ""
                elif from_end:
                    out[i] = texts[i][spans[len(spans) - keep][0] :]
                else:
                    out[i] = texts[i][: spans[keep - 1][1]]
        return out, counts

    def count_truncated(self, texts: list[str]) -> int:
        """How many of `texts` are longer than MAX_TOKENS word pieces, so that `encode` embeds only their start.
        Tokenises only (no model run): about as cheap as tokenising for `encode`."""
        return int((self.token_counts(texts) > MAX_TOKENS).sum())

    def cached(self, text: str) -> np.ndarray | None:
        """The embedding of `text` if it is in the LRU cache (and mark it recently used), else None. Thread-safe:
        the service looks up on the event loop and the ranking thread, and remembers on the encode thread."""
        return self._cache.get(text)

    def remember(self, text: str, vector: np.ndarray) -> None:
        """Put an embedding in the LRU cache, evicting the least recently used beyond `cache_size` (thread-safe)."""
        self._cache.put(text, vector)
