"""The host allocator setting: freed batch-sized tensors are reused without faulting pages in again."""

import subprocess
import sys

PROBE = """
import resource, torch
from sslight.memory import reuse_freed_memory

def faults_of_one_batch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_one_batch()
default = faults_of_one_batch()
assert reuse_freed_memory()
faults_of_one_batch()  # the heap grows once
print(default, faults_of_one_batch())
"""


def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    default, reused = map(int, out.split())
    assert default > 10_000  # 64 MiB in 4 KiB pages, faulted in again on every allocation by default
    assert reused < default / 100
