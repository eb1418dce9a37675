"""Calibration data: image folders, .npy/.npz arrays and load_data() scripts, checked up front.

`open_dataset` is the entry point; `resolve_preprocess` builds the image preprocessing from a
preset name and explicit options.
"""

from trtq.data.arrays import ArrayDataset
from trtq.data.dataset import Dataset
from trtq.data.images import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from trtq.data.preprocess import (
    PRESETS,
    Letterbox,
    Preprocess,
    PreprocessOverrides,
    bind_preprocess,
    letterbox_geometry,
    preprocess_image,
    resolve_preprocess,
)
from trtq.data.scripts import ScriptDataset
from trtq.data.sources import DataSource, open_dataset
from trtq.data.validate import DataRangeWarning

__all__ = [
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "ArrayDataset",
    "DataRangeWarning",
    "DataSource",
    "Dataset",
    "ImageFolderDataset",
    "Letterbox",
    "Preprocess",
    "PreprocessOverrides",
    "ScriptDataset",
    "bind_preprocess",
    "letterbox_geometry",
    "load_image",
    "open_dataset",
    "preprocess_image",
    "resolve_preprocess",
]
