/* A plain C NVML client, linked with -lnvidia-ml the usual way. Declares the few types and
 * functions it needs as nvml.h does, so it builds without the CUDA toolkit. */
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlShutdown(void);
const char *nvmlErrorString(nvmlReturn_t);
nvmlReturn_t nvmlSystemGetDriverVersion(char *, unsigned int);
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t, char *, unsigned int);
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t, nvmlMemory_v2_t *);
nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t, nvmlPciInfo_t *);

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
