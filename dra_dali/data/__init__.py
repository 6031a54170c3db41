"""Data: image-folder / file-list scanning, the acceptance rules search and train share, data
checks, and the embedded demo dataset."""

from dra_dali.data.accept import (
    EXCLUDED_FILE,
    Accepted,
    FileGuard,
    accept_images,
    check_headers,
    decode_rgb,
    exclude,
    excluded_text,
    name_culprits,
    read_excluded,
    recheck_changed,
    refusal,
    skip_or_refuse,
)
from dra_dali.data.checks import DataReport, Problem, check_data
from dra_dali.data.digits import digits_dataset
from dra_dali.data.embedded import (
    EMBEDDED_CLASSES,
    EmbeddedDataset,
    default_cache_dir,
    embedded_dataset,
)
from dra_dali.data.scan import IMAGE_EXTENSIONS, MAX_CLASSES, DataError, ImageList, scan_images

__all__ = ["Accepted", "FileGuard", "DataReport", "Problem", "accept_images", "check_data",
           "check_headers", "decode_rgb", "exclude", "excluded_text", "name_culprits",
           "read_excluded", "recheck_changed", "refusal", "skip_or_refuse", "DataError",
           "EMBEDDED_CLASSES", "EXCLUDED_FILE", "EmbeddedDataset", "IMAGE_EXTENSIONS", "ImageList",
           "MAX_CLASSES", "default_cache_dir", "digits_dataset", "embedded_dataset", "scan_images"]
