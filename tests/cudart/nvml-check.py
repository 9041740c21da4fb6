"""nvml-check: what NVML shows through nvidia-ml-py (pynvml), for the cudart tier and the GPU
tier. Prints key=value lines; lists are comma-separated, processes as pid:bytes.

    python nvml-check.py view [--index N] [--wait-busy PID] [--torch]

--wait-busy PID: first poll (up to 20 s) until PID shows in the per-process utilisation
samples with a nonzero smUtil and the device's utilisation is nonzero, so the figures printed
are those of a device at work. --torch: also print torch.cuda.list_gpu_processes() (after the
NVML queries: torch is imported only then).

Every query a program can use to look at other processes is asked in each of its forms (v1,
v2, v3 process lists, graphics, all samples since 0), so that a view narrowed to a slice is
narrowed everywhere.
"""

import argparse
import ctypes
import time

import pynvml as N


class ProcessInfoV1(ctypes.Structure):
    """nvml.h's nvmlProcessInfo_v1_t, which pynvml no longer defines."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def pids(procs):
    return ",".join(f"{p.pid}:{p.usedGpuMemory or 0}" for p in procs)


def process_samples(h, since=0):
    try:
        return N.nvmlDeviceGetProcessUtilization(h, since)
    except N.NVMLError_NotFound:
        return []


def raw_processes(h, name, struct):
    """A process list through the C ABI by name, for the versions pynvml does not wrap."""
    fn = N._nvmlGetFunctionPointer(name)
    count = ctypes.c_uint(0)
    ret = fn(h, ctypes.byref(count), None)
    if ret == N.NVML_SUCCESS:
        return []
    if ret != N.NVML_ERROR_INSUFFICIENT_SIZE:
        raise N.NVMLError(ret)
    count.value = count.value * 2 + 5
    buf = (struct * count.value)()
    ret = fn(h, ctypes.byref(count), buf)
    if ret != N.NVML_SUCCESS:
        raise N.NVMLError(ret)
    return list(buf[: count.value])


def view(args):
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(args.index)
    if args.wait_busy:
        deadline = time.monotonic() + 20
        while True:
            busy = [s for s in process_samples(h) if s.pid == args.wait_busy and s.smUtil > 0]
            if busy and N.nvmlDeviceGetUtilizationRates(h).gpu > 0:
                break
            if time.monotonic() > deadline:
                print("wait_busy=timeout")
                break
            time.sleep(0.1)
    print(f"compute_v3={pids(N.nvmlDeviceGetComputeRunningProcesses(h))}")
    print(f"compute_v2={pids(N.nvmlDeviceGetComputeRunningProcesses_v2(h))}")
    print(f"compute_v1={pids(raw_processes(h, 'nvmlDeviceGetComputeRunningProcesses', ProcessInfoV1))}")
    print(f"graphics_v3={pids(N.nvmlDeviceGetGraphicsRunningProcesses(h))}")
    u = N.nvmlDeviceGetUtilizationRates(h)
    print(f"util_gpu={u.gpu}\nutil_memory={u.memory}")
    samples = process_samples(h)
    print("process_util=" + ",".join(f"{s.pid}:{s.smUtil}" for s in samples))
    # NVML 12.4+'s versioned forms; a driver without them says so.
    try:
        details = N.nvmlDeviceGetRunningProcessDetailList(h, N.nvmlProcessDetailList_v1, 0)
        print(f"detail_list={pids(details)}")
    except (N.NVMLError_FunctionNotFound, N.NVMLError_NotSupported):
        print("detail_list=unsupported")
    try:
        infos = N.nvmlDeviceGetProcessesUtilizationInfo(h, 0)
        print("utilization_info=" + ",".join(f"{s.pid}:{s.smUtil}" for s in infos))
    except N.NVMLError_NotFound:
        print("utilization_info=")
    except (N.NVMLError_FunctionNotFound, N.NVMLError_NotSupported):
        print("utilization_info=unsupported")
    since = int(time.time() * 1e6) - 1_000_000
    kind, values = N.nvmlDeviceGetSamples(h, N.NVML_GPU_UTILIZATION_SAMPLES, since)
    print(f"samples_type={kind}\nsamples={len(values)}")
    print(f"samples_max={max((v.sampleValue.uiVal for v in values), default=0)}")
    try:
        N.nvmlDeviceGetSamples(h, N.NVML_GPU_UTILIZATION_SAMPLES, int(time.time() * 1e6) + 60_000_000)
        print("samples_future=found")
    except N.NVMLError_NotFound:
        print("samples_future=not_found")
    m = N.nvmlDeviceGetMemoryInfo(h)
    print(f"mem_total={m.total}\nmem_used={m.used}\nmem_free={m.free}")
    m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
    print(f"mem2_total={m2.total}\nmem2_reserved={m2.reserved}\nmem2_used={m2.used}\nmem2_free={m2.free}")
    b = N.nvmlDeviceGetBAR1MemoryInfo(h)
    print(f"bar1_total={b.bar1Total}\nbar1_used={b.bar1Used}\nbar1_free={b.bar1Free}")
    N.nvmlShutdown()
    if args.torch:
        import torch

        listed = torch.cuda.list_gpu_processes(args.index)
        print("torch_pids=" + ",".join(line.split()[1] for line in listed.splitlines() if line.startswith("process")))
        print(listed)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["view"])
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--wait-busy", type=int, default=0)
    p.add_argument("--torch", action="store_true")
    view(p.parse_args())
