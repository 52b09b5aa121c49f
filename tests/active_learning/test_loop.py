"""The active-learning loop: budgets, initial sets, rounds through a Trainer, state, DDP scoring, CLI."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddlight.active_learning import ActiveLearner, initial_indices, resolve_budgets
from ddlight.active_learning.report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG
from ddlight.cli import main
from ddlight.data.synthetic import SyntheticSounds
from ddlight.features import FeatureConfig

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
        "repeats": 2,
        "epochs": 1,
        "mc_passes": 2,
        **kwargs,
    }
    return ActiveLearner(SHAPE, 11, **options)


def fit(model: ActiveLearner, data: SyntheticSounds, epochs: int = 3) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)
    return trainer


class TestBudgets:
    def test_percent_and_count(self) -> None:
        assert resolve_budgets([2, 20, 60], 660, "percent", 11) == [13, 132, 396]
        assert resolve_budgets([11, 100], 660, "count", 11) == [11, 100]
        assert resolve_budgets([100], 660, "percent", 11) == [660]

    @pytest.mark.parametrize(
        ("budgets", "pool", "message"),
        [
            ([20, 120], 660, "larger than the pool of 660"),
            ([1, 20], 660, "smaller than the initial labelled set of 11"),
            ([30, 20], 660, "strictly increasing"),
            ([20], 0, "pool .* is empty"),
            ([], 660, "budgets is empty"),
        ],
    )
    def test_bad_budgets(self, budgets: list[float], pool: int, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            resolve_budgets(budgets, pool, "percent", 11)


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
        with pytest.raises(ValueError, match="BALD needs mc_passes >= 2"):
            learner(mc_passes=1)
        with pytest.raises(ValueError, match="unknown network"):
            learner(networks=["nope"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[ActiveLearner, Path]:
    """A whole study on the small data: cnn4 x {entropy, BALD, random} x 2 repeats, budgets 11/20/30."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("al")
    model = learner(output_dir=str(out))
    fit(model, small_data())
    return model, out


class TestLoop:
    def test_acquires_exactly_the_budgets(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, _ = finished
        assert model.rounds_done == 3
        assert len(model.labelled) == 6
        for key, labelled in model.labelled.items():
            assert len(labelled) == 30, key
            sizes = [r["labelled"] for r in model.records if f"{r['network']}/{r['strategy']}/{r['repeat']}" == key]
            assert sizes == [11, 20, 30]

    def test_never_reacquires(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, _ = finished
        for labelled in model.labelled.values():
            assert len(set(labelled)) == len(labelled)
            assert all(0 <= i < model.pool_size for i in labelled)

    def test_initial_set_shared_per_repeat_and_stratified(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, _ = finished
        for repeat in range(2):
            starts = {tuple(model.labelled[f"cnn4/{s}/{repeat}"][:11]) for s in model.strategies}
            assert len(starts) == 1
            assert sorted(model.pool_y[list(starts.pop())].tolist()) == list(range(11))

    def test_state_dict_round_trip(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, _ = finished
        fresh = learner()
        fresh.load_state_dict(model.state_dict())
        assert fresh.labelled == model.labelled
        assert fresh.records == model.records
        assert fresh.rounds_done == 3

    def test_resumed_learner_does_nothing_more(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, _ = finished
        fresh = learner()
        fresh.load_state_dict(model.state_dict())
        fit(fresh, small_data(), epochs=2)
        assert fresh.labelled == model.labelled and len(fresh.records) == len(model.records)

    def test_results_layout(self, finished: tuple[ActiveLearner, Path]) -> None:
        model, out = finished
        results = json.loads((out / RESULTS_JSON).read_text())
        assert results["dataset"] == "synthetic" and results["pool_size"] == 55 and results["num_classes"] == 11
        assert results["protocol"]["repeats"] == 2
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
        assert (out / RESULTS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_bald_inserts_dropout_with_warning(self, tmp_path: Path) -> None:
        model = learner(networks=["mlp"], network_options={"mlp": {"width": 8}}, strategies=["bald"], repeats=1,
                        budgets=[11, 15], output_dir=str(tmp_path))
        with pytest.warns(UserWarning, match="mlp has no dropout module; BALD inserts"):
            fit(model, small_data(), epochs=2)
        assert len(model.labelled["mlp/bald/0"]) == 15

    def test_budget_larger_than_pool_fails_at_fit(self) -> None:
        with pytest.raises(ValueError, match="budget 60 = 60 samples is larger than the pool of 55"):
            fit(learner(budgets=[11, 60]), small_data(), epochs=1)


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
    model = learner(mc_passes=4)
    model.pool_x = torch.randn(23, *SHAPE)
    model.pool_size = 23
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(SHAPE[0] * SHAPE[1] * SHAPE[2], 11))
    picks = {}
    for name, passes in (("entropy", 1), ("bald", 4)):
        model.hparams.mc_passes = passes
        torch.manual_seed(1)
        picks[name] = model.acquire_from_pool(network, "max_entropy" if passes == 1 else "bald", [0, 5], 7, 0)
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
        "--model.init_args.networks=[cnn4]", "--model.init_args.repeats=1", "--model.init_args.epochs=1",
        "--model.init_args.mc_passes=2", "--model.init_args.budgets=[40,60]", "--trainer.max_epochs=2",
    ])
    (results_path,) = tmp_path.glob("runs/al_synthetic/**/al_results.json")
    results = json.loads(results_path.read_text())
    assert results["pool_size"] == 33
    assert {(r["strategy"], tuple(p["labelled"] for p in r["points"])) for r in results["results"]} == {
        (s, (13, 20)) for s in ("max_entropy", "variation_ratios", "bald", "random")
    }
    assert list(tmp_path.glob("runs/al_synthetic/**/checkpoints/*.ckpt"))


def test_kcenter_strategy_acquires_the_core_set_of_the_embeddings() -> None:
    from ddlight.active_learning.acquisition import kcenter_greedy
    from ddlight.networks import build_network

    data = small_data()
    model = learner(strategies=["kcenter"], repeats=1)
    trainer = fit(model, data)
    labelled = model.labelled["cnn4/kcenter/0"]
    assert len(labelled) == 30 and len(set(labelled)) == 30
    assert [r["labelled"] for r in model.records] == [11, 20, 30]
    network = build_network("cnn4", SHAPE, 11, width=4)
    start = labelled[:11]
    picks = model.acquire_from_pool(network, "kcenter", start, 5, repeat=0)
    embeddings = model.embed(network, model.pool_x)
    unlabelled = [i for i in range(model.pool_size) if i not in set(start)]
    expected = kcenter_greedy(embeddings[unlabelled], embeddings[start], 5)
    assert picks == [unlabelled[i] for i in expected.tolist()]
    assert trainer.current_epoch == 3
