"""Data beyond uint8 images: 1-D signals (.npz, the built-in 'sines'), float images with per-pixel sigma, and
Parquet tables written the way Spherinator writes them; all offline, on arrays the tests make."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import (
    SINES_BANDS,
    DatasetError,
    build_dataset,
    parse_shape,
    sine_arrays,
)

RNG = np.random.default_rng(0)


def one_line_error(words: str, name: str, **kwargs) -> None:
    """build_dataset(name, **kwargs) raises a one-line DatasetError matching words."""
    with pytest.raises(DatasetError, match=words) as caught:
        build_dataset(name, **kwargs)
    assert "\n" not in str(caught.value)


def attributes(dataset, names: str) -> tuple:
    """The dataset's attributes named in a space-separated list."""
    return tuple(getattr(dataset, name) for name in names.split())


def items(dataset) -> list[tuple[torch.Tensor, ...]]:
    return [dataset[index] for index in range(len(dataset))]


# ---- the built-in 'sines' ----------------------------------------------------------------------------------------


def test_sines_are_deterministic_and_split():
    train, test = build_dataset("sines"), build_dataset("sines", train=False)
    assert (len(train), len(test), train.split, test.split) == (2400, 600, "train", "test")
    for dataset in (train, test):
        assert (dataset.name, dataset.kind, dataset.has_sigma, dataset.num_classes) == ("sines", "signal", True, 3)
        assert attributes(dataset, "in_channels signal_length image_size native_size") == (1, 128, 128, 128)
        assert dataset.class_names == ["low", "mid", "high"]
    x, label, sigma = train[7]
    assert x.shape == sigma.shape == (1, 128) and x.dtype == sigma.dtype == torch.float32
    assert label.dtype == torch.int64 and label.shape == () and 0 <= int(label) < 3
    assert torch.equal(build_dataset("sines").signals, train.signals)  # the same signals on every call
    assert not torch.equal(train.signals[:600], test.signals)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == {0, 1, 2}


def test_sines_class_is_the_band_of_the_strongest_sinusoid():
    arrays = sine_arrays()
    spectrum = np.abs(np.fft.rfft(arrays["signals"][:, 0], axis=-1))  # noisy signals, bins = cycles per signal
    peak = spectrum[:, 1:].argmax(axis=1) + 1
    band = np.digitize(peak, [SINES_BANDS[0, 1] + 0.5, SINES_BANDS[1, 1] + 0.5])
    assert (band == arrays["labels"]).mean() > 0.99
    assert np.bincount(arrays["labels"]).tolist() == [1000, 1000, 1000]


def test_sines_sigma_is_the_noise_level_in_the_items_units():
    arrays = sine_arrays()
    pulls = (arrays["signals"] - arrays["clean"]) / arrays["errors"]  # (x - clean) / sigma ~ N(0, 1)
    assert abs(pulls.mean()) < 0.01 and abs(pulls.std() - 1) < 0.01
    assert (arrays["errors"][..., -1] > 2.5 * arrays["errors"][..., 0]).all()  # noisier towards the end
    train, test = build_dataset("sines"), build_dataset("sines", train=False)
    scale = float(train.normalisation.scale[0])
    assert train.normalisation.rule == "absmax" and scale == pytest.approx(np.abs(arrays["signals"][:2400]).max())
    assert float(train.signals.abs().max()) == pytest.approx(1.0)
    torch.testing.assert_close(test.signals, torch.from_numpy(arrays["signals"][2400:]) / scale)  # train's scale
    torch.testing.assert_close(test.errors, torch.from_numpy(arrays["errors"][2400:]) / scale)
    assert (train.errors > 0).all()


def test_sines_length_follows_image_size():
    short = build_dataset("sines", image_size=64)
    assert (short.signal_length, short.image_size, short[0][0].shape) == (64, 64, (1, 64))
    one_line_error("at least|>= 32", "sines", image_size=16)


