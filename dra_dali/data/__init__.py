"""Data: image-folder / file-list scanning and the embedded demo dataset."""

from dra_dali.data.checks import DataReport, Problem, check_data, check_headers
from dra_dali.data.embedded import (
           EMBEDDED_CLASSES,
           EmbeddedDataset,
           default_cache_dir,
           embedded_dataset,
)
from dra_dali.data.scan import IMAGE_EXTENSIONS, DataError, ImageList, scan_images

__all__ = ["DataReport", "Problem", "check_data", "check_headers", "DataError", "EMBEDDED_CLASSES", "EmbeddedDataset", "IMAGE_EXTENSIONS", "ImageList",
           "default_cache_dir", "embedded_dataset", "scan_images"]
