"""benchmarks/compare_families.py: a two-family smoke run (one of them staged) writes the table, the JSON and the
figure; a rerun reuses the results; bad flags are one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_psvae_runs import benchmark

compare = benchmark("compare_families")


@pytest.fixture(scope="module")
def blocks_npz(tmp_path_factory) -> str:
    """24 images of 16 px (a coloured square on a dark ground), 16 train and 8 test, 4 classes."""
    rng = np.random.default_rng(0)
    images = np.full((24, 16, 16, 3), 20, np.uint8)
    for index, (x, y) in enumerate(rng.integers(0, 8, (24, 2))):
        images[index, y : y + 8, x : x + 8] = rng.integers(100, 255, 3)
    split = np.repeat([0, 1], [16, 8])
    path = tmp_path_factory.mktemp("data") / "blocks.npz"
    np.savez(path, images=images, labels=np.arange(24) % 4, split=split)
    return str(path)


def run(argv: list[str]):
    return compare.main(compare.parse_args(argv))


def test_two_families_give_the_table_json_and_figure(blocks_npz, tmp_path, capsys):
    out = tmp_path / "compare"
    argv = ["--families", "psvae", "somar", "--data", blocks_npz, "--image_size", "16", "--budget_s", "300"]
    argv += ["--max_steps", "2", "--fid_samples", "0", "--num_recon", "4", "--batch_size", "8", "--out", str(out)]
    argv += ["--device", "cpu", "--threads", "1"]
    results = run(argv)
    assert [result["family"] for result in results] == ["psvae", "somar"]

    table = (out / "table.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| family"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == compare.COLUMNS
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in table
        if line[:2] == "| "
    }
    psvae, somar = rows["psvae"], rows["somar"]
    assert psvae[1] == "psvae_tiny" and somar[1] == "somar_prior_tiny"
    assert somar[3] == "autoencoder 2 + codebook 2 + prior 2"  # every stage ran to the --max_steps cap
    assert len(somar[4].split(" / ")) == 3 and float(psvae[4]) > 0  # training img/s per stage
    for row in (psvae, somar):
        assert 0 < float(row[5]) < 60 and -1 <= float(row[6]) <= 1 and float(row[7]) >= 0  # PSNR, SSIM, LPIPS
        assert row[8] == row[9] == compare.DASH  # rFID, FID: no Inception asked for
        assert row[10].startswith("1: ") and float(row[10][3:]) > 0  # sampling img/s at the default 1 step
    assert any("--fid_samples 0" in line and "FID" in line for line in table)
    assert "budget: 300 s" in (out / "table.md").read_text()

    saved = json.loads((out / "table.json").read_text())
    somar_json = saved["families"][1]
    assert [stage["stage"] for stage in somar_json["stages"]] == ["autoencoder", "codebook", "prior"]
    assert all(stage["steps"] == 2 and stage["planned_steps"] == 2 for stage in somar_json["stages"])
    assert somar_json["reconstruction"]["num_images"] == 4 and somar_json["reconstruction"]["rfid"] is None
    assert somar_json["generation"]["steps"] == [1] and saved["context"]["command"].startswith("python benchmarks")

    cell = Image.open(out / "psvae" / "grid.png").size  # 6 x 6 tiles of 16 + 2 px, enlarged
    assert cell == ((compare.GRID_SIDE * 18 + 2) * compare.FIGURE_SCALE,) * 2
    column = max(cell[0], compare.MIN_COLUMN_WIDTH)
    width = compare.FIGURE_GAP + 3 * (column + compare.FIGURE_GAP)  # the data, then two families
    assert Image.open(out / "figure.png").size == (width, compare.LABEL_HEIGHT + cell[1] + compare.FIGURE_GAP)

    capsys.readouterr()
    again = run(argv)  # same settings: nothing is trained again
    assert "reusing" in capsys.readouterr().out
    assert [result["stages"] for result in again] == [result["stages"] for result in results]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget_s", "0"], "--budget_s must be a number of seconds > 0"),
        (["--fid_samples", "1"], "--fid_samples 1: FID needs 2 samples or more"),
        (["--inception_weights", "missing.pth"], "Inception weights 'missing.pth' do not exist"),
        (["--data", "no_such_data.npz"], "no_such_data.npz"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, message, tmp_path):
    with pytest.raises(SystemExit) as error:
        run([*flags, "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_unknown_family_is_refused(capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--families", "gan"])
    assert "invalid choice: 'gan'" in capsys.readouterr().err
