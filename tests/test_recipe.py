"""ddlight.recipe: the recipe's checks, batched = sequential training, scores, k-center, expert networks."""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from torch import nn

from ddlight.io import save_json, save_tensors
from ddlight.networks import build_network
from ddlight.recipe import (
    TrainRecipe,
    accuracy,
    build_expert_network,
    embed,
    final_expert_networks,
    fit_network,
    fit_networks,
    kcenter_greedy,
    soft_cross_entropy,
    summarize,
)
from ddlight.recipe import training
from ddlight.recipe.training import _Draws

SHAPE = (1, 8, 8)
TINY = {"width": 8, "depth": 1}
#: Batched and sequential training agree to this (float rounding of grouped vs single convolutions).
PARITY_ATOL = 1e-4


def toy(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, each a bright frequency band in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(per_class)
    x = 0.5 * torch.randn(len(y), *SHAPE, generator=g)
    x[torch.arange(len(y)), 0, 2 * y, :] += 2.0
    return x, y


def builder(architecture: str = "convnet", **options: object) -> partial:
    return partial(build_network, architecture, SHAPE, 3, **(options or TINY))


def states(networks: list[nn.Module]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in n.state_dict().items()} for n in networks]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


class TestTrainRecipe:
    def test_defaults_are_the_evaluation_protocol(self) -> None:
        recipe = TrainRecipe()
        assert (recipe.epochs, recipe.optimizer, recipe.lr, recipe.momentum, recipe.weight_decay) == (
            300, "sgd", "auto", 0.9, 5e-4
        )
        assert (recipe.batch_size, recipe.augment, recipe.seed, recipe.batched) == (256, True, 0, False)
        assert recipe.precision == "32-true"
        assert recipe.milestones() == [150] and replace(recipe, lr_schedule="constant").milestones() == []
        assert TrainRecipe(epochs=1).milestones() == [1]

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
            ({"optimizer": "adam"}, "optimizer must be one of \\('sgd',\\), got 'adam'"),
            ({"lr": -0.1}, "lr must be a positive number or 'auto', got -0.1"),
            ({"lr": "fast"}, "lr must be a positive number or 'auto', got 'fast'"),
            ({"momentum": 1.0}, "momentum must be in \\[0, 1\\), got 1.0"),
            ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
            ({"lr_schedule": "cosine"}, "lr_schedule must be one of .*, got 'cosine'"),
            ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
            ({"seed": 1.5}, "seed must be an integer, got 1.5"),
            ({"precision": "16-mixed"}, "precision must be one of .*, got '16-mixed'"),
        ],
    )
    def test_invalid_values_are_named(self, change: dict, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            TrainRecipe(**change)

    def test_learning_rate_auto_must_be_resolved(self) -> None:
        assert TrainRecipe(lr=0.05).learning_rate == 0.05
        with pytest.raises(ValueError, match="resolve it with ddlight.evaluation.resolve_lr"):
            TrainRecipe().learning_rate  # noqa: B018

    def test_parsed_like_a_feature_config(self) -> None:
        """One nested argument: partial settings keep the default instance's other values."""

        def run(recipe: TrainRecipe = TrainRecipe(epochs=50, lr=0.01)) -> None:
            """A command taking a recipe."""

        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(run)
        parsed = parser.instantiate(parser.parse_args(["--recipe.epochs=3", "--recipe.batched=true"]))
        assert parsed.recipe == TrainRecipe(epochs=3, lr=0.01, batched=True)
        parsed = parser.instantiate(parser.parse_args(["--recipe", "{lr: auto, augment: false}"]))
        assert parsed.recipe == TrainRecipe(epochs=50, lr="auto", augment=False)
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
            parser.instantiate(parser.parse_args(["--recipe.batch_size=0"]))

    def test_survives_a_weights_only_checkpoint(self) -> None:
        buffer = io.BytesIO()
        torch.save({"hyper_parameters": {"recipe": TrainRecipe(epochs=7)}}, buffer)
        buffer.seek(0)
        assert torch.load(buffer, weights_only=True)["hyper_parameters"]["recipe"] == TrainRecipe(epochs=7)


class TestFit:
    def test_learns_hard_and_soft_targets(self) -> None:
        (x, y), (tx, ty) = toy(10, 0), toy(20, 1)
        recipe = TrainRecipe(epochs=20, lr=0.01)
        assert accuracy(fit_network(x, y, 3, recipe, "convnet", TINY), tx, ty) > 90
        soft = 0.8 * F.one_hot(y, 3) + 0.2 / 3
        assert accuracy(fit_network(x, soft, 3, replace(recipe, augment=False), "convnet", TINY), tx, ty) > 90

    @pytest.mark.parametrize(
        "options",
        [{"width": 8, "depth": 2}, {"width": 8, "depth": 2, "norm": "batch"}],
        ids=["instance-norm", "batch-norm"],
    )
    def test_batched_equals_sequential(self, options: dict) -> None:
        """Same seeds, same initialisation, batch orders and augmentation: the same networks after 3 epochs.

        Batch size 4 on 10 samples gives batches of 4, 4 and 2 per epoch in a different order for each
        network; with batch norm the stacked running statistics must follow the sequential ones too.
        """
        x, y = toy(4, 0)
        x, y = x[:10], y[:10]
        recipe = TrainRecipe(epochs=3, lr=0.05, batch_size=4, seed=3, batched=True)
        batched = states(fit_networks(builder(**options), x, y, recipe, repeats=3))
        sequential = states(fit_networks(builder(**options), x, y, replace(recipe, batched=False), repeats=3))
        for one, other in zip(batched, sequential):
            for name in one:
                torch.testing.assert_close(one[name], other[name], atol=PARITY_ATOL, rtol=0, msg=name)
        assert not torch.allclose(batched[0]["classifier.weight"], batched[1]["classifier.weight"])

    @pytest.mark.parametrize("batched", [False, True])
    def test_bf16_mixed_trains_in_bfloat16_over_float32_weights(self, batched: bool) -> None:
        """Logits in bfloat16 during training, float32 weights and scores after, and still learning."""
        (x, y), (tx, ty) = toy(10, 0), toy(20, 1)
        logit_dtypes: set[torch.dtype] = set()

        def build() -> nn.Module:
            network = builder()()
            network.register_forward_hook(lambda module, inputs, output: logit_dtypes.add(output.dtype))
            return network

        recipe = TrainRecipe(epochs=20, lr=0.01, precision="bf16-mixed", batched=batched)
        networks = fit_networks(build, x, y, recipe, repeats=2)
        if not batched:  # the stacked path calls a functional copy, not these modules
            assert logit_dtypes == {torch.bfloat16}
        assert all(p.dtype == torch.float32 for n in networks for p in n.parameters())
        assert all(accuracy(n, tx, ty) > 90 for n in networks)
        # the float32 twins (same seeds) went the same way: bfloat16 rounding moves the weights about 0.1 %
        # of their path; a forward that kept the first step's cached bfloat16 weights moved them 30 %
        full = fit_networks(builder(), x, y, replace(recipe, precision="32-true"), repeats=2)
        for r, (bf16, fp32) in enumerate(zip(networks, full)):
            torch.manual_seed(recipe.seed + r)  # network r's initialisation
            init = builder()()
            path = (fp32.classifier.weight - init.classifier.weight).norm()
            assert 0 < (bf16.classifier.weight - fp32.classifier.weight).norm() < 0.05 * path

    def test_bf16_on_a_cpu_without_bfloat16_units_warns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        x, y = toy(2, 0)
        monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
        with pytest.warns(UserWarning, match="emulated"):
            fit_networks(builder(), x, y, TrainRecipe(epochs=1, lr=0.01, precision="bf16-mixed"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fit_networks(builder(), x, y, TrainRecipe(epochs=1, lr=0.01))

    @pytest.mark.parametrize("batched", [False, True])
    def test_progress_counts_every_network_epoch(self, batched: bool) -> None:
        x, y = toy(2, 0)
        counts: list[int] = []
        fit_networks(builder(), x, y, TrainRecipe(epochs=4, lr=0.01, batched=batched), repeats=3, progress=counts.append)
        assert sum(counts) == 12 and counts == ([3] * 4 if batched else [1] * 12)

    def test_repeat_r_is_the_network_of_seed_plus_r(self) -> None:
        x, y = toy(3, 0)
        recipe = TrainRecipe(epochs=2, lr=0.05, batch_size=4)
        three = states(fit_networks(builder(), x, y, recipe, repeats=3))
        (third,) = states(fit_networks(builder(), x, y, replace(recipe, seed=2)))
        assert all(torch.equal(three[2][k], third[k]) for k in third)
        again = states(fit_networks(builder(), x, y, recipe, repeats=3))
        assert all(torch.equal(a[k], b[k]) for a, b in zip(again, three) for k in a)

    def test_dropout_draws_differ_per_network_when_batched(self) -> None:
        """Networks with one initialisation and the whole set per batch differ only by their dropout masks."""
        torch.manual_seed(0)
        fixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
        x, y = toy(3, 0)
        recipe = TrainRecipe(epochs=3, lr=0.1, augment=False, batched=True)
        nets = fit_networks(lambda: copy.deepcopy(fixed), x, y, recipe, repeats=2)
        assert not torch.allclose(nets[0][1].weight, nets[1][1].weight, atol=1e-4)
        fixed[3].p = 0.0  # no dropout: the two networks see the same batches (up to order) and stay together
        nets = fit_networks(lambda: copy.deepcopy(fixed), x, y, recipe, repeats=2)
        torch.testing.assert_close(nets[0][1].weight, nets[1][1].weight, atol=1e-5, rtol=0)

    def test_global_rng_is_restored_and_networks_are_in_eval_mode(self) -> None:
        x, y = toy(2, 0)
        torch.manual_seed(123)
        before = torch.get_rng_state()
        with torch.no_grad():  # callers may be under no_grad
            networks = fit_networks(builder(), x, y, TrainRecipe(epochs=1, lr=0.01), repeats=2)
        assert torch.equal(torch.get_rng_state(), before)
        assert all(not n.training for n in networks)

    def test_bad_calls_are_refused(self) -> None:
        x, y = toy(2, 0)
        with pytest.raises(ValueError, match="targets"):
            fit_networks(builder(), x, y[:-1], TrainRecipe(epochs=1, lr=0.01))
        with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
            fit_networks(builder(), x, y, TrainRecipe(epochs=1, lr=0.01), repeats=0)
        with pytest.raises(ValueError, match="lr 'auto'"):
            fit_networks(builder(), x, y, TrainRecipe(epochs=1), repeats=2)

    def test_a_last_batch_of_one_is_left_out(self) -> None:
        """Batch norm cannot train on one item: 9 items in batches of 4 train on 4 + 4 per epoch."""
        draws = _Draws(0, torch.device("cpu"), None)
        batches = draws.batches(9, 4)
        assert [len(b) for b in batches] == [4, 4] and len(set(torch.cat(batches).tolist())) == 8
        assert [len(b) for b in draws.batches(1, 4)] == [1]  # a set of one item still trains


class TestScores:
    def test_accuracy_in_percent(self) -> None:
        network = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
        with torch.no_grad():
            network[1].weight.copy_(torch.eye(2))
        x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]]).view(4, 1, 1, 2)
        assert accuracy(network, x, torch.tensor([0, 1, 1, 0]), batch_size=3) == 75.0

    def test_embed_batches_like_one_pass(self) -> None:
        torch.manual_seed(0)
        net = build_network("convnet", SHAPE, 3, width=4, depth=1)
        x = torch.randn(7, *SHAPE)
        assert torch.allclose(embed(net, x, batch_size=3), net.embed(x), atol=1e-6)

    def test_summarize(self) -> None:
        assert summarize([50.0, 70.0]) == {"mean": 60.0, "std": 10.0, "runs": [50.0, 70.0]}
        assert summarize(iter([33.33333])) == {"mean": 33.3333, "std": 0.0, "runs": [33.3333]}

    def test_soft_cross_entropy_matches_hard_labels(self) -> None:
        logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
        torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(y, 4).float()), F.cross_entropy(logits, y))
        torch.testing.assert_close(soft_cross_entropy(logits, y), F.cross_entropy(logits, y))


