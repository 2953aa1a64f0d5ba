"""Finds every text the project wrote itself to train the guard, and the near copies of evaluation rows among them.

Training text lives in several shapes: committed files under guardforge/guard/data, hand-written lists in the
modules of guardforge_build/guard, and generators (templates x vocabularies) there. `training_texts` finds all of
them without a list to keep up to date, so a new module of prompts is checked the day it lands. Not on the
runtime path (the build package): tests import it.
"""

from __future__ import annotations

import csv
import difflib
import importlib
import inspect
import json
import pkgutil
import re
from collections.abc import Iterable
from pathlib import Path

from guardforge.guard.datasets import Example
from guardforge_build.guard import GUARD_DATA_DIR

DATA_DIR = GUARD_DATA_DIR
TRAINING_PACKAGE = "guardforge_build.guard"

# Rows loaded from the shared data sets are theirs, not ours, and the README's split keeps their test rows out;
# an Example whose source starts with one of these names is not a text we wrote.
SHARED_SOURCES = ("openai-mod", "xstest", "ailuminate", "i2p", "parti", "coco")

# A function is a generator of training text when it needs no argument and says it returns a collection of
# strings or Examples; only those are called (a `main()` or a trainer is never run by looking for text).
_TEXT_RETURN = re.compile(r"^(list|tuple|set|frozenset|Sequence|Iterable|Iterator|Generator)\[(str|Example|tuple\[str)")


def _strings(value, found: list[str]) -> None:
    """Every text inside a value: strings, Examples not from a shared data set, and containers of them."""
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, Example):
        if not value.source.startswith(SHARED_SOURCES):
            found.append(value.text)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _strings(item, found)


def _is_text_collection(value) -> bool:
    if isinstance(value, dict):
        return bool(value) and all(_is_text_collection(v) or isinstance(v, str) for v in value.values())
    return (isinstance(value, (list, tuple, set, frozenset)) and bool(value)
            and all(isinstance(v, str) or _is_text_collection(v) for v in value))


def _is_generator(module, name: str, obj) -> bool:
    if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
        return False
    signature = inspect.signature(obj)
    if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
           for p in signature.parameters.values()):
        return False
    annotation = signature.return_annotation
    annotation = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return bool(_TEXT_RETURN.match(annotation.replace("typing.", "").replace("collections.abc.", "")))


def _file_texts(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".csv", ".tsv"):
        rows = csv.reader(text.splitlines(), delimiter="\t" if path.suffix == ".tsv" else ",")
        return [cell for row in rows for cell in row if re.search(r"[^\W\d_]", cell)]
    if path.suffix in (".json", ".jsonl"):
        found: list[str] = []
        for line in (text.splitlines() if path.suffix == ".jsonl" else [text]):
            if line.strip():
                _strings(json.loads(line), found)
        return found
    return [line.strip() for line in text.splitlines() if line.strip()]


