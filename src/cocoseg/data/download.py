"""Resumable, verified downloads over http(s) and file:// URLs.

The transfer goes to ``<dest>.part``; an interrupted one resumes from there with an
HTTP Range request. Only a complete file (size as announced, sha256 as configured)
is renamed onto ``dest``, so a file under its final name is always whole.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cocoseg.config import schema_default

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed for good: the message says why and what to do."""


class _Retry(Exception):
    """A transient failure: try again, resuming from the partial file."""


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "cocoseg"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _check_space(folder: Path, needed: int, dest: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space for {dest}: {needed / 1e9:.2f} GB still to download, "
            f"{free / 1e9:.2f} GB free in {folder}; free some space and rerun (the partial file is kept)"
        )


def _complete_size(content_range: str | None) -> int | None:
    """The file's size from a 416 answer's ``Content-Range: bytes */SIZE`` (RFC 9110, 15.5.17)."""
    if not content_range or not content_range.startswith("bytes */"):
        return None
    size = content_range.removeprefix("bytes */").strip()
    return int(size) if size.isdigit() else None


def _transfer(url: str, part: Path, timeout: float, dest: Path) -> None:
    """One attempt: append to ``part`` (or restart it) until the server's end of file."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and _complete_size(e.headers.get("Content-Range")) == offset:
            return  # an earlier run stopped after the last byte, before the rename: nothing is missing
        if e.code == 416:  # the partial file is not a prefix of what the server has now
            part.unlink()
            raise _Retry("server refused the resume range; restarting") from e
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}: check the URL in the config") from e
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, FileNotFoundError):
            raise DownloadError(f"{url} does not exist: check the URL in the config") from e
        raise _Retry(f"cannot reach {url}: {reason}") from e
    with response:
        resumed = getattr(response, "status", 200) == 206
        if offset and not resumed:
            offset = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if total is not None:
            _check_space(part.parent, total - offset, dest)
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, mininterval=1
        ) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                if getattr(e, "errno", None) == errno.ENOSPC:
                    raise DownloadError(f"disk full while writing {part}; free space and rerun to resume") from e
                raise _Retry(f"transfer interrupted: {e}") from e
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"got {size} of {total} bytes")


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    retries: int = schema_default("dataset.download.retries"),
    backoff: float = 2.0,
    timeout: float = schema_default("dataset.download.timeout"),
) -> Path:
    """Download ``url`` to ``dest``, resuming and retrying; verify size and optional sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 2):
        try:
            _transfer(url, part, timeout, dest)
            break
        except _Retry as e:
            if attempt > retries:
                raise DownloadError(
                    f"giving up on {url} after {attempt} attempts: {e}. "
                    f"Rerun to resume from the {part.stat().st_size if part.exists() else 0} bytes in {part}"
                ) from e
            wait = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", url, e, wait, attempt + 1, retries + 1)
            time.sleep(wait)
    if sha256:
        actual = sha256sum(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"sha256 mismatch for {url}: expected {sha256}, got {actual}. The file was deleted; "
                "rerun to download it again, or correct the sha256 in the config"
            )
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest
