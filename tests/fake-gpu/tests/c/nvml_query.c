/* A plain C NVML client, linked with -lnvidia-ml the usual way. Its NVML declarations are
 * nvml.h's, from the generated cuda-abi/include/gpuslice_cuda_abi.h (no CUDA toolkit needed). */
#include <stdio.h>
#include <string.h>

#include "gpuslice_cuda_abi.h"

#define CHECK(call)                                                                     \
    do {                                                                                \
        nvmlReturn_t r = (call);                                                        \
        if (r != 0) {                                                                   \
            printf("%s: %d %s\n", #call, r, nvmlErrorString(r));                        \
            return 1;                                                                   \
        }                                                                               \
    } while (0)

int main(void) {
    char buf[96];
    unsigned int count;
    CHECK(nvmlInit_v2());
    CHECK(nvmlSystemGetDriverVersion(buf, sizeof buf));
    printf("driver %s\n", buf);
    CHECK(nvmlDeviceGetCount_v2(&count));
    printf("count %u\n", count);
    for (unsigned int i = 0; i < count; i++) {
        nvmlDevice_t dev;
        nvmlMemory_v2_t mem;
        nvmlPciInfo_t pci;
        memset(&mem, 0, sizeof mem);
        mem.version = (unsigned int)sizeof mem | (2u << 24);
        CHECK(nvmlDeviceGetHandleByIndex_v2(i, &dev));
        CHECK(nvmlDeviceGetName(dev, buf, sizeof buf));
        printf("gpu %u name %s\n", i, buf);
        CHECK(nvmlDeviceGetUUID(dev, buf, sizeof buf));
        printf("gpu %u uuid %s\n", i, buf);
        CHECK(nvmlDeviceGetMemoryInfo_v2(dev, &mem));
        printf("gpu %u memory total %llu used %llu free %llu\n", i, mem.total, mem.used, mem.free);
        CHECK(nvmlDeviceGetPciInfo_v3(dev, &pci));
        printf("gpu %u pci %s\n", i, pci.busId);
    }
    CHECK(nvmlShutdown());
    return 0;
}
