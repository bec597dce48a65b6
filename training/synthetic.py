"""The embedded default dataset: a deterministic SYNTHETIC multimodal cocktail catalog with graded judgments.

Every item has hidden true attributes. What a ranker can see of them is split across three modalities on purpose,
so that fusing them is needed and measurable:

- the catalog metadata (`attributes`) lists each field only some of the time;
- the title mentions some fields, through synonyms, and sometimes names a colour the drink does not have
  (a hard negative: the title says "pink", the image vector does not);
- the simulated CLIP-space image vector always carries the visual fields (colour, glass, garnish), with noise,
  and never the non-visual ones (base spirit, style).

Queries state two or three constraints in natural language. A (query, item) pair is `compliant` when the item's
true attributes satisfy every constraint; grade 3 = compliant and highly rated, 2 = compliant, 1 = all but one
constraint met, 0 otherwise. Judgments are complete by construction: every pair with grade >= 1 is written, and
unlisted pairs have grade 0. Queries are split train/val/test by query.

Run as `python -m training.synthetic --out data/synthetic`. The output is in the documented user data format.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.cli_logging import configure_cli_logging

log = logging.getLogger(__name__)

IMAGE_DIM = 512

# field -> value -> words a title or a query may use for it (the first is the canonical value)
VOCABULARY: dict[str, dict[str, list[str]]] = {
    "colour": {
        "red": ["red", "crimson", "ruby"],
        "pink": ["pink", "rose", "blush"],
        "orange": ["orange", "amber", "sunset-orange"],
        "yellow": ["yellow", "golden", "lemon-yellow"],
        "green": ["green", "emerald", "jade"],
        "blue": ["blue", "azure", "electric blue"],
        "purple": ["purple", "violet", "lavender"],
        "clear": ["clear", "crystal-clear", "transparent"],
        "brown": ["brown", "dark", "mahogany"],
        "white": ["white", "creamy", "milky"],
    },
    "glass": {
        "coupe": ["coupe", "coupe glass", "champagne saucer"],
        "martini": ["martini glass", "cocktail glass", "V-shaped glass"],
        "highball": ["highball", "tall glass", "collins glass"],
        "rocks": ["rocks glass", "old fashioned glass", "tumbler"],
        "hurricane": ["hurricane glass", "tulip glass", "tiki glass"],
        "flute": ["flute", "champagne flute", "tall stemmed flute"],
        "mug": ["copper mug", "mug", "metal cup"],
    },
    "garnish": {
        "lime": ["lime wheel", "lime wedge", "lime"],
        "lemon": ["lemon twist", "lemon slice", "lemon peel"],
        "cherry": ["cherry", "maraschino cherry", "cocktail cherry"],
        "mint": ["mint sprig", "fresh mint", "mint leaves"],
        "olive": ["olive", "green olive", "olives on a pick"],
        "orange_peel": ["orange peel", "orange twist", "orange zest"],
        "none": ["no garnish", "ungarnished", "a clean rim"],
    },
    "base_spirit": {
        "gin": ["gin", "London dry gin", "juniper spirit"],
        "vodka": ["vodka", "neutral spirit", "premium vodka"],
        "rum": ["rum", "dark rum", "Caribbean rum"],
        "tequila": ["tequila", "blanco tequila", "agave spirit"],
        "whiskey": ["whiskey", "bourbon", "rye"],
        "mezcal": ["mezcal", "smoky mezcal", "oaxacan mezcal"],
    },
    "style": {
        "sour": ["sour", "citrusy sour", "shaken sour"],
        "tiki": ["tiki drink", "tropical tiki", "tiki cocktail"],
        "spritz": ["spritz", "bubbly spritz", "sparkling spritz"],
        "stirred": ["stirred classic", "spirit-forward drink", "stirred cocktail"],
        "frozen": ["frozen drink", "blended cocktail", "slushy"],
    },
}
VISUAL_FIELDS = ("colour", "glass", "garnish")  # present in the image vector
FIELDS = tuple(VOCABULARY)
NOUNS = ["cocktail", "drink", "mix", "libation", "serve"]
FILLER = ["house", "signature", "classic", "refreshing", "bartender's", "seasonal", "late-night", "bold", "smooth"]
FALSE_COLOUR_NAMES = ["Pink Panther", "Blue Lagoon", "Green Fairy", "Red Lion", "Purple Haze", "Golden Hour"]
QUERY_TEMPLATES = [
    "{adjectives} {noun} {phrases}",
    "looking for a {adjectives} {noun} {phrases}",
    "show me {adjectives} {noun}s {phrases}",
    "{adjectives} {phrases}",
    "any {adjectives} {noun} {phrases} please",
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and noise levels of the generated catalog; the seed makes it reproducible to the byte."""

    seed: int = 7
    items: int = 5000
    queries: int = 1000
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    attribute_presence: float = 0.5  # chance a field is listed in the catalog metadata
    title_mention: float = 0.5  # chance the title mentions a field
    false_colour_title: float = 0.08  # chance the title names a colour the drink does not have
    image_noise: float = 0.9  # item-specific noise relative to one attribute direction
    rating_presence: float = 0.9


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _title(rng: np.random.Generator, truth: dict[str, str], cfg: SyntheticConfig) -> str:
    words = {f: _pick(rng, VOCABULARY[f][truth[f]]) for f in FIELDS if rng.random() < cfg.title_mention}
    parts: list[str] = []
    if rng.random() < 0.5:
        parts.append(_pick(rng, FILLER))
    if rng.random() < cfg.false_colour_title:
        wrong = [c for c in VOCABULARY["colour"] if c != truth["colour"]]
        words["colour"] = _pick(rng, VOCABULARY["colour"][_pick(rng, wrong)])
        if rng.random() < 0.5:
            parts.insert(0, _pick(rng, FALSE_COLOUR_NAMES))
    for f in ("colour", "base_spirit", "style"):
        if f in words:
            parts.append(words[f])
    parts.append(_pick(rng, NOUNS))
    if "glass" in words:
        parts.append(f"in a {words['glass']}")
    if "garnish" in words:
        parts.append(f"with {words['garnish']}")
    return " ".join(parts).strip().capitalize()


