"""How many threads the numeric libraries around the encoder may use.

numpy's BLAS (OpenBLAS) starts a thread per core, and its idle threads spin for a while after
each call. On a 2-core machine they then take the cores from the encoder run that follows an
index search: after searches at 100k vectors, a query's 7 extra views took 53 ms to embed instead
of 31, and the whole query 82 ms instead of 59 (bench/search_breakdown.py). The matrix products
ImageFinder does between encoder runs are small, so one BLAS thread costs them little.
"""

from __future__ import annotations

import os


def single_threaded_blas() -> None:
    """BLAS on one thread for the whole process, unless OPENBLAS_NUM_THREADS says otherwise.
    Called by the CLI (so `serve` and `index`) and the benchmarks; a library user's process is
    left as it is."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # a BLAS loaded from now on reads it
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # one loaded already
