"""CuPy's stream capture with its stream-ordered allocator (MemoryAsyncPool, on the device's
default pool): an allocation of SIZE bytes captured into a graph (cudaMallocAsync, then
cudaFreeAsync when the array goes), the graph uploaded and launched. Prints key=value lines:
the outcome of each step (ok or the CUDA error's name) and the free memory before and after.

    cupy-graph-check.py SIZE
"""
import sys

import cupy as cp


def outcome(f):
    try:
        f()
        return "ok"
    except cp.cuda.runtime.CUDARuntimeError as e:
        return str(e).split(":")[0]


def main():
    size = int(sys.argv[1])
    cp.cuda.set_allocator(cp.cuda.MemoryAsyncPool("default").malloc)
    stream = cp.cuda.Stream(non_blocking=True)
    print(f"free_before={cp.cuda.runtime.memGetInfo()[0]}")
    with stream:
        stream.begin_capture()
        x = cp.empty(size, dtype=cp.uint8)
        del x
        graph = stream.end_capture()
    print("captured=ok")
    print(f"upload={outcome(lambda: graph.upload(stream))}")
    print(f"launch={outcome(lambda: graph.launch(stream))}")
    stream.synchronize()
    print(f"free_after={cp.cuda.runtime.memGetInfo()[0]}")


main()
