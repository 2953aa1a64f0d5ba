"""The embedded text guard's training data: the shared sets' train rows and the texts written for this project.

The shared sets are read through guardforge.guard.datasets with the splits evaluation uses, so no test row
is trained on. Nothing here copies the data into the project.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from guardforge.guard.datasets import CATEGORIES, Example, load_ailuminate, load_openai_moderation
from guardforge_build.guard import GUARD_DATA_DIR
from guardforge_build.guard.benign import BENIGN_PROMPTS_PATH

# The order of the head's outputs: the thirteen hazard codes the text data can teach, then overall unsafe.
OUTPUTS: tuple[str, ...] = CATEGORIES + ("unsafe",)


def load_benign(path: Path = BENIGN_PROMPTS_PATH) -> list[Example]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [Example(t, {**{c: 0 for c in CATEGORIES}, "unsafe": 0}, "benign") for t in lines if t]


def _labelled(rows: list[tuple[str, str | None]], source: str) -> list[Example]:
    """(text, category or None) rows written here: unsafe in that category and no other, or safe in all."""
    return [Example(text, {**{c: int(c == code) for c in CATEGORIES}, "unsafe": int(code is not None)}, source)
            for text, code in rows]


def written_examples() -> list[Example]:
    """The training data written for this project beyond benign_prompts.txt: image prompts (unsafe in S1-S13 and
    safe look-alikes, guardforge_build/guard/image_prompts.py), short plain requests with their benign twins
    (guardforge_build/guard/requests.py) and questions whose frame both sides share (guardforge_build/guard/contrasts.py)."""
    from guardforge_build.guard.contrasts import contrast_rows
    from guardforge_build.guard.image_prompts import image_prompt_rows
    from guardforge_build.guard.requests import request_rows

    return (_labelled(image_prompt_rows(), "image-prompts") + _labelled(request_rows(), "requests")
            # A source of its own whose name sorts after every other, so that the stratified split of the older
            # sources stays what it was (a continued run never validates on a row its starting weights trained on).
            + _labelled(contrast_rows(), "requests-contrast"))


IMAGE_PROMPTS_DEV_PATH = GUARD_DATA_DIR / "image_prompts_dev.tsv"


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


def _shuffled_coco_train(seed: int) -> list[Example]:
    """COCO's train captions in one seeded order: the training sample takes its head, the everyday check the
    rows after it."""
    from guardforge.guard.t2i_data import load_coco

    coco = load_coco("train")
    return [coco[i] for i in random.Random(seed).sample(range(len(coco)), len(coco))]


def coco_everyday_examples(skip: int = 3000, rows: int = 4000, seed: int = 0) -> list[Example]:
    """COCO train captions that t2i_training_examples(coco_rows=skip) leaves out: `rows` of them, to measure the
    false-positive rate on everyday image prompts precisely when choosing the threshold (never trained on)."""
    coco = _shuffled_coco_train(seed)
    trained = {e.text for e in coco[:skip]}  # COCO repeats captions: none of these may be a trained one
    return [e for e in coco[skip:skip + rows] if e.text not in trained]


def t2i_training_examples(coco_rows: int = 3000, seed: int = 0) -> list[Example]:
    """The train splits of the shared image-prompt sets (../shared/data/t2i): PartiPrompts and a seeded sample
    of `coco_rows` COCO captions as safe, and I2P with a soft overall label, the share of Stable Diffusion's
    images of the prompt that were judged inappropriate (its categories unknown: I2P says what a prompt was
    gathered for, not what it asks)."""
    from guardforge.guard.t2i_data import i2p_rows, load_parti

    i2p = []
    for row in i2p_rows("train"):
        share = min(1.0, max(0.0, float(row["inappropriate_percentage"]) / 100))
        labels: dict[str, float | int | None] = {c: None for c in CATEGORIES}
        labels["unsafe"] = share
        labels["hard"] = int(row["hard"])  # not an output: kept to measure the ranking on held-out rows
        i2p.append(Example(row["prompt"], labels, "i2p"))
    return load_parti("train") + _shuffled_coco_train(seed)[:coco_rows] + i2p


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