# ---- .npz signals --------------------------------------------------------------------------------------------------


def test_npz_signals_one_and_several_channels(tmp_path):
    raw = RNG.normal(size=(6, 2, 20)).astype(np.float32)
    labels, split = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 0, 0, 0, 1, 1])
    np.savez(tmp_path / "multi.npz", signals=raw, labels=labels, class_names=np.array(["a", "b", "c"]), split=split)
    np.savez(tmp_path / "flat.npz", signals=raw[:, 0].astype(np.float64))
    multi = build_dataset(str(tmp_path / "multi.npz"), signal_norm="none")
    assert len(multi) == 4 and attributes(multi, "in_channels signal_length split has_sigma") == (2, 20, "train", False)
    assert multi.class_names == ["a", "b", "c"] and multi.num_classes == 3
    x, label = multi[3]  # no errors: a pair, like images
    assert torch.equal(x, torch.from_numpy(raw[3])) and int(label) == 0
    flat = build_dataset(str(tmp_path / "flat.npz"), train=False, signal_norm="none")
    assert (len(flat), flat.split, flat.in_channels, flat.num_classes) == (6, "all", 1, 0)
    assert flat[5][0].dtype == torch.float32 and torch.allclose(flat[5][0][0], torch.from_numpy(raw[5, 0]))
    assert int(flat[5][1]) == 0


def write_levels(path: Path, levels: list[float], errors: float = 0.1) -> np.ndarray:
    """Signals that are each constant at one level (N, 1, 8), the case per-sample min-max divides by zero."""
    signals = np.array(levels, np.float32)[:, None, None] * np.ones((1, 1, 8), np.float32)
    np.savez(path, signals=signals, errors=np.full_like(signals, errors))
    return signals


def test_signal_normalisation_is_per_dataset_never_per_sample(tmp_path):
    signals = write_levels(tmp_path / "levels.npz", [0.0, 0.5, -2.0, 4.0])
    dataset = build_dataset(str(tmp_path / "levels.npz"))  # default: absmax
    x = torch.stack([item[0] for item in items(dataset)])
    assert torch.isfinite(x).all() and torch.allclose(x, torch.from_numpy(signals) / 4)  # levels and their ratios kept
    assert all(torch.allclose(item[2], torch.full((1, 8), 0.1 / 4)) for item in items(dataset))  # sigma / the same 4
    write_levels(tmp_path / "zeros.npz", [0.0, 0.0])
    for rule in ("absmax", "standard", "none"):
        zeros = build_dataset(str(tmp_path / "zeros.npz"), signal_norm=rule)
        assert torch.equal(zeros.signals, torch.zeros(2, 1, 8)) and torch.allclose(zeros.errors, torch.tensor(0.1))


def test_standard_normalisation_uses_train_statistics_for_both_splits(tmp_path):
    raw = np.stack([RNG.normal(5, 2, (40, 16)), RNG.normal(-1, 0.1, (40, 16))], axis=1).astype(np.float32)
    errors = np.full_like(raw, 0.5)
    split = np.array([0] * 30 + [1] * 10)
    np.savez(tmp_path / "two.npz", signals=raw, errors=errors, split=split)
    train = build_dataset(str(tmp_path / "two.npz"), signal_norm="standard")
    test = build_dataset(str(tmp_path / "two.npz"), train=False, signal_norm="standard")
    mean, std = raw[:30].mean(axis=(0, 2)), raw[:30].std(axis=(0, 2))
    np.testing.assert_allclose(train.normalisation.offset, mean, rtol=1e-5)
    np.testing.assert_allclose(test.normalisation.scale, std, rtol=1e-5)
    torch.testing.assert_close(train.signals.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.signals.std(dim=(0, 2), correction=0), torch.ones(2))
    expected = (raw[30:] - mean[:, None]) / std[:, None]
    torch.testing.assert_close(test.signals, torch.from_numpy(expected.astype(np.float32)))
    torch.testing.assert_close(
        test.errors, torch.from_numpy((0.5 / std[:, None] * np.ones((10, 2, 16))).astype(np.float32))
    )
    torch.testing.assert_close(
        test.normalisation.invert(test.signals), torch.from_numpy(raw[30:]), atol=1e-5, rtol=1e-5
    )


