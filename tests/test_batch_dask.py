"""Dask executor: a real distributed.LocalCluster (two worker processes) gives the local tables."""

from __future__ import annotations

import pytest

import gdlesion.batch
from batch_helpers import fake_study, write_bids
from gdlesion.batch import run_batch
from gdlesion.errors import BatchError

distributed = pytest.importorskip("distributed", reason="needs the gdlesion[dask] extra")


@pytest.mark.slow
def test_local_cluster_matches_local_run(tmp_path):
    inp = write_bids(tmp_path / "bids", {"01": {"01": 1, "02": 2}, "02": {"01": 3, "02": 0}})
    # a corrupt scan must fail on the cluster exactly as it does locally
    anat = inp / "sub-02" / "ses-02" / "anat"
    (anat / "sub-02_ses-02_T1w.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    local = run_batch(inp, tmp_path / "local", study_fn=fake_study, workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        dask = run_batch(inp, tmp_path / "dask", study_fn=fake_study,
                         scheduler=cluster.scheduler_address)
        workers_used = {w for w in cluster.scheduler.workers}
    assert len(workers_used) == 2
    assert (dask.n_ok, dask.n_failed) == (3, 1)
    assert dask.counts_path.read_bytes() == local.counts_path.read_bytes()
    assert dask.lesions_path.read_bytes() == local.lesions_path.read_bytes()


@pytest.mark.slow
def test_executor_dask_starts_its_own_local_cluster(tmp_path):
    inp = write_bids(tmp_path / "bids", {"01": {"01": 1}, "02": {"01": 2}})
    local = run_batch(inp, tmp_path / "local", study_fn=fake_study, workers=1)
    dask = run_batch(inp, tmp_path / "dask", study_fn=fake_study, executor="dask", workers=2)
    assert dask.ran == 2 and dask.counts_path.read_bytes() == local.counts_path.read_bytes()


def test_unreachable_scheduler_is_a_batch_error(tmp_path, monkeypatch):
    monkeypatch.setattr(gdlesion.batch, "DASK_CONNECT_TIMEOUT", "1s")
    inp = write_bids(tmp_path / "bids", {"01": {"01": 1}})
    with pytest.raises(BatchError, match="dask scheduler tcp://127.0.0.1:9: cannot connect"):
        run_batch(inp, tmp_path / "out", study_fn=fake_study, scheduler="tcp://127.0.0.1:9")
