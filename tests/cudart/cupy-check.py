"""cupy-check: CuPy on the (simulated) GPU, for the cudart tier. Prints key=value lines.

    python cupy-check.py meminfo      cupy.cuda.runtime.memGetInfo and the device count
    python cupy-check.py pool         a 1 GiB array through the memory pool, freed back
    python cupy-check.py fill         1 GiB arrays until CuPy runs out of memory

No kernel is launched (CuPy would compile it with NVRTC, which the simulator does not run):
arrays are made with cupy.empty, which only allocates.
"""

import sys

import cupy

GIB = 1 << 30


def free_bytes():
    return cupy.cuda.runtime.memGetInfo()[0]


def meminfo():
    free, total = cupy.cuda.runtime.memGetInfo()
    print(f"count={cupy.cuda.runtime.getDeviceCount()}")
    print(f"free={free}")
    print(f"total={total}")


def pool():
    pool = cupy.get_default_memory_pool()
    before = free_bytes()
    a = cupy.empty((GIB // 4,), dtype=cupy.float32)
    print(f"array_bytes={a.nbytes}")
    print(f"pool_used={pool.used_bytes()}")
    print(f"pool_total={pool.total_bytes()}")
    print(f"taken={before - free_bytes()}")
    del a
    print(f"pool_used_after_del={pool.used_bytes()}")
    print(f"kept_by_pool={before - free_bytes()}")
    pool.free_all_blocks()
    print(f"pool_total_after_free={pool.total_bytes()}")
    print(f"given_back={free_bytes() == before}")


def fill():
    pool = cupy.get_default_memory_pool()
    before = free_bytes()
    arrays = []
    error = "none"
    try:
        while len(arrays) < 4096:
            arrays.append(cupy.empty((GIB // 4,), dtype=cupy.float32))
    except cupy.cuda.memory.OutOfMemoryError as e:
        error = f"{type(e).__name__}: {e}"
    print(f"arrays={len(arrays)}")
    print(f"pool_total={pool.total_bytes()}")
    print(f"error={error}")
    del arrays
    pool.free_all_blocks()
    print(f"given_back={free_bytes() == before}")


if __name__ == "__main__":
    {"meminfo": meminfo, "pool": pool, "fill": fill}[sys.argv[1]]()