SIGNALS_4 = np.linspace(-1, 1, 4 * 8, dtype=np.float32).reshape(4, 1, 8)


@pytest.mark.parametrize(
    ("arrays", "kwargs", "words"),
    [
        ({"errors": np.zeros_like(SIGNALS_4)}, {}, "1? ?32 values <= 0"),
        ({"errors": -np.ones_like(SIGNALS_4)}, {}, "must be positive"),
        ({"errors": np.full_like(SIGNALS_4, np.nan)}, {}, "'errors'.*NaN or infinite"),
        ({"errors": np.full_like(SIGNALS_4, np.inf)}, {}, "'errors'.*NaN or infinite"),
        ({"errors": np.full(SIGNALS_4.shape, 1e-50)}, {}, "values <= 0 \\(in float32\\)"),
        ({"errors": np.ones((4, 8), np.float32)}, {}, "expected the data's shape"),
        ({"signals": np.where(SIGNALS_4 > 0.9, np.nan, SIGNALS_4)}, {}, "'signals'.*holds 2 NaN or infinite"),
        ({"signals": np.ones(4, np.float32)}, {}, "expected \\(N, L\\) or \\(N, C, L\\)"),
        ({"signals": np.ones((4, 1, 0), np.float32)}, {}, "expected \\(N, L\\) or \\(N, C, L\\)"),
        ({"signals": np.array([["a", "b"]])}, {}, "expected real numbers"),
        ({"images": np.zeros((4, 8, 8), np.uint8)}, {}, "both 'images' and 'signals'"),
        ({"labels": np.array([0, 1])}, {}, "expected 4 integers \\(one per signal\\)"),
        ({"split": np.ones(4, np.int64)}, {}, "no train signals"),
        ({}, {"image_size": 16}, "length 8 and are never resampled"),
        ({}, {"signal_norm": "minmax"}, "--signal_norm 'minmax' is not one of"),
    ],
)
def test_npz_signal_problems_are_one_line_errors(tmp_path, arrays, kwargs, words):
    np.savez(tmp_path / "bad.npz", **({"signals": SIGNALS_4} | arrays))
    one_line_error(words, str(tmp_path / "bad.npz"), **kwargs)


# ---- float images with per-pixel sigma -------------------------------------------------------------------------------


def test_float_images_with_errors_are_triples_in_signed_units(tmp_path):
    images = RNG.uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)  # (N, H, W, C) in [0, 1]
    errors = RNG.uniform(0.01, 0.1, images.shape).astype(np.float32)
    np.savez(tmp_path / "float.npz", images=images, errors=errors, labels=np.arange(5))
    dataset = build_dataset(str(tmp_path / "float.npz"), hflip=False)
    assert attributes(dataset, "kind has_sigma in_channels image_size num_classes") == ("image", True, 3, 8, 5)
    x, label, sigma = dataset[2]
    assert x.shape == sigma.shape == (3, 8, 8) and x.dtype == sigma.dtype == torch.float32 and int(label) == 2
    torch.testing.assert_close(x, torch.from_numpy(images[2]).permute(2, 0, 1) * 2 - 1)
    torch.testing.assert_close(sigma, torch.from_numpy(errors[2]).permute(2, 0, 1) * 2)  # [0, 1] -> [-1, 1]: x2
    np.savez(tmp_path / "plain.npz", images=images[..., 0])  # grayscale floats without errors: pairs, 3 channels
    plain = build_dataset(str(tmp_path / "plain.npz"), hflip=False)
    pair = plain[1]
    assert len(pair) == 2 and not plain.has_sigma and pair[0].shape == (3, 8, 8)
    assert torch.equal(pair[0][0], pair[0][2])
    torch.testing.assert_close(pair[0][0], torch.from_numpy(images[1, ..., 0]) * 2 - 1)


