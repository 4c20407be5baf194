"""The toy CLIP trains only the token-embedding rows its captions use: the weights must be the ones training the
whole table gives (AdamW with no decay leaves rows without a gradient where they are)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from registry.toy_clip import RowsEmbedding


def _steps(embedding: torch.nn.Module, batches: list[torch.Tensor], head: torch.Tensor) -> None:
    opt = torch.optim.AdamW(embedding.parameters(), lr=0.05, weight_decay=0.0)
    for tokens in batches:
        loss = F.cross_entropy(embedding(tokens).mean(dim=1) @ head, tokens[:, 0] % head.shape[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_training_the_used_rows_gives_the_weights_of_training_the_whole_table() -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(500, 8, generator=gen)
    head = torch.randn(8, 5, generator=gen)
    used = torch.tensor([0, 3, 17, 42, 99, 250, 499])
    batches = [used[torch.randint(len(used), (6, 4), generator=gen)] for _ in range(20)]

    whole = torch.nn.Embedding.from_pretrained(start.clone(), freeze=False)
    _steps(whole, batches, head)

    table = start.clone()
    rows = RowsEmbedding(table, torch.unique(torch.cat(batches).flatten()))
    assert torch.equal(rows(batches[0]), F.embedding(batches[0], start))  # the same lookup
    _steps(rows, batches, head)
    rows.write_back(table)

    assert torch.equal(table, whole.weight.detach())  # bit for bit, trained rows and untouched ones
    assert not torch.equal(table[used], start[used]) and torch.equal(table[1], start[1])