def _query_text(rng: np.random.Generator, constraints: dict[str, str]) -> str:
    adjectives, phrases = [], []
    for f, value in constraints.items():
        word = _pick(rng, VOCABULARY[f][value])
        if f == "glass":
            phrases.append(f"in a {word}")
        elif f == "garnish":
            phrases.append(f"with {word}")
        else:
            adjectives.append(word)
    rng.shuffle(adjectives)
    text = _pick(rng, QUERY_TEMPLATES).format(
        adjectives=" ".join(adjectives), phrases=" ".join(phrases), noun=_pick(rng, NOUNS)
    )
    return " ".join(text.split())


def generate(cfg: SyntheticConfig) -> dict[str, list[dict[str, Any]]]:
    """Build items, queries and judgments as lists of JSON-ready records, plus the hidden `truth` per item
    (not written to disk; tests use it to check the labels)."""
    rng = np.random.default_rng(cfg.seed)
    directions = {f: {v: _unit(rng.standard_normal(IMAGE_DIM)) for v in VOCABULARY[f]} for f in VISUAL_FIELDS}
    weights = {"colour": 1.0, "glass": 0.8, "garnish": 0.7}

    truths = [{f: _pick(rng, list(VOCABULARY[f])) for f in FIELDS} for _ in range(cfg.items)]
    ratings = np.round(np.clip(rng.normal(3.6, 0.7, cfg.items), 1.0, 5.0), 1)
    items = []
    for i, truth in enumerate(truths):
        image = sum(weights[f] * directions[f][truth[f]] for f in VISUAL_FIELDS)
        image = image + cfg.image_noise * rng.standard_normal(IMAGE_DIM) / np.sqrt(IMAGE_DIM) * 3.0
        attributes: dict[str, Any] = {f: truth[f] for f in FIELDS if rng.random() < cfg.attribute_presence}
        if rng.random() < cfg.rating_presence:
            attributes["rating"] = float(ratings[i])
        attributes["price"] = float(np.round(rng.uniform(8, 22), 2))
        items.append(
            {
                "id": f"syn-{i:05d}",
                "title": _title(rng, truth, cfg),
                "attributes": attributes,
                "image_embedding": np.round(_unit(image), 5).tolist(),
            }
        )

    truth_matrix = {f: np.asarray([t[f] for t in truths]) for f in FIELDS}
    queries, judgments = [], []
    order = rng.permutation(cfg.queries)
    n_test, n_val = int(cfg.queries * cfg.test_fraction), int(cfg.queries * cfg.val_fraction)
    splits = np.where(order < n_test, "test", np.where(order < n_test + n_val, "val", "train"))
    for q in range(cfg.queries):
        seed_item = truths[int(rng.integers(cfg.items))]  # guarantees at least one compliant item
        fields = rng.choice(FIELDS, size=int(rng.integers(2, 4)), replace=False)
        constraints = {str(f): seed_item[str(f)] for f in fields}
        qid = f"q-{q:04d}"
        queries.append(
            {"id": qid, "text": _query_text(rng, constraints), "constraints": constraints, "split": str(splits[q])}
        )
        met = sum((truth_matrix[f] == v).astype(int) for f, v in constraints.items())
        compliant = met == len(constraints)
        grades = np.where(compliant, np.where(ratings >= 4.2, 3, 2), np.where(met == len(constraints) - 1, 1, 0))
        for i in np.flatnonzero(grades > 0):
            judgments.append(
                {"query_id": qid, "item_id": items[i]["id"], "grade": int(grades[i]), "compliant": bool(compliant[i])}
            )
    return {"items": items, "queries": queries, "judgments": judgments, "truth": truths}


def write_dataset(out: Path, cfg: SyntheticConfig) -> dict[str, Any]:
    """Generate and write items.jsonl, queries.jsonl, judgments.jsonl and dataset.json; returns the summary."""
    data = generate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("items", "queries", "judgments"):
        records = data[name]
        with open(out / f"{name}.jsonl", "w") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    splits = [q["split"] for q in data["queries"]]
    summary = {
        "name": "synthetic-cocktails",
        "synthetic": True,
        "config": asdict(cfg),
        "counts": {
            "items": len(data["items"]),
            "queries": {s: splits.count(s) for s in ("train", "val", "test")},
            "judgments": len(data["judgments"]),
        },
        "unjudged_grade": 0,
        "note": "SYNTHETIC data from training/synthetic.py; judgments are complete (unlisted pairs have grade 0).",
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the embedded SYNTHETIC cocktail catalog.")
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--items", type=int, default=SyntheticConfig.items)
    parser.add_argument("--queries", type=int, default=SyntheticConfig.queries)
    args = parser.parse_args(argv)
    configure_cli_logging()
    if args.items < 10 or args.queries < 10:
        print("error: --items and --queries must each be at least 10", file=sys.stderr)
        return 2
    summary = write_dataset(args.out, SyntheticConfig(seed=args.seed, items=args.items, queries=args.queries))
    counts = summary["counts"]
    log.info(
        "wrote SYNTHETIC dataset to %s: %d items, queries %s, %d judgments",
        args.out,
        counts["items"],
        counts["queries"],
        counts["judgments"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
