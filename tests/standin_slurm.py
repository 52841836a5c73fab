"""Stand-ins for Slurm's commands, enough for snakemake-executor-plugin-slurm to submit jobs and see them end.

``python standin_slurm.py <command> ARGS...`` with ``<command>`` one of sbatch, srun, squeue, sacct,
scontrol, sinfo; ``install(folder)`` writes a script of each name into ``folder`` for the PATH. Every
sbatch and srun call is appended to ``$STANDIN_SLURM/calls.jsonl`` with its arguments. sbatch starts
the batch script (``--wrap``) once, in the background, and answers with the job id; srun starts its
command once per task (``-n``, default 1), as Slurm does, and records how many it started. No
resources are enforced: what the job asked for is only recorded, for the test to check.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scontrol", "sinfo")
FLAGS = {"--parsable", "--requeue", "--no-requeue", "--exclusive"}  # sbatch options without a value
SHORT_WITH_VALUE = {"-A", "-p", "-t", "-D", "-C", "-J", "-o", "-n", "-c", "-N"}


def install(folder: Path, state: Path) -> dict[str, str]:
    """The stand-ins as scripts in ``folder``; returns an environment with them first on the PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        script = folder / command
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {command} "$@"\n')
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "STANDIN_SLURM": str(state)}


def calls(state: Path) -> list[dict]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Slurm-style options (``--a=b``, ``--a b``, ``-n1``, ``-n 1``) up to the first non-option; the rest."""
    found: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        token = rest.pop(0)
        if token.startswith("--"):
            name, equals, value = token.partition("=")
            found[name] = value if equals else ("" if name in FLAGS else rest.pop(0))
        elif token[:2] in SHORT_WITH_VALUE:
            found[token[:2]] = token[2:] or rest.pop(0)
        else:
            found[token] = ""
    return found, rest


def _state() -> Path:
    return Path(os.environ["STANDIN_SLURM"])


def _record(entry: dict) -> None:
    with open(_state() / "calls.jsonl", "a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(json.dumps(entry) + "\n")


def _next_job_id() -> int:
    with open(_state() / "last_job_id", "a+") as counter:
        fcntl.flock(counter, fcntl.LOCK_EX)
        counter.seek(0)
        job_id = int(counter.read() or 1000) + 1
        counter.seek(0)
        counter.truncate()
        counter.write(str(job_id))
    return job_id


def _job_dir(job_id: int | str) -> Path:
    return _state() / "jobs" / str(job_id)


def sbatch(argv: list[str]) -> int:
    found, rest = options(argv)
    if "--wrap" not in found or rest:
        print("sbatch: error: the stand-in takes the batch script as --wrap only", file=sys.stderr)
        return 1
    job_id = _next_job_id()
    folder = _job_dir(job_id)
    folder.mkdir(parents=True)
    (folder / "name").write_text(found.get("--job-name", ""))
    (folder / "state").write_text("PENDING")
    _record({"command": "sbatch", "job_id": job_id, "argv": argv})
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_NTASKS": "1",
           "SLURM_CPUS_PER_TASK": found.get("--cpus-per-task", "1")}
    if found.get("--gpus"):
        env["SLURM_GPUS"] = found["--gpus"]
    log = found.get("--output", os.devnull).replace("%j", str(job_id))
    subprocess.Popen([sys.executable, __file__, "batch-job", str(job_id), log, found.get("-D", os.getcwd()),
                      found["--wrap"]], env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id if "--parsable" in found else f"Submitted batch job {job_id}")
    return 0


def batch_job(job_id: str, log: str, workdir: str, script: str) -> int:
    """The batch script, once, in ``workdir``; its state (RUNNING, then COMPLETED or FAILED) for squeue."""
    folder = _job_dir(job_id)
    (folder / "state").write_text("RUNNING")
    with open(log, "w") as out:
        status = subprocess.run(["/bin/sh", "-c", script], cwd=workdir, stdout=out, stderr=subprocess.STDOUT).returncode
    (folder / "exit_code").write_text(str(status))
    (folder / "state").write_text("COMPLETED" if status == 0 else "FAILED")
    return 0


def srun(argv: list[str]) -> int:
    found, command = options(argv)
    tasks = int(found.get("-n") or found.get("--ntasks") or 1)
    _record({"command": "srun", "job_id": int(os.environ.get("SLURM_JOB_ID", "0")), "argv": argv, "tasks": tasks})
    env = {**os.environ, "SLURM_NTASKS": str(tasks)}
    if found.get("--gpus"):  # as Slurm's GRES plugin does for the step's GPUs
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in range(int(found["--gpus"])))
    processes = [subprocess.Popen(command, env={**env, "SLURM_PROCID": str(rank)}) for rank in range(tasks)]
    statuses = [process.wait() for process in processes]
    return next((status for status in statuses if status != 0), 0)


def squeue(argv: list[str]) -> int:
    found, _ = options(argv)
    name = found.get("--name")
    for folder in sorted((_state() / "jobs").glob("*")):
        if name is None or (folder / "name").read_text() == name:
            print(f"{folder.name}|{(folder / 'state').read_text()}")
    return 0


def sacct(argv: list[str]) -> int:
    print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)  # as a cluster without slurmdbd
    return 1


def scontrol(argv: list[str]) -> int:
    if argv[:2] == ["show", "config"]:
        print("MinJobAge               = 300 sec\nMaxArraySize            = 1001")
        return 0
    print(f"scontrol: the stand-in does not answer {' '.join(argv)}", file=sys.stderr)
    return 1


def sinfo(argv: list[str]) -> int:
    print("PARTITION\ndebug*")
    return 0


def main(argv: list[str]) -> int:
    command, arguments = argv[0], argv[1:]
    if command == "batch-job":
        return batch_job(*arguments)
    return {"sbatch": sbatch, "srun": srun, "squeue": squeue, "sacct": sacct, "scontrol": scontrol,
            "sinfo": sinfo}[command](arguments)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
