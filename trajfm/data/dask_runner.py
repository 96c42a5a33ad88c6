"""Where preprocessing runs: Dask's local ``sync``/``threads`` schedulers, a new ``LocalCluster``
of worker processes (started with :data:`WORKER_ENV`, the client's environment restored
afterwards), or a running cluster at an address; ``Runner`` maps a function over them.
"""

from __future__ import annotations

import os


class Runner:
    """Runs a function over arguments on Dask's local schedulers or a distributed cluster.

    ``map`` returns handles (results, or futures that stay on the workers); ``gather`` fetches.
    """

    def __init__(self, scheduler: str, client=None, cluster=None):
        self.scheduler, self.client, self.cluster = scheduler, client, cluster
        self.info: dict = {"scheduler": scheduler}
        self.n_workers = 1
        if client is not None:
            self.n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            self.info["n_workers"] = self.n_workers

    def map(self, fn, *iterables):
        if self.client is not None:
            return self.client.map(fn, *iterables, pure=False)
        import dask

        tasks = [dask.delayed(fn)(*args) for args in zip(*iterables)]
        return list(dask.compute(*tasks, scheduler=self.scheduler))

    def gather(self, handles, desc: str = "preprocess"):
        if self.client is None:
            return handles
        from trajfm.progress import progress_bar, progress_enabled

        if progress_enabled():  # a bar over the partitions as the workers finish them
            from distributed import as_completed

            with progress_bar(len(handles), desc, unit="part") as bar:
                for _ in as_completed(handles):
                    bar.update(1)
        return self.client.gather(handles)

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# Environment of LocalCluster worker processes, set before they start (glibc reads it then).
# distributed's default, MALLOC_TRIM_THRESHOLD_=64 KiB, hands freed memory back to the system at
# once and pins glibc's mmap threshold at 128 KiB, so each array of each partition lands on fresh
# pages: page faults were a third of a worker's CPU time. Here arrays up to 32 MiB come from a
# reused heap, Arrow allocates through the same malloc, and numeric libraries use one thread
# (one worker process per core).
WORKER_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def local_cluster(n_workers: int):
    """A LocalCluster of ``n_workers`` processes x 1 thread on 127.0.0.1 (dashboard on a free
    loopback port, logs at warning level) whose workers start with :data:`WORKER_ENV`.

    Dask's nanny puts the pre-spawn variables into this process's ``os.environ`` before it
    spawns a worker (that is how the worker gets them) and never takes them out; left there, every
    later child (the trainer) would run with one BLAS thread and another malloc, so its speed and
    last digits would depend on whether preprocessing ran or came from a cache. (It also sets
    ``PYTHONHASHSEED`` and ``__DASK_PARENT_PID``.) The environment is restored once the workers
    have started and again when the cluster closes."""
    import logging

    before = dict(os.environ)
    import dask
    from distributed import LocalCluster

    env = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_ENV}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.WARNING,
            )
    finally:
        touched = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
        restore_environ(before, touched)
    close = cluster.close
    touched |= set(env) | DASK_SETS

    def close_and_restore(*args, **kwargs):  # a restarted worker sets the variables again
        try:
            return close(*args, **kwargs)
        finally:
            restore_environ(before, touched)

    cluster.close = close_and_restore
    return cluster


# Variables distributed writes into the client's os.environ (nanny, scheduler, proctitle).
DASK_SETS = {"PYTHONHASHSEED", "__DASK_PARENT_PID", "DASK_SCHEDULER_ADDRESS"}


def restore_environ(saved: dict[str, str], keys: set[str]) -> None:
    """Give each of ``keys`` its value in ``saved`` again (removed when ``saved`` lacks it)."""
    for key in keys:
        if key not in saved:
            os.environ.pop(key, None)
        elif os.environ.get(key) != saved[key]:
            os.environ[key] = saved[key]


def dask_runner(scheduler: str, address: str | None, n_workers: int) -> Runner:
    """A runner on Dask's local ``sync``/``threads`` scheduler, the cluster at ``address``, or a new
    LocalCluster of ``n_workers`` processes x 1 thread (closed with the runner)."""
    if scheduler in ("sync", "threads") and address is None:
        runner = Runner(scheduler)
        if scheduler == "threads":
            runner.n_workers = max(1, int(n_workers))
        return runner
    from distributed import Client

    if address is not None:
        runner = Runner("distributed", client=Client(address))
        runner.info["address"] = address
        return runner
    cluster = local_cluster(n_workers)
    runner = Runner("distributed-local", client=Client(cluster), cluster=cluster)
    return runner
