"""The active-learning loop: budgets, increments, one network, total row, rounds, state, DDP scoring, CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from ddlight.active_learning import (
    AL_RECIPE,
    PAPER_BUDGETS,
    PAPER_TINY_BUDGETS,
    TOTAL,
    ActiveLearner,
    acquisition_schedule,
    has_dropout,
    initial_indices,
    loop,
    resolve_budgets,
    resolve_increment,
)
from ddlight.active_learning.report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG
from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.features import FeatureConfig
from ddlight.recipe import TrainRecipe, embed, kcenter_greedy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL_FEATURES = FeatureConfig(name="fdmfcc", n_fft=256, hop_length=256, n_mels=20, n_mfcc=10)


def small_data() -> SyntheticSounds:
    """11 classes x 5 pool clips (55), 2 test clips per class, 0.25 s at 8 kHz."""
    return SyntheticSounds(
        train_per_class=5, val_per_class=1, test_per_class=2, sample_rate=8000, duration=0.25,
        features=SMALL_FEATURES, batch_size=8,
    )


SHAPE = small_data().feature_shape


def learner(**kwargs: object) -> ActiveLearner:
    options = {
        "networks": ["cnn4"],
        "network_options": {"cnn4": {"width": 4}},
        "strategies": ["max_entropy", "bald", "random"],
        "budgets": [11, 20, 30],
        "budget_unit": "count",
        "increment": 5,
        "repeats": 2,
        "recipe": replace(AL_RECIPE, epochs=1),
        "mc_passes": 2,
        **kwargs,
    }
    return ActiveLearner(SHAPE, 11, **options)


def fit(model: ActiveLearner, data: SyntheticSounds, epochs: int = -1, bars: bool = False) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=bars,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)
    return trainer


class Trained(NamedTuple):
    """One network trained during a study: the labelled-set size and the network."""

    size: int
    network: str
    dropout: bool


@contextmanager
def trainings() -> Iterator[list[Trained]]:
    """Record every network the loop trains (size of its training set, architecture, dropout)."""
    trained: list[Trained] = []
    real = loop.fit_networks

    def spy(build: object, x: torch.Tensor, y: torch.Tensor, *args: object, **kwargs: object) -> list[nn.Module]:
        networks = real(build, x, y, *args, **kwargs)
        trained.extend(Trained(len(y), str(network), has_dropout(network)) for network in networks)
        return networks

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "fit_networks", spy)
        yield trained


class TestBudgets:
    def test_percent_and_count(self) -> None:
        assert resolve_budgets([2, 20, 60], 660, "percent", 11, 11) == ([13, 132, 396], [])
        assert resolve_budgets([11, 100], 660, "count", 11, 11) == ([11, 100], [])
        assert resolve_budgets([100], 660, "percent", 11, 11) == ([660], [])

    def test_paper_budgets_under_one_sample_per_class_are_skipped(self) -> None:
        # ESC-50's tiny budget (0.15 %) on its 1200-clip pool is 2 clips for 50 classes
        sizes, skipped = resolve_budgets([0.15, *PAPER_BUDGETS], 1200, "percent", 50, 50)
        assert sizes == [240, 360, 480, 720]
        assert skipped == [
            "budget 0.15% of the pool of 1200 is 2 sample(s), fewer than one per class (50 classes); skipped"
        ]
        # on a pool large enough (the paper's windowed pools) it is used
        assert resolve_budgets([0.15, 20], 40000, "percent", 50, 50) == ([60, 8000], [])

    @pytest.mark.parametrize(
        ("budgets", "pool", "initial", "message"),
        [
            ([20, 120], 660, 11, "larger than the pool of 660"),
            ([2, 20], 660, 22, "budget 2% = 13 samples is smaller than the initial labelled set of 22"),
            ([0.1, 1], 660, 11, r"every budget of \[0.1, 1\] is below one sample per class"),
            ([30, 20], 660, 11, "strictly increasing"),
            ([20], 0, 11, "pool .* is empty"),
            ([], 660, 11, "budgets is empty"),
        ],
    )
    def test_bad_budgets(self, budgets: list[float], pool: int, initial: int, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            resolve_budgets(budgets, pool, "percent", 11, initial)

    def test_bad_unit(self) -> None:
        with pytest.raises(ValueError, match="budget_unit must be one of .* got 'samples'"):
            resolve_budgets([20], 660, "samples", 11, 11)  # type: ignore[arg-type]

    def test_default_and_configs_use_the_papers_budgets(self) -> None:
        assert learner(budgets=None, budget_unit="percent").budgets == [20, 30, 40, 60]
        for dataset, tiny in PAPER_TINY_BUDGETS.items():
            args = yaml.safe_load((CONFIGS / f"al_{dataset}.yaml").read_text())["model"]["init_args"]
            assert args["budgets"] == [tiny, *PAPER_BUDGETS], dataset
            assert args["budget_unit"] == "percent" and args["increment"] == 5 and args["network_dropout"] == "mc"
        args = yaml.safe_load((CONFIGS / "al_synthetic.yaml").read_text())["model"]["init_args"]
        assert args["budgets"] == list(PAPER_BUDGETS) and args["increment"] == 5


class TestSchedule:
    def test_increments_land_on_every_budget(self) -> None:
        assert acquisition_schedule([20, 30], 11, 5) == [11, 16, 20, 25, 30]
        assert acquisition_schedule([11, 20], 11, 100) == [11, 20]
        assert acquisition_schedule([14], 11, 1) == [11, 12, 13, 14]

    def test_resolve_increment(self) -> None:
        assert resolve_increment(5, 660, "percent") == 33
        assert resolve_increment(5, 55, "percent") == 3
        assert resolve_increment(4, 55, "count") == 4
        with pytest.raises(ValueError, match="increment 0.1% of the pool of 55 is 0 samples"):
            resolve_increment(0.1, 55, "percent")


class TestInitialSet:
    def test_stratified_and_seeded(self) -> None:
        labels = torch.arange(40) % 4
        picks = initial_indices(labels, 4, 3, torch.Generator().manual_seed(1))
        assert sorted(torch.bincount(labels[picks]).tolist()) == [3, 3, 3, 3]
        assert len(set(picks)) == 12
        assert picks == initial_indices(labels, 4, 3, torch.Generator().manual_seed(1))
        assert picks != initial_indices(labels, 4, 3, torch.Generator().manual_seed(2))

    def test_missing_class(self) -> None:
        labels = torch.tensor([0, 0, 1, 1, 1])
        with pytest.raises(ValueError, match="misses classes.*class 2 has 0"):
            initial_indices(labels, 3, 1, torch.Generator())
        with pytest.raises(ValueError, match="class 0 has 2"):
            initial_indices(labels, 2, 3, torch.Generator())


class TestConstruction:
    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="unknown strategies \\['entropy'\\]"):
            learner(strategies=["entropy"])
        with pytest.raises(ValueError, match="network_dropout='mc' .* needs mc_passes >= 2, got 1"):
            learner(mc_passes=1)
        with pytest.raises(ValueError, match="unknown network"):
            learner(networks=["nope"])
        with pytest.raises(ValueError, match="increment must be > 0 \\(count\\), got 0"):
            learner(increment=0)
        with pytest.raises(ValueError, match="mc_dropout must be in \\[0, 1\\), got 1.5"):
            learner(mc_dropout=1.5)
        with pytest.raises(ValueError, match="network_dropout must be one of .* got 'always'"):
            learner(network_dropout="always")

    def test_the_recipe_needs_a_numeric_lr(self) -> None:
        with pytest.raises(ValueError, match="recipe.lr 'auto' is the learned step size of a distilled set"):
            learner(recipe=TrainRecipe(epochs=1))

    def test_bald_needs_mc_dropout(self) -> None:
        with pytest.raises(ValueError, match="BALD needs MC dropout, but network_dropout='none'"):
            learner(network_dropout="none")

    def test_build_applies_the_dropout_policy(self) -> None:
        with pytest.warns(UserWarning, match="mlp has no dropout module; network_dropout='mc' inserts"):
            mc = learner(networks=["mlp"], network_options={}, mc_dropout=0.3)
        assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in mc.build("mlp").modules())
        none = learner(network_dropout="none", strategies=["max_entropy", "random"])
        assert not has_dropout(none.build("cnn4"))  # cnn4's own dropout is removed too


class Study(NamedTuple):
    model: ActiveLearner
    out: Path
    trained: list[Trained]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A whole study on the small data: cnn4 x {entropy, BALD, random} x 2 repeats, budgets 11/20/30, increment 5."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("al")
    model = learner(output_dir=str(out))
    with trainings() as trained:
        fit(model, small_data())
    return Study(model, out, trained)


class TestLoop:
    def test_acquires_exactly_the_budgets(self, finished: Study) -> None:
        model = finished.model
        assert model.rounds_done == model.num_rounds == 6
        assert len(model.labelled) == 6
        for key, labelled in model.labelled.items():
            assert len(labelled) == 30, key
            sizes = [r["labelled"] for r in model.records if f"{r['network']}/{r['strategy']}/{r['repeat']}" == key]
            assert sizes == [11, 20, 30]

    def test_budgets_are_reached_in_increments_with_retraining(self, finished: Study) -> None:
        assert finished.model.schedule == [11, 16, 20, 25, 30]
        # each of the 4 uncertainty runs retrains after every increment (11, 16, 20, 25, 30); the 2 random
        # runs need a network only at the budgets; 2 repeats on the whole pool give the total row
        assert Counter(t.size for t in finished.trained) == {55: 2, 11: 6, 16: 4, 20: 6, 25: 4, 30: 6}

    def test_total_training_data_row(self, finished: Study) -> None:
        model, out, trained = finished
        assert [(r["labelled"], r["repeat"]) for r in model.records if r["strategy"] == TOTAL] == [(55, 0), (55, 1)]
        assert len({t.network for t in trained}) == 1  # the total row trains the very network of the AL rows
        (total,) = json.loads((out / RESULTS_JSON).read_text())["total"]
        assert total["network"] == "cnn4" and total["labelled"] == 55 and total["percent"] == 100.0
        assert len(total["runs"]) == 2 and total["mean"] == pytest.approx(sum(total["runs"]) / 2, abs=1e-3)
        lines = (out / RESULTS_MD).read_text().splitlines()
        row = next(i for i, line in enumerate(lines) if line.startswith("| Total Training Data | 100% | 55 |"))
        assert row == lines.index("|---|---|---|---|") + 1

    def test_never_reacquires(self, finished: Study) -> None:
        model = finished.model
        for labelled in model.labelled.values():
            assert len(set(labelled)) == len(labelled)
            assert all(0 <= i < model.pool_size for i in labelled)

    def test_initial_set_shared_per_repeat_and_stratified(self, finished: Study) -> None:
        model = finished.model
        for repeat in range(2):
            starts = {tuple(model.labelled[f"cnn4/{s}/{repeat}"][:11]) for s in model.strategies}
            assert len(starts) == 1
            assert sorted(model.pool_y[list(starts.pop())].tolist()) == list(range(11))

    def test_state_dict_round_trip(self, finished: Study) -> None:
        model = finished.model
        fresh = learner()
        fresh.load_state_dict(model.state_dict())
        assert fresh.labelled == model.labelled
        assert fresh.records == model.records
        assert fresh.rounds_done == 6

    def test_resumed_learner_does_nothing_more(self, finished: Study) -> None:
        model = finished.model
        fresh = learner()
        fresh.load_state_dict(model.state_dict())
        fit(fresh, small_data(), epochs=2)
        assert fresh.labelled == model.labelled and len(fresh.records) == len(model.records)

    def test_results_layout(self, finished: Study) -> None:
        model, out, _ = finished
        results = json.loads((out / RESULTS_JSON).read_text())
        assert results["dataset"] == "synthetic" and results["pool_size"] == 55 and results["num_classes"] == 11
        protocol = results["protocol"]
        assert protocol["repeats"] == 2 and protocol["budgets"] == [11, 20, 30] and protocol["increment"] == 5
        assert protocol["network_dropout"] == "mc" and protocol["schedule"] == [11, 16, 20, 25, 30]
        assert (protocol["epochs"], protocol["lr"], protocol["batch_size"], protocol["seed"]) == (1, 0.01, 64, 0)
        assert protocol["augment"] is False and "batched" not in protocol
        assert protocol["skipped_budgets"] == []
        assert [(r["network"], r["strategy"]) for r in results["results"]] == [
            ("cnn4", "max_entropy"), ("cnn4", "bald"), ("cnn4", "random")
        ]
        for row in results["results"]:
            assert [p["labelled"] for p in row["points"]] == [11, 20, 30]
            assert [p["percent"] for p in row["points"]] == [20.0, pytest.approx(36.3636), pytest.approx(54.5455)]
            for point in row["points"]:
                assert len(point["runs"]) == 2 and 0 <= point["mean"] <= 100
                assert point["mean"] == pytest.approx(sum(point["runs"]) / 2, abs=1e-3)
        lines = (out / RESULTS_MD).read_text().splitlines()
        assert "| Strategy | % Samples | Samples | Accuracy |" in lines
        bald = lines.index(next(line for line in lines if line.startswith("| BALD |")))
        assert lines[bald].startswith("| BALD | 54.5% | 30 |")
        assert lines[bald + 2].startswith("|  | 20% | 11 |")
        assert any(line.startswith("Acquired in increments of at most 5 samples") for line in lines)
        assert (out / RESULTS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_budget_larger_than_pool_fails_at_fit(self) -> None:
        with pytest.raises(ValueError, match="budget 60 = 60 samples is larger than the pool of 55"):
            fit(learner(budgets=[11, 60]), small_data(), epochs=1)


def test_budget_under_one_sample_per_class_is_announced_and_reported(tmp_path: Path) -> None:
    # 10 % of the 55-clip pool is 6 clips for 11 classes: skipped; 20 % and 40 % are 11 and 22 clips
    model = learner(strategies=["random"], repeats=1, budgets=[10, 20, 40], budget_unit="percent", increment=20,
                    output_dir=str(tmp_path))
    message = "budget 10% of the pool of 55 is 6 sample(s), fewer than one per class (11 classes); skipped"
    with pytest.warns(UserWarning, match=re.escape(message)):
        fit(model, small_data())
    assert [r["labelled"] for r in model.records if r["strategy"] != TOTAL] == [11, 22]
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["protocol"]["skipped_budgets"] == [message]
    assert f"B{message[1:]}." in (tmp_path / RESULTS_MD).read_text().splitlines()


def test_rounds_show_their_training_and_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    model = learner(strategies=["bald"], budgets=[11, 16], repeats=1, recipe=replace(AL_RECIPE, epochs=3))
    fit(model, small_data(), bars=True)
    shown = capfd.readouterr().err
    assert "round 1/3: total training data" in shown and "3/3 [" in shown  # 1 network x 3 epochs
    assert "round 2/3: 11 labelled" in shown and "cnn4/bald/0: scoring the pool" in shown
    assert "round 3/3: 16 labelled" in shown


def test_every_strategy_trains_bald_s_mc_dropout_network(tmp_path: Path) -> None:
    strategies = ["max_entropy", "variation_ratios", "bald", "random"]
    with pytest.warns(UserWarning, match="mlp has no dropout module; network_dropout='mc' inserts"):
        model = learner(networks=["mlp"], network_options={"mlp": {"width": 8}}, strategies=strategies, repeats=1,
                        budgets=[11, 15], increment=4, output_dir=str(tmp_path))
    with trainings() as trained:
        fit(model, small_data())
    assert len(trained) == 1 + 2 * len(strategies)  # the total row, then every strategy at 11 and at 15
    assert all(t.dropout for t in trained)
    assert len({t.network for t in trained}) == 1


def test_network_dropout_none_trains_every_network_without_dropout(tmp_path: Path) -> None:
    model = learner(network_dropout="none", strategies=["max_entropy", "random"], repeats=1, budgets=[11, 15],
                    output_dir=str(tmp_path))
    with trainings() as trained:
        fit(model, small_data())
    assert trained and not any(t.dropout for t in trained)  # cnn4's own dropout is removed
    assert len({t.network for t in trained}) == 1


def _ddp_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    try:
        torch.save(_acquisitions(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _acquisitions() -> dict[str, list[int]]:
    """Acquire 7 of 23 pool items with a fixed network, deterministically (entropy) and with BALD."""
    torch.manual_seed(0)
    pool_x = torch.randn(23, *SHAPE)
    network = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(SHAPE[0] * SHAPE[1] * SHAPE[2], 11))
    picks = {}
    for name, model in (
        ("entropy", learner(network_dropout="none", strategies=["max_entropy"])),
        ("bald", learner(mc_passes=4)),
    ):
        model.pool_x, model.pool_size = pool_x, 23
        torch.manual_seed(1)
        picks[name] = model.acquire_from_pool(network, "max_entropy" if name == "entropy" else "bald", [0, 5], 7, 0)
    return picks


@pytest.mark.timeout(90)
def test_two_process_ddp_pool_scoring(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail("2-process gloo run did not finish within 60 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank acquires the same items, BALD's MC masks included
    assert ranks[0]["entropy"] == _acquisitions()["entropy"]  # sharded = unsharded scoring
    for picks in ranks[0].values():
        assert len(picks) == 7 and len(set(picks)) == 7 and not {0, 5} & set(picks)


def test_cli_fit_al_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(CONFIGS / "al_synthetic.yaml"),
        "--data.init_args.train_per_class=3", "--data.init_args.val_per_class=1",
        "--data.init_args.test_per_class=1", "--data.init_args.duration=0.25",
        "--data.init_args.sample_rate=8000", "--data.init_args.features.n_fft=256",
        "--data.init_args.features.hop_length=256", "--data.init_args.features.n_mels=20",
        "--data.init_args.features.n_mfcc=10",
        "--model.init_args.networks=[cnn4]", "--model.init_args.repeats=1", "--model.init_args.recipe.epochs=1",
        "--model.init_args.mc_passes=2", "--model.init_args.budgets=[40,60]",
    ])
    (results_path,) = tmp_path.glob("runs/al_synthetic/**/al_results.json")
    results = json.loads(results_path.read_text())
    assert results["pool_size"] == 33
    assert results["protocol"]["schedule"] == [11, 13, 15, 17, 19, 20]  # increments of 5 % of 33 = 2 clips
    assert {(r["strategy"], tuple(p["labelled"] for p in r["points"])) for r in results["results"]} == {
        (s, (13, 20)) for s in ("max_entropy", "variation_ratios", "bald", "random")
    }
    assert [(t["network"], t["labelled"], len(t["runs"])) for t in results["total"]] == [("cnn4", 33, 1)]
    assert list(tmp_path.glob("runs/al_synthetic/**/checkpoints/*.ckpt"))


def test_kcenter_strategy_acquires_the_core_set_of_the_embeddings() -> None:
    from ddlight.networks import build_network

    data = small_data()
    model = learner(strategies=["kcenter"], repeats=1)
    trainer = fit(model, data)
    labelled = model.labelled["cnn4/kcenter/0"]
    assert len(labelled) == 30 and len(set(labelled)) == 30
    assert [r["labelled"] for r in model.records if r["strategy"] != TOTAL] == [11, 20, 30]
    network = build_network("cnn4", SHAPE, 11, width=4)
    start = labelled[:11]
    picks = model.acquire_from_pool(network, "kcenter", start, 5, repeat=0)
    embeddings = embed(network, model.pool_x)
    unlabelled = [i for i in range(model.pool_size) if i not in set(start)]
    expected = kcenter_greedy(embeddings[unlabelled], embeddings[start], 5)
    assert picks == [unlabelled[i] for i in expected.tolist()]
    assert trainer.current_epoch == model.num_rounds == 6
