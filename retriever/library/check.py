"""`retriever check`: every saved index file read whole again; what is damaged, rebuilt.

Readers trust a saved FAISS file whose stat still matches the stamp its writer left, reading
only its head, the part parsed at open (index.checksums): damage the stamp cannot see (bit rot
below the file system) would go unnoticed there. `check` reads every file each kind's
.faiss.json lists whole against its CRC-32, with the writer's lock held; a kind with a damaged,
missing or stale file has its files deleted and saved again from the store (the truth), and
sound files whose stat changed (copied, restored) are stamped again. On a read-only index it
only reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from index.kinds import KINDS
from index.saved import Finding
from retriever.library.collection import Collection


@dataclass(frozen=True)
class CheckReport:
    findings: list[Finding]  # one per saved file (or .faiss.json) found wrong
    rebuilt: list[str]  # kinds whose files were saved again from the store

    @property
    def sound(self) -> bool:
        return not self.findings


def check_saved(collection: Collection, wait: bool = False) -> CheckReport:
    """Read every saved index file of `collection` whole; rebuild the kinds found damaged.
    `wait`: wait for a running `retriever index` instead of raising IndexBusy."""
    if collection.read_only:
        return CheckReport([f for kind in KINDS
                            for f in collection.saved(kind).verify(restamp=False)], [])
    with collection.writing(wait):
        found = {kind: collection.saved(kind).verify() for kind in KINDS}
        damaged = [kind for kind in KINDS if found[kind]]
        for kind in damaged:
            collection.saved(kind).remove()
        if damaged:
            collection.save()
    return CheckReport([f for kind in KINDS for f in found[kind]], damaged)
