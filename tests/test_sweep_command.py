"""bisenet-pl sweep: a sweep file's runs, here and in turn, without a W&B server: end to end on tiny
data, resumed after one run, and read back as the ablations notebook reads runs."""

from pathlib import Path

import pytest
import yaml
from synthetic import make_camvid_segnet

from bisenet_pl.cli import main
from bisenet_pl.results import ablation_table, collect_local_runs
from bisenet_pl.sweep import SweepRun, parameter_sets

REPO = Path(__file__).resolve().parents[1]


def write_sweep(path: Path, method: str = "grid") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-aux",
                "program": "bisenet-pl",
                "method": method,
                "metric": {"name": "val/mIoU", "goal": "maximize"},
                "parameters": {"model.loss.aux_weights": {"values": [0.0, 1.0]}},
                "command": ["bisenet-pl", "fit", f"--config={REPO / 'configs' / 'camvid_cpu.yaml'}", "${args}"],
            }
        )
    )
    return path


def test_a_two_run_sweep_runs_resumes_and_reads_back(tmp_path, capsys):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 4, "val": 2, "test": 1})
    sweep, out = write_sweep(tmp_path / "tiny.yaml"), tmp_path / "runs"
    tiny = [
        f"--config={REPO / 'configs' / 'camvid_cpu.yaml'}",  # sets model.loss.aux_weights: 1.0, which must not win
        f"--data.root={camvid}", "--data.batch_size=2", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.precision=32",
        "--model.optimizer.warmup_steps=0", "--bn_recalibration.images=4",
    ]  # fmt: skip
    main(["sweep", str(sweep), f"--output={out}", "--", *tiny])
    first = capsys.readouterr().out
    assert "[1/2] aux_weights=0_seed42" in first and "[2/2] aux_weights=1_seed42" in first
    runs = sorted(collect_local_runs(out), key=lambda run: run["config"]["model.loss.aux_weights"])
    assert [run["config"]["model.loss.aux_weights"] for run in runs] == [0.0, 1.0]  # swept values beat the config
    assert all(run["steps"] == 1 and run["config"]["seed_everything"] == 42 for run in runs)  # steps count from 0
    columns, rows = ablation_table(runs)
    assert "model.loss.aux_weights" in columns and len(rows) == 2  # what 03_ablations.ipynb shows
    # Interrupted after the first run: the second is run again, the first is not.
    (out / "aux_weights=1_seed42" / "done").unlink()
    main(["sweep", str(sweep), f"--output={out}", "--", *tiny])
    second = capsys.readouterr().out
    assert "[1/2] aux_weights=0_seed42: finished before, skipped" in second
    assert "[2/2] aux_weights=1_seed42 (continuing from its last.ckpt)" in second


def test_random_searches_draw_the_same_runs_and_bayes_needs_the_server():
    sweep = {
        "method": "random",
        "parameters": {"model.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, "x": {"value": 3}},
    }
    drawn = parameter_sets(sweep, count=3)
    assert drawn == parameter_sets(sweep, count=3) and len({d["model.lr"] for d in drawn}) == 3
    assert all(1e-4 <= d["model.lr"] <= 1e-2 and d["x"] == 3 for d in drawn)
    assert SweepRun({"model.net.init_args.aux_heads": []}, 1).name == "aux_heads=none_seed1"
    with pytest.raises(Exception, match="a Bayesian search chooses each run from the ones before"):
        parameter_sets({"method": "bayes", "parameters": {}})


def test_every_committed_sweep_file_expands_for_the_command():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        sweep = yaml.safe_load(path.read_text())
        runs = (
            parameter_sets(sweep, count=None if sweep["method"] == "grid" else 2) if sweep["method"] != "bayes" else []
        )
        assert sweep["method"] == "bayes" or runs, path.name


def test_an_output_that_cannot_be_a_folder_is_refused_before_any_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    sweep = write_sweep(tmp_path / "tiny.yaml")
    for output in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "runs"):
        with pytest.raises(SystemExit, match=f"--output {output}: .*notes.txt is a file, not a folder"):
            main(["sweep", str(sweep), "--output", str(output)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tiny.yaml"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"values": []}, "'values' must be a non-empty list"),  # ran no run and printed an empty table, exit 0
        (0.01, "must be a mapping such as"),  # was a TypeError traceback
        ({"min": 0.1}, "needs 'values', 'value' or numbers 'min' and 'max'"),  # was a KeyError traceback
        ({"min": 1.0, "max": 0.1}, "min 1.0 is above max 0.1"),  # drew from the reversed range without a word
        ({"distribution": "log_uniform_values", "min": 0, "max": 0.1}, "needs min above 0"),  # math domain error
        ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0}, "q must be above 0"),  # ZeroDivisionError
        ({"distribution": "normal", "min": 0.0, "max": 1.0}, "distribution 'normal' is not one of uniform"),
    ],
)
def test_a_parameter_no_run_could_be_drawn_from_is_refused_before_any_run(spec, message, tmp_path):
    sweep = yaml.safe_load(write_sweep(tmp_path / "tiny.yaml", method="random").read_text())
    sweep["parameters"]["model.optimizer.lr"] = spec
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(SystemExit, match=f"tiny.yaml: parameter model.optimizer.lr.*{message}"):
        main(["sweep", str(tmp_path / "tiny.yaml"), "--count=1", f"--output={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_count_below_one_is_refused_with_its_value(tmp_path):
    with pytest.raises(SystemExit, match="--count must be at least 1; got 0"):
        main(["sweep", str(write_sweep(tmp_path / "tiny.yaml", method="random")), "--count=0"])
