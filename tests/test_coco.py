import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cocoseg.categories import UnknownClassError, check_class_names
from cocoseg.coco import SegmentationError, decode, rle_string_counts, segmentation_rle


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Run lengths as COCO defines them, computed independently with numpy."""
    flat = mask.ravel(order="F").astype(int)
    runs, value, length = [], 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    runs.append(length)
    return runs


@pytest.mark.parametrize("seed", range(5))
def test_compressed_rle_counts_match_pycocotools_encoding(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((23, 31)) < 0.3).astype(np.uint8)
    mask[:4] = 1  # long runs exercise the multi-chunk and delta encoding
    encoded = mask_utils.encode(np.asfortranarray(mask))
    assert rle_string_counts(encoded["counts"]) == column_major_runs(mask)


def test_polygons_decode_like_pycocotools():
    polygons = [[2, 2, 10, 2, 10, 8, 2, 8], [12, 12, 16, 12, 14, 15]]
    ours = decode(segmentation_rle(polygons, 20, 20))
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 20, 20))).astype(bool)
    assert ours.sum() > 0
    np.testing.assert_array_equal(ours, reference)


def test_uncompressed_and_compressed_rle_decode_to_the_mask():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[3:7, 2:9] = 1
    uncompressed = {"size": [10, 12], "counts": column_major_runs(mask)}
    compressed = mask_utils.encode(np.asfortranarray(mask))
    compressed_str = {"size": [10, 12], "counts": compressed["counts"].decode()}
    for segmentation in (uncompressed, compressed_str):
        np.testing.assert_array_equal(decode(segmentation_rle(segmentation, 10, 12)), mask.astype(bool))


def test_degenerate_polygon_parts_are_dropped_but_not_all():
    square = [1, 1, 5, 1, 5, 5, 1, 5]
    kept = decode(segmentation_rle([square, [3, 3, 4, 4]], 8, 8))
    np.testing.assert_array_equal(kept, decode(segmentation_rle([square], 8, 8)))
    with pytest.raises(SegmentationError, match="3 or more points"):
        segmentation_rle([[3, 3, 4, 4]], 8, 8)


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([], "empty segmentation"),
        ([[1, 2, 3, 4, 5]], "odd number"),
        ([[1, 2, "x", 4, 5, 6]], "finite numbers"),
        ([[1, 2, float("nan"), 4, 5, 6]], "finite numbers"),
        ({"size": [9, 9], "counts": [100]}, "differs from the image size"),
        ({"size": [10, 10], "counts": [50, 49]}, "add up to 99"),
        ({"size": [10, 10], "counts": [120, -20]}, "negative"),
        ({"size": [10, 10], "counts": "\x7f\x7f"}, "invalid character"),
        ({"size": [10, 10], "counts": "0o"}, "ends inside"),
        ({"size": [10, 10], "counts": 5}, "RLE counts of type int"),
        ("polygon", "segmentation of type str"),
        (None, "segmentation of type NoneType"),
    ],
)
def test_malformed_segmentations_raise_a_clear_error(segmentation, message):
    with pytest.raises(SegmentationError, match=message):
        segmentation_rle(segmentation, 10, 10)


def test_unknown_class_names_get_a_suggestion():
    with pytest.raises(UnknownClassError, match="'persn'.*Did you mean 'person'"):
        check_class_names(["persn"], ["person", "car"], "test annotations")
