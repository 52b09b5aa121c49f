"""Multi-formation in time: decoding, packing and their errors."""

from __future__ import annotations

import pytest
import torch

from ddlight.distillers.formation import decode, encode, segment_lengths


def _piecewise(values: list[list[float]], frames: int) -> torch.Tensor:
    """Stored samples ``[N, 2, 3, frames]`` whose k-th time segment is the constant ``values[i][k]``."""
    rows = []
    for sample in values:
        parts = [torch.full((2, 3, n), v) for v, n in zip(sample, segment_lengths(frames, len(sample)))]
        rows.append(torch.cat(parts, dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize("frames", [8, 9])
def test_decode_stretches_each_segment_to_a_sample_in_order(frames: int) -> None:
    stored = _piecewise([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], frames)
    decoded = decode(stored, 3)
    assert decoded.shape == (6, 2, 3, frames)
    # a constant segment stretches to a constant sample; sample i's segments are rows 3i, 3i+1, 3i+2
    for row, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]):
        torch.testing.assert_close(decoded[row], torch.full((2, 3, frames), value))


def test_decode_of_a_linear_segment_is_the_linear_interpolation() -> None:
    stored = torch.arange(8.0).view(1, 1, 1, 8)  # segments [0 1 2 3] and [4 5 6 7]
    decoded = decode(stored, 2)
    # frame j of 8 reads position (j + 0.5) / 2 - 0.5 of the 4-frame segment, clamped at the edges
    expected = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    torch.testing.assert_close(decoded[0, 0, 0], expected)
    torch.testing.assert_close(decoded[1, 0, 0], expected + 4)


def test_encode_packs_groups_that_decode_back() -> None:
    samples = torch.stack([torch.full((2, 3, 10), float(v)) for v in range(6)])
    stored = encode(samples, 2)
    assert stored.shape == (3, 2, 3, 10)
    torch.testing.assert_close(stored, _piecewise([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], 10))
    torch.testing.assert_close(decode(stored, 2), samples)  # time-constant samples survive the round trip
    assert encode(samples, 1) is samples and decode(stored, 1) is stored


def test_decode_passes_every_gradient_back_to_the_stored_samples() -> None:
    stored = torch.randn(2, 1, 4, 12, requires_grad=True)
    decode(stored, 3).sum().backward()
    # linear interpolation's weights of every output frame sum to 1: the stored set gets the whole output's mass
    assert stored.grad.sum().item() == pytest.approx(2 * 3 * 4 * 12)
    assert (stored.grad > 0).all()


def test_bad_factors_are_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and the 8 frames of a sample, got 0"):
        decode(torch.zeros(1, 1, 1, 8), 0)
    with pytest.raises(ValueError, match="between 1 and the 8 frames of a sample, got 9"):
        encode(torch.zeros(9, 1, 1, 8), 9)
    with pytest.raises(ValueError, match="5 samples do not pack into groups of 2"):
        encode(torch.zeros(5, 1, 1, 8), 2)
