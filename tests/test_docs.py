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


def test_the_docs_name_every_command_and_which_rules_have_none():
    """architecture.md lists the `python -m cocoseg` commands and the rules without one; both lists must stay the
    parser's and the workflow's."""
    import argparse

    from cocoseg.cli import build_parser

    commands = next(action.choices for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    rules = {name for path in (REPO / "workflow" / "rules").glob("*.smk")
             for name in re.findall(r"^rule (\w+):", path.read_text(), flags=re.MULTILINE)}
    targets = {"all", "data", "results"}  # rules that only gather other rules' files
    by_command = {rule for rule in rules if rule in commands or rule.split("_")[0] in commands}
    text = " ".join((REPO / "docs" / "architecture.md").read_text().split())
    listed = re.search(r"commands \(`cli.py`: (.*?)\)", text)[1]
    assert set(re.findall(r"`(\w+)`", listed)) == set(commands)
    without = re.search(r"The report's own rules have no command: (.*?) read what", text)[1]
    assert set(re.findall(r"`(\w+)`", without)) == rules - by_command - targets
