"""Tests of ddlight.active_learning.acquisition on hand-made inputs with known answers."""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from ddlight.active_learning.acquisition import (
    ACQUISITIONS,
    acquire,
    acquisition_scores,
    bald,
    enable_mc_dropout,
    has_dropout,
    insert_mc_dropout,
    margin,
    max_entropy,
    mc_dropout_probs,
    random_scores,
    remove_dropout,
    score_pool_sharded,
    select_top_k,
    variation_ratios,
)


def _dropout_net(p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3)
    )


class TestScores:
    def test_entropy_uniform_and_one_hot(self) -> None:
        probs = torch.tensor([[0.25] * 4, [0.0, 1.0, 0.0, 0.0]])
        h = max_entropy(probs)
        torch.testing.assert_close(h, torch.tensor([math.log(4), 0.0]))
        assert not h.isnan().any()

    def test_variation_ratios_values(self) -> None:
        probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
        torch.testing.assert_close(variation_ratios(probs), torch.tensor([0.3, 2 / 3, 0.0]))

    def test_margin_orders_by_top2_gap(self) -> None:
        probs = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.45, 0.1, 0.45]])
        scores = margin(probs)
        torch.testing.assert_close(scores, torch.tensor([-0.85, -0.1, 0.0]))
        assert select_top_k(scores, 3).tolist() == [2, 1, 0]

    def test_margin_needs_two_classes(self) -> None:
        with pytest.raises(ValueError, match="at least 2 classes"):
            margin(torch.ones(3, 1))

    def test_bald_hand_computed(self) -> None:
        # Passes disagree confidently / disagree softly / agree confidently / agree on uniform.
        pass1 = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.5, 0.5]])
        pass2 = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.5, 0.5]])
        h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
        expected = torch.tensor([math.log(2), math.log(2) - h_09, 0.0, 0.0])
        torch.testing.assert_close(bald(torch.stack([pass1, pass2])), expected)

    def test_bald_non_negative_and_bounded(self) -> None:
        torch.manual_seed(0)
        mc = torch.distributions.Dirichlet(torch.full((5,), 0.3)).sample((8, 200))
        scores = bald(mc)
        assert scores.shape == (200,)
        assert (scores >= 0).all() and (scores <= math.log(5) + 1e-6).all()
        assert (scores > 0).any()

    def test_bald_needs_two_passes(self) -> None:
        with pytest.raises(ValueError, match="at least 2"):
            bald(torch.full((1, 4, 3), 1 / 3))

    def test_wrong_rank_rejected(self) -> None:
        with pytest.raises(ValueError, match="2 dimensions"):
            max_entropy(torch.full((2, 4, 3), 1 / 3))

    def test_random_scores_seeded(self) -> None:
        a = random_scores(10, torch.Generator().manual_seed(1))
        b = random_scores(10, torch.Generator().manual_seed(1))
        assert a.shape == (10,) and torch.equal(a, b)
        assert ((a >= 0) & (a < 1)).all()