def test_uint8_images_with_errors_read_both_as_value_over_255(tmp_path):
    images = RNG.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=images, errors=np.full(images.shape, 51, np.uint8))
    np.savez(tmp_path / "u8_plain.npz", images=images)
    with_errors = build_dataset(str(tmp_path / "u8.npz"), hflip=False)
    plain = build_dataset(str(tmp_path / "u8_plain.npz"), hflip=False)
    x, _, sigma = with_errors[1]
    torch.testing.assert_close(x, plain[1][0])  # the same pixels as the uint8 path
    torch.testing.assert_close(sigma, torch.full((3, 6, 6), 51 / 255 * 2))
    assert len(plain[1]) == 2 and (plain.kind, plain.has_sigma) == ("image", False)


def test_flips_move_sigma_with_its_pixel(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (2, 8, 1))  # (2, 8, 8): left dark, right bright
    np.savez(tmp_path / "ramp.npz", images=ramp, errors=0.01 + ramp / 10)
    dataset = build_dataset(str(tmp_path / "ramp.npz"), hflip=True)
    torch.manual_seed(0)
    flipped = []
    for _ in range(20):
        x, _, sigma = dataset[0]
        torch.testing.assert_close(sigma, (0.01 + (x + 1) / 2 / 10) * 2)  # sigma still belongs to its pixel
        flipped.append(bool(x[0, 0, 0] > 0))
    assert any(flipped) and not all(flipped)


def test_resized_sigma_stays_positive_and_nearest_copies_it(tmp_path):
    images = RNG.uniform(0, 1, (2, 8, 8)).astype(np.float32)
    errors = RNG.uniform(0.001, 0.2, images.shape).astype(np.float32)
    np.savez(tmp_path / "small.npz", images=images, errors=errors)
    up = build_dataset(str(tmp_path / "small.npz"), image_size=16, hflip=False)
    x, _, sigma = up[0]
    assert x.shape == sigma.shape == (3, 16, 16)
    torch.testing.assert_close(sigma[0, ::2, ::2], torch.from_numpy(errors[0]) * 2)  # nearest: each sigma copied
    big = RNG.uniform(0, 1, (1, 96, 96)).astype(np.float32)
    np.savez(tmp_path / "big.npz", images=big, errors=RNG.uniform(0.001, 0.01, big.shape).astype(np.float32))
    x, _, sigma = build_dataset(str(tmp_path / "big.npz"), image_size=24, hflip=False)[0]
    assert sigma.shape == (3, 24, 24) and sigma.min() > 0 and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"images": np.full((2, 4, 4), 1.5, np.float32)}, "range over \\[1.5, 1.5\\]; expected \\[0, 1\\]"),
        ({"images": np.full((2, 4, 4), np.nan, np.float32)}, "'images'.*NaN or infinite"),
        ({"images": np.zeros((0, 4, 4), np.float32)}, "holds no images"),
        ({"images": np.zeros((2, 4, 4), np.float32), "errors": np.zeros((2, 4, 4))}, "must be positive"),
        ({"images": np.zeros((2, 4, 4), np.float32), "errors": np.ones((2, 4, 5))}, "expected the data's shape"),
        ({"images": np.zeros((2, 4, 4, 5), np.float32)}, "expected \\(N, H, W, 3\\)"),
        ({"images": np.zeros((2, 4, 4), np.int32), "errors": np.ones((2, 4, 4))}, None),  # ints 0/1 are fine
    ],
)
def test_float_image_problems_are_one_line_errors(tmp_path, arrays, words):
    np.savez(tmp_path / "bad.npz", **arrays)
    if words is None:
        assert build_dataset(str(tmp_path / "bad.npz"))[0][2].min() > 0
    else:
        one_line_error(words, str(tmp_path / "bad.npz"))