def training_texts(data_dir: Path = DATA_DIR, package: str = TRAINING_PACKAGE) -> dict[str, list[str]]:
    """Where each text comes from -> the texts: every text file under `data_dir` (a line each; CSV/TSV cells,
    JSON strings), and in every module of `package` each module-level collection of strings (also inside
    dicts) and the output of each argument-free function annotated to return strings or Examples, rows of the
    shared data sets left out. Generators that need shared data not present on this machine are skipped."""
    out: dict[str, list[str]] = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        if path.suffix in (".txt", ".csv", ".tsv", ".json", ".jsonl"):
            out[f"{path.relative_to(data_dir.parent)}"] = _file_texts(path)
    root = importlib.import_module(package)
    for info in sorted(pkgutil.walk_packages(root.__path__, package + "."), key=lambda m: m.name):
        module = importlib.import_module(info.name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            found: list[str] = []
            if _is_text_collection(obj):
                _strings(obj, found)
            elif _is_generator(module, name, obj):
                try:
                    _strings(obj(), found)
                except FileNotFoundError:
                    continue
                name += "()"
            if found:
                out[f"{info.name}.{name}"] = found
    return out


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def near_copies(texts: Iterable[str], references: Iterable[str], cutoff: float = 0.8,
                pair_budget: int = 50_000, chunk: int = 2000) -> list[tuple[str, str, float]]:
    """(text, reference, difflib ratio) for each text with a reference at `cutoff` or above, case and spacing
    ignored: the best such reference per text.

    difflib over every pair is too slow for tens of thousands of texts against ten thousand test rows, so pairs
    are first narrowed to those difflib could score that high: a length within its own bound (real_quick_ratio),
    and at least a third of the shorter text's informative character 4-grams in common. A 4-gram is left out
    when it would pair more than `pair_budget` texts with references (" the", "man "): common on both sides, it
    says nothing about a copy and costs the most. A 4-gram common on one side only stays, so the near copies a
    template makes ("what's the best way to ..." against a test row of that shape) are still compared. Texts or
    references with fewer than three informative 4-grams are compared with every counterpart of a possible
    length. The narrowing assumes a copy keeps runs of at least four letters; one with a letter changed every
    few letters would pass it."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer

    a = sorted({_normal(t) for t in texts if t.strip()})
    b = sorted({_normal(r) for r in references if r.strip()})
    if not a or not b:
        return []
    grams = CountVectorizer(analyzer="char", ngram_range=(4, 4), binary=True, lowercase=False,
                            dtype=np.int32).fit_transform(a + b).tocsc()
    grams_a, grams_b = grams[:len(a)], grams[len(a):]
    pairs = np.asarray(grams_a.sum(axis=0), dtype=np.int64).ravel() * np.asarray(grams_b.sum(axis=0)).ravel()
    informative = np.flatnonzero(pairs <= pair_budget)
    grams_a, grams_b = grams_a[:, informative].tocsr(), grams_b[:, informative].tocsr()
    count_a, count_b = np.diff(grams_a.indptr), np.diff(grams_b.indptr)
    len_a, len_b = np.array([len(t) for t in a]), np.array([len(t) for t in b])
    # real_quick_ratio >= cutoff  <=>  2 * min / (la + lb) >= cutoff  <=>  lb within [la * k, la / k]
    k = cutoff / (2 - cutoff)
    order = np.argsort(len_b, kind="stable")
    sorted_len_b = len_b[order]

    def by_length(i: int, among: np.ndarray | None = None) -> np.ndarray:
        if among is not None:
            return among[(len_b[among] >= len_a[i] * k) & (len_b[among] <= len_a[i] / k)]
        lo = np.searchsorted(sorted_len_b, len_a[i] * k, side="left")
        hi = np.searchsorted(sorted_len_b, len_a[i] / k, side="right")
        return order[lo:hi]

    candidates: dict[int, set[int]] = {}
    for i in np.flatnonzero(count_a < 3):
        candidates[int(i)] = set(by_length(int(i)).tolist())
    long_rows, short_b = np.flatnonzero(count_a >= 3), np.flatnonzero(count_b < 3)
    for start in range(0, len(long_rows), chunk):
        rows = long_rows[start:start + chunk]
        shared = (grams_a[rows] @ grams_b.T).tocoo()
        need = np.maximum(np.minimum(count_a[rows][shared.row], count_b[shared.col]) / 3, 1)
        keep = shared.data >= need
        for r, j in zip(rows[shared.row[keep]], shared.col[keep], strict=True):
            candidates.setdefault(int(r), set()).add(int(j))
        if len(short_b):
            for r in rows:
                candidates.setdefault(int(r), set()).update(by_length(int(r), short_b).tolist())
    found = []
    for i, js in candidates.items():
        matcher = difflib.SequenceMatcher()  # as difflib.get_close_matches reads a pair
        matcher.set_seq2(a[i])
        best = (0.0, "")
        for j in sorted(js):
            matcher.set_seq1(b[j])
            if (matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff
                    and (ratio := matcher.ratio()) >= max(cutoff, best[0])):
                best = (ratio, b[j])
        if best[1]:
            found.append((a[i], best[1], best[0]))
    return sorted(found)
