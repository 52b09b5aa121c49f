"""Both downstream studies end to end on sets that MTT and RFAD distil (tiny settings), as a user chains them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddlight.cli import main as ddlight
from ddlight.downstream import continual, nas
from ddlight.io import load_synset

REPO = Path(__file__).resolve().parents[2]
#: The tiny data of tests/downstream/conftest.py, as overrides of configs/data/synthetic.yaml.
DATA = [
    "--data.init_args.train_per_class=3", "--data.init_args.val_per_class=2", "--data.init_args.test_per_class=2",
    "--data.init_args.duration=0.25", "--data.init_args.features.n_fft=1024",
    "--data.init_args.features.hop_length=512",
]
QUIET = ["--trainer.enable_progress_bar=false", "--test_after_fit=false"]
#: Tiny settings of each distiller (the tiny data has 3 training clips per class: both configs pack 2 clips into
#: each stored sample, formation 2, so each stores 1 per class and exports 2).
METHODS = {
    "mtt": ["--model.init_args.ipc=1", "--model.init_args.syn_steps=2", "--model.init_args.min_start_epoch=0",
            "--model.init_args.max_start_epoch=1",
            "--model.init_args.expert_epochs=1", "--model.init_args.batch_syn=11"],
    "rfad": ["--model.init_args.ipc=1", "--model.init_args.num_models=2", "--model.init_args.width=8",
             "--model.init_args.real_batch=16", "--model.init_args.num_eval_models=1"],
}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MTT and an RFAD set of 2 per class, distilled in 3 steps each by the shipped configs."""
    work = tmp_path_factory.mktemp("distilled")
    experts = work / "experts"
    ddlight(["fit", "--config", str(REPO / "configs/expert_synthetic.yaml"), *DATA, *QUIET, "--trainer.max_epochs=2",
             "--trainer.logger=false", f"--trainer.default_root_dir={work}", "--model.init_args.num_models=1",
             "--model.init_args.network_options.width=8", f"--trainer.callbacks.init_args.dirpath={experts}"])
    sets = {}
    for method, model in METHODS.items():
        extra = [f"--model.init_args.expert_dir={experts}"] if method == "mtt" else []
        ddlight(["fit", "--config", str(REPO / f"configs/{method}_synthetic.yaml"), *DATA, *QUIET, *model, *extra,
                 "--trainer.max_steps=3", "--trainer.callbacks=[]",
                 f"--trainer.logger.init_args.save_dir={work / method}"])
        sets[method] = work / method / "lightning_logs/version_0/distilled"
    return sets


@pytest.mark.parametrize("method", list(METHODS))
def test_both_studies_run_on_a_distilled_set(distilled: dict[str, Path], data_args: list[str], method: str,
                                             tmp_path: Path) -> None:
    synset = distilled[method]
    assert load_synset(synset).manifest["method"] == method
    common = ["--synset", str(synset), *data_args, "--repeats", "2", "--epochs", "2", "--device", "cpu"]
    learning = continual.main([
        *common, "--stages", "3", "--sources", "synthetic", "random", "herding",
        "--network_options", "{width: 8, depth: 1}", "--out", str(tmp_path),
    ])
    assert learning["method"] == method and [r["source"] for r in learning["results"]] == ["synthetic", "random",
                                                                                          "herding"]
    search = nas.main([
        *common, "--space", "[{name: a, architecture: convnet, options: {width: 8, depth: 1}},"
        " {name: b, architecture: mlp, options: {width: 16, depth: 1}}]", "--full_epochs", "1", "--top_k", "1",
        "--out", str(tmp_path),
    ])
    assert search["method"] == method and [p["source"] for p in search["proxies"]] == ["synthetic", "random"]
    for stem in ("continual", "nas"):
        assert (tmp_path / f"{stem}.json").is_file() and (tmp_path / f"{stem}.md").is_file()
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
