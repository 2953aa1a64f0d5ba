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
import random
from dataclasses import dataclass
from pathlib import Path

from guardforge.guard.training.benign import BENIGN_PROMPTS_PATH

# The order of the head's outputs: the thirteen hazard codes the text data can teach, then overall unsafe.
CATEGORIES: tuple[str, ...] = tuple(f"S{i}" for i in range(1, 14))
OUTPUTS: tuple[str, ...] = CATEGORIES + ("unsafe",)

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
    repo = Path(__file__).resolve().parents[3]
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


def load_benign(path: Path = BENIGN_PROMPTS_PATH) -> list[Example]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [Example(t, {**{c: 0 for c in CATEGORIES}, "unsafe": 0}, "benign") for t in lines if t]


def load_dataset(name: str, root: Path | None = None) -> list[Example]:
    """The evaluation sets by their CLI names: the test split where one exists."""
    if name == "openai-mod":
        return load_openai_moderation("test", root)
    if name == "xstest":
        return load_xstest(root)
    if name == "ailuminate":
        return load_ailuminate(root)
    raise ValueError(f"unknown dataset {name!r}; known: openai-mod, xstest, ailuminate")


def _labelled(rows: list[tuple[str, str | None]], source: str) -> list[Example]:
    """(text, category or None) rows written here: unsafe in that category and no other, or safe in all."""
    return [Example(text, {**{c: int(c == code) for c in CATEGORIES}, "unsafe": int(code is not None)}, source)
            for text, code in rows]


def written_examples() -> list[Example]:
    """The training data written for this project beyond benign_prompts.txt: image prompts (unsafe in S1-S13 and
    safe look-alikes, guard/training/image_prompts.py) and short plain requests with their benign twins
    (guard/training/requests.py)."""
    from guardforge.guard.training.image_prompts import image_prompt_rows
    from guardforge.guard.training.requests import request_rows

    return _labelled(image_prompt_rows(), "image-prompts") + _labelled(request_rows(), "requests")


IMAGE_PROMPTS_DEV_PATH = Path(__file__).resolve().parent.parent / "data" / "image_prompts_dev.tsv"


def load_image_prompts_dev(path: Path = IMAGE_PROMPTS_DEV_PATH) -> list[Example]:
    """Image prompts written by hand, apart from the generators and never trained on: with the validation slice,
    they choose the shipped threshold (the templates' own rows are too easy to choose it on)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            code = row["category"] or None
            labels = {c: (int(c == code) if int(row["label"]) == 0 or code else None) for c in CATEGORIES}
            out.append(Example(row["prompt"], {**labels, "unsafe": int(row["label"])}, "image-dev"))
    return out


def coco_everyday_examples(skip: int = 3000, rows: int = 4000, seed: int = 0) -> list[Example]:
    """COCO train captions that t2i_training_examples(coco_rows=skip) leaves out: `rows` of them, to measure the
    false-positive rate on everyday image prompts precisely when choosing the threshold (never trained on)."""
    from guardforge.guard.t2i_data import load_coco

    coco = load_coco("train")
    order = random.Random(seed).sample(range(len(coco)), len(coco))
    trained = {coco[i].text for i in order[:skip]}  # COCO repeats captions: none of these may be a trained one
    return [e for e in (coco[i] for i in order[skip:skip + rows]) if e.text not in trained]


def t2i_training_examples(coco_rows: int = 3000, seed: int = 0) -> list[Example]:
    """The train splits of the shared image-prompt sets (../shared/data/t2i): PartiPrompts and a seeded sample
    of `coco_rows` COCO captions as safe, and I2P with a soft overall label, the share of Stable Diffusion's
    images of the prompt that were judged inappropriate (its categories unknown: I2P says what a prompt was
    gathered for, not what it asks)."""
    import csv

    from guardforge.guard.t2i_data import load_coco, load_parti, t2i_data_root

    coco = load_coco("train")
    coco = [coco[i] for i in random.Random(seed).sample(range(len(coco)), len(coco))[:coco_rows]]
    i2p = []
    with open(t2i_data_root() / "i2p.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if openai_split(row["prompt"]) == "train":
                share = min(1.0, max(0.0, float(row["inappropriate_percentage"]) / 100))
                labels: dict[str, float | int | None] = {c: None for c in CATEGORIES}
                labels["unsafe"] = share
                labels["hard"] = int(row["hard"])  # not an output: kept to measure the ranking on held-out rows
                i2p.append(Example(row["prompt"], labels, "i2p"))
    return load_parti("train") + coco + i2p


def training_examples(root: Path | None = None) -> list[Example]:
    """Everything the embedded text guard may learn from: never XSTest, never the OpenAI test split, never a
    test row of the image-prompt sets."""
    return (load_openai_moderation("train", root) + load_ailuminate(root) + load_benign() + written_examples()
            + t2i_training_examples())


def train_validation_split(examples: list[Example], validation_fraction: float = 0.15,
                           seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Hold out a stratified slice (by source and overall label) for calibration and threshold choice."""
    rng = random.Random(seed)
    groups: dict[tuple[str, int], list[Example]] = {}
    for ex in examples:
        groups.setdefault((ex.source, ex.unsafe), []).append(ex)
    train, validation = [], []
    for key in sorted(groups):
        items = groups[key][:]
        rng.shuffle(items)
        n_val = round(len(items) * validation_fraction)
        validation.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, validation
