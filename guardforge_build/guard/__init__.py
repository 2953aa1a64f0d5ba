"""Trains the embedded text guard: the training texts written for it, the data it learns from, the trainer.

`guardforge_build.provenance` reads every module here as a source of training text, so only modules that train
the guard belong in this package.
"""

from pathlib import Path

import guardforge.guard

# The committed training texts (benign prompts, the hand-written image-prompt dev set) stay in the package that
# ships them beside the guard, so the model card's paths and the package data hold as they were.
GUARD_DATA_DIR = Path(guardforge.guard.__file__).resolve().parent / "data"
