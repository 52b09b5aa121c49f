"""Architecture-search proxy: search space, rank statistics, the command end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ddlight.downstream.nas import (
    SMALL_OPTIONS,
    Candidate,
    check_space,
    main,
    rank_agreement,
    search_space,
    spearman,
    top_k,
    top_k_overlap,
)
from ddlight.networks import NETWORKS, build_network


def test_search_space_has_twenty_distinct_networks_that_all_run() -> None:
    space = search_space()
    assert len(space) >= 20 and len({c.name for c in space}) == len(space)
    assert {c.architecture for c in space} == set(NETWORKS)
    options = [c.options for c in space if c.architecture == "convnet"]
    for option in ("depth", "width", "norm", "activation", "pooling"):
        assert len({o[option] for o in options}) > 1, f"no variation of {option}"
    check_space(space)
    assert all(c.options == SMALL_OPTIONS.get(c.architecture, {}) for c in space if c.architecture != "convnet")
    x = torch.randn(2, 3, 20, 8)
    torch.manual_seed(0)
    for candidate in space:
        network = build_network(candidate.architecture, x.shape[1:], 11, **candidate.options).eval()
        assert network(x).shape == (2, 11), candidate.name


def test_check_space_refuses_bad_candidates() -> None:
    good = Candidate("a", "mlp", {"width": 8})
    with pytest.raises(ValueError, match="distinct names"):
        check_space([good, good])
    with pytest.raises(ValueError, match="unknown network 'mlpp'"):
        check_space([good, Candidate("b", "mlpp")])
    with pytest.raises(TypeError, match=r"candidate 'b': mlp takes no option\(s\) \['depht'\]"):
        check_space([good, Candidate("b", "mlp", {"depht": 2})])


def test_spearman_with_ties_matches_the_hand_computation() -> None:
    # ranks of a: 1, 2.5, 2.5, 4; of b: 1, 3, 2, 4. Centred: (-1.5, 0, 0, 1.5) and (-1.5, 0.5, -0.5, 1.5):
    # covariance sum 4.5, squares 4.5 and 5, so rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman([10, 20, 20, 30], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([5, 5, 5], [1, 2, 3]) == 0.0  # no ranking: no correlation
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])


def test_top_k_overlap_and_regret() -> None:
    proxy, reference = [90, 80, 70, 60], [80, 90, 60, 70]
    assert top_k(proxy, 2) == [0, 1] and top_k([1, 3, 3], 2) == [1, 2]
    assert top_k_overlap(proxy, reference, 2) == 1.0
    assert top_k_overlap(proxy, reference, 1) == 0.0
    assert top_k_overlap(proxy, reference, 3) == pytest.approx(2 / 3)
    assert top_k_overlap(proxy, reference, 10) == 1.0  # k is capped at the space
    agreement = rank_agreement(proxy, reference, 2)
    assert agreement["regret"] == 10 and agreement["top_k_overlap"] == 1.0
    assert agreement["rho"] == pytest.approx(0.6)


SPACE = ("[{name: conv1, architecture: convnet, options: {width: 8, depth: 1}},"
         " {name: conv2, architecture: convnet, options: {width: 8, depth: 2, activation: sigmoid}},"
         " {name: mlp, architecture: mlp, options: {width: 16, depth: 1}}]")


def test_command_end_to_end(
    synset_dir: Path, data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nas_out"
    report = main([
        "--synset", str(synset_dir), *data_args, "--space", SPACE, "--proxies", "synthetic", "random",
        "--repeats", "2", "--epochs", "3", "--full_epochs", "2", "--top_k", "2", "--device", "cpu", "--out", str(out),
    ])
    assert json.loads((out / "nas.json").read_text()) == report
    assert report["recipe"] | {"lr_requested": None} == {
        "lr": 0.01, "lr_requested": None, "epochs": 3, "full_epochs": 2, "batch_size": 256, "augment": True,
        "repeats": 2, "seed": 0, "split": "val",
    }
    assert [c["name"] for c in report["candidates"]] == ["conv1", "conv2", "mlp"]
    for candidate in report["candidates"]:
        for name in ("synthetic", "random", "full"):
            assert len(candidate[name]["runs"]) == 2 and all(0 <= a <= 100 for a in candidate[name]["runs"])
    assert [p["source"] for p in report["proxies"]] == ["synthetic", "random"] and report["top_k"] == 2
    for proxy in report["proxies"]:
        assert len(proxy["rho"]["runs"]) == 2 and all(-1 <= rho <= 1 for rho in proxy["rho"]["runs"])
        assert all(0 <= share <= 1 for share in proxy["top_k_overlap"]["runs"])
        assert all(regret >= 0 for regret in proxy["regret"]["runs"])
        assert proxy["seconds"] > 0 and proxy["time_saved"] < 1
    assert report["full_seconds"] > 0
    table = (out / "nas.md").read_text()
    assert "| proxy | Spearman ρ | top-2 overlap |" in table and "| conv2 |" in table
    assert (out / "nas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (synset_dir.parent / "nas.json").exists()
    assert "48/48 [" in capsys.readouterr().err  # the bar: 2 seeds x 3 candidates x (3 + 2 epochs on the full split)


def test_reference_cache_trains_the_full_split_once(
    synset_dir: Path, data_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "reference"
    common = [
        "--synset", str(synset_dir), *data_args, "--space", SPACE, "--proxies", "random", "--repeats", "2",
        "--epochs", "2", "--full_epochs", "3", "--top_k", "2", "--device", "cpu", "--reference_cache", str(cache),
    ]
    first = main([*common, "--out", str(tmp_path / "first")])
    assert "30/30 [" in capsys.readouterr().err  # 2 seeds x 3 candidates x (2 + 3 epochs)
    assert len(list(cache.glob("*.json"))) == 6 and first["full_reused"] == 0
    second = main([*common, "--out", str(tmp_path / "second")])
    assert "12/12 [" in capsys.readouterr().err  # the proxy only: the full split comes from the cache
    assert second["full_reused"] == 6 and second["full_seconds"] == first["full_seconds"]
    assert [c["full"] for c in second["candidates"]] == [c["full"] for c in first["candidates"]]
    assert "6 of the reference's 6 scores were reused" in (tmp_path / "second" / "nas.md").read_text()
    main([*common, "--lr", "0.02", "--out", str(tmp_path / "third")])  # another recipe: another reference
    assert "30/30 [" in capsys.readouterr().err and len(list(cache.glob("*.json"))) == 12
