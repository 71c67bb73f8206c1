"""Multi-host jobs: joining one, each host's slice of the global batch, the data state in a checkpoint.

A job of several processes (one per host: a TPU slice, a SLURM allocation) joins with
:func:`maybe_initialize_distributed` (``jax.distributed``) before anything touches a device.
Each host then reads its own rows of the global batch (:func:`host_shard` ->
``lm.data.pipeline.make_iterator(shard_index=, shard_count=)``, :func:`make_host_iterator`) and
:func:`global_batch` assembles the slices into global arrays on the mesh
(:mod:`lm.train.sharding`). Hosts read different slices, so a checkpoint keeps every host's
data-iterator state (:func:`gather_data_states`, :func:`local_data_state`). On one process
every function here is the trivial case of the same code path.

Axis letters: b batch (global rows), t time, B per-host rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lm.data import pipeline as lm_data
from lm.train.checkpoint import _jsonable, decode_bytes
from lm.model.config import RunConfig
from lm.train.sharding import BATCH_KEYS, batch_sharding


def host_shard(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """(shard_index, shard_count) of this process's rows of the global batch.

    Pass them to ``lm.data.pipeline.make_iterator``. Processes whose devices hold the same rows
    (e.g. tensor parallelism across hosts) get the same slice.

    Raises:
      ValueError: this process's devices hold a non-contiguous set of rows.
    """
    index_map = batch_sharding(mesh, batch_size).addressable_devices_indices_map((batch_size, 1))
    rows = sorted({(r.start or 0, batch_size if r.stop is None else r.stop) for r, _ in index_map.values()})
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start or any(b != c for (_, b), (c, _) in zip(rows, rows[1:])):
        raise ValueError(
            f"process {jax.process_index()} holds non-contiguous batch rows {rows} on mesh {dict(mesh.shape)}"
        )
    per_host = stop - start
    return start // per_host, batch_size // per_host


def make_host_iterator(run: RunConfig, mesh: Mesh, split: str = "train", **kwargs):
    """``lm.data.pipeline.make_iterator`` for this process's slice of the global batch."""
    index, count = host_shard(mesh, run.data.batch_size)
    return lm_data.make_iterator(run.data, split, shard_index=index, shard_count=count, **kwargs)


def global_batch(local_batch: dict, mesh: Mesh, batch_size: int) -> dict:
    """Assemble per-host numpy batches [B, t] into global jax arrays [b, t] on ``mesh``.

    Every process calls it with its own rows (``make_host_iterator``); keys other than
    the model inputs (tokens, targets, weights, segment_ids, positions) are dropped.
    """
    rows = batch_sharding(mesh, batch_size)
    out = {}
    for key in BATCH_KEYS:
        local = np.asarray(local_batch[key])
        out[key] = jax.make_array_from_process_local_data(rows, local, (batch_size, *local.shape[1:]))
    return out



def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "") else int(value)


def _on_cloud_tpu_vm() -> bool:
    """libtpu is installed and the VM has TPU chips (/dev/accel* up to v4, /dev/vfio/* from v5e)."""
    import glob
    import importlib.util

    chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    return importlib.util.find_spec("libtpu") is not None and bool(chips)


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Join a multi-process JAX job when launched as one; a no-op for a single process.

    In order of precedence:
      1. explicit arguments, or the variables ``SCALELAB_COORDINATOR`` (host:port),
         ``SCALELAB_NUM_PROCESSES``, ``SCALELAB_PROCESS_ID``: initialise with them;
      2. SLURM with more than one task (``SLURM_NTASKS`` > 1): JAX's SLURM detection;
      3. a Cloud TPU VM (libtpu installed and TPU chips present, or
         ``TPU_WORKER_HOSTNAMES`` / ``MEGASCALE_COORDINATOR_ADDRESS`` set): JAX's TPU
         detection, which reads the slice's hosts from the VM metadata (a single-host
         slice becomes a job of one process);
      otherwise nothing is done.

    Call it before anything touches a device. Returns True when the process is part of a
    ``jax.distributed`` job (including one initialised earlier).

    Raises:
      ValueError: an explicit coordinator without num_processes and process_id, or the reverse.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("SCALELAB_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("SCALELAB_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("SCALELAB_PROCESS_ID")
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}: give all three (or none, to auto-detect SLURM / TPU)"
            )
        if num_processes == 1:
            return False
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, local_device_ids=local_device_ids
        )
        return True
    tpu_env = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    tpu = _on_cloud_tpu_vm() or any(os.environ.get(v) for v in tpu_env)
    if (_env_int("SLURM_NTASKS") or 1) > 1 or tpu:
        jax.distributed.initialize(local_device_ids=local_device_ids)
        return True
    return False


def gather_data_states(data_state: Any) -> dict:
    """Every process's data-iterator state, for the checkpoint's "data" item: {"hosts": [...]}.

    Hosts read different slices, so each resumes from its own state
    (:func:`local_data_state`). All processes must call it (it is a collective when
    ``jax.process_count() > 1``).
    """
    blob = np.frombuffer(json.dumps(_jsonable(data_state)).encode(), np.uint8)
    if jax.process_count() == 1:
        return {"hosts": [json.loads(blob.tobytes())]}
    from jax.experimental import multihost_utils

    sizes = multihost_utils.process_allgather(np.array([blob.size], np.int32))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[: blob.size] = blob
    blobs = multihost_utils.process_allgather(padded)
    return {"hosts": [json.loads(b[: int(n)].tobytes()) for b, n in zip(blobs, np.ravel(sizes))]}


def local_data_state(saved: dict) -> Any:
    """This process's data-iterator state (bytes decoded, for ``set_state``) from a checkpoint.

    Accepts :func:`gather_data_states` output and, in a single-process job, the plain
    state of checkpoints written before every run had a mesh.

    Raises:
      ValueError: the checkpoint was written by a different number of processes.
    """
    hosts = saved["hosts"] if isinstance(saved, dict) and set(saved) == {"hosts"} else [saved]
    if len(hosts) != jax.process_count():
        raise ValueError(
            f"the checkpoint's data state has {len(hosts)} host entries but this job has "
            f"{jax.process_count()} processes; resume with the same process count (parameters restore onto any mesh)"
        )
    return decode_bytes(hosts[jax.process_index()])
