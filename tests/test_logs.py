"""Rule scripts and commands log a failure with its traceback, whether or not they have a log file."""

import pytest

from cocoseg.logs import logged


def test_a_failure_keeps_its_traceback_with_and_without_a_log_file(tmp_path, capsys):
    def fail():
        raise ValueError("bad record")

    for log_file in (tmp_path / "job.log", None):
        with pytest.raises(ValueError), logged(log_file):
            fail()
        stderr = capsys.readouterr().err
        assert "failed: bad record" in stderr and "Traceback" in stderr and "in fail" in stderr
    text = (tmp_path / "job.log").read_text()
    assert "failed: bad record" in text and "Traceback" in text and "in fail" in text
