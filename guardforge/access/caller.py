"""Who asks: the per-key rules (owner, priority cap, job cap, rate limit) every interface hands Studio as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from guardforge.errors import Forbidden

LOCAL_OWNER = "local"  # the open server's user on this machine, and the CLI's: no key, no caps
Charge = Callable[[int], None]  # spends rate-limit tokens; raises RateLimited when the bucket is short


@dataclass(frozen=True)
class Caller:
    owner: str = LOCAL_OWNER  # whose jobs, images and options these are: the API key's id, or "local"
    key_id: str | None = None
    max_priority: int | None = None  # the highest job priority the key may ask for; None: no cap
    max_active: int | None = None  # queued + running jobs the key may have at once; None: no cap
    # Studio spends from it once a request has passed the checks that cost nothing, before the work: a refused
    # malformed request is free.
    charge: Charge | None = field(default=None, compare=False, repr=False)

    def check_priority(self, priority: int) -> None:
        if self.max_priority is not None and priority > self.max_priority:
            raise Forbidden(f"priority {priority} is above this key's max_priority of {self.max_priority}; ask the "
                            "server's admin for a key with a higher one (guardforge keys create --max-priority N)")

    def spend(self, cost: int = 1) -> None:
        if self.charge is not None:
            self.charge(cost)


LOCAL = Caller()
