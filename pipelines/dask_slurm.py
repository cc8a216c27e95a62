"""Run ``gdlesion batch`` on a SLURM cluster through dask-jobqueue (see dask-slurm.md).

Usage (on a login node, inside the environment where gdlesion[slurm] is installed)::

    python pipelines/dask_slurm.py BIDS_DIR RESULTS_DIR --partition short --max-jobs 40

Each SLURM job is one Dask worker with one core that processes one session at a
time; the batch itself (discovery, lock, resume, tables) runs here. INPUT and
OUTPUT must be on a file system that the compute nodes see (e.g. /scratch or
/project). Rerunning the same command resumes: finished sessions are reused.
``--dry-run`` prints the generated SLURM job script and exits without submitting.
"""

from __future__ import annotations

import argparse
import sys


def make_cluster(args: argparse.Namespace):  # noqa: ANN201 - dask_jobqueue type
    """Create the SLURMCluster (nothing is submitted until ``scale``/``adapt``).

    ``--local-test`` swaps in dask-jobqueue's LocalCluster, which runs the same
    job machinery as subprocesses of this machine: a rehearsal without SLURM.
    """
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.local import LocalCluster as JobqueueLocalCluster

    if args.local_test:
        return JobqueueLocalCluster(cores=1, processes=1, memory=args.memory)
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=1,  # one session per worker; the batch caps ITK/BLAS threads to match
        processes=1,
        memory=args.memory,  # ~0.7 GB per 1 mm whole-brain session, headroom for FLAIR
        walltime=args.walltime,
        job_script_prologue=["export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1"],
        local_directory="$TMPDIR",
        log_directory=args.log_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """Start a SLURM-backed Dask cluster and run the batch on it; return the CLI exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--pipeline", default="default", help="preset name or JSON file")
    parser.add_argument("--partition", default=None, help="SLURM partition (queue)")
    parser.add_argument("--account", default=None, help="SLURM account to charge")
    parser.add_argument("--memory", default="2GB", help="memory per worker job")
    parser.add_argument("--walltime", default="01:00:00", help="lifetime of each worker job")
    parser.add_argument("--max-jobs", type=int, default=20, help="most worker jobs at once")
    parser.add_argument("--log-dir", default="dask-logs")
    parser.add_argument("--dry-run", action="store_true", help="print the job script only")
    parser.add_argument("--local-test", action="store_true",
                        help="rehearse with local subprocess 'jobs' instead of SLURM")
    args = parser.parse_args(argv)

    cluster = make_cluster(args)
    if args.dry_run:
        print(cluster.job_script())
        cluster.close()
        return 0

    from gdlesion.batch import run_batch
    from gdlesion.cli import EXIT_SESSIONS_FAILED
    from gdlesion.params import load_params

    with cluster:
        # Workers come and go with the queue; adapt keeps up to --max-jobs running.
        cluster.adapt(minimum_jobs=1, maximum_jobs=args.max_jobs)

        def report(event) -> None:  # noqa: ANN001 - BatchProgress
            print(f"\r{event.done}/{event.total} sessions, {event.failed} failed", end="",
                  file=sys.stderr, flush=True)

        result = run_batch(
            args.input, args.output, params=load_params(args.pipeline), pipeline=args.pipeline,
            scheduler=cluster.scheduler_address, progress=report,
        )
    print(f"\n{result.n_ok} ok, {result.n_failed} failed; tables: {result.counts_path}")
    return EXIT_SESSIONS_FAILED if result.n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
