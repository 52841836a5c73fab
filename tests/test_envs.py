"""The conda environments of --use-conda: valid, fully pinned, and pinned like pyproject.toml.

No conda binary can be had on this machine, so the environments are not created here; what can be
checked without one is checked: the YAML, the pins, and that the library builds as a package.
"""

import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import REPO

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9_.+-]*)$")


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        match = PIN.match(requirement)
        assert match, f"pyproject.toml: {requirement!r} is not pinned with =="
        pins[match[1].lower()] = match[2]
    return pins


def test_there_are_environments_for_every_rule():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    used = set(re.findall(r'conda:\s*\n\s*"\.\./\.\./envs/([^"]+)"', rules))
    assert used == {p.name for p in ENV_FILES}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_environment_is_valid_and_pinned_like_pyproject(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert env["channels"][0] == "conda-forge"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"python={sys.version_info.major}.{sys.version_info.minor}" in conda and python == ">=3.11"
    pins = pyproject_pins()
    for requirement in pip:
        match = PIN.match(requirement)
        assert match, f"{env_file.name}: {requirement!r} is not pinned with =="
        name, version = match[1].lower(), match[2]
        assert pins.get(name) == version, f"{env_file.name}: {name}=={version}, pyproject.toml: {pins.get(name)}"


def test_every_library_dependency_is_in_an_environment():
    covered = set()
    for env_file in ENV_FILES:
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        covered |= {PIN.match(r)[1].lower() for r in pip}
    # used by the snakemake process itself (job submission, --report), never inside a rule's environment
    outer_only = {"snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep", "pygments"}
    assert set(pyproject_pins()) - outer_only <= covered


def test_rule_scripts_find_the_library_without_installing_it():
    link = REPO / "workflow" / "scripts" / "cocoseg"
    assert link.is_symlink() and link.resolve() == (REPO / "src" / "cocoseg").resolve()


def test_the_library_builds_as_a_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    assert list(tmp_path.glob("cocoseg-*.whl"))


def test_openvino_telemetry_is_off_in_tests():
    """Importing openvino sends an event to Google Analytics unless opted out (conftest sets CI=true, which its
    telemetry honours; ``opt_in_out --opt_out`` is the user's way)."""
    import openvino.tools.ovc.telemetry_utils as ovc_telemetry
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    assert os.environ["CI"] == "true"  # declined because of conftest, not a consent file of this machine's user
    assert ovc_telemetry.init_ovc_telemetry().consent is False
    assert OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True) == ConsentCheckResult.DECLINED