def test_image_datasets_declare_kind_and_no_sigma():
    for name in ("demo", "fashion"):
        dataset = build_dataset(name)
        assert (dataset.kind, dataset.has_sigma, dataset.in_channels) == ("image", False, 3)
        assert len(dataset[0]) == 2 and len(dataset.class_names) == 10
    assert build_dataset("fashion").class_names[-1] == "Ankle boot"


# ---- Parquet -------------------------------------------------------------------------------------------------------


def as_arrow(value, arrow_type=None):
    """A column for pa.table: arrays (N, K) become one list per row; pyarrow arrays pass through."""
    pa = pytest.importorskip("pyarrow")
    if isinstance(value, pa.Array):
        return value
    rows = [row.tolist() for row in value] if isinstance(value, np.ndarray) and value.ndim > 1 else value
    return pa.array(rows, arrow_type)


def write_parquet(path: Path, columns: dict, metadata: dict[str, str] | None = None, types: dict | None = None):
    """A Parquet file of these columns (lists of numbers as flattened rows), with schema metadata as Spherinator
    writes it ('<column>_shape': '(3,64,64)')."""
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    arrays = {name: as_arrow(value, (types or {}).get(name)) for name, value in columns.items()}
    table = pa.table(arrays).replace_schema_metadata(metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(table, path)
    return path


def test_parquet_spectra_with_errors_string_labels_and_shape_metadata(tmp_path):
    pa = pytest.importorskip("pyarrow")
    flux = RNG.normal(3, 1, (6, 2, 16)).astype(np.float32)
    errors = RNG.uniform(0.1, 0.2, flux.shape).astype(np.float32)
    names, split = ["star", "galaxy", "qso", "star", "qso", "galaxy"], [0, 0, 0, 0, 1, 1]
    columns = {"flux": flux.reshape(6, -1), "flux_error": errors.reshape(6, -1), "label": names, "split": split}
    path = write_parquet(
        tmp_path / "spectra.parquet", columns, {"flux_shape": "(2,16)"}, {"flux": pa.list_(pa.float32())}
    )
    train = build_dataset(str(path), data_kind="signal")
    test = build_dataset(str(path), train=False, data_kind="signal")
    assert (len(train), len(test)) == (4, 2)
    assert attributes(train, "name kind in_channels signal_length") == ("spectra", "signal", 2, 16)
    assert train.class_names == ["galaxy", "qso", "star"] and train.labels.tolist() == [2, 0, 1, 2]
    scale = np.abs(flux[:4]).max()
    x, label, sigma = test[1]
    torch.testing.assert_close(x, torch.from_numpy(flux[5] / scale))
    torch.testing.assert_close(sigma, torch.from_numpy(errors[5] / scale))
    assert int(label) == 0
    np.savez(tmp_path / "same.npz", signals=flux, errors=errors, split=np.array(split))
    torch.testing.assert_close(build_dataset(str(tmp_path / "same.npz")).signals, train.signals)


def test_parquet_flat_spectra_need_no_metadata(tmp_path):
    spectra = RNG.normal(size=(4, 32)).astype(np.float64)
    path = write_parquet(tmp_path / "flat.parquet", {"spectrum": spectra, "id": np.arange(4)})
    dataset = build_dataset(str(path), signal_norm="none")
    assert attributes(dataset, "kind in_channels signal_length has_sigma num_classes") == ("signal", 1, 32, False, 0)
    torch.testing.assert_close(dataset[3][0][0], torch.from_numpy(spectra[3]).float())


def test_parquet_uint8_images_match_the_npz_path(tmp_path):
    pa = pytest.importorskip("pyarrow")
    images = RNG.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)  # (N, C, H, W), flattened per row
    columns = {"image": images.reshape(5, -1), "label": np.array([0, 1, 2, 1, 0])}
    path = write_parquet(
        tmp_path / "imgs.parquet", columns, {"image_shape": "(3,8,8)"}, {"image": pa.list_(pa.uint8())}
    )
    dataset = build_dataset(str(path), hflip=False, image_size=16)
    np.savez(tmp_path / "imgs.npz", images=images, labels=columns["label"])
    reference = build_dataset(str(tmp_path / "imgs.npz"), hflip=False, image_size=16)
    assert attributes(dataset, "kind has_sigma num_classes native_size image_size") == ("image", False, 3, 8, 16)
    for (x, label), (expected, expected_label) in zip(items(dataset), items(reference)):
        assert torch.equal(x, expected) and int(label) == int(expected_label)


