"""Two rankings of one section made one: the shared-space (cosine) ranking and the keyword one.

Reciprocal rank fusion (Cormack et al. 2009): an item's fused score is
    sum over rankings r of  weight_r / (RRF_K + rank_r(item))      (ranks from 1)
so an item both rankings place well beats one that only one of them places first, and no
score scale has to agree with another (a cosine and a bm25 never meet). The cosine ranking is
the first `depth` nearest neighbours; a keyword hit beyond them is placed after them by its
own cosine (computed from its stored vector), so an exact token the model cannot read still
gets its semantic rank instead of none. bench/hybrid.py measured the weights (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RRF_K = 60  # the constant of the paper: damps the difference between the first few ranks


@dataclass(frozen=True)
class Fusion:
    """How the two rankings weigh (bench/hybrid.py compares choices)."""

    semantic: float = 1.0  # weight of the cosine ranking
    keyword: float = 1.0  # weight of the keyword ranking (items holding every word)
    k: int = RRF_K
    partial: float = 0.0  # weight of the ranking of items holding some of the words, by how
    # many (0: not asked; a query of one word has none)


DEFAULT_FUSION = Fusion()  # plain RRF: measured best (or tied) on bench/hybrid.py's queries


def fused(semantic: Sequence[tuple[int, float]], keyword: Sequence[int],
          cosines: Mapping[int, float], fusion: Fusion = DEFAULT_FUSION,
          partial: Sequence[int] = ()) -> list[tuple[int, float]]:
    """(id, cosine) best first, each id once.

    `semantic`: (id, cosine) best first; `keyword` (every word) and `partial` (some words):
    ids best first; `cosines`: the cosine of every keyword id (those missing from `semantic`
    are ranked after it by it). Ties of the fused score are broken by cosine, then id."""
    ranking = _deduplicated(semantic)
    cosine = {i: s for i, s in ranking}
    missed = sorted((i for i in dict.fromkeys([*keyword, *partial]) if i not in cosine),
                    key=lambda i: -cosines.get(i, -1.0))
    ranking += [(i, cosines.get(i, -1.0)) for i in missed]
    cosine.update(ranking)
    score: dict[int, float] = {}
    for rank, (i, _) in enumerate(ranking, 1):
        score[i] = fusion.semantic / (fusion.k + rank)
    for weight, ids in ((fusion.keyword, keyword), (fusion.partial, partial)):
        for rank, i in enumerate(dict.fromkeys(ids), 1):
            score[i] += weight / (fusion.k + rank)
    order = sorted(score, key=lambda i: (-score[i], -cosine[i], i))
    return [(i, cosine[i]) for i in order]


def _deduplicated(hits: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """Each id once, at its first (best) place."""
    seen: set[int] = set()
    out = []
    for i, s in hits:
        if i not in seen:
            seen.add(i)
            out.append((i, s))
    return out
