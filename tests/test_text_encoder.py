"""The ONNX MiniLM encoder: unit-norm embeddings, the int8 variant's recorded agreement with fp32, the LRU cache,
and the truncation limit (where it cuts, and counting the texts it cuts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index.runtime import text_encoder
from index.runtime.ort_session import CPU, CUDA, make_session
from index.runtime.text_encoder import INT8_MIN_COSINE, MAX_TOKENS, TextEncoder


def test_embeddings_are_unit_norm_and_meaningful(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir)
    a, b, c = encoder.encode(["a pink cocktail in a coupe", "rose drink in a champagne saucer", "tax return form"])
    assert np.allclose([np.linalg.norm(a), np.linalg.norm(b)], 1.0, atol=1e-4)
    assert a @ b > a @ c + 0.2


def test_int8_variant_records_its_cosine_and_keeps_it(encoder_dir: Path) -> None:
    info = json.loads((encoder_dir / "encoder.json").read_text())
    assert info["int8"]["cosine_to_fp32"]["mean"] >= INT8_MIN_COSINE
    texts = ["smoky mezcal negroni", "green drink with fresh mint in a highball", "something not too sweet"]
    fp32 = TextEncoder(encoder_dir).encode(texts)
    int8 = TextEncoder(encoder_dir, variant="int8").encode(texts)
    assert ((fp32 * int8).sum(1) / np.linalg.norm(int8, axis=1)).min() > 0.97


def test_an_int8_embedding_does_not_depend_on_the_texts_beside_it(encoder_dir: Path) -> None:
    # Dynamic int8 quantisation scales a call's activations by the whole batch's range: texts must go alone.
    encoder = TextEncoder(encoder_dir, variant="int8")
    texts = ["gin", "a smoky mezcal negroni in a rocks glass with a wide orange peel and a large clear ice cube"]
    together = encoder.encode(texts)
    assert np.array_equal(together, np.stack([encoder.encode([text])[0] for text in texts]))


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_the_idle_sessions_threads_give_the_same_embeddings_bit_for_bit(encoder_dir: Path, variant: str) -> None:
    """The service encodes a miss on two threads when nothing else runs and on one under load; the cache keeps
    whichever it got, so a ranking may not depend on which session made it."""
    encoder = TextEncoder(encoder_dir, variant=variant, idle_threads=2)
    assert encoder.idle_session is not None
    texts = ["gin", "a smoky mezcal negroni in a rocks glass with a wide orange peel", "something not too sweet"]
    assert np.array_equal(encoder.encode(texts), encoder.encode(texts, idle=True))
    assert TextEncoder(encoder_dir, variant=variant).idle_session is None  # one thread asked for: no second session


def test_the_int8_graph_runs_on_the_cpu_provider_even_where_cuda_is_asked_for(
    encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its quantised matmuls have CPU kernels only; on CUDA the graph ran in pieces, twice as slow (BENCHMARKS, GPU)."""
    asked: list[list[str] | None] = []

    def recording(path: Path, *, providers: list[str] | None = None, **kwargs: object) -> object:
        asked.append(providers)
        return make_session(path, providers=providers, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(text_encoder, "make_session", recording)
    TextEncoder(encoder_dir, variant="int8", providers=[CUDA, CPU], idle_threads=2)
    TextEncoder(encoder_dir, variant="fp32", providers=[CUDA, CPU])
    assert asked == [[CPU], [CPU], [CUDA, CPU]]


def test_int8_below_the_bar_is_refused(encoder_dir: Path, tmp_path: Path) -> None:
    for name in ("encoder.json", "tokenizer.json", "model.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes((encoder_dir / name).read_bytes())
    info = json.loads((tmp_path / "encoder.json").read_text())
    info["int8"]["cosine_to_fp32"]["mean"] = 0.95
    (tmp_path / "encoder.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="below 0.99"):
        TextEncoder(tmp_path, variant="int8")
    with pytest.raises(ValueError, match="fp32 or int8"):
        TextEncoder(tmp_path, variant="fp16")


def test_query_cache_is_bounded_lru(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir, cache_size=2)
    vectors = encoder.encode(["a", "b", "c"])
    encoder.remember("a", vectors[0])
    encoder.remember("b", vectors[1])
    assert encoder.cached("a") is not None  # a is now the most recently used
    encoder.remember("c", vectors[2])
    assert encoder.cached("b") is None and encoder.cached("a") is not None and encoder.cached("c") is not None


def test_a_damaged_encoder_file_is_refused(encoder_dir: Path, tmp_path: Path) -> None:
    for name in ("encoder.json", "tokenizer.json", "model.onnx"):
        (tmp_path / name).write_bytes((encoder_dir / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="checksum mismatch for .*tokenizer.json"):
        TextEncoder(tmp_path)


def _pieces(n: int) -> str:
    """A text of exactly n word pieces once [CLS] and [SEP] are added ("gin" is one piece)."""
    return " ".join(["gin"] * (n - 2))


def test_long_texts_are_cut_at_the_limit_and_counted(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir)
    assert MAX_TOKENS == 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
    texts = ["a pink cocktail", _pieces(MAX_TOKENS), _pieces(MAX_TOKENS + 1), _pieces(1000), ""]
    assert encoder.token_counts(texts).tolist() == [5, MAX_TOKENS, MAX_TOKENS + 1, 1000, 2]
    assert encoder.count_truncated(texts) == 2 and encoder.count_truncated([]) == 0
    # measuring never changes how encode tokenises: it still truncates
    (encoding,) = encoder.tokenizer.encode_batch([_pieces(1000)])
    assert len(encoding.ids) == MAX_TOKENS


def test_text_past_128_word_pieces_is_embedded_and_past_the_limit_is_not(encoder_dir: Path) -> None:
    encoder = TextEncoder(encoder_dir)
    base = " ".join(["a smoky mezcal negroni with an orange peel in a rocks glass"] * 16)  # about 200 pieces
    assert 128 < encoder.token_counts([base])[0] < MAX_TOKENS
    short, longer, too_long, past = encoder.encode(
        [base, base + " tax return form", _pieces(MAX_TOKENS), _pieces(MAX_TOKENS) + " tax return form"]
    )
    assert float(short @ longer) < 0.9999  # words after piece 128 still count
    np.testing.assert_allclose(too_long, past, atol=1e-6)  # words after the limit do not


def test_the_encoder_benchmark_times_every_graph_back_to_back_and_after_each_pause(
    encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loadtests.bench import encoder as bench_encoder

    queries = tmp_path / "queries.jsonl"
    texts = ["a gin fizz in a coupe", "smoky mezcal sour", "something green with mint", "a tall rum highball"]
    queries.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["--encoder", str(encoder_dir), "--queries", str(queries), "--count", "5", "--warmup", "5"]
    assert bench_encoder.main([*argv, "--idle-ms", "0", "2"]) == 0
    rows = [
        line.split("|")[1:-1]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| fp32 |") or line.startswith("| int8 |")
    ]
    configs = [tuple(cell.strip() for cell in row[:3]) for row in rows]
    assert configs == [(g, t, i) for g in ("fp32", "int8") for t in ("1", "2") for i in ("0", "2")]
    assert all(float(row[3]) > 0 and float(row[5]) > 0 for row in rows)