class TestMCDropout:
    def test_shape_and_passes_differ(self) -> None:
        model, x = _dropout_net(), torch.randn(5, 6)
        mc = mc_dropout_probs(model.eval(), x, passes=7)
        assert mc.shape == (7, 5, 3)
        torch.testing.assert_close(mc.sum(-1), torch.ones(7, 5))
        assert not torch.allclose(mc[0], mc[1])

    def test_one_forward_or_chunks(self) -> None:
        model, x = _dropout_net(), torch.randn(3, 6)
        sizes: list[int] = []
        model[0].register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
        mc_dropout_probs(model, x, passes=4)
        assert sizes == [12]
        sizes.clear()
        mc_dropout_probs(model, x, passes=4, chunk=5)
        assert sizes == [5, 5, 2]

    def test_zero_dropout_equals_eval_forward(self) -> None:
        model, x = _dropout_net(p=0.0), torch.randn(5, 6)
        with torch.no_grad():
            expected = model.eval()(x).softmax(-1).expand(4, 5, 3)
        torch.testing.assert_close(mc_dropout_probs(model, x, passes=4), expected)
        torch.testing.assert_close(mc_dropout_probs(model, x, passes=4, chunk=3), expected)

    def test_batchnorm_stays_in_eval(self) -> None:
        model, x = _dropout_net(), torch.randn(5, 6)
        bn = model[1]
        before = {k: v.clone() for k, v in bn.state_dict().items()}
        mc_dropout_probs(model.train(), x, passes=3)
        for key, value in bn.state_dict().items():
            assert torch.equal(value, before[key]), key

    @pytest.mark.parametrize("train", [True, False])
    def test_modes_restored(self, train: bool) -> None:
        model = _dropout_net().train(train)
        model[2].train(not train)  # a mixed state must come back exactly
        modes = [m.training for m in model.modules()]
        mc_dropout_probs(model, torch.randn(2, 6), passes=2)
        assert [m.training for m in model.modules()] == modes

    def test_enable_mc_dropout_context(self) -> None:
        model = _dropout_net().train()
        with enable_mc_dropout(model):
            assert model[3].training and not model[1].training and not model.training
        assert all(m.training for m in model.modules())

    def test_modes_restored_after_error(self) -> None:
        model = _dropout_net().train()
        with pytest.raises(RuntimeError), enable_mc_dropout(model):
            raise RuntimeError
        assert all(m.training for m in model.modules())

    def test_missing_dropout_error(self) -> None:
        model = nn.Sequential(nn.Linear(6, 3))
        with pytest.raises(ValueError, match="needs dropout.*insert_mc_dropout"):
            mc_dropout_probs(model, torch.randn(2, 6))

    def test_insert_mc_dropout(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        x = torch.randn(4, 6)
        with torch.no_grad():
            before = model(x)
        assert insert_mc_dropout(model, p=0.5) is model
        assert isinstance(model[0], nn.Linear)
        assert isinstance(model[2][0], nn.Dropout) and model[2][0].p == 0.5
        assert isinstance(model[2][1], nn.Linear)
        with torch.no_grad():
            torch.testing.assert_close(model(x), before)
        mc = mc_dropout_probs(model, x, passes=5)
        assert not torch.allclose(mc[0], mc[1])

    def test_insert_mc_dropout_named_layers_and_errors(self) -> None:
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        insert_mc_dropout(model, layers=["0", "2"])
        assert isinstance(model[0][0], nn.Dropout) and isinstance(model[2][0], nn.Dropout)
        with pytest.raises(ValueError, match="not an nn.Linear"):
            insert_mc_dropout(model, layers=["1"])
        with pytest.raises(ValueError, match="no nn.Linear"):
            insert_mc_dropout(nn.Sequential(nn.ReLU()))

    def test_remove_dropout(self) -> None:
        model, x = _dropout_net(), torch.randn(4, 6)
        with torch.no_grad():
            before = model.eval()(x)
        assert has_dropout(model) and remove_dropout(model) is model
        assert not has_dropout(model) and isinstance(model[3], nn.Identity)
        model.train()
        model[1].eval()  # batch norm frozen: without dropout, train mode now computes the eval output
        with torch.no_grad():
            torch.testing.assert_close(model(x), before)

class TestSelection:
    def test_top_k_ties_go_to_lower_index(self) -> None:
        scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
        assert select_top_k(scores, 2).tolist() == [1, 2]
        assert select_top_k(scores, 4).tolist() == [1, 2, 4, 3]

    def test_top_k_checks(self) -> None:
        with pytest.raises(ValueError, match="k=6 items from a pool of 5"):
            select_top_k(torch.zeros(5), 6)
        with pytest.raises(ValueError, match="NaN"):
            select_top_k(torch.tensor([0.0, math.nan]), 1)

    def test_registry_names_and_unknown(self) -> None:
        assert set(ACQUISITIONS) == {"max_entropy", "variation_ratios", "margin", "bald", "random"}
        with pytest.raises(ValueError, match="choose from.*bald.*max_entropy"):
            acquire("entropy", torch.full((3, 2), 0.5), 1)

    def test_acquire_uncertainty_on_mean_of_passes(self) -> None:
        # Item 1 is confident in each pass but the passes disagree: its mean is uniform.
        mc = torch.tensor(
            [[[0.8, 0.2], [1.0, 0.0], [0.6, 0.4]], [[0.8, 0.2], [0.0, 1.0], [0.6, 0.4]]]
        )
        for name in ("max_entropy", "variation_ratios", "margin", "bald"):
            assert acquire(name, mc, 1).tolist() == [1], name
        torch.testing.assert_close(acquisition_scores("max_entropy", mc[0]), max_entropy(mc[0]))

    def test_acquire_random_is_seeded_and_distinct(self) -> None:
        probs = torch.full((20, 3), 1 / 3)
        a = acquire("random", probs, 5, torch.Generator().manual_seed(3))
        b = acquire("random", probs, 5, torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and len(set(a.tolist())) == 5


def _sharded_scores(x: Tensor) -> Tensor:
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], 4)
    with torch.no_grad():
        return max_entropy(model(x).softmax(-1))


def _pools() -> list[Tensor]:
    return [torch.randn(n, 3, generator=torch.Generator().manual_seed(n)) for n in (7, 8, 1)]


def _sharded_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    try:
        results = [score_pool_sharded(_sharded_scores, pool) for pool in _pools()]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestShardedScoring:
    def test_single_process_fallback(self) -> None:
        pool = _pools()[0]
        torch.testing.assert_close(score_pool_sharded(_sharded_scores, pool), _sharded_scores(pool))
        with pytest.raises(ValueError, match="not initialised"):
            score_pool_sharded(_sharded_scores, pool, rank=0, world_size=2)

    @pytest.mark.timeout(90)
    def test_two_process_gloo_equals_unsharded(self, tmp_path: Path) -> None:
        ctx = mp.spawn(_sharded_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
        deadline = time.monotonic() + 60
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for process in ctx.processes:
                    process.kill()
                pytest.fail("2-process gloo run did not finish within 60 s")
        expected = [_sharded_scores(pool) for pool in _pools()]
        for rank in range(2):
            results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
            assert [r.shape[0] for r in results] == [7, 8, 1]
            for got, want in zip(results, expected, strict=True):
                torch.testing.assert_close(got, want)
