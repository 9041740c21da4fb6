"""torch-graph-check: a PyTorch CUDA graph on the (simulated) GPU, for the cudart tier. Prints
key=value lines.

    python torch-graph-check.py BYTES

Captures with torch.cuda.graph a few kernels and a BYTES-byte tensor, replays the graph twice
and reads a result back, then resets the graph and empties the cache. Captured allocations
come from the graph's private memory pool, which the allocator PYTORCH_CUDA_ALLOC_CONF selects
fills: the caching allocator with cudaMalloc during the capture, backend:cudaMallocAsync with
stream-ordered allocations captured as graph memory nodes, mapped when the graph is
instantiated or first replayed. Kernels compute nothing on the simulated GPU: results are not
checked.
"""

import os
import sys

import torch


def error_line(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(size):
    x = torch.ones(1 << 20, device="cuda")
    # Warm-up, as PyTorch asks before a capture: the kernels' libraries are loaded, and charged
    # by the slice at their first use, before the baseline is read; what the warm-up left in
    # the allocator's cache goes back, as the reset below gives back the graph's pool.
    (x * 2 + 1).sum()
    torch.empty(1 << 10, dtype=torch.uint8, device="cuda").fill_(3)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0]
    reserved_before = torch.cuda.memory_reserved()
    g = torch.cuda.CUDAGraph()
    capture = "ok"
    try:
        with torch.cuda.graph(g):
            y = x * 2 + 1
            z = torch.empty(size, dtype=torch.uint8, device="cuda")
            z.fill_(3)
            w = y.sum()
    except (torch.OutOfMemoryError, RuntimeError) as e:
        capture = error_line(e)
    torch.cuda.synchronize()
    print(f"backend={torch.cuda.get_allocator_backend()}")
    print(f"capture={capture}")
    print(f"free_before={free_before}")
    print(f"free_captured={torch.cuda.mem_get_info()[0]}")
    print(f"reserved_before={reserved_before}")
    print(f"reserved_captured={torch.cuda.memory_reserved()}")
    replay = "none"
    if capture == "ok":
        try:
            g.replay()
            g.replay()
            torch.cuda.synchronize()
            replay = "ok"
            print(f"result_read={isinstance(w.item(), float)}")
        except (torch.OutOfMemoryError, RuntimeError) as e:
            replay = error_line(e)
        print(f"free_replayed={torch.cuda.mem_get_info()[0]}")
        print(f"replay={replay}")
        if replay != "ok":
            # The graph never ran: with backend:cudaMallocAsync its allocations were never
            # made, and freeing the tensors (cudaFreeAsync of them) fails in a destructor,
            # which aborts. Nothing more to see.
            sys.stdout.flush()
            os._exit(0)
        del y, z, w
    else:
        print(f"replay={replay}")
    g.reset()
    del g
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    print(f"free_reset={torch.cuda.mem_get_info()[0]}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
