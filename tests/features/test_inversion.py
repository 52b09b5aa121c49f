"""Feature inversion: Griffin-Lim, mel → linear, inverse DCT and ``invert`` against librosa."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.fft
import torch

from ddlight.features import FDMFCC, MFCC, AudioFeatures, LogMel, dct_matrix
from ddlight.features.griffin_lim import consistency_projection, griffin_lim, istft, stft
from ddlight.features.inversion import idct, mel_to_linear, nnls, spectral_convergence

SAMPLE_RATE = 16000  # the front ends' default, as in conftest.harmonic_clips
N_FFT, HOP = 512, 160


def magnitude(waves: torch.Tensor) -> torch.Tensor:
    return stft(waves, N_FFT, HOP).abs()


def test_griffin_lim_as_good_as_librosa(clips: np.ndarray) -> None:
    target = magnitude(torch.from_numpy(clips))
    generator = torch.Generator().manual_seed(0)
    ours = griffin_lim(target, N_FFT, HOP, n_iter=32, momentum=0.99, generator=generator)
    theirs = np.stack([
        librosa.griffinlim(m, n_iter=32, momentum=0.99, hop_length=HOP, n_fft=N_FFT, random_state=0)
        for m in target.numpy()
    ])
    ours_sc = spectral_convergence(target, magnitude(ours)).mean()
    theirs_sc = spectral_convergence(target, magnitude(torch.from_numpy(theirs))).mean()
    assert ours_sc <= theirs_sc * 1.1 + 1e-3


@pytest.mark.parametrize("momentum", [0.0, 0.99])
def test_griffin_lim_zero_phase_init_reproduces_librosa(clips: np.ndarray, momentum: float) -> None:
    target = magnitude(torch.from_numpy(clips[:2]))
    ours = griffin_lim(target, N_FFT, HOP, n_iter=32, momentum=momentum, init="zeros")
    theirs = np.stack([
        librosa.griffinlim(m, n_iter=32, momentum=momentum, hop_length=HOP, n_fft=N_FFT, init=None)
        for m in target.numpy()
    ])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3)


def test_griffin_lim_batched_equals_unbatched(clips: np.ndarray) -> None:
    target = magnitude(torch.from_numpy(clips))
    batched = griffin_lim(target, N_FFT, HOP, n_iter=8, init="zeros")
    single = torch.cat([griffin_lim(m[None], N_FFT, HOP, n_iter=8, init="zeros") for m in target])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_griffin_lim_length_and_errors() -> None:
    target = torch.rand(2, N_FFT // 2 + 1, 11)
    assert griffin_lim(target, N_FFT, HOP, n_iter=2).shape == (2, 10 * HOP)
    assert griffin_lim(target, N_FFT, HOP, n_iter=2, length=1234).shape == (2, 1234)
    with pytest.raises(ValueError, match=r"expected magnitude \[B, 257, T\]"):
        griffin_lim(target[:, :-1], N_FFT, HOP)
    with pytest.raises(ValueError, match="init"):
        griffin_lim(target, N_FFT, HOP, init="ones")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n_fft", "hop"), [(512, 160), (255, 64), (64, 32)])
def test_consistency_projection_is_stft_of_istft(n_fft: int, hop: int) -> None:
    spectrum = torch.randn(2, n_fft // 2 + 1, 13, dtype=torch.complex64)
    project = consistency_projection(n_fft, hop, 2, 13, spectrum.real)
    expected = stft(istft(spectrum, n_fft, hop), n_fft, hop)
    frame_major = spectrum.transpose(1, 2).contiguous()
    projected = project(frame_major, torch.empty_like(frame_major))
    torch.testing.assert_close(projected.transpose(1, 2), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="gaps between windows"):
        consistency_projection(n_fft, n_fft + 1, 2, 13, spectrum.real)


def test_idct_inverts_orthonormal_dct() -> None:
    coeffs = torch.randn(3, 20, 7, dtype=torch.float64)
    expected = scipy.fft.idct(coeffs.numpy(), n=40, norm="ortho", axis=-2)
    np.testing.assert_allclose(idct(coeffs, dct_matrix(40, 20)).numpy(), expected, atol=1e-5)
    log_mel = torch.randn(3, 40, 7)
    torch.testing.assert_close(idct(dct_matrix(40, 40) @ log_mel, dct_matrix(40, 40)), log_mel,
                               atol=1e-5, rtol=1e-5)


def test_nnls_non_negative_and_better_than_pinv() -> None:
    basis = MFCC().melspec.mel_basis
    mel = basis @ torch.rand(4, basis.shape[1], 30, generator=torch.Generator().manual_seed(0)) ** 4

    def residual(linear: torch.Tensor) -> float:
        return float((basis @ linear - mel).norm() / mel.norm())

    solution = mel_to_linear(mel, basis, method="nnls")
    assert solution.shape == (4, basis.shape[1], 30)
    assert bool((solution >= 0).all())
    assert residual(solution) < 0.1 * residual(mel_to_linear(mel, basis, method="pinv"))
    assert residual(nnls(basis, mel, n_iter=300)) < residual(solution)


def test_spectral_convergence() -> None:
    ref = torch.rand(2, 5, 4) + 0.1
    torch.testing.assert_close(spectral_convergence(ref, ref), torch.zeros(2))
    torch.testing.assert_close(spectral_convergence(ref, torch.zeros_like(ref)), torch.ones(2))


def test_mfcc_invert_as_good_as_librosa(clips: np.ndarray) -> None:
    clips = clips[:2]  # librosa's per-clip L-BFGS-B NNLS is slow
    front = MFCC()
    waves = torch.from_numpy(clips)
    mfcc = front.extract(waves)
    ours = front.invert(mfcc, normalized=False, generator=torch.Generator().manual_seed(0))
    np.random.seed(0)  # librosa's Griffin-Lim draws its initial phase from the global generator
    theirs = np.stack([
        librosa.feature.inverse.mfcc_to_audio(
            m, n_mels=40, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, htk=False
        )
        for m in mfcc[:, 0].numpy()
    ])
    target = magnitude(waves)[..., :-1]  # the (T-1)*hop-sample rebuilds have one frame less
    ours_sc = spectral_convergence(target, magnitude(ours)[..., :-1])
    theirs_sc = spectral_convergence(target, magnitude(torch.from_numpy(theirs))[..., :-1])
    assert ours.shape == theirs.shape
    assert ours_sc.mean() <= theirs_sc.mean() + 1e-3


@pytest.mark.parametrize("cls", [LogMel, MFCC, FDMFCC])
def test_invert_normalised_features(cls: type[AudioFeatures], clips: np.ndarray) -> None:
    front = cls()
    waves = torch.from_numpy(clips)
    front.fit_normalization([waves])
    rebuilt = front.invert(front(waves), n_iter=16, length=clips.shape[1])
    assert rebuilt.shape == waves.shape
    assert bool(torch.isfinite(rebuilt).all())
    assert float(spectral_convergence(magnitude(waves), magnitude(rebuilt)).max()) < 0.8


def test_fdmfcc_static_from_deltas(clips: np.ndarray) -> None:
    front = FDMFCC()
    waves = torch.from_numpy(clips)
    front.fit_normalization([waves])
    clean = front.extract(waves)
    torch.testing.assert_close(front.static_from_deltas(clean), clean[:, 0], atol=1e-3, rtol=1e-4)
    noise = 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = front.denormalize(front.normalize(clean) + noise)
    error = (front.static_from_deltas(noisy) - clean[:, 0]).norm()
    assert error < 0.8 * (noisy[:, 0] - clean[:, 0]).norm()


@pytest.mark.parametrize(
    ("shape", "got"),
    [
        ((2, 1, 20, 9), r"\[2, 1, 20, 9\]"),
        ((2, 3, 40, 9), r"\[2, 3, 40, 9\]"),
        ((3, 20, 9), r"\[3, 20, 9\]"),
    ],
)
def test_invert_rejects_wrong_shape(shape: tuple[int, ...], got: str) -> None:
    with pytest.raises(ValueError, match=r"FDMFCC expects features \[B, 3, 20, T\], got " + got):
        FDMFCC().invert(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_invert_rejects_non_finite(bad: float) -> None:
    feats = torch.zeros(1, 1, 20, 9)
    feats[0, 0, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        MFCC().invert(feats)


def test_invert_rejects_overflowing_features() -> None:
    with pytest.raises(ValueError, match="non-finite audio"):
        LogMel().invert(torch.full((1, 1, 40, 9), 1e4), n_iter=1, normalized=False)
