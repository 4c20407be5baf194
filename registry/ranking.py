"""Ranking metrics over a score matrix, computed in chunks of queries: Recall@K, Precision@K, R-Precision.

Every evaluation in vlmops (caption queries, class queries) ranks all documents for each query. The
figures follow trec_eval's definitions, so they compare with published tables (ONiT, clip-retrieval):
- ``recall@K`` = relevant in the top K / relevant in all;
- ``precision@K`` = relevant in the top K / K, also when K exceeds the number of relevant documents or
  of documents (a class of 50 images scores at most 0.25 at K = 200);
- ``r_precision`` = relevant in the top R / R, where R is the number of relevant documents.

Ties are broken against the relevant documents: at equal score every irrelevant document ranks first.
The figure is then a lower bound that no tie can inflate. Stable order would reward dataset order
(a folder-per-class set lists each class together), and a collapsed model, scoring every image alike,
would look perfect on the first class.

Memory is one chunk of queries times all documents at a time, so 100 class queries over 10,000 images
(or 10,000 caption queries over 10,000 images) never hold more than ``chunk`` score rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

CHUNK = 64


@dataclass(frozen=True)
class Hits:
    """Per query: relevant documents in the top K (one column per K), in the top R, and R itself."""

    ks: tuple[int, ...]
    at_k: torch.Tensor  # [queries, len(ks)], int64
    at_r: torch.Tensor  # [queries], int64
    n_relevant: torch.Tensor  # [queries], int64

    def select(self, rows: torch.Tensor) -> Hits:
        return Hits(self.ks, self.at_k[rows], self.at_r[rows], self.n_relevant[rows])

    def per_query(self, prefix: str) -> dict[str, torch.Tensor]:
        """Each metric per query (float64); a query with nothing relevant scores 0, as in torchmetrics."""
        rel = self.n_relevant.clamp(min=1).double()
        out: dict[str, torch.Tensor] = {}
        for j, k in enumerate(self.ks):
            hits = self.at_k[:, j].double()
            out[f"{prefix}_recall@{k}"] = torch.where(self.n_relevant > 0, hits / rel, 0.0)
            out[f"{prefix}_precision@{k}"] = hits / k
        out[f"{prefix}_r_precision"] = torch.where(self.n_relevant > 0, self.at_r.double() / rel, 0.0)
        return out

    def macro(self, prefix: str) -> dict[str, float]:
        """The mean over queries of each metric."""
        return {k: float(v.mean()) if v.numel() else float("nan") for k, v in self.per_query(prefix).items()}

    def micro(self, prefix: str, suffix: str = "_micro") -> dict[str, float]:
        """Pooled over queries: total hits over total relevant (recall, R-Precision) or total retrieved."""
        n_q = len(self.n_relevant)
        rel = max(int(self.n_relevant.sum()), 1)
        out: dict[str, float] = {}
        for j, k in enumerate(self.ks):
            hits = int(self.at_k[:, j].sum())
            out[f"{prefix}_recall@{k}{suffix}"] = hits / rel
            out[f"{prefix}_precision@{k}{suffix}"] = hits / max(k * n_q, 1)
        out[f"{prefix}_r_precision{suffix}"] = int(self.at_r.sum()) / rel
        return out


def rank_hits(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> Hits:
    """Hits for a [queries, docs] score matrix and its boolean relevance matrix (one chunk)."""
    n_docs = scores.shape[1]
    # two stable sorts: irrelevant first, then by score; at a tie the earlier (irrelevant) stays ahead
    by_rel = torch.sort(relevant.to(torch.int8), dim=1, stable=True).indices
    by_score = torch.sort(scores.gather(1, by_rel), dim=1, descending=True, stable=True).indices
    ranked = relevant.gather(1, by_rel.gather(1, by_score))
    cum = torch.cumsum(ranked.to(torch.int64), dim=1)
    cum = torch.cat([torch.zeros(len(cum), 1, dtype=torch.int64), cum], dim=1)  # cum[:, k] = hits in the top k
    n_rel = cum[:, -1]
    at_k = torch.stack([cum[:, min(k, n_docs)] for k in ks], dim=1) if ks else torch.zeros(len(cum), 0)
    at_r = cum.gather(1, n_rel.clamp(max=n_docs)[:, None]).squeeze(1)
    return Hits(tuple(ks), at_k.to(torch.int64), at_r, n_rel)


def chunked_hits(
    queries: torch.Tensor,
    docs: torch.Tensor,
    relevance: Callable[[slice], torch.Tensor],
    ks: Sequence[int],
    chunk: int = CHUNK,
) -> Hits:
    """Hits of every query (rows of ``queries``) over every document (rows of ``docs``), by dot product.

    ``relevance(rows)`` gives the boolean [len(rows), docs] relevance of a chunk of queries."""
    parts = []
    for start in range(0, len(queries), chunk):
        rows = slice(start, start + chunk)
        parts.append(rank_hits(queries[rows] @ docs.T, relevance(rows), ks))
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64)
        return Hits(tuple(ks), torch.zeros(0, len(ks), dtype=torch.int64), empty, empty)
    return Hits(
        tuple(ks),
        torch.cat([p.at_k for p in parts]),
        torch.cat([p.at_r for p in parts]),
        torch.cat([p.n_relevant for p in parts]),
    )