class TestKCenter:
    line = torch.arange(11.0).unsqueeze(1)  # the points 0, 1, ..., 10

    def test_without_centres(self) -> None:
        # Farthest from the mean 5: 0 and 10 tie -> 0; then 10; then the midpoint 5.
        assert kcenter_greedy(self.line, torch.empty(0, 1), k=3).tolist() == [0, 10, 5]

    def test_with_centres(self) -> None:
        pool = self.line[1:]  # 1..10, index i holds the value i + 1
        picks = kcenter_greedy(pool, torch.tensor([[0.0]]), k=3)
        assert pool[picks].squeeze(1).tolist() == [10.0, 5.0, 2.0]

    def test_duplicates_never_picked_twice(self) -> None:
        assert sorted(kcenter_greedy(torch.zeros(4, 2), torch.zeros(1, 2), k=4).tolist()) == [0, 1, 2, 3]

    def test_k_checks(self) -> None:
        assert kcenter_greedy(self.line, torch.empty(0, 1), k=0).numel() == 0
        with pytest.raises(ValueError, match="k=12 items from a pool of 11"):
            kcenter_greedy(self.line, torch.empty(0, 1), k=12)
        with pytest.raises(ValueError, match=r"\[M, D\]"):
            kcenter_greedy(self.line, torch.zeros(1, 2), k=1)


