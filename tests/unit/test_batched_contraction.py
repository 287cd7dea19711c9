"""The batched feature contraction (GPU, and bfloat16 rows on a CPU) against one GEMM per position."""

import pytest
import torch

import attrbench.backends.gqa_shared as gqa_shared
from attrbench.backends.exact.columns import Columns, PaddedLayer

D_MODEL, N_POS, BATCH = 8, 6, 5


def layer_columns(counts: list[int]) -> Columns:
    """One layer whose position ``p`` has ``counts[p]`` feature columns (then 2 error/token columns)."""
    generator = torch.Generator().manual_seed(0)
    n = sum(counts)
    bounds = [0] + torch.tensor(counts).cumsum(0).tolist()
    decoders = torch.randn(n, D_MODEL, generator=generator)
    return Columns(decoders=decoders, bounds=[bounds], error_offset=n, token_offset=n + 1, width=n + 2)


def per_position(columns: Columns, grad: torch.Tensor) -> torch.Tensor:
    bounds = columns.bounds[0]
    out = torch.zeros(grad.shape[0], columns.width)
    for p in range(grad.shape[1]):
        out[:, bounds[p] : bounds[p + 1]] = grad[:, p] @ columns.decoders[bounds[p] : bounds[p + 1]].T
    return out


# empty positions first, in the middle and last; a crowded position; every position filled; all but the
# first (BOS, which never has features); none
@pytest.mark.parametrize(
    "counts", [[0, 3, 0, 0, 7, 1], [0, 0, 0, 0, 0, 4], [2, 1, 3, 1, 1, 2], [0, 1, 3, 1, 1, 2], [0, 0, 0, 0, 0, 0]]
)
@pytest.mark.parametrize("positions", [N_POS, 4, 1])
@pytest.mark.parametrize("gather", [False, True])
def test_batched_contraction_matches_per_position_gemms(counts, positions, gather, monkeypatch):
    if gather:
        monkeypatch.setattr(gqa_shared, "GATHER_DEVICES", ("cuda", "cpu"))
    columns = layer_columns(counts)
    grad = torch.randn(BATCH, positions, D_MODEL, generator=torch.Generator().manual_seed(1))
    expected = per_position(columns, grad)
    out = torch.zeros(BATCH, columns.width)
    gqa_shared._batched_into(out, grad, columns, 0, accumulate=False)
    torch.testing.assert_close(out, expected)
    gqa_shared._batched_into(out, grad, columns, 0, accumulate=True)
    torch.testing.assert_close(out, 2 * expected)


def test_padded_layer_has_a_slot_per_position_with_columns_only():
    padded = PaddedLayer.of(torch.randn(11, D_MODEL), [0, 0, 3, 3, 3, 10, 11])
    assert padded.positions == [1, 4, 5]
    assert padded.decoders.shape == (3, 7, D_MODEL)  # width: the crowded position's 7 columns
    assert padded.slots == [0, 0, 1, 1, 1, 2, 3]
    assert padded.ends == [0, 0, 3, 3, 3, 10, 11]
