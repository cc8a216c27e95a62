"""Crash safety: SIGKILL a running batch, rerun it, get the tables of an uninterrupted run.

Also checks the lock against a real second process: while the batch subprocess
runs, a batch on the same output is refused; once it is killed, the kernel has
released the lock and the rerun proceeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_helpers import fake_study, write_bids
from gdlesion.batch import run_batch
from gdlesion.errors import BatchError

HERE = Path(__file__).resolve().parent

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from batch_helpers import fake_study
from gdlesion.batch import run_batch
if __name__ == "__main__":
    run_batch({inp!r}, {out!r}, study_fn=fake_study, params={{"delay_s": 0.25}},
              workers={workers}, executor={executor!r})
"""


def _records(out: Path) -> list[Path]:
    # finished records only: pathlib's glob also matches the hidden temporary file of a record
    # being written atomically (".KEY.json.XXXX.part.json"), which the kill may leave behind
    return sorted(p for p in (out / ".gdlesion" / "sessions").glob("*.json")
                  if not p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "executor"), [(1, "serial"), (2, "processes")])
def test_kill_and_resume_gives_identical_tables(tmp_path, workers, executor):
    layout = {f"{i:02d}": {"01": i % 3, "02": (i + 1) % 3} for i in range(1, 6)}
    inp = write_bids(tmp_path / "bids", layout)
    params = {"delay_s": 0.25}
    clean = run_batch(inp, tmp_path / "clean", study_fn=fake_study, params=params, workers=1)
    assert clean.n_ok == 10

    out = tmp_path / "crashed"
    script = tmp_path / "batch_job.py"
    script.write_text(SCRIPT.format(tests=str(HERE), inp=str(inp), out=str(out),
                                    workers=workers, executor=executor))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(_records(out)) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "batch subprocess made no progress"
            time.sleep(0.05)
        with pytest.raises(BatchError, match="another gdlesion batch is running"):
            run_batch(inp, out, study_fn=fake_study, params=params, workers=1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker processes
        proc.wait()
    done_before = len(_records(out))
    assert 3 <= done_before < 10
    assert not (out / "lesion_counts.csv").exists()

    resumed = run_batch(inp, out, study_fn=fake_study, params=params, workers=1)
    assert resumed.reused >= 3 and resumed.ran + resumed.reused == 10
    assert resumed.counts_path.read_bytes() == clean.counts_path.read_bytes()
    assert resumed.lesions_path.read_bytes() == clean.lesions_path.read_bytes()
    assert not list((out / ".gdlesion" / "tmp").glob("*"))
    # same BIDS-derivative files: none lost, none duplicated
    files = {p.relative_to(out) for p in out.rglob("sub-*/**/*") if p.is_file()}
    assert files == {p.relative_to(clean.output) for p in clean.output.rglob("sub-*/**/*")
                     if p.is_file()}


def test_a_record_left_half_renamed_by_a_kill_is_not_a_session(tmp_path):
    """The temporary file of an atomic record write, left by a kill, is not read as a record."""
    import shutil

    from gdlesion.batch import rebuild_tables

    inp = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 2}, "02": {"01": 0, "02": 1}})
    out = tmp_path / "out"
    clean = run_batch(inp, out, study_fn=fake_study, workers=1)
    counts, lesions = clean.counts_path.read_bytes(), clean.lesions_path.read_bytes()
    record = _records(out)[0]
    # what io.write_json_atomic writes before its rename
    shutil.copy(record, record.parent / f".{record.name}.k3x9_q.part.json")
    counts_path, lesions_path = rebuild_tables(out)
    assert counts_path.read_bytes() == counts
    assert lesions_path.read_bytes() == lesions
    resumed = run_batch(inp, out, study_fn=fake_study, workers=1)
    assert resumed.reused == 4 and resumed.counts_path.read_bytes() == counts
