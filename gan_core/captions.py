"""Captions as token ids: the tokeniser, the vocabulary a captioned dataset version carries, and the
built-in captioned shapes whose captions state colour, shape, size and position.

Tokenising is deliberately plain (lower case, runs of letters/digits): a caption's ids depend only on
its text and the dataset version's vocabulary, both of which are versioned with the data, so a
registered text-to-image model reads the same ids for the same words wherever it is served.

Ids: 0 pads, 1 is a word outside the vocabulary; words follow by falling count, then alphabetically,
so the same captions always give the same vocabulary.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from gan_core.synthetic import _mask

TOKENIZER = "ganpipe-words/1"  # the name a vocabulary records; a different rule gets a new name
PAD, UNK = 0, 1
MAX_TOKENS = 32  # a caption's ids are cut to this length (the prepared array's last dimension)
_WORD = re.compile(r"[a-z0-9]+")


class CaptionError(ValueError):
    """A caption, vocabulary or token array is invalid; the message names it and the reason."""


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]  # id i + 2 -> word (ids 0 and 1 are PAD and UNK)
    max_tokens: int = MAX_TOKENS
    tokenizer: str = TOKENIZER

    @classmethod
    def build(cls, captions: Iterable[str], max_tokens: int = MAX_TOKENS) -> "Vocabulary":
        counts = Counter(w for text in captions for w in words(text))
        return cls(tuple(sorted(counts, key=lambda w: (-counts[w], w))), max_tokens)

    @property
    def size(self) -> int:
        return len(self.tokens) + 2

    def encode(self, text: str) -> np.ndarray:
        """(max_tokens,) int64 ids, zero-padded; a text with no word is refused."""
        index = self._index()
        ids = [index.get(w, UNK) for w in words(text)][:self.max_tokens]
        if not ids:
            raise CaptionError(f"caption {text!r}: has no words")
        out = np.zeros(self.max_tokens, dtype=np.int64)
        out[:len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join("<unk>" if i == UNK else self.tokens[i - 2] for i in ids if i != PAD)

    def _index(self) -> dict[str, int]:
        return {w: i + 2 for i, w in enumerate(self.tokens)}

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_tokens": self.max_tokens, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "vocabulary") -> "Vocabulary":
        if d.get("tokenizer") != TOKENIZER:
            raise CaptionError(f"{where}: tokenizer {d.get('tokenizer')!r} is not {TOKENIZER!r}")
        tokens = d.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise CaptionError(f"{where}: tokens must be a list of non-empty words")
        return cls(tuple(tokens), int(d.get("max_tokens", MAX_TOKENS)))


def encode_all(vocab: Vocabulary, captions: Sequence[Sequence[str]]) -> np.ndarray:
    """Per image a list of captions -> (N, K, max_tokens) int64, K the most captions of any image;
    an image with fewer has all-zero rows after its own (a real caption always has a word)."""
    k = max(len(c) for c in captions)
    out = np.zeros((len(captions), k, vocab.max_tokens), dtype=np.int64)
    for i, texts in enumerate(captions):
        for j, text in enumerate(texts):
            out[i, j] = vocab.encode(text)
    return out


def counts_of(tokens: np.ndarray) -> np.ndarray:
    """(N, K, L) ids -> (N,) int64: how many of each image's K rows are real captions."""
    return (tokens != PAD).any(axis=2).sum(axis=1).astype(np.int64)


# ---- the built-in: captioned shapes ------------------------------------------------------------------
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
SHAPES = {"square": "square", "circle": "disc", "triangle": "triangle", "cross": "cross"}  # word -> mask
SIZES = {"small": (0.14, 0.18), "large": (0.24, 0.28)}  # half-size as a fraction of the side
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
# attribute name -> its values, in the column order of the attributes array
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": tuple(SHAPES), "size": tuple(SIZES), "position": POSITIONS}
TEMPLATES = ("a {size} {colour} {shape} at the {position}",
             "a {colour} {shape}, {size}, in the {position} corner",
             "{size} {colour} {shape} {position}")


def describe(values: dict[str, str], template: int = 0) -> str:
    return TEMPLATES[template].format(**values)


def attribute_values(row: Sequence[int]) -> dict[str, str]:
    """An attributes row (one index per ATTRIBUTES column) -> {name: word}."""
    return {name: vals[int(i)] for (name, vals), i in zip(ATTRIBUTES.items(), row)}


def parse(text: str) -> np.ndarray:
    """The attributes a caption asks for: (4,) int64, -1 where the caption does not say."""
    ws = " ".join(words(text))
    out = np.full(len(ATTRIBUTES), -1, dtype=np.int64)
    for col, vals in enumerate(ATTRIBUTES.values()):
        hits = [i for i, v in enumerate(vals) if re.search(rf"\b{v}\b", ws)]
        if len(hits) == 1:
            out[col] = hits[0]
    return out


def _draw(rng: np.random.Generator, row: np.ndarray, res: int) -> np.ndarray:
    colour, shape, size, position = (list(v)[int(i)] for v, i in zip(ATTRIBUTES.values(), row))
    half = res * rng.uniform(*SIZES[size])
    vertical, horizontal = position.split()
    # the centre sits in its quadrant with the whole shape inside the image
    lo = lambda: rng.uniform(half + 0.5, res / 2 - 0.5)  # noqa: E731
    cy = lo() if vertical == "top" else res - lo()
    cx = lo() if horizontal == "left" else res - lo()
    img = rng.integers(0, 25, (res, res, 3)).astype(np.uint8)
    img[_mask(SHAPES[shape], res, cy, cx, half)] = COLOURS[colour]
    return img


def captioned_shapes(n: int = 2048, res: int = 32, seed: int = 0
                     ) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(images (N, res, res, 3) uint8, captions: per image its TEMPLATES, attributes (N, 4) int64).

    Every attribute combination (4 x 4 x 2 x 4 = 128) appears equally often, in a seeded order."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(len(v)) for v in ATTRIBUTES.values()], indexing="ij"), -1)
    combos = grid.reshape(-1, len(ATTRIBUTES))
    attributes = combos[rng.permutation(np.arange(n) % len(combos))].astype(np.int64)
    images = np.stack([_draw(rng, row, res) for row in attributes])
    captions = [[describe(attribute_values(row), t) for t in range(len(TEMPLATES))] for row in attributes]
    return images, captions, attributes
