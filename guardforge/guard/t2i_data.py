"""Loads the shared text-to-image prompt sets (I2P, PartiPrompts, COCO captions) with their fixed split.

Follows ../shared/data/t2i/README.md: the same sha1 split rule as the safety sets, I2P's weak label `hard` as
the overall label, and its seven categories mapped to Llama Guard 4 codes where LG4 has one. Nothing here
copies the data into the project.
"""

from __future__ import annotations

import csv
from pathlib import Path

from guardforge.guard.datasets import CATEGORIES, Example, shared_data_folder
from guardforge.guard.datasets import openai_split as split_of  # the one sha1 rule both folders use

T2I_DATASETS: tuple[str, ...] = ("i2p", "parti", "coco")

I2P_TO_CODE = {"sexual": "S12", "violence": "S1", "self-harm": "S11", "hate": "S10", "illegal activity": "S2"}
# No LG4 category of their own (harassment is S10 or S5 depending on its target; shocking, i.e. gore and
# bodily horror, is not in LG4): reported under I2P's own names, never folded into a code they may not be.
I2P_UNMAPPED = ("harassment", "shocking")
# How the report names I2P's groups: the code with the I2P category it stands for.
I2P_REPORT_NAMES = {**{code: f"{code} {name}" for name, code in I2P_TO_CODE.items()},
                    **{name: name for name in I2P_UNMAPPED}}

_FILES = {"i2p": "i2p.csv", "parti": "parti_prompts.tsv", "coco": "coco_30k.csv"}


def t2i_data_root() -> Path:
    """The shared prompt-set folder: GUARDFORGE_T2I_DATA, else ../shared/data/t2i beside the checkout."""
    return shared_data_folder("t2i", "GUARDFORGE_T2I_DATA", "i2p.csv, parti_prompts.tsv and coco_30k.csv")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def _i2p_labels(categories: str, hard: int) -> dict[str, int | None]:
    """`hard` is the overall label. A hard row is positive in its own I2P categories and unknown in the rest
    (I2P says why a prompt was gathered, not what else it holds); a row that is not hard is negative in all."""
    names = {name.strip() for name in categories.split(",") if name.strip()}
    if unknown := names - {*I2P_TO_CODE, *I2P_UNMAPPED}:
        raise ValueError(f"unknown I2P categories {sorted(unknown)}")
    labels: dict[str, int | None] = {code: (None if hard else 0) for code in CATEGORIES}
    for name in I2P_UNMAPPED:
        labels[name] = None if hard else 0
    if hard:
        for name in names:
            labels[I2P_TO_CODE.get(name, name)] = 1
    labels["unsafe"] = hard
    return labels


def i2p_rows(split: str = "test", root: Path | None = None) -> list[dict[str, str]]:
    """I2P's csv rows (prompt, categories, hard, inappropriate_percentage, ...) of one split."""
    _check_split(split)
    with open((root or t2i_data_root()) / _FILES["i2p"], newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if split_of(row["prompt"]) == split]


def load_i2p(split: str = "test", root: Path | None = None) -> list[Example]:
    return [Example(row["prompt"], _i2p_labels(row["categories"], int(row["hard"])), "i2p")
            for row in i2p_rows(split, root)]


def _benign(texts: list[str], source: str) -> list[Example]:
    return [Example(text, {**{code: 0 for code in CATEGORIES}, "unsafe": 0}, source) for text in texts]


def load_parti(split: str = "test", root: Path | None = None) -> list[Example]:
    _check_split(split)
    with open((root or t2i_data_root()) / _FILES["parti"], newline="", encoding="utf-8") as f:
        texts = [row["Prompt"] for row in csv.DictReader(f, delimiter="\t")]
    return _benign([t for t in texts if split_of(t) == split], "parti")


def load_coco(split: str = "test", root: Path | None = None) -> list[Example]:
    _check_split(split)
    with open((root or t2i_data_root()) / _FILES["coco"], newline="", encoding="utf-8") as f:
        texts = [row["prompt"] for row in csv.DictReader(f)]
    return _benign([t for t in texts if split_of(t) == split], "coco")


def load_t2i(name: str, split: str = "test", root: Path | None = None) -> list[Example]:
    """One prompt set by its CLI name, rows in file order (duplicates kept, as the README counts them)."""
    loaders = {"i2p": load_i2p, "parti": load_parti, "coco": load_coco}
    if name not in loaders:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(T2I_DATASETS)}")
    return loaders[name](split, root)
