"""The scoring graph: everything the request path does after candidate generation, as ONE ONNX Runtime run.

The exported `ranker.onnx` takes gathered candidate features. Gathering them in numpy, computing the zero-shot
evidence in numpy and then calling the ranker cost more than the ranker itself: four copies of every candidate's
rows, and Python between them. `scoring_graph` puts a prefix in front of the ranker's nodes, so that one run takes
what Python has after candidate generation and does the rest:

    inputs   query (B, text_dim)          MiniLM query embeddings
             query_vectors (B, R)         the queries in the learned retrieval space (with a ranker only)
             rows (B, L) int64            candidate rows per query, padded with any row where `valid` is False
             valid (B, L) bool
             bm25 (B, L) float32          each candidate's BM25 score
             extra_at (X,) int64          (built with `extras` only) flat positions (b * L + j) whose features
             extra_<table> (X, ...)       come from `extra_*`, not the catalog: /rerank documents given as text,
                                          encoded per request
    tables   table_<table> (N, ...)       the bundle's arrays (`TABLES`), bound once per engine by ScoringSession
    output   scores (B, L) float32        -inf in padding
    explain  (built with `explain` only) the same run's parts of each score, flat (M = B * L):
             explain_<evidence> (B, L)    the zero-shot evidence: lexical (BM25 over the list's best), dense (the
                                          cosine; not with the lexical prior), rrf (with the RRF prior)
             explain_prior (M,)           the ranker's prior term (its prior_weight times the prior)
             explain_residual (M,)        the ranker's learned residual: score = prior term + residual
             explain_attention (M, H, T)  the query's attention over the candidate's tokens, per head
             explain_mask (M, T)          which of the candidate's modalities are present (1) or missing (0)

Inside: the gather by row id (extras scattered in), the retrieval score and the dense cosine, the per-list evidence
of `index.runtime.hybrid` (BM25 over the list's best; RRF ranks from a TopK, which breaks ties by the lower index as
the numpy reference's stable argsort does), then the ranker's own nodes. Without a ranker (a zero-shot bundle) the
prior is the score. The scores equal the numpy reference's to float32 rounding (tests/test_scoring_graph.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, version_converter

from index.runtime.bundle import Bundle
from index.runtime.exported_model import CANARY_TOLERANCE, RANKER_FILE, ExportedModel, retrieval_scores
from index.runtime.files import ArtifactError
from index.runtime.hybrid import PRIORS, RRF_K, evidence, ranker_evidence
from index.runtime.ort_session import CPU, CUDA, default_providers, make_session

OPSET = 18
IR_VERSION = 10  # the exporter's; onnx's own default can be newer than onnxruntime reads
# Table name -> the bundle array it binds; the ranker's tables only with a ranker.
TABLES = {"text": "text", "mask": "mask", "kv": "cand_kv", "retrieval": "retrieval"}
ZERO_SHOT_TABLES = ("text", "mask")
_F, _I, _B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
# The explained graph's outputs that are per flat position (b * L + j), not (B, L).
PER_POSITION = frozenset({"explain_prior", "explain_residual", "explain_attention", "explain_mask"})


@dataclass(frozen=True)
class Widths:
    """Row widths of the tables: MiniLM's, the retrieval space's and the ranker's token width (the last two unused
    without a ranker)."""

    text: int
    retrieval: int = 0
    dim: int = 0

    def row(self, table: str) -> list[int]:
        return {"text": [self.text], "mask": [3], "kv": [2, 3, self.dim], "retrieval": [self.retrieval]}[table]


class _Graph:
    """Prefix nodes and constants under names of their own ('scoring/...'), so none collides with the ranker's."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def const(self, value: float | int | list[int], dtype: type = np.float32) -> str:
        array: np.ndarray = np.asarray(value, dtype=dtype)
        name = f"scoring/const_{len(self.constants)}"
        self.constants.append(onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Add a node; returns its output's name (`output`, or a new one)."""
        return self.ops(op_type, inputs, [output] if output else 1, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], outputs: list[str] | int, **attrs: Any) -> list[str]:
        """Add a node with several outputs (given names, or that many new ones); returns their names."""
        n = len(self.nodes)
        names = outputs if isinstance(outputs, list) else [f"scoring/{op_type.lower()}_{n}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"scoring/{n}", **attrs))
        return names


def explained_tensors(ranker: onnx.ModelProto) -> dict[str, str]:
    """The ranker graph's tensors that `explain` outputs: its prior term and residual (the two inputs of the Add
    that makes its output: the prior term is a Mul by an initializer, `prior_weight`) and its attention (its one
    Softmax). Empty for a graph not shaped so (a ranker not made by model.fusion): its explanations then have the
    evidence and the sources, without the ranker's parts."""
    graph = ranker.graph
    made_by = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    last = made_by.get(graph.output[0].name)
    softmax = [node.output[0] for node in graph.node if node.op_type == "Softmax"]
    if last is None or last.op_type != "Add" or len(softmax) != 1:
        return {}
    is_prior = [
        made_by.get(x) is not None and made_by[x].op_type == "Mul" and bool(weights & set(made_by[x].input))
        for x in last.input
    ]
    if sorted(is_prior) != [False, True]:
        return {}
    prior_term = last.input[is_prior.index(True)]
    residual = last.input[is_prior.index(False)]
    return {"explain_prior": prior_term, "explain_residual": residual, "explain_attention": softmax[0]}


def scoring_graph(
    ranker: onnx.ModelProto | None, prior: str, widths: Widths, extras: bool, explain: bool = False
) -> onnx.ModelProto:
    """The scoring graph for `prior` (one of PRIORS) in front of `ranker`'s nodes; with `ranker` None (zero-shot
    serving) the prior itself is the score. With `extras`, some candidates' rows are given per run instead of
    gathered (a separate graph because the scatter copies every gathered row, even with nothing to scatter). With
    `explain`, the same nodes also output the parts of each score. The module docstring lists its inputs and
    outputs."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    g = _Graph()
    if ranker is not None and _opset(ranker) != OPSET:
        ranker = version_converter.convert_version(ranker, OPSET)  # the prefix needs opset 18's operators
    tables = tuple(TABLES) if ranker is not None else ZERO_SHOT_TABLES
    zero, one, pad = g.const(0.0), g.const(1.0), g.const(-np.inf)
    flat = g.const([-1], np.int64)

    # Gather every candidate's rows; with extras, overwrite theirs.
    flat_rows = g.op("Reshape", ["rows", flat])
    cand = {t: g.op("Gather", [f"table_{t}", flat_rows]) for t in tables}
    if extras:
        positions = g.op("Unsqueeze", ["extra_at", g.const([-1], np.int64)])
        cand = {t: g.op("ScatterND", [gathered, positions, f"extra_{t}"]) for t, gathered in cand.items()}

    # Candidate m = b * L + j belongs to query b.
    shape = g.op("Shape", ["rows"])
    batch, length = (g.op("Slice", [shape, g.const([i], np.int64), g.const([i + 1], np.int64)]) for i in (0, 1))
    i0, i1 = g.const(0, np.int64), g.const(1, np.int64)
    owners = g.op("Range", [i0, g.op("Squeeze", [batch]), i1])
    query_index = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [owners, g.const([1], np.int64)]), shape]), flat])

    def per_candidate(vectors: str, table: str) -> str:
        """(B, L): each candidate's inner product of its `table` row with its query's row of `vectors`."""
        products = g.op("Mul", [cand[table], g.op("Gather", [vectors, query_index])])
        return g.op("Reshape", [g.op("ReduceSum", [products, g.const([-1], np.int64)], keepdims=0), shape])

    def rrf_term(values: str) -> str:
        """1 / (RRF_K + rank) by descending value within each list (ranks from 1, ties by position; padding last),
        0 where the value is <= 0: `index.runtime.hybrid._rrf_term`."""
        _, order = g.ops("TopK", [g.op("Where", ["valid", values, pad]), length], 2, axis=1)
        steps = g.op("Cast", [g.op("Range", [i1, g.op("Add", [g.op("Squeeze", [length]), i1]), i1])], to=_F)
        ranks = g.op("ScatterElements", [g.op("Mul", [bm25, zero]), order, g.op("Expand", [steps, shape])], axis=1)
        term = g.op("Div", [one, g.op("Add", [g.const(float(RRF_K)), ranks])])
        return g.op("Where", [g.op("Greater", [values, zero]), term, zero])

    bm25 = g.op("Where", ["valid", "bm25", zero])
    best = g.op("ReduceMax", [bm25, g.const([1], np.int64)], keepdims=1)
    found = g.op("Greater", [best, zero])
    evidence = {"lexical": g.op("Where", [found, g.op("Div", [bm25, g.op("Where", [found, best, one])]), zero])}
    if prior != "lexical":
        evidence["dense"] = per_candidate("query", "text")
    if prior == "rrf":
        terms = g.op("Add", [rrf_term(evidence["dense"]), rrf_term(bm25)])
        evidence["rrf"] = g.op("Mul", [g.const(float(RRF_K)), terms])

    inputs = [
        helper.make_tensor_value_info("query", _F, ["queries", widths.text]),
        helper.make_tensor_value_info("rows", _I, ["queries", "length"]),
        helper.make_tensor_value_info("valid", _B, ["queries", "length"]),
        helper.make_tensor_value_info("bm25", _F, ["queries", "length"]),
        *(helper.make_tensor_value_info(f"table_{t}", _F, ["items", *widths.row(t)]) for t in tables),
    ]
    if extras:
        inputs.append(helper.make_tensor_value_info("extra_at", _I, ["extras"]))
        inputs += [helper.make_tensor_value_info(f"extra_{t}", _F, ["extras", *widths.row(t)]) for t in tables]
    outputs = [helper.make_tensor_value_info("scores", _F, ["queries", "length"])]
    if explain:
        for name, tensor in evidence.items():
            g.op("Identity", [tensor], output=f"explain_{name}")
            outputs.append(helper.make_tensor_value_info(f"explain_{name}", _F, ["queries", "length"]))
        g.op("Identity", [cand["mask"]], output="explain_mask")
        outputs.append(helper.make_tensor_value_info("explain_mask", _F, None))
    if ranker is None:
        g.op("Where", ["valid", evidence[prior], pad], output="scores")
        graph = helper.make_graph(g.nodes, "zero_shot_scoring", inputs, outputs, initializer=g.constants)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)

    # The ranker's inputs, under the names its nodes read.
    inputs.insert(1, helper.make_tensor_value_info("query_vectors", _F, ["queries", widths.retrieval]))
    column = g.const([-1, 1], np.int64)
    g.op("Reshape", [per_candidate("query_vectors", "retrieval"), flat], output="retrieval_score")
    columns = [g.op("Reshape", [evidence[name], column]) for name in (prior, "lexical")]  # model.fusion.EVIDENCE
    g.op("Concat", columns, output="evidence", axis=1)
    for table, name in (("kv", "cand_kv"), ("text", "cand_text"), ("mask", "cand_mask")):
        g.op("Identity", [cand[table]], output=name)
    g.op("Identity", [query_index], output="query_index")
    prefix = list(g.nodes)
    scores = g.op("Reshape", [ranker.graph.output[0].name, shape])
    g.op("Where", ["valid", scores, pad], output="scores")
    if explain:
        for name, tensor in explained_tensors(ranker).items():
            g.op("Identity", [tensor], output=name)
            outputs.append(helper.make_tensor_value_info(name, _F, None))
    graph = helper.make_graph(
        prefix + list(ranker.graph.node) + g.nodes[len(prefix) :],
        "scoring",
        inputs,
        outputs,
        initializer=g.constants + list(ranker.graph.initializer),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=ranker.ir_version)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)


@dataclass(frozen=True)
class Extras:
    """Candidates of a run whose rows are not the catalog's (/rerank documents given as text): their flat positions
    in the (B, L) layout and their rows of each table."""

    at: np.ndarray  # (X,) int64
    rows: dict[str, np.ndarray]  # table name (TABLES) -> (X, ...) float32


class ScoringGraph:
    """The scoring graph of one bundle and one exported model (None: zero-shot), with the bundle's tables bound once
    as OrtValues on the device the model runs on. A session per prior (a test may change the engine's) and per
    extras-or-not is built on first use; runs are thread-safe, as ONNX Runtime's are."""

    def __init__(self, bundle: Bundle, model: ExportedModel | None, threads: int = 1) -> None:
        self.model = model
        self.providers = model.providers if model is not None else default_providers()
        self.threads = threads
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self._ranker = onnx.load(model.model_dir / RANKER_FILE) if model is not None else None
        names = TABLES if model is not None else {t: TABLES[t] for t in ZERO_SHOT_TABLES}
        arrays = {t: getattr(bundle, name) for t, name in names.items()}
        self.widths = Widths(
            text=bundle.schema.text_dim,
            retrieval=model.card.retrieval_dim if model is not None else 0,
            dim=model.card.dim if model is not None else 0,
        )
        self._tables = {
            f"table_{t}": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a, np.float32), self.device, 0)
            for t, a in arrays.items()
        }
        self._sessions: dict[tuple[str, bool, bool], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def session(self, prior: str, extras: bool, explain: bool = False) -> ort.InferenceSession:
        """The session for `prior`, built on first use."""
        key = (prior, extras, explain)
        with self._lock:
            if key not in self._sessions:
                graph = scoring_graph(self._ranker, prior, self.widths, extras, explain)
                providers = self.providers if self.device == "cuda" else [CPU]
                self._sessions[key] = make_session(graph.SerializeToString(), providers=providers, threads=self.threads)
            return self._sessions[key]

    def run(
        self,
        prior: str,
        query: np.ndarray,
        query_vectors: np.ndarray | None,
        rows: np.ndarray,
        valid: np.ndarray,
        bm25: np.ndarray,
        extras: Extras | None = None,
    ) -> np.ndarray:
        """Scores (B, L), -inf where not `valid`: see the module docstring for the inputs."""
        return self.outputs(prior, query, query_vectors, rows, valid, bm25, extras)["scores"]

    def outputs(
        self,
        prior: str,
        query: np.ndarray,
        query_vectors: np.ndarray | None,
        rows: np.ndarray,
        valid: np.ndarray,
        bm25: np.ndarray,
        extras: Extras | None = None,
        explain: bool = False,
    ) -> dict[str, np.ndarray]:
        """The run's outputs by name: `scores`, and with `explain`, from the graph built with it (the same nodes, so
        the same scores), the parts of each score (the module docstring's `explain_*` outputs)."""
        feeds = {"query": query, "rows": rows, "valid": valid, "bm25": bm25}
        if self.model is not None:
            if query_vectors is None:
                raise ValueError("a scoring graph with a ranker needs the queries' retrieval vectors")
            feeds["query_vectors"] = query_vectors
        if extras is not None:
            feeds["extra_at"] = extras.at
            feeds.update({f"extra_{t}": a for t, a in extras.rows.items()})
        # An IOBinding per run (runs may overlap on several threads): the tables stay where they were bound, the
        # per-run inputs are copied to the device by ONNX Runtime, and the outputs come back to the host.
        session = self.session(prior, extras is not None, explain)
        binding = session.io_binding()
        for name, value in self._tables.items():
            binding.bind_ortvalue_input(name, value)
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        names = [output.name for output in session.get_outputs()] if explain else ["scores"]
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def verify(self, bundle: Bundle, prior: str, rows: int = 32) -> float:
        """Score the catalog's first `rows` items for two made-up queries both ways, this graph and the numpy
        reference (gather, `index.runtime.hybrid.evidence`, the ranker graph), and refuse a difference above the
        export's canary tolerance: the served scores are then the ones the export proved. Returns the difference."""
        n = min(rows, bundle.size)
        rng = np.random.default_rng(0)
        query = rng.standard_normal((2, self.widths.text)).astype(np.float32)
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        table_rows = np.stack([np.arange(n), np.arange(n)[::-1]]).astype(np.int64)
        bm25 = np.where(rng.random((2, n)) < 0.5, rng.random((2, n)) * 5, 0).astype(np.float32)
        valid = np.ones((2, n), bool)
        vectors = self.model.project_queries(query) if self.model is not None else None
        expected = reference_scores(bundle, self.model, prior, query, vectors, table_rows, valid, bm25)
        got = self.run(prior, query, vectors, table_rows, valid, bm25).reshape(-1)
        diff = float(np.abs(got - expected).max()) if n else 0.0
        if not diff <= CANARY_TOLERANCE:
            raise ArtifactError(
                f"the scoring graph differs from the ranker graph by {diff:.2e} (tolerance {CANARY_TOLERANCE:g}) "
                "on this bundle; please report it with the model card"
            )
        return diff


def reference_scores(
    bundle: Bundle,
    model: ExportedModel | None,
    prior: str,
    query: np.ndarray,
    query_vectors: np.ndarray | None,
    rows: np.ndarray,
    valid: np.ndarray,
    bm25: np.ndarray,
) -> np.ndarray:
    """What the scoring graph computes, the numpy way: the valid candidates' rows gathered, their evidence
    (`index.runtime.hybrid.evidence`) and the ranker graph run on them, (M,) in row-major order of `valid`; without a
    model, the prior."""
    flat = rows[valid]
    lengths = valid.sum(axis=1)
    owner = np.repeat(np.arange(len(query)), lengths)
    dense = np.einsum("md,md->m", bundle.text[flat], query[owner])
    found = evidence(dense, bm25[valid], lengths.tolist())
    if model is None:
        return found.prior(prior)
    if bundle.retrieval is None or bundle.cand_kv is None or query_vectors is None:
        raise ArtifactError(f"bundle {bundle.path} is zero-shot: it has no rows for a ranker")
    similarity = retrieval_scores(query_vectors, bundle.retrieval[flat], owner)
    evidence_in = ranker_evidence(found, prior)
    return model.score(
        query, bundle.cand_kv[flat], bundle.text[flat], bundle.mask[flat], similarity, evidence_in, owner
    )
