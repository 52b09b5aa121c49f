"""Tests for ddlight.networks: shapes, embeddings, functional_call, differentiable unrolls."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ddlight.networks import NETWORKS, AudioNetwork, build_network, network_options

#: Small widths so that every network runs in milliseconds on a CPU; the architecture (and so
#: the shape logic under test) is the same as at the default width.
SMALL = {
    "convnet": {"width": 16},
    "resnet18": {"width": 8},
    "vgg11": {"width": 8},
    "mlp": {"width": 32},
    "tcresnet8": {},
    "cnn4": {"width": 8},
    "statpool": {"width": 16, "embed_dim": 16},
}
SHAPES = [(1, 20, 101), (3, 16, 32), (1, 40, 401), (1, 64, 32)]
NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run on one CPU thread: the networks are tiny and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(name: str, in_shape: tuple[int, int, int], **options: object) -> AudioNetwork:
    """A small instance of network ``name``."""
    return build_network(name, in_shape, NUM_CLASSES, **{**SMALL[name], **options})


def test_small_covers_registry() -> None:
    assert set(SMALL) == set(NETWORKS) == {
        "convnet",
        "resnet18",
        "vgg11",
        "mlp",
        "tcresnet8",
        "cnn4",
        "statpool",
    }


@pytest.mark.parametrize("in_shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(NETWORKS))
def test_output_and_embed_shapes(name: str, in_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = small(name, in_shape).eval()
    x = torch.randn(3, *in_shape)
    with torch.no_grad():
        logits, emb = net(x), net.embed(x)
    assert net.in_shape == in_shape
    assert net.num_classes == NUM_CLASSES
    assert logits.shape == (3, NUM_CLASSES)
    assert emb.shape == (3, net.embed_dim)
    assert torch.isfinite(logits).all()
    # embed really is the input of the last layer: the logits vary with the example
    assert not torch.allclose(logits[0], logits[1])


def test_in_shape_accepts_list() -> None:
    net = build_network("convnet", [1, 20, 101], 10)
    assert net.in_shape == (1, 20, 101)
    assert net.num_classes == 10


def test_convnet_stops_pooling_exhausted_axis() -> None:
    # (16, 32) over 4 blocks: F 16->8->4->2->1, T 32->16->8->4->2.
    assert build_network("convnet", (3, 16, 32), 10, depth=4).embed_dim == 128 * 1 * 2
    # F = 2 is pooled once and then left alone while T keeps halving.
    assert build_network("convnet", (1, 2, 64), 10).embed_dim == 128 * 1 * 8
    assert build_network("convnet", (1, 20, 101), 10, pooling="none").embed_dim == 128 * 20 * 101


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "none"])
@pytest.mark.parametrize("pooling", ["avg", "max", "none"])
def test_convnet_options(norm: str, pooling: str) -> None:
    net = build_network("convnet", (1, 8, 16), 4, width=8, depth=2, norm=norm, pooling=pooling)
    assert net(torch.randn(2, 1, 8, 16)).shape == (2, 4)
    has_norm = any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in net.modules())
    assert has_norm == (norm != "none")


@pytest.mark.parametrize("name", list(NETWORKS))
def test_functional_call_matches_module(name: str) -> None:
    torch.manual_seed(0)
    net = small(name, (1, 20, 101)).eval()
    x = torch.randn(2, 1, 20, 101)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    torch.testing.assert_close(functional_call(net, params, (x,)), net(x))
    # the dictionary, not the module's own tensors, is what gets used
    shifted = {k: v + 0.1 for k, v in params.items()}
    assert not torch.allclose(functional_call(net, shifted, (x,)), net(x))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_unrolled_sgd_is_differentiable_wrt_input(name: str) -> None:
    """Two functional SGD steps on synthetic data, then a real-data loss: d loss / d x_syn."""
    torch.manual_seed(0)
    in_shape = (1, 16, 32)
    net = small(name, in_shape).train()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    x_syn = torch.randn(4, *in_shape, requires_grad=True)
    y_syn = torch.arange(4) % NUM_CLASSES
    x_real, y_real = torch.randn(6, *in_shape), torch.arange(6) % NUM_CLASSES

    params: dict[str, Tensor] = {k: v.detach().clone().requires_grad_() for k, v in before.items()}
    for _ in range(2):
        loss = F.cross_entropy(functional_call(net, params, (x_syn,)), y_syn)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {k: p - 0.01 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    real_loss = F.cross_entropy(functional_call(net, params, (x_real,)), y_real)
    (grad_x,) = torch.autograd.grad(real_loss, x_syn)

    assert torch.isfinite(grad_x).all()
    assert grad_x.abs().sum() > 0
    for k, v in net.named_parameters():  # the unroll never touched the module's parameters
        torch.testing.assert_close(v, before[k])


def test_unknown_network_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown network 'resnet50'.*convnet.*tcresnet8"):
        build_network("resnet50", (1, 20, 101), 10)


def test_unknown_option_names_valid_options() -> None:
    with pytest.raises(TypeError, match="unknown option.*depht.*width, depth, norm"):
        build_network("convnet", (1, 20, 101), 10, depht=4)
    with pytest.raises(TypeError, match="it takes: width_mult, norm"):
        build_network("tcresnet8", (1, 20, 101), 10, width=2)


def test_network_options() -> None:
    assert network_options("resnet18") == ("norm", "width")
    assert network_options("cnn4") == ("width", "norm", "dropout")
    assert network_options("convnet") == (
        "width",
        "depth",
        "norm",
        "activation",
        "pooling",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"norm": "group"}, "unknown norm 'group'; valid: instance, batch, layer, none"),
        ({"pooling": "lp"}, "unknown pooling 'lp'"),
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"depth": 0}, "depth must be at least 1"),
    ],
)
def test_invalid_option_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_network("convnet", (1, 20, 101), 10, **options)


@pytest.mark.parametrize("in_shape", [(20, 101), (1, 0, 101), (1, 20, 101, 1)])
def test_invalid_in_shape(in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"in_shape must be \(C, F, T\)"):
        build_network("mlp", in_shape, 10)


def test_invalid_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_network("cnn4", (1, 20, 101), 0)


def num_params(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts() -> None:
    # ResNet-18 with a 3x3 stem: 11.17M for one input channel and 10 classes
    assert 11_100_000 < num_params(build_network("resnet18", (1, 40, 101), 10)) < 11_250_000
    # VGG-11 convs (9.22M) + a 512 x 10 linear
    assert 9_150_000 < num_params(build_network("vgg11", (1, 40, 101), 10)) < 9_300_000
    # the MTT ConvNet-3 on CIFAR-10 shapes has exactly 320,010 parameters
    assert num_params(build_network("convnet", (3, 32, 32), 10)) == 320_010
    # TC-ResNet8 on 40 MFCCs, 12 classes: 66K in Choi et al.
    assert 60_000 < num_params(build_network("tcresnet8", (1, 40, 101), 12)) < 70_000
    wide = build_network("tcresnet8", (1, 40, 101), 12, width_mult=1.5)
    assert num_params(wide) > 2 * 60_000
    # CNN4 32-64-128-128 + BN + linear; its size does not depend on T
    cnn4 = num_params(build_network("cnn4", (1, 40, 101), 10))
    assert 200_000 < cnn4 < 300_000
    assert cnn4 == num_params(build_network("cnn4", (1, 40, 401), 10))
    # MLP: (C*F*T) * 256 + 256 * 256 + 256 * K (+ biases)
    mlp = num_params(build_network("mlp", (1, 20, 101), 10))
    assert mlp == (2020 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)


def test_cnn4_has_mc_dropout() -> None:
    torch.manual_seed(0)
    net = small("cnn4", (1, 20, 101))
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    x = torch.randn(2, 1, 20, 101)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_vgg11_on_20_coefficients_keeps_2x2_maps_and_trains() -> None:
    """On 20 x 32 features VGG-11's fifth stage would see 1 x 2 maps: instance norm over two positions
    leaves a sign, its gradient explodes (first-layer norms near 100) and the network never learns."""
    torch.manual_seed(0)
    network = build_network("vgg11", (3, 20, 32), 11, width=8)
    assert network.features(torch.randn(2, 3, 20, 32)).shape[2:] == (2, 2)
    y = torch.arange(22) % 11
    x = torch.randn(11, 3, 20, 32)[y] + 0.5 * torch.randn(22, 3, 20, 32)  # one pattern per class, noisy
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert network.features[0].weight.grad.norm() < 20
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]
