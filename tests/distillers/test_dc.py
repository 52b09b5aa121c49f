"""DC / DSA: gradient distance, original loops, siamese augmentation, class batches, updates, guard, CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from ddlight.augment import SpecAugment
from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.distillers import DC
from ddlight.distillers.dc import gradient_distance, layer_distance, siamese_augment
from ddlight.distillers.formation import decode
from ddlight.io import load_synset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = (2, 8, 8)


def tiny(**options: object) -> DC:
    """A DC of 3 classes, 2 per class, on a narrow ConvNet, holding 5 real samples per class."""
    torch.manual_seed(0)
    settings = {"network_options": {"width": 8}, "batch_real": 4, "outer_loop": 2, "inner_loop": 1} | options
    model = DC(SHAPE, 3, ipc=2, **settings)
    generator = torch.Generator().manual_seed(1)
    model.hold_real_data(torch.randn(15, *SHAPE, generator=generator), torch.arange(15) % 3)
    return model


def tiny_sounds() -> SyntheticSounds:
    L.seed_everything(0)
    return SyntheticSounds(train_per_class=4, val_per_class=1, test_per_class=1, duration=0.25, batch_size=8)


def fit(model: DC, steps: int, tmp_path: Path) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=tiny_sounds())
    return trainer


def test_layer_distance_is_zero_for_parallel_gradients() -> None:
    g = torch.randn(4, 3, 3, 3)
    assert layer_distance(g, g).item() == pytest.approx(0.0, abs=1e-5)
    assert layer_distance(5 * g, g).item() == pytest.approx(0.0, abs=1e-5)  # a cosine: per-row scale is free


def test_layer_distance_hand_computed() -> None:
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    syn = torch.tensor([[0.0, 2.0], [0.0, 3.0], [-1.0, -1.0]])  # orthogonal, parallel, opposite rows
    assert layer_distance(syn, real).item() == pytest.approx(1.0 + 0.0 + 2.0, abs=1e-5)
    # a conv gradient [out, in, kh, kw] is cut into one row per output channel
    conv_real = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).view(2, 1, 2, 2)
    conv_syn = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).view(2, 1, 2, 2)
    assert layer_distance(conv_syn, conv_real).item() == pytest.approx(1.0, abs=1e-5)
    assert layer_distance(torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 1.0])).item() == 0.0  # biases ignored
    total = gradient_distance([syn, conv_syn, torch.ones(2)], [real, conv_real, -torch.ones(2)])
    assert total.item() == pytest.approx(4.0, abs=1e-5)


def test_loops_default_to_the_originals() -> None:
    assert (DC(SHAPE, 3, ipc=1).outer_loop, DC(SHAPE, 3, ipc=1).inner_loop) == (1, 1)
    assert (DC(SHAPE, 3, ipc=10).outer_loop, DC(SHAPE, 3, ipc=10).inner_loop) == (10, 50)
    assert (DC(SHAPE, 3, ipc=50).outer_loop, DC(SHAPE, 3, ipc=50).inner_loop) == (50, 10)
    with pytest.raises(ValueError, match="set both for ipc=7"):
        DC(SHAPE, 3, ipc=7)
    assert DC(SHAPE, 3, ipc=7, outer_loop=3, inner_loop=4).outer_loop == 3
    with pytest.raises(TypeError, match="unknown option"):
        DC(SHAPE, 3, network_options={"widht": 8})


def test_siamese_augment_applies_one_draw_whatever_the_batch_size() -> None:
    augment = SpecAugment(p=1.0)  # every op is applied
    sample = torch.randn(1, *SHAPE)
    big, small = sample.expand(5, *SHAPE), sample.expand(2, *SHAPE)
    out_big, out_small = siamese_augment(augment, big, seed=3), siamese_augment(augment, small, seed=3)
    assert not torch.equal(out_big[0], sample[0])  # it did augment
    assert all(torch.equal(row, out_big[0]) for row in out_big)  # every sample got the same transformation
    torch.testing.assert_close(out_small, out_big[:2])  # and so did the other batch
    assert not torch.equal(siamese_augment(augment, small, seed=4), out_small)  # another seed, another draw
    independent = augment(big, torch.Generator().manual_seed(3))  # plain SpecAugment draws per sample
    assert not all(torch.equal(row, independent[0]) for row in independent)


def test_augment_pair_gives_real_and_synthetic_batches_the_same_draw() -> None:
    model = tiny(siamese_augment=True)
    model.augment.p = 1.0
    sample = torch.randn(1, *SHAPE)
    real = torch.cat([sample, torch.randn(3, *SHAPE)])
    syn = torch.cat([sample, torch.randn(1, *SHAPE)])
    real_aug, syn_aug = model.augment_pair(real, syn, torch.Generator().manual_seed(0))
    torch.testing.assert_close(real_aug[0], syn_aug[0])
    assert not torch.equal(real_aug[0], sample[0])
    plain = tiny()
    assert plain.augment_pair(real, syn, torch.Generator())[0] is real


def test_real_batches_are_distinct_samples_of_one_class() -> None:
    model = tiny(siamese_augment=True)
    x = torch.arange(15.0).view(15, 1, 1, 1).expand(15, *SHAPE).contiguous()  # sample i is filled with i
    model.hold_real_data(x, torch.arange(15) % 3)
    batch = model.real_batch(1, torch.Generator().manual_seed(0))
    index = batch[:, 0, 0, 0].long()
    assert len(index) == 4 and len(index.unique()) == 4 and (index % 3 == 1).all()
    torch.testing.assert_close(model.real_batch(1, torch.Generator().manual_seed(0)), batch)  # reproducible
    whole = DC(SHAPE, 3, ipc=2, batch_real=100, outer_loop=1, inner_loop=1)
    whole.hold_real_data(x, torch.arange(15) % 3)
    assert sorted(whole.real_batch(2, torch.Generator())[:, 0, 0, 0].tolist()) == [2, 5, 8, 11, 14]
    with pytest.raises(ValueError, match=r"classes \[2\] have no training samples"):
        whole.hold_real_data(x, torch.arange(15) % 2)


def test_random_networks_are_fresh_and_reproducible() -> None:
    model = tiny()
    a, b = (model.random_network(torch.Generator().manual_seed(0)) for _ in range(2))
    c = model.random_network(torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("siamese", [False, True])
def test_a_small_step_along_the_gradient_lowers_the_matching_loss(siamese: bool) -> None:
    model = tiny(siamese_augment=siamese)
    network = model.random_network(torch.Generator().manual_seed(0))
    before = model.matching_loss(network, torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(before, model.synthetic)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        model.synthetic -= 1e-2 * grad / grad.norm()
    after = model.matching_loss(network, torch.Generator().manual_seed(5))  # the same draws
    assert after < before


def test_inner_loop_trains_the_network_on_the_set_only() -> None:
    model = tiny(inner_loop=20)
    network = model.random_network(torch.Generator().manual_seed(0))
    x, y = model.synthetic.detach().clone(), model.labels
    before = torch.nn.functional.cross_entropy(network(x), y)
    model.train_network(network, torch.optim.SGD(network.parameters(), lr=0.05), torch.Generator().manual_seed(0))
    assert torch.nn.functional.cross_entropy(network(x), y) < before
    assert torch.equal(model.synthetic, x) and model.synthetic.grad is None


def test_one_training_step_runs_the_outer_loop_and_advances_one_step(tmp_path: Path) -> None:
    data_shape = tiny_sounds().feature_shape
    model = DC(data_shape, 11, ipc=1, init="noise", network_options={"width": 8}, outer_loop=3, inner_loop=2)
    start = model.synthetic.detach().clone()
    updates = []
    update = model.update

    def spy(loss: torch.Tensor, last: bool = True) -> torch.Tensor:
        updates.append(last)
        return update(loss, last)

    model.update = spy
    fit(model, 1, tmp_path)
    assert updates == [False, False, True] and model.global_step == 1
    assert not torch.equal(model.synthetic, start) and torch.isfinite(model.synthetic).all()


class _NaNFirst(DC):
    """DC whose matching loss is NaN for the first ``bad`` calls."""

    bad = 1

    def matching_loss(self, network: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
        loss = super().matching_loss(network, generator)
        self.bad -= 1
        return loss * torch.nan if self.bad >= 0 else loss


def test_non_finite_step_is_skipped_and_retried_with_new_draws(tmp_path: Path) -> None:
    model = _NaNFirst(tiny_sounds().feature_shape, 11, ipc=1, init="noise", network_options={"width": 8})
    start = model.synthetic.detach().clone()
    seeds = []
    step_generator = model.step_generator
    model.step_generator = lambda: seeds.append(model.bad_steps) or step_generator()
    with pytest.warns(UserWarning, match="step 0: non-finite loss or gradient, update skipped"):
        fit(model, 1, tmp_path)
    assert seeds == [0, 1] and model.global_step == 1 and model.bad_steps == 0
    assert not torch.equal(model.synthetic, start) and torch.isfinite(model.synthetic).all()


def test_consecutive_non_finite_steps_stop(tmp_path: Path) -> None:
    model = _NaNFirst(tiny_sounds().feature_shape, 11, ipc=1, init="noise", network_options={"width": 8},
                      max_bad_steps=3)
    model.bad = 10
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="3 consecutive non-finite steps"):
        fit(model, 5, tmp_path)


@pytest.mark.parametrize(("config", "method"), [("dc_synthetic.yaml", "dc"), ("dsa_synthetic.yaml", "dsa")])
def test_cli_fit_exports_the_set(config: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(CONFIGS / config), "--trainer.max_steps=2", "--trainer.enable_progress_bar=false",
        "--trainer.logger.init_args.save_dir=runs", "--data.init_args.train_per_class=4",
        "--data.init_args.val_per_class=1", "--data.init_args.test_per_class=1", "--data.init_args.duration=0.5",
        "--model.init_args.ipc=1", "--model.init_args.network_options={width: 8}", "--model.init_args.batch_real=4",
        "--model.init_args.outer_loop=2", "--model.init_args.inner_loop=1",
        "--trainer.callbacks.init_args.repeats=1", "--trainer.callbacks.init_args.recipe.epochs=2",
    ])
    (manifest,) = tmp_path.glob("runs/**/distilled/manifest.json")
    synset = load_synset(manifest.parent)
    assert synset.manifest["method"] == method and synset.manifest["step"] == 2
    assert synset.features.shape[0] == len(synset.manifest["classes"]) and torch.isfinite(synset.features).all()
    assert (synset.manifest["outer_loop"], synset.manifest["inner_loop"]) == (2, 1)
    assert (synset.manifest["augment"] is not None) == (method == "dsa")
    report = json.loads((manifest.parent.parent / "evaluation.json").read_text())
    assert "random" in json.dumps(report)


def test_inner_loop_trains_on_the_decoded_set_with_formation() -> None:
    """formation 2: the inner loop's network sees the decoded samples, each with its stored sample's label."""
    model = tiny(inner_loop=1, formation=2, batch_train=100)
    network = model.random_network(torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.train_network(network, torch.optim.SGD(network.parameters(), lr=0.05), torch.Generator().manual_seed(0))
    assert len(seen) == 1 and len(seen[0]) == 2 * len(model.synthetic)
    torch.testing.assert_close(seen[0].sum(0), decode(model.synthetic.detach(), 2).sum(0))  # in shuffled order
