import zipfile

import pandas as pd
import pytest
from conftest import CLASSES

import cocoseg.data.extract
from cocoseg.categories import COCO_CATEGORY_NAMES, class_set_name
from cocoseg.coco import load_index
from cocoseg.data.extract import ArchiveError, UnsafeArchiveError, extract_images, extract_member


@pytest.mark.parametrize("evil", ["../escape.txt", "val2014/../../escape.txt", "/etc/escape.txt", "C:/escape.txt"])
def test_zip_slip_archive_is_refused_and_nothing_is_written(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("annotations/instances_val2014.json", "{}")
        z.writestr(evil, "pwned")
    dest = tmp_path / "out" / "instances.json"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        extract_member(archive, "annotations/instances_val2014.json", dest)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("escape.txt"))


def test_crc_mismatch_names_the_member(tmp_path):
    archive = tmp_path / "bad.zip"
    payload = b"x" * 5000
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("annotations/instances_val2014.json", payload)
    data = bytearray(archive.read_bytes())
    data[data.index(payload) + 100] ^= 0xFF  # flip a byte of the stored member
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="instances_val2014.json' is corrupt"):
        extract_member(archive, "annotations/instances_val2014.json", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_missing_member_lists_what_is_there(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("annotations/captions_val2014.json", "{}")
    with pytest.raises(ArchiveError, match="no member 'annotations/instances_val2014.json'.*captions_val2014"):
        extract_member(archive, "annotations/instances_val2014.json", tmp_path / "out.json")


def test_not_a_zip_is_reported(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"<html>error page</html>")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_member(archive, "x", tmp_path / "out")


def test_only_candidate_images_are_extracted_once(synthetic, tmp_path):
    listing = extract_images(synthetic.images_zip, synthetic.annotations, ["airplane"], tmp_path / "img",
                             tmp_path / "extracted.csv", threads=2)
    extracted = sorted(p.name for p in (tmp_path / "img").iterdir())
    assert extracted == sorted(listing["file_name"])
    with zipfile.ZipFile(synthetic.images_zip) as z:
        assert 0 < len(extracted) < len(z.namelist())
        for name in extracted[:10]:
            assert (tmp_path / "img" / name).read_bytes() == z.read(f"val2014/{name}")  # byte for byte
    assert set(listing["status"]) == {"extracted"}
    again = extract_images(synthetic.images_zip, synthetic.annotations, ["airplane"], tmp_path / "img",
                           tmp_path / "extracted.csv")
    assert set(again["status"]) == {"present"}
    assert pd.read_csv(tmp_path / "extracted.csv").equals(again)


def test_images_missing_from_the_archive_are_listed(synthetic, tmp_path):
    index = load_index(synthetic.annotations, CLASSES)
    absent = index.images[index.candidates()[0]]["file_name"]
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(synthetic.images_zip) as source, zipfile.ZipFile(partial, "w") as target:
        for name in source.namelist():
            if not name.endswith(absent):
                target.writestr(name, source.read(name))
    listing = extract_images(partial, synthetic.annotations, CLASSES, tmp_path / "img", tmp_path / "x.csv")
    assert listing.loc[listing["status"] == "missing", "file_name"].tolist() == [absent]
    assert len(listing) - 1 == len(list((tmp_path / "img").iterdir()))


def test_a_killed_extraction_leaves_no_destination_and_goes_on_where_it_stopped(synthetic, tmp_path, monkeypatch):
    copy_member, copied = cocoseg.data.extract._copy_member, []

    def killed_after_three(*args):
        if len(copied) == 3:
            raise KeyboardInterrupt  # stands in for the job being killed
        copy_member(*args)
        copied.append(args[2])

    monkeypatch.setattr(cocoseg.data.extract, "_copy_member", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        extract_images(synthetic.images_zip, synthetic.annotations, CLASSES, tmp_path / "img", tmp_path / "x.csv")
    assert not (tmp_path / "img").exists() and not (tmp_path / "x.csv").exists()
    assert sorted(p.name for p in (tmp_path / ".img.partial").iterdir()) == sorted(p.name for p in copied)
    (tmp_path / ".img.partial" / ".COCO_val2014_000000000001.jpg.x1y2.tmp").write_bytes(b"half an image")
    (tmp_path / ".img.partial" / "COCO_val2014_999999999999.jpg").write_bytes(b"no longer a candidate")
    monkeypatch.setattr(cocoseg.data.extract, "_copy_member", copy_member)
    listing = extract_images(synthetic.images_zip, synthetic.annotations, CLASSES, tmp_path / "img", tmp_path / "x.csv")
    assert set(listing.loc[listing["status"] == "present", "file_name"]) == {p.name for p in copied}
    assert (listing["status"] == "extracted").sum() == len(listing) - 3
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted(listing["file_name"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "x.csv"]  # the work folder is gone


def test_class_set_names_ignore_order_and_stay_short():
    assert class_set_name(["person", "traffic light", "car"]) == class_set_name(["car", "person", "traffic light"])
    assert class_set_name(["person", "traffic light", "car"]) == "car+person+traffic_light"
    everything = class_set_name(COCO_CATEGORY_NAMES)
    assert everything.startswith("80-classes-") and len(everything) < 40
    assert everything != class_set_name(COCO_CATEGORY_NAMES[:-1])
