"""One run in several processes (torchrun, SLURM, Lightning's launcher): rank 0 prepares, every rank agrees.

Rank 0 alone screens the training data and makes the class images: one guard decision, one set of audit
rows, one set of class images, whatever the guard backend (a remote Llama Guard need not answer every rank
alike). The other ranks skip that phase and, once all have joined the process group (Lightning's set-up),
take rank 0's outcome: the very files it screened, or its error, which every rank then raises, so that no
rank trains on data another refused and none waits for a rank that stopped.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from guardforge.errors import GuardforgeError
from guardforge.train.dreambooth.config import DreamBoothConfig


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, as its launcher said in the environment before any group exists."""
    env = os.environ
    if env.get("RANK") is not None:  # torchrun
        return int(env["RANK"]) == 0
    node = int(env.get("NODE_RANK") or 0)  # Lightning's launcher, on the nodes after the first
    # The processes Lightning's launcher starts; checked before SLURM's rank, which they inherit from the first.
    if env.get("LOCAL_RANK") is not None:
        return node == 0 and int(env["LOCAL_RANK"]) == 0
    if env.get("SLURM_PROCID") is not None:  # srun, one task per process
        return int(env["SLURM_PROCID"]) == 0
    return node == 0


def others_started(config: DreamBoothConfig) -> bool:
    """Whether other processes of this run are already running and will wait for rank 0 in the process group.

    Not so under Lightning's own launcher on one node: it starts the other ranks at fit, after preparation, so
    an error there stops the run before they exist.
    """
    world = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
    return config.num_nodes > 1 or int(world) > 1


@dataclass
class Prepared:
    """What rank 0 trains on (instance and class image files), or why nothing is trained."""

    instance_paths: list[Path] = field(default_factory=list)
    class_paths: list[Path] = field(default_factory=list)
    error: BaseException | None = None

    def portable(self) -> Prepared:
        """This, as every rank can unpickle it: an error that does not survive pickling (one whose constructor
        takes other arguments than its message) travels as a GuardforgeError with its message."""
        if self.error is None:
            return self
        try:
            pickle.loads(pickle.dumps(self.error))
        except Exception:
            return Prepared(error=GuardforgeError(str(self.error)))
        return self


class SharePreparation(L.Callback):
    """At set-up, every rank takes rank 0's `Prepared` (the others pass None) and trains on its files or raises
    its error. In a single process the broadcast returns rank 0's own."""

    def __init__(self, prepared: Prepared | None):
        self.prepared = prepared

    def setup(self, trainer, pl_module, stage: str) -> None:
        own = self.prepared
        prepared: Prepared | None = trainer.strategy.broadcast(own.portable() if own else None, src=0)
        if prepared is None:  # Lightning's rank 0 is a process whose environment said otherwise
            raise GuardforgeError(
                "this process's environment (RANK, LOCAL_RANK, SLURM_PROCID or NODE_RANK) names it a rank other than "
                "0, but Lightning runs it as rank 0 of a single-process run: unset those variables, or launch "
                "every rank (torchrun, srun) with num_nodes and devices to match")
        if prepared.error is not None:
            raise own.error if own is not None else prepared.error  # rank 0 raises its own, with its traceback
        trainer.datamodule.use_paths(prepared.instance_paths, prepared.class_paths)
