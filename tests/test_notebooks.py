"""The notebooks run top to bottom on tiny data; 01 is committed with its outputs on CamVid (make notebooks)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from synthetic import make_camvid_segnet

from bisenet_pl.cli import build_cli
from bisenet_pl.results import ablation_table, collect_local_runs, markdown_table

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Synthetic CamVid and two short CamVid runs that differ in the aggregation (an ablation)."""
    root = tmp_path_factory.mktemp("notebooks")
    camvid = make_camvid_segnet(root / "camvid", {"train": 2, "val": 2, "test": 1})
    for aggregation in ("bga", "sum"):
        build_cli([
            "fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--data.batch_size=2",
            "--data.num_workers=0", "--data.crop_size=[32,48]", "--progress_bar.refresh_rate=0",
            "--trainer.max_steps=2", "--trainer.val_check_interval=1", "--val_images.num_samples=0",
            f"--model.net.init_args.aggregation={aggregation}",
            f"--trainer.default_root_dir={root / 'outputs'}", f"--trainer.logger.init_args.save_dir={root / 'outputs'}",
        ])  # fmt: skip
    return {"camvid": camvid, "outputs": root / "outputs"}


def test_notebooks_are_numbered_and_committed_as_make_notebooks_leaves_them():
    assert [p.name for p in NOTEBOOKS] == ["01_dataset.ipynb", "02_results.ipynb", "03_ablations.ipynb"]
    executed = {"01_dataset.ipynb"}  # by make notebooks, on the real data; the others have no outputs yet
    for path in NOTEBOOKS:
        code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        if path.name in executed:
            assert all(cell.execution_count is not None for cell in code), f"{path.name}: run make notebooks"
        else:
            assert all(not cell.outputs and cell.execution_count is None for cell in code), path.name
    cells = nbformat.read(NOTEBOOKS[0], as_version=4).cells
    text = "".join(str(o.get("text", "")) for cell in cells for o in cell.get("outputs", []))
    assert "367 training images, 11 classes" in text  # executed on CamVid itself, not on test data


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
    monkeypatch.setenv("BISENET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    notebook = nbformat.read(path, as_version=4)
    # Any cell error raises CellExecutionError and fails the test.
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", ""))
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    images = sum(
        bool({"image/png", "image/jpeg"} & set(output.get("data", {})))
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    figures, expected = {
        "01_dataset": (4, "2 training images, 11 classes"),
        "02_results": (4, "mIoU"),
        "03_ablations": (2, "| aggregation | best val/mIoU |"),
    }[path.stem]
    assert images == figures, f"{path.name} drew {images} figures"
    assert expected in text
