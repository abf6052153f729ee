"""Batch buffers that DataLoader workers reuse when they hand views to the main process.

A worker that cuts views on the CPU writes them straight into shared memory, so the hand-over
copies nothing. Fresh shared memory for every batch still costs: the kernel zeroes and faults
in every page (19 MB a batch for the SSLight CNN recipe at batch 32) in the worker, and the main
process maps and unmaps it again. So each worker keeps a few buffers and writes into one again
once the main process has let go of it. One flag per buffer, in memory both sides share, says
who has it: the worker sets it when it hands the buffer over, the main process clears it when
nothing there uses the buffer any more. The main process keeps its mapping of each buffer, so
a buffer that comes back is neither mapped nor faulted in again. The price: each worker keeps
``per_worker`` batches of shared memory for the loader's life (19 MB each in the case above).
"""

from __future__ import annotations

import torch


class SharedBatchBuffers:
    def __init__(self, workers: int, per_worker: int):
        self.per_worker = per_worker
        self.busy = torch.zeros(max(1, workers) * per_worker, dtype=torch.uint8).share_memory_()
        self._own: dict[int, torch.UntypedStorage] = {}  # a worker's buffers, by slot
        self._mapped: dict[int, torch.UntypedStorage] = {}  # the main process's mappings, by slot
        self._handed: set[int] = set()  # slots received and not yet released

    def take(self, nbytes: int) -> tuple[int, torch.UntypedStorage]:
        """A buffer of ``nbytes`` for the next batch and its slot; slot -1 is a buffer used once (in
        the main process, or when all of this worker's buffers are still in use)."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return -1, torch.UntypedStorage(nbytes)
        busy = self.busy.numpy()
        for slot in range(worker.id * self.per_worker, (worker.id + 1) * self.per_worker):
            if busy[slot]:
                continue
            storage = self._own.get(slot)
            if storage is None or storage.nbytes() != nbytes:
                storage = self._own[slot] = torch.UntypedStorage._new_shared(nbytes)
            busy[slot] = 1
            return slot, storage
        return -1, torch.UntypedStorage._new_shared(nbytes)

    def received(self, slot: int, views: torch.Tensor) -> None:
        """In the main process: the batch in ``slot`` (whose views include ``views``) has arrived.
        Releases first the buffers that nothing uses any more."""
        for handed in list(self._handed):
            # one user when unused: the mapping kept here (a tensor on the buffer adds one)
            if torch._C._storage_Use_Count(self._mapped[handed]._cdata) == 1:
                self._handed.discard(handed)
                self.busy[handed] = 0
        if slot >= 0:
            self._mapped[slot] = views.untyped_storage()
            self._handed.add(slot)
