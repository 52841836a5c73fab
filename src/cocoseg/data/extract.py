"""Safe extraction of the members the run needs from COCO's zips.

An archive with any absolute or parent-escaping member name is refused whole (zip-slip).
Every member read is checked against its CRC-32 by ``zipfile``; files are written to a
temporary name and renamed, so an existing file of the right size is complete and is
not extracted again. Images are extracted into a work folder beside the destination (kept
when the job is killed, so a rerun goes on from it) and moved into place when all are there.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from cocoseg.coco import load_index
from cocoseg.io import atomic_path, publish_folder, work_folder, write_csv

log = logging.getLogger(__name__)


class UnsafeArchiveError(ValueError):
    """An archive holds a member that would be written outside the destination."""


class ArchiveError(RuntimeError):
    """An archive is unreadable, lacks a member, or fails its CRC check."""


def check_members(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse the archive if any member name is absolute or climbs out with ``..``."""
    for name in archive.namelist():
        posix = name.replace("\\", "/")
        if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in PurePosixPath(posix).parts:
            raise UnsafeArchiveError(
                f"{path}: refusing to extract, member {name!r} would be written outside the destination "
                "(absolute path or '..'). The archive is not a genuine COCO download: delete it and download again"
            )


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path}: not a readable zip ({e}); delete it and rerun to download it again") from e
    check_members(archive, path)
    return archive


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, path: Path) -> None:
    try:
        with archive.open(info) as source, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except zipfile.BadZipFile as e:  # raised by zipfile on a CRC mismatch
        raise ArchiveError(f"{path}: member {info.filename!r} is corrupt ({e}); delete the archive and rerun") from e


def extract_member(archive_path: str | Path, member: str, dest: str | Path) -> Path:
    """Extract one named member (e.g. the instances JSON) to ``dest``."""
    archive_path, dest = Path(archive_path), Path(dest)
    with _open_archive(archive_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError as e:
            names = [n for n in archive.namelist() if n.endswith(".json")]
            raise ArchiveError(f"{archive_path} has no member {member!r}; its JSON members: {names}") from e
        _copy_member(archive, info, dest, archive_path)
    log.info("extracted %s from %s", member, archive_path)
    return dest


def _members_by_file_name(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = PurePosixPath(info.filename).name
        if name in members:
            raise ArchiveError(f"{path}: two members are named {name!r}; cannot tell which image is meant")
        members[name] = info
    return members


def _drop_unwanted(partial: Path, wanted: set[str]) -> None:
    """What a killed extraction left that is not to be published: its temporary files, and images that
    are no longer candidates (the annotations changed since)."""
    for path in partial.iterdir():
        if path.name not in wanted:
            path.unlink()


def _complete(path: Path, info: zipfile.ZipInfo) -> bool:
    return path.exists() and path.stat().st_size == info.file_size


def extract_images(
    archive_path: str | Path,
    annotations_path: str | Path,
    classes: list[str],
    dest_dir: str | Path,
    listing_path: str | Path,
    threads: int = 1,
) -> pd.DataFrame:
    """Extract the images that are candidates for ``classes`` into ``dest_dir`` and list what happened to each.

    The listing has ``image_id, file_name, status`` with status ``extracted``, ``present``
    (already there, complete) or ``missing`` (named by the annotations, absent from the zip).
    """
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    index = load_index(Path(annotations_path), classes)
    wanted = [(i, index.images[i]["file_name"]) for i in index.candidates()]
    local = threading.local()
    handles: list[zipfile.ZipFile] = []

    def extract(item: tuple[int, str]) -> str:
        _, file_name = item
        info = members.get(file_name)
        if info is None:
            return "missing"
        if any(_complete(folder / file_name, info) for folder in (dest_dir, partial)):
            return "present"
        if not hasattr(local, "archive"):  # one handle per thread: zipfile handles are not thread-safe
            local.archive = zipfile.ZipFile(archive_path)
            handles.append(local.archive)
        _copy_member(local.archive, info, partial / file_name, archive_path)
        return "extracted"

    with _open_archive(archive_path) as archive:
        members = _members_by_file_name(archive, archive_path)
    partial = work_folder(dest_dir, resume=True)
    _drop_unwanted(partial, {file_name for _, file_name in wanted})
    with ThreadPoolExecutor(max(1, threads)) as pool:
        statuses = list(tqdm(pool.map(extract, wanted), total=len(wanted), desc="extract", unit="img", mininterval=1))
    for handle in handles:
        handle.close()
    publish_folder(partial, dest_dir)
    listing = pd.DataFrame(
        {"image_id": [i for i, _ in wanted], "file_name": [f for _, f in wanted], "status": statuses}
    )
    counts = listing["status"].value_counts().to_dict()
    log.info("%d candidate images for %s: %s", len(listing), classes, counts)
    if counts.get("missing"):
        log.warning("%d images named by %s are not in %s; select will reject them",
                    counts["missing"], annotations_path, archive_path)
    write_csv(listing, listing_path)
    return listing
