"""A CPU model actor for a local NDIF server (ndif's own actor calls ``torch.cuda`` unconditionally).

Selected with ``NDIF_DEFAULT_MODEL_ACTOR_CLASS=cpu_actor.CPUModelActor`` (this folder on Ray's
``PYTHONPATH``, see ``scripts/ndif_local.sh``). It subclasses ndif's ``BaseModelDeployment`` and
overrides only the methods that move a model between GPU and CPU memory (loading, caching,
clean-up); request deserialisation, execution, result upload and errors stay ndif's own code, so a
request takes the path it takes on a GPU server. On a machine with GPUs the actor is not needed.
"""

import gc
import logging
import os
from typing import Dict

import ray
import torch
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from ndif.services.ray.sandbox.model import SandboxHost
from nnsight.modeling.huggingface import HuggingFaceModel

logger = logging.getLogger("ndif.modeling")


class CPUModelDeployment(BaseModelDeployment):
    """ndif's model deployment with its weights on the CPU."""

    def load_from_disk(self):
        # Ray starts an actor without CPUs (num_cpus=0) on one thread; compute like a local run does
        torch.set_num_threads(int(os.environ.get("NDIF_LOCAL_THREADS") or os.cpu_count() or 1))
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name, device="cpu",
                                                **self.kwargs)
        model._module.requires_grad_(False)
        logger.info(f"Loaded {self.model_key} on CPU")
        return model

    async def to_cache(self) -> None:
        await self.cancel("preempted")
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id: Dict[int, int]) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


@ray.remote(num_cpus=0, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    """The Ray actor ndif starts per deployed model."""


class CPUSandboxModelDeployment(SandboxHost, CPUModelDeployment):
    """The CPU deployment that runs untrusted requests (``trusted: false``) in a separate runner
    process, as ndif's own sandboxed actor does; trusted ones run in-process as above."""

    def __init__(self, *args, pool_size=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.open_pool(pool_size)

    def interrupt(self) -> None:
        if self.execution_sandbox is not None:
            self.execution_sandbox.stop()
        super().interrupt()

    def execute(self, request):
        if request.trusted:
            return super().execute(request)
        return self.run_in_runner(request, None)


@ray.remote(num_cpus=0, max_restarts=-1)
class CPUSandboxModelActor(CPUSandboxModelDeployment):
    """The Ray actor of the sandboxed CPU deployment (``NDIF_LOCAL_SANDBOX=1``)."""
