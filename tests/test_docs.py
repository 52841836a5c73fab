"""The repository explains itself: no tracked file points outside it, and the README's links resolve."""

import re
import shutil
import subprocess

import pytest
from conftest import REPO

# Spelled in pieces, so that this file does not match itself.
OUTSIDE = ["../" + "shared", "shared/" + "DESIGN", "seed" + "-report"]


def tracked_files():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name.decode() for name in listing.split(b"\0") if name]


def test_no_tracked_file_refers_outside_the_repository():
    offenders = [f"{path.relative_to(REPO)}: {needle}" for path in tracked_files() if path.is_file()
                 for needle in OUTSIDE if needle.encode() in path.read_bytes()]
    assert not offenders, "tracked files refer to files outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("document", ["README.md", "docs/architecture.md", "docs/data-contract.md", "docs/study.md"])
def test_relative_links_resolve(document):
    text = (REPO / document).read_text()
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
             if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
    missing = [link for link in links if link and not ((REPO / document).parent / link).exists()]
    assert not missing, f"{document} links to missing files: {missing}"
