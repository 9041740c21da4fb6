"""torch-check: PyTorch on the (simulated) GPU, for the cudart tier. Prints key=value lines.

    python torch-check.py info        torch.cuda.is_available, the device, mem_get_info
    python torch-check.py fill        1 GiB tensors until torch.OutOfMemoryError, then freed
    python torch-check.py kernel      a few kernels (fill, add, sum) and a synchronize
    python torch-check.py processes   torch.cuda.list_gpu_processes() (NVML's process list)

The allocator is whatever PYTORCH_CUDA_ALLOC_CONF selects (the caching allocator with
cudaMalloc, expandable_segments:True with cuMemCreate/cuMemMap, backend:cudaMallocAsync).
On the simulated GPU kernels take time but compute nothing: results are not checked.
"""

import sys
import time

import torch

GIB = 1 << 30


def info():
    free, total = torch.cuda.mem_get_info()
    print(f"torch={torch.__version__}")
    print(f"cuda={torch.version.cuda}")
    print(f"available={torch.cuda.is_available()}")
    print(f"count={torch.cuda.device_count()}")
    print(f"name={torch.cuda.get_device_name(0)}")
    print(f"free={free}")
    print(f"total={total}")
    print(f"backend={torch.cuda.get_allocator_backend()}")


def fill():
    before = torch.cuda.mem_get_info()[0]
    tensors = []
    error = "none"
    try:
        while len(tensors) < 4096:
            tensors.append(torch.empty(GIB, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    except RuntimeError as e:
        # Any other failure of an allocation: reported the same way (the tests say what they
        # expect), with what was allocated until then.
        error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    print(f"tensors={len(tensors)}")
    print(f"allocated={torch.cuda.memory_allocated()}")
    print(f"reserved={torch.cuda.memory_reserved()}")
    print(f"error={error}")
    del tensors
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    print(f"reserved_after={torch.cuda.memory_reserved()}")
    print(f"given_back={torch.cuda.mem_get_info()[0] == before}")


def kernel():
    start = time.monotonic()
    x = torch.ones(1 << 20, device="cuda")
    y = (x + x).sum()
    value = y.item()
    torch.cuda.synchronize()
    print(f"kernel_seconds={time.monotonic() - start:.3f}")
    print(f"result_read={isinstance(value, float)}")


def processes():
    # A process is on NVML's list once it holds device memory (its context and a tensor).
    held = torch.empty(GIB, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    print(torch.cuda.list_gpu_processes(0))
    del held


if __name__ == "__main__":
    {"info": info, "fill": fill, "kernel": kernel, "processes": processes}[sys.argv[1]]()
