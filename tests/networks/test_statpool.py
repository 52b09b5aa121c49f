"""StatsPoolTDNN (statistics pooling, hidden states) and the safetensors network export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddlight.io import save_tensors
from ddlight.networks import StatsPoolTDNN, build_network, statistics_pooling
from ddlight.networks.export import load_network, save_network

SHAPE = (3, 10, 17)


def test_statistics_pooling_is_mean_then_std_over_time() -> None:
    frames = torch.tensor([[[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]]])  # [B=1, D=2, T=4]
    pooled = statistics_pooling(frames, eps=0.0)
    assert pooled.shape == (1, 4)
    torch.testing.assert_close(pooled[0, :2], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(pooled[0, 2:], torch.tensor([(3.5) ** 0.5, 0.0]))  # population std of 1,2,3,6


def test_hidden_states_agree_with_forward_and_pooling() -> None:
    torch.manual_seed(0)
    net = StatsPoolTDNN(SHAPE, 4, width=8, embed_dim=8).eval()
    x = torch.randn(2, *SHAPE)
    states = net.hidden_states(x)
    assert states.frames.shape == (2, 8, SHAPE[2])  # "same" padding keeps every frame
    assert states.pooled.shape == (2, 16) and states.logits.shape == (2, 4)
    torch.testing.assert_close(states.logits, net(x))
    torch.testing.assert_close(states.pooled, statistics_pooling(net.frames(x)))


@pytest.mark.parametrize(("kwargs", "match"), [({"width": 0}, "width"), ({"dropout": 1.0}, "dropout")])
def test_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StatsPoolTDNN(SHAPE, 4, **kwargs)


def test_export_round_trip_keeps_weights_and_batchnorm_statistics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("statpool", SHAPE, 5, width=8, embed_dim=8)
    net.train()
    for _ in range(3):  # move the running statistics away from their initial values
        net(torch.randn(6, *SHAPE) * 3 + 1)
    net.eval()
    path = save_network(tmp_path / "t.safetensors", net, "statpool", {"width": 8, "embed_dim": 8},
                        info={"test_accuracy": 91.5}, extras={"feature_mean": torch.ones(3, 10, 1)})
    loaded, header, extras = load_network(path)
    x = torch.randn(4, *SHAPE)
    torch.testing.assert_close(loaded(x), net(x))
    assert not loaded.training
    assert header["network"] == "statpool" and header["info"]["test_accuracy"] == 91.5
    assert header["in_shape"] == list(SHAPE) and header["num_classes"] == 5
    torch.testing.assert_close(extras["feature_mean"], torch.ones(3, 10, 1))


def test_load_network_names_the_file_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_network(tmp_path / "missing.safetensors")
    plain = save_tensors(tmp_path / "plain.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="not a network exported by ddlight"):
        load_network(plain)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_network(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"ddlight": '{"format": "x"}'})
    with pytest.raises(ValueError, match="NetworkExport"):
        load_network(tmp_path / "other.safetensors")
