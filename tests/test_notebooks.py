"""The notebooks run top to bottom on tiny data; 01 is committed with its outputs on CamVid (make notebooks)."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from synthetic import make_camvid_segnet

from bisenet_pl.cli import build_cli
from bisenet_pl.results import (
    CPU_STUDY,
    CPU_STUDY_3000,
    RECIPE_FINISH,
    RECIPE_STUDY_3000,
    Variant,
    ablation_table,
    collect_local_runs,
    has_callback,
    markdown_table,
    pretrained_from,
    study_table,
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Synthetic CamVid with a dev sequence, and two short runs of two rows of the study's aggregation table
    (sum and BGA, no boosters)."""
    root = tmp_path_factory.mktemp("notebooks")
    camvid = make_camvid_segnet(root / "camvid", {"train": 4, "val": 2, "test": 1}, sequences=("0001TP", "0006R0"))
    for aggregation in ("bga", "sum"):
        build_cli([
            "fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--data.batch_size=2",
            "--data.num_workers=0", "--data.crop_size=[32,48]", "--progress_bar.refresh_rate=0",
            "--trainer.max_steps=2", "--trainer.val_check_interval=1", "--val_images.num_samples=0",
            "--data.dev_sequences=[0006R0]", "--model.net.init_args.aux_heads=[]",
            f"--model.net.init_args.aggregation={aggregation}",
            f"--trainer.default_root_dir={root / 'outputs'}",
        ])  # fmt: skip
    return {"camvid": camvid, "outputs": root / "outputs"}


def test_notebooks_are_numbered_and_committed_as_make_notebooks_leaves_them():
    assert [p.name for p in NOTEBOOKS] == ["01_dataset.ipynb", "02_results.ipynb", "03_ablations.ipynb"]
    executed = {"01_dataset.ipynb", "02_results.ipynb", "03_ablations.ipynb"}  # by make notebooks, on real data
    for path in NOTEBOOKS:
        code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        if path.name in executed:
            assert all(cell.execution_count is not None for cell in code), f"{path.name}: run make notebooks"
        else:
            assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name
    texts = {path.stem: outputs_text(nbformat.read(path, as_version=4)) for path in NOTEBOOKS}
    assert "367 training images, 11 classes" in texts["01_dataset"]  # executed on CamVid itself, not on test data
    assert "bisenetv2_camvid: BiSeNetV2, 11 classes" in texts["02_results"]  # on the released weights
    assert "14 runs from ../results/cpu_study" in texts["03_ablations"]  # on the committed study


def outputs_text(notebook) -> str:
    return "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


def test_local_runs_make_an_ablation_table(runs):
    collected = collect_local_runs(runs["outputs"])
    assert len(collected) == 2
    columns, rows = ablation_table(collected)
    assert columns == ["model.net.init_args.aggregation", "best val/mIoU"]
    assert sorted(row[0] for row in rows) == ["bga", "sum"] and rows[0][1] >= rows[1][1]
    assert markdown_table(columns, rows).splitlines()[0] == "| aggregation | best val/mIoU |"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, runs, monkeypatch):
    checkpoint = max(runs["outputs"].rglob("last.ckpt"), key=os.path.getmtime)
    monkeypatch.setenv("BISENET_DATA_ROOT", str(runs["camvid"]))
    monkeypatch.setenv("BISENET_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("BISENET_RUNS_DIR", str(runs["outputs"]))
    monkeypatch.setenv("BISENET_LONG_RUNS_DIR", str(runs["outputs"] / "no-such-study"))
    monkeypatch.setenv("BISENET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    notebook = execute(path)
    text, images = outputs_text(notebook), figures_in(notebook)
    figures, expected = {
        "01_dataset": (4, r"4 training images, 11 classes"),
        "02_results": (4, r"mIoU"),
        "03_ablations": (2, r"\| sum \| \d+\.\d\d \(42\) \|"),  # a row of the study's table: one seed, on dev
    }[path.stem]
    assert images == figures, f"{path.name} drew {images} figures"
    assert re.search(expected, text), expected
    if path.stem == "03_ablations":
        assert "2 runs from" in text and "compared on their last dev/mIoU" in text
        assert "**BiSeNetV2 aggregation (no boosters)**" in text and "**BiSeNetV1 against" not in text


def test_the_ablations_notebook_reads_the_committed_study(monkeypatch):
    """03 by default, as make notebooks runs it: the committed runs of sweeps/cpu_study.yaml, every table filled."""
    monkeypatch.delenv("BISENET_RUNS_DIR", raising=False)
    monkeypatch.delenv("BISENET_WANDB_PROJECT", raising=False)
    notebook = execute(REPO / "notebooks" / "03_ablations.ipynb")
    text = outputs_text(notebook)
    assert "14 runs from ../results/cpu_study, compared on their last dev/mIoU" in text
    assert "14 runs from ../results/cpu_study_3000, compared on their last dev/mIoU" in text
    assert text.count("no run") == 0 and figures_in(notebook) == 3
    for title in [*CPU_STUDY, *CPU_STUDY_3000]:
        assert f"**{title}**" in text
    assert "READING" not in "".join(cell.source for cell in notebook.cells)


def execute(path: Path):
    notebook = nbformat.read(path, as_version=4)
    # Any cell error raises CellExecutionError and fails the test.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return notebook


def figures_in(notebook) -> int:
    return sum(
        bool({"image/png", "image/jpeg"} & set(output.get("data", {})))
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize(
    "folders,study",
    [
        (["cpu_study"], CPU_STUDY),
        (["cpu_study_3000"], CPU_STUDY_3000),
        (["recipe_study_3000", "cpu_study_3000"], RECIPE_STUDY_3000),  # the recipe's own runs are the study's
        (["recipe_finish", "recipe_study_3000", "cpu_study_3000"], RECIPE_FINISH),
    ],
)
def test_the_readme_shows_the_committed_study(folders, study):
    """The README's study tables are the ones the committed runs give, to the digit."""
    runs = {
        metric: [run for folder in folders for run in collect_local_runs(REPO / "results" / folder, metric)]
        for metric in ("dev/mIoU", "val/mIoU")
    }
    readme = (REPO / "README.md").read_text()
    for title, variants in study.items():
        table, rows = study_table(title, variants, runs["dev/mIoU"], runs["val/mIoU"])
        assert all(len(row["values"]) >= 2 for row in rows), title  # two seeds or more of every variant
        assert table in readme, title


def test_a_variant_can_ask_where_a_run_started_from():
    crops = Variant("after the crops", {"model.pretrained": pretrained_from("crop_size=288+384")})
    runs = [
        {"config": {"model.pretrained": "/runs/crop_size=288+384,batch_size=4_seed1/last.ckpt"}},
        {"config": {"model.pretrained": "/runs/net=BiSeNetV2_seed1/last.ckpt"}},
        {"config": {"model.pretrained": None}},
        {"config": {}},
    ]
    assert crops.runs(runs) == runs[:1]


def test_a_variant_can_ask_for_a_callback_by_class_and_arguments():
    ema = has_callback("EMAWeightAveraging", decay=0.999)
    callbacks = [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.999}}]
    assert ema(callbacks) and not ema(None) and not ema([{"class_path": "x.EMAWeightAveraging"}])
    assert not has_callback("EMAWeightAveraging", decay=0.99)(callbacks)
    variant = Variant("EMA", {"trainer.callbacks": ema})
    assert variant.runs([{"config": {"trainer.callbacks": callbacks}}, {"config": {}}]) == [
        {"config": {"trainer.callbacks": callbacks}}
    ]