def test_parquet_float_images_with_error_column_and_a_given_shape(tmp_path):
    images = RNG.uniform(0, 1, (4, 6, 6, 3)).astype(np.float32)  # (N, H, W, C), no shape metadata
    sigma = RNG.uniform(0.01, 0.05, images.shape).astype(np.float32)
    columns = {"pixels": images.reshape(4, -1), "noise": sigma.reshape(4, -1)}
    path = write_parquet(tmp_path / "hwc.parquet", columns)
    one_line_error("several columns of lists.*--data_column", str(path))
    dataset = build_dataset(str(path), data_column="pixels", error_column="noise", data_shape="6,6,3", hflip=False)
    assert dataset.has_sigma and len(dataset) == 4
    x, _, s = dataset[3]
    torch.testing.assert_close(x, torch.from_numpy(images[3]).permute(2, 0, 1) * 2 - 1)
    torch.testing.assert_close(s, torch.from_numpy(sigma[3]).permute(2, 0, 1) * 2)
    plain = build_dataset(str(path), data_column="pixels", error_column="none", data_shape=(6, 6, 3))
    assert not plain.has_sigma and len(plain[0]) == 2


def test_parquet_folder_of_files_with_nested_lists(tmp_path):
    pa = pytest.importorskip("pyarrow")
    signals = RNG.normal(size=(6, 2, 10)).astype(np.float32)
    nested = pa.list_(pa.list_(pa.float32()))
    for part, rows in (("part-1", slice(3, 6)), ("part-0", slice(0, 3))):
        column = pa.array([row.tolist() for row in signals[rows]], nested)
        write_parquet(tmp_path / "survey" / f"{part}.parquet", {"data": column, "labels": np.arange(6)[rows]})
    (tmp_path / "survey" / "_SUCCESS").write_text("")
    write_parquet(tmp_path / "survey" / ".hidden.parquet", {"other": [1]})  # skipped, as pyarrow skips it
    dataset = build_dataset(str(tmp_path / "survey"), data_kind="signal", signal_norm="none")
    assert (dataset.name, len(dataset), dataset.in_channels, dataset.signal_length) == ("survey", 6, 2, 10)
    assert torch.equal(dataset.signals, torch.from_numpy(signals)) and dataset.labels.tolist() == list(range(6))
    one_line_error("images need \\(H, W\\)", str(tmp_path / "survey"), data_kind="image", data_shape="20")


