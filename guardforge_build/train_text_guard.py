"""`python -m guardforge_build.train_text_guard [OPTIONS]`: retrain the embedded text guard and write it into
guardforge/assets/guard/ (or --out DIR)."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything it needs is local; never reach for the hub

from guardforge.guard.backends.embedded_text import ASSETS_DIR
from guardforge_build.guard.text import TrainConfig, train_text_guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep frozen-encoder features here to retrain the head without re-encoding")
    parser.add_argument("--encoder-from", type=Path, default=None,
                        help="keep this trained guard's adapter, head and settings; refit only the TF-IDF, "
                             "the signals asked for (--profanity-signal), the calibration and the threshold")
    parser.add_argument("--retrain-head", action="store_true",
                        help="with --encoder-from: keep its adapter, train a new head on today's data")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="a trained guard (same LoRA rank) whose adapter and head the LoRA run starts from")
    for f in fields(TrainConfig):
        if isinstance(f.default, bool):  # --quantize / --no-quantize: type=bool would read "False" as true
            parser.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                                default=f.default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args()
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    train_text_guard(args.out, config, cache_dir=args.cache_dir, encoder_from=args.encoder_from,
                     retrain_head=args.retrain_head, init_from=args.init_from)


if __name__ == "__main__":
    main()
