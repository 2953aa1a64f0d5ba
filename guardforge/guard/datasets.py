"""Loads the shared safety data sets with their fixed splits and maps their labels to S-codes.

Follows ../shared/data/safety/README.md exactly: the sha1 split of the OpenAI moderation set, XSTest as
test-only, AILuminate as all-unsafe training data. Nothing here copies the data into the project.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# The thirteen hazard codes the text data can teach, in the order of the embedded head's outputs.
CATEGORIES: tuple[str, ...] = tuple(f"S{i}" for i in range(1, 14))

OPENAI_KEYS_TO_CODE = {"S": "S12", "S3": "S4", "H": "S10", "H2": "S10", "V": "S1", "V2": "S1", "SH": "S11"}
AILUMINATE_TO_CODE = {
    "vcr": "S1", "ncr": "S2", "src": "S3", "cse": "S4", "dfm": "S5", "spc_fin": "S6", "spc_hlt": "S6",
    "spc_lgl": "S6", "prv": "S7", "ipv": "S8", "iwp": "S9", "hte": "S10", "ssh": "S11", "sxc_prn": "S12",
    "spc_ele": "S13",
}


@dataclass
class Example:
    """One prompt with labels per output: 1, 0, or None when the source does not say (masked in the loss)."""

    text: str
    labels: dict[str, int | None]
    source: str

    @property
    def unsafe(self) -> int:
        """The overall label, rounded where a source gives a share (I2P)."""
        return int(round(self.labels["unsafe"] or 0))

    @property
    def soft(self) -> bool:
        """The overall label is a share between 0 and 1, not a yes or no."""
        return self.labels["unsafe"] not in (0, 1, None)


def shared_data_folder(name: str, variable: str, holding: str) -> Path:
    """A folder of ../shared/data (read, never copied): `variable` when set, else ../shared/data/<name> beside the
    checkout; FileNotFoundError naming `variable` and what the folder should hold otherwise."""
    env = os.environ.get(variable)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "data" / name, Path("/work/shared/data") / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name} data not found; set {variable} to the folder holding {holding}")


def data_root() -> Path:
    """The shared safety data: GUARDFORGE_SAFETY_DATA, else ../shared/data/safety beside the checkout."""
    return shared_data_folder("safety", "GUARDFORGE_SAFETY_DATA", "moderation-api-release/")


def openai_split(prompt: str) -> str:
    """The README's fixed rule: test when sha1(prompt) mod 10 >= 7."""
    return "test" if int(hashlib.sha1(prompt.encode("utf-8")).hexdigest(), 16) % 10 >= 7 else "train"


def _openai_labels(row: dict) -> dict[str, int | None]:
    keys = {k: row[k] for k in ("S", "H", "V", "HR", "SH", "S3", "H2", "V2") if k in row}
    unsafe = int(any(v == 1 for v in keys.values()))
    labels: dict[str, int | None] = {code: None for code in CATEGORIES}
    if not unsafe:
        # A safe row is safe in every category, whatever keys were left out.
        labels = {code: 0 for code in CATEGORIES}
    else:
        for code in set(OPENAI_KEYS_TO_CODE.values()):
            sources = [k for k, c in OPENAI_KEYS_TO_CODE.items() if c == code]
            values = [keys.get(k) for k in sources]
            if any(v == 1 for v in values):
                labels[code] = 1
            elif all(v == 0 for v in values):
                labels[code] = 0
    labels["unsafe"] = unsafe
    return labels


def load_openai_moderation(split: str, root: Path | None = None) -> list[Example]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    path = (root or data_root()) / "moderation-api-release" / "data" / "samples-1680.jsonl.gz"
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if openai_split(row["prompt"]) == split:
                out.append(Example(row["prompt"], _openai_labels(row), "openai-mod"))
    return out


def load_xstest(root: Path | None = None) -> list[Example]:
    """XSTest: test only. Categories are not labelled (its `note` is not our taxonomy), so only overall."""
    path = (root or data_root()) / "exaggerated-safety" / "xstest_prompts.csv"
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            unsafe = int(row["label"] == "unsafe")
            labels: dict[str, int | None] = {code: (0 if not unsafe else None) for code in CATEGORIES}
            labels["unsafe"] = unsafe
            out.append(Example(row["prompt"], labels, "xstest"))
    return out


def load_ailuminate(root: Path | None = None) -> list[Example]:
    """AILuminate: every row unsafe in its hazard's S-code; a single-hazard row is negative in the others."""
    path = (root or data_root()) / "ailuminate" / "airr_official_1.0_demo_en_us_prompt_set_release.csv"
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            code = AILUMINATE_TO_CODE[row["hazard"]]
            labels: dict[str, int | None] = {c: int(c == code) for c in CATEGORIES}
            labels["unsafe"] = 1
            out.append(Example(row["prompt_text"], labels, "ailuminate"))
    return out


def load_dataset(name: str, root: Path | None = None) -> list[Example]:
    """The evaluation sets by their CLI names: the test split where one exists."""
    if name == "openai-mod":
        return load_openai_moderation("test", root)
    if name == "xstest":
        return load_xstest(root)
    if name == "ailuminate":
        return load_ailuminate(root)
    raise ValueError(f"unknown dataset {name!r}; known: openai-mod, xstest, ailuminate")