def test_parquet_needs_pyarrow_says_so(tmp_path, monkeypatch):
    (tmp_path / "table.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DatasetError) as caught:
        build_dataset(str(tmp_path / "table.parquet"))
    assert str(caught.value) == "reading Parquet needs pyarrow: pip install pyarrow"


def parquet_problem(tmp_path: Path, case: str) -> tuple[Path, dict]:
    """(a Parquet file or folder, build_dataset keyword arguments) that must fail for this case."""
    pa = pytest.importorskip("pyarrow")
    rows = RNG.normal(size=(3, 4)).astype(np.float32)
    cases = {
        "no list": ({"value": [1.0, 2.0, 3.0]}, {}),
        "unknown column": ({"flux": rows}, {"data_column": "spectrum"}),
        "unknown error column": ({"flux": rows}, {"error_column": "sigma"}),
        "data none": ({"flux": rows}, {"data_column": "none"}),
        "ragged": ({"flux": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0]])}, {}),
        "missing row": ({"flux": pa.array([[1.0, 2.0], None, [3.0, 4.0]])}, {}),
        "strings": ({"flux": pa.array([["a"], ["b"], ["c"]])}, {}),
        "shape": ({"flux": rows}, {"data_shape": "3,3"}),
        "metadata shape": ({"flux": rows, "_meta": {"flux_shape": "(5,)"}}, {}),
        "float labels": ({"flux": rows, "label": [0.0, 1.0, 0.5]}, {}),
        "error shape": ({"flux": rows, "flux_error": rows[:, :3] + 1}, {}),
        "zero error": ({"flux": rows, "flux_error": rows * 0}, {}),
        "bad split": ({"flux": rows, "split": ["train", "test", "train"]}, {}),
        "bad kind": ({"flux": rows}, {"data_kind": "spectrum"}),
        "bad shape text": ({"flux": rows}, {"data_shape": "4,-1"}),
        "empty": ({"flux": pa.array([], pa.list_(pa.float32()))}, {}),
    }
    columns, kwargs = cases[case]
    metadata = columns.pop("_meta", None)
    return write_parquet(tmp_path / "bad.parquet", columns, metadata), kwargs


PARQUET_PROBLEMS = {
    "no list": "no column of lists.*--data_column",
    "unknown column": "no column 'spectrum'.*--data_column",
    "unknown error column": "no column 'sigma'.*--error_column",
    "data none": "--data_column cannot be 'none'",
    "ragged": "differ in length \\(1-2 values\\)",
    "missing row": "1 missing rows",
    "strings": "holds string values",
    "shape": "hold 4 values but the row shape \\(3, 3\\) needs 9",
    "metadata shape": "hold 4 values but the row shape \\(5,\\) needs 5",
    "float labels": "label column 'label'.*double",
    "error shape": "'flux_error'.*hold 3 values",
    "zero error": "values <= 0",
    "bad split": "'split'.*0 \\(train\\) or 1 \\(test\\)",
    "bad kind": "--data_kind 'spectrum' is not one of",
    "bad shape text": "shape '4,-1' is not a list of positive integers",
    "empty": "has no rows",
}


@pytest.mark.parametrize("case", sorted(PARQUET_PROBLEMS))
def test_parquet_problems_are_one_line_errors(tmp_path, case):
    path, kwargs = parquet_problem(tmp_path, case)
    one_line_error(PARQUET_PROBLEMS[case], str(path), **kwargs)


def test_unreadable_or_mixed_parquet_inputs_are_one_line_errors(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    one_line_error("cannot read .*junk.parquet' as Parquet", str(tmp_path / "junk.parquet"))
    write_parquet(tmp_path / "mixed" / "a.parquet", {"flux": RNG.normal(size=(2, 4))})
    (tmp_path / "mixed" / "b.png").write_bytes(b"")
    one_line_error("both image files and .parquet files", str(tmp_path / "mixed"))
    write_parquet(tmp_path / "differ" / "a.parquet", {"flux": RNG.normal(size=(2, 4))})
    write_parquet(tmp_path / "differ" / "b.parquet", {"flux": RNG.integers(0, 3, (2, 4))})
    one_line_error("differ in their columns", str(tmp_path / "differ"))


def test_parse_shape_reads_spherinator_metadata_and_flags():
    assert parse_shape("(3,64,64)") == parse_shape("3, 64, 64") == parse_shape("3x64x64") == (3, 64, 64)
    assert parse_shape("(128,)") == (128,)
    for text in ("", "()", "3,0", "a,b"):
        with pytest.raises(DatasetError, match="positive integers"):
            parse_shape(text)
