"""Device mesh and shardings: batch over `data` (and `fsdp`), parameters replicated or FSDP.

The mesh has two axes. `data` splits the batch; `fsdp` also splits the batch and, when larger
than 1, shards each frozen weight along its largest divisible dimension, so an encoder that does
not fit one chip still runs. Pure data parallelism is `fsdp=1`.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp)` mesh over `devices` (all devices by default); `data=-1` takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % fsdp:
            raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices.")
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(
            f"Mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; "
            f"{len(devices)} are available. Set mesh.data=-1 to use all of them."
        )
    return Mesh(np.asarray(devices).reshape(data, fsdp), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 2**14) -> PartitionSpec:
    """Shards the largest dimension divisible by the fsdp axis; small leaves stay replicated."""
    if fsdp_size == 1 or int(np.prod(shape)) < min_size:
        return PartitionSpec()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """Shardings of a parameter tree (arrays or ShapeDtypeStructs) on `mesh`."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size)), tree)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices that share it."""
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % devices:
        raise ValueError(
            f"Batch size {batch_size} does not divide over {devices} devices "
            f"(mesh {dict(mesh.shape)}); use a multiple of {devices}."
        )
