"""SpecAugment: differentiable, masks really mask, identity in eval mode or when disabled."""

from __future__ import annotations

import pytest
import torch

from ddlight.augment import SpecAugment


def test_differentiable_and_masked_values_get_no_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 20, 40, requires_grad=True)
    aug = SpecAugment(p=1.0, max_shift=0.0, time_masks=1, max_time_mask=0.5, freq_masks=1, max_freq_mask=0.5)
    out = aug(x)
    out.sum().backward()
    zeroed = out.detach() == 0
    assert zeroed.any()  # something was masked
    # a masked value contributes nothing; every kept value has gradient exactly 1
    assert torch.equal(x.grad, (~zeroed).float())


def test_masks_are_whole_bands() -> None:
    torch.manual_seed(1)
    x = torch.ones(32, 1, 10, 50)
    out = SpecAugment(p=1.0, max_shift=0.0, freq_masks=0, time_masks=1, max_time_mask=0.2)(x)
    frames_masked = (out == 0).all(dim=2).squeeze(1)  # [B, T]: a time mask covers every bin of a frame
    assert torch.equal((out == 0).any(dim=2).squeeze(1), frames_masked)
    assert 0 < frames_masked.sum(1).max() <= 10  # at most 20 % of T


def test_zero_shift_moves_content_and_pads_with_zeros() -> None:
    torch.manual_seed(2)
    x = torch.arange(1, 9.0).repeat(64, 1, 2, 1)  # [64, 1, 2, 8], every frame non-zero
    out = SpecAugment(p=1.0, max_shift=0.5, shift_mode="zero", time_masks=0, freq_masks=0)(x)
    shifted = ~(out == x).all(dim=(1, 2, 3))
    assert shifted.any()
    padded = (out == 0).any(dim=(1, 2, 3))
    assert torch.equal(padded, shifted)  # every shifted sample has zeros shifted in
    rolled = SpecAugment(p=1.0, max_shift=0.5, shift_mode="roll", time_masks=0, freq_masks=0)(x)
    assert torch.equal(rolled.sort(-1).values, x)  # a roll keeps every frame


def test_identity_in_eval_mode_or_disabled() -> None:
    x = torch.randn(4, 1, 8, 16)
    aug = SpecAugment(p=1.0, gain=0.5, noise=1.0)
    assert not torch.equal(aug(x), x)
    assert aug.eval()(x) is x
    assert SpecAugment(p=1.0, noise=1.0, enabled=False)(x) is x
    with pytest.raises(ValueError, match="shift_mode"):
        SpecAugment(shift_mode="flip")


def test_a_seeded_generator_replays_the_same_augmentation() -> None:
    augment = SpecAugment(p=1.0, gain=0.2, noise=0.1)
    x = torch.randn(6, 1, 16, 40)
    first = augment(x, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG plays no part
    again = augment(x, torch.Generator().manual_seed(3))
    other = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
