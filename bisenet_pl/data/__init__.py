"""DataModules for CamVid, Cityscapes and any folder of images and masks."""

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.camvid import CAMVID_CLASSES, CamVidDataModule, download_camvid
from bisenet_pl.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataModule
from bisenet_pl.data.dataset import SegmentationDataset
from bisenet_pl.data.folder import FolderDataModule
from bisenet_pl.data.stats import DatasetStatistics, dataset_statistics
from bisenet_pl.errors import DataError

__all__ = [
    "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES",
    "CamVidDataModule",
    "CityscapesDataModule",
    "DataError",
    "DatasetStatistics",
    "FolderDataModule",
    "SegmentationDataModule",
    "SegmentationDataset",
    "dataset_statistics",
    "download_camvid",
]