def write_experts(directory: Path, networks: list[nn.Module]) -> None:
    """Trajectories of two snapshots each: a fresh network, then ``networks[i]``."""
    manifest = {"network": "convnet", "network_options": {"width": 4, "depth": 1}, "in_shape": list(SHAPE),
                "num_classes": 3, "experts": []}
    for i, end in enumerate(networks):
        start = build_expert_network(manifest)
        trajectory = {n: torch.stack([p0.detach(), p1.detach()]) for (n, p0), (_, p1) in
                      zip(start.named_parameters(), end.named_parameters())}
        save_tensors(directory / f"expert_{i:03d}.safetensors", trajectory)
        manifest["experts"].append({"file": f"expert_{i:03d}.safetensors"})
    save_json(directory / "manifest.json", manifest)


class TestExperts:
    def test_final_expert_networks_take_the_last_snapshots(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        ends = [build_network("convnet", SHAPE, 3, width=4, depth=1) for _ in range(2)]
        write_experts(tmp_path, ends)
        manifest, networks = final_expert_networks(tmp_path)
        assert manifest["network"] == "convnet" and len(networks) == 2
        x = torch.randn(5, *SHAPE)
        for network, end in zip(networks, ends):
            assert not network.training
            assert torch.allclose(network.embed(x), end.eval().embed(x))

    def test_an_expert_missing_parameters_is_an_error(self, tmp_path: Path) -> None:
        write_experts(tmp_path, [build_network("convnet", SHAPE, 3, width=4, depth=1)])
        save_tensors(tmp_path / "expert_000.safetensors", {"classifier.bias": torch.zeros(2, 3)})
        with pytest.raises(ValueError, match=r"expert_000.safetensors does not hold the parameters .*classifier"):
            final_expert_networks(tmp_path)
