/* limits-check: device memory a CUDA program takes outside allocations, through NVIDIA's
 * runtime (libcudart), for the cudart tier: context limits (cudaDeviceSetLimit), modules
 * (cuModuleLoadData, reached through cudaGetDriverEntryPointByVersion as a program does without
 * linking libcuda), libraries (cudaLibraryLoadData), green contexts (cuGreenCtxCreate), and a
 * device reset giving it all back.
 *
 * Built with gcc against a runtime wheel's headers, like cudart-check.c. The module image is a
 * cubin made here: an ELF file whose section headers name a `.text.k` section (the kernel's
 * code, 4 KiB) and a `.nv.global` section (NOBITS: a `__device__` array) of the size asked
 * for; the library image is a fat binary holding that cubin. The simulated driver reserves,
 * and the shim charges, by these sections (gpuslice_core::reservations); a real driver would
 * refuse the hand-made cubin (the GPU tier compiles a real one with nvcc instead).
 *
 *   limits-check limit --which heap|stack|fifo --value S    cudaDeviceSetLimit
 *   limits-check module --global S                          cuModuleLoadData, then cuModuleUnload
 *   limits-check library --global S                         cudaLibraryLoadData, then cudaLibraryUnload
 *   limits-check reset --value S --global S                 heap, stack and FIFO limits and a module,
 *                                                           then cudaDeviceReset
 *   limits-check green                                      green contexts until one is refused (at most
 *                                                           64), then cuGreenCtxDestroy of each
 *   limits-check ctx-v4                                     contexts from cuCtxCreate_v4 with an execution
 *                                                           affinity (half the SMs) until one is refused
 *   limits-check start --register S                         start the runtime with a registered fat binary
 *                                                           (a cubin with an S-byte __device__ array and a
 *                                                           kernel k, as nvcc's host code registers it),
 *                                                           then launch k
 *   limits-check symbol --register S                        the same, then the registered __device__ array
 *                                                           `table` through cudaGetSymbolSize,
 *                                                           cudaGetSymbolAddress, cudaMemcpyToSymbol and
 *                                                           cudaMemcpyFromSymbol
 *
 * Every command takes --device N (default 0). Sizes take K, M and G suffixes (binary). Output:
 * key=value lines; free_* are cudaMemGetInfo's free bytes. A refused call prints its error
 * (error=<cudaError name>, or cu_error=<CUresult> for driver calls) and exits 0; a call
 * that should not fail prints call=<what> and exits 1.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include "check.h"

static struct {
    const char *which;
    unsigned long long value, global;
    int device;
    unsigned long long registered;
} opt = {.which = "heap", .value = 256ull << 20, .global = 64ull << 20};

static int fail(const char *call, cudaError_t e) {
    printf("call=%s\nerror=%s\n", call, cudaGetErrorName(e));
    return 1;
}

/* ---- images -------------------------------------------------------------------------------- */

/* A cubin: ELF header, section names, symbols, then the section headers: null, .text.k (4 KiB
 * of code), .nv.global (NOBITS, `global` bytes), .shstrtab, .symtab (one object, `table`, the
 * whole of .nv.global: the __device__ array), .strtab. */
static const char section_names[] = "\0.text.k\0.nv.global\0.shstrtab\0.symtab\0.strtab";
static const char symbol_names[] = "\0table";
static struct {
    Elf64_Ehdr header;
    char names[sizeof section_names];
    char pad[(8 - sizeof section_names % 8) % 8];
    Elf64_Sym symbols[2];
    char strings[(sizeof symbol_names + 7) / 8 * 8];
    Elf64_Shdr sections[6];
} __attribute__((aligned(8))) cubin;

static void make_cubin(unsigned long long global) {
    memset(&cubin, 0, sizeof cubin);
    memcpy(cubin.header.e_ident, ELFMAG, SELFMAG);
    cubin.header.e_ident[EI_CLASS] = ELFCLASS64;
    cubin.header.e_ident[EI_DATA] = ELFDATA2LSB;
    cubin.header.e_ident[EI_VERSION] = EV_CURRENT;
    cubin.header.e_ident[EI_OSABI] = 0x33; /* CUDA */
    cubin.header.e_type = ET_EXEC;
    cubin.header.e_machine = 190; /* EM_CUDA */
    cubin.header.e_version = EV_CURRENT;
    cubin.header.e_ehsize = sizeof(Elf64_Ehdr);
    cubin.header.e_shoff = offsetof(__typeof__(cubin), sections);
    cubin.header.e_shentsize = sizeof(Elf64_Shdr);
    cubin.header.e_shnum = 6;
    cubin.header.e_shstrndx = 3;
    memcpy(cubin.names, section_names, sizeof section_names);
    memcpy(cubin.strings, symbol_names, sizeof symbol_names);
    cubin.symbols[1] = (Elf64_Sym){.st_name = 1, .st_info = ELF64_ST_INFO(STB_GLOBAL, STT_OBJECT), .st_shndx = 2,
                                   .st_size = global};
    cubin.sections[1] = (Elf64_Shdr){.sh_name = 1, .sh_type = SHT_PROGBITS, .sh_flags = SHF_ALLOC | SHF_EXECINSTR,
                                     .sh_size = 4096, .sh_addralign = 128};
    cubin.sections[2] = (Elf64_Shdr){.sh_name = 9, .sh_type = SHT_NOBITS, .sh_flags = SHF_ALLOC | SHF_WRITE,
                                     .sh_size = global, .sh_addralign = 8};
    cubin.sections[3] = (Elf64_Shdr){.sh_name = 20, .sh_type = SHT_STRTAB,
                                     .sh_offset = offsetof(__typeof__(cubin), names),
                                     .sh_size = sizeof section_names};
    cubin.sections[4] = (Elf64_Shdr){.sh_name = 30, .sh_type = SHT_SYMTAB, .sh_link = 5, .sh_info = 1,
                                     .sh_offset = offsetof(__typeof__(cubin), symbols),
                                     .sh_size = sizeof cubin.symbols, .sh_entsize = sizeof(Elf64_Sym), .sh_addralign = 8};
    cubin.sections[5] = (Elf64_Shdr){.sh_name = 38, .sh_type = SHT_STRTAB,
                                     .sh_offset = offsetof(__typeof__(cubin), strings),
                                     .sh_size = sizeof symbol_names};
}

/* A fat binary holding the cubin for sm_90: a 16-byte header, one 64-byte entry header. */
static struct {
    uint32_t magic;
    uint16_t version, header_size;
    uint64_t files_size;
    struct {
        uint16_t kind, version;
        uint32_t header_size;
        uint64_t payload_size;
        uint32_t compressed_size, reserved0;
        uint16_t minor, major;
        uint32_t arch, name_offset, name_size;
        uint64_t flags, reserved1, uncompressed_size;
    } entry;
    __typeof__(cubin) elf;
} __attribute__((aligned(8))) fatbin;

static void make_fatbin(unsigned long long global) {
    make_cubin(global);
    memset(&fatbin, 0, sizeof fatbin);
    fatbin.magic = 0xBA55ED50;
    fatbin.version = 1;
    fatbin.header_size = 16;
    fatbin.files_size = sizeof fatbin.entry + sizeof fatbin.elf;
    fatbin.entry.kind = 2;
    fatbin.entry.version = 0x0101;
    fatbin.entry.header_size = sizeof fatbin.entry;
    fatbin.entry.payload_size = sizeof fatbin.elf;
    fatbin.entry.arch = 90;
    fatbin.entry.flags = 0x11;
    fatbin.entry.uncompressed_size = sizeof fatbin.elf;
    fatbin.elf = cubin;
}

/* ---- the registration path: a fat binary registered as nvcc's host code does ------------- */

extern void **__cudaRegisterFatBinary(void *fatCubin);
extern void __cudaRegisterFatBinaryEnd(void **fatCubinHandle);
extern void __cudaRegisterVar(void **fatCubinHandle, char *hostVar, char *deviceAddress, const char *deviceName,
                              int ext, size_t size, int constant, int global);
extern void __cudaRegisterFunction(void **fatCubinHandle, const char *hostFun, char *deviceFun, const char *deviceName,
                                   int thread_limit, uint3 *tid, uint3 *bid, dim3 *bDim, dim3 *gDim, int *wSize);

static struct {
    int magic, version;
    const void *data;
    void *filename_or_fatbins;
} registered = {0x466243B1, 1, &fatbin, NULL};

static void k(void) {}
/* The host shadow of the __device__ array `table`, as nvcc's host code declares one. */
static char table[16];

/* Registers the fat binary of a cubin with a `global`-byte __device__ array `table` and a
 * kernel k; the runtime loads it (cuLibraryLoadData) when it sets up the device, and finds
 * `table` in it (cuLibraryGetGlobal) for the symbol calls. */
static void register_fatbin(unsigned long long global) {
    make_fatbin(global);
    void **handle = __cudaRegisterFatBinary(&registered);
    __cudaRegisterFunction(handle, (const char *)k, (char *)"k", "k", -1, NULL, NULL, NULL, NULL, NULL);
    __cudaRegisterVar(handle, table, (char *)"table", "table", 0, global, 0, 0);
    __cudaRegisterFatBinaryEnd(handle);
}

/* symbol: the registered __device__ array through the runtime's symbol calls: its size and
 * address, and bytes written at its end (cudaMemcpyToSymbol) read back (cudaMemcpyFromSymbol). */
static int cmd_symbol(void) {
    size_t size = 0;
    void *addr = NULL;
    cudaError_t e = cudaGetSymbolSize(&size, table);
    printf("size_error=%s\nsymbol_size=%zu\n", cudaGetErrorName(e), size);
    if (e != cudaSuccess)
        return 0;
    e = cudaGetSymbolAddress(&addr, table);
    printf("address_error=%s\n", cudaGetErrorName(e));
    char in[16] = "gpuslice table!", out[16] = {0};
    size_t at = size >= sizeof in ? size - sizeof in : 0;
    e = cudaMemcpyToSymbol(table, in, sizeof in, at, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpyFromSymbol(out, table, sizeof out, at, cudaMemcpyDeviceToHost);
    printf("copy_error=%s\nround_trip=%d\nfree=%zu\n", cudaGetErrorName(e), !memcmp(in, out, sizeof in), free_now());
    return 0;
}

/* ---- driver entry points ------------------------------------------------------------------ */

static void *entry(const char *name, unsigned version) {
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        return NULL;
    return fn;
}

typedef CUresult (*module_load_data_fn)(CUmodule *, const void *);
typedef CUresult (*module_unload_fn)(CUmodule);

/* ---- commands ------------------------------------------------------------------------------ */

static int limit_of(const char *which, enum cudaLimit *limit) {
    if (!strcmp(which, "heap"))
        *limit = cudaLimitMallocHeapSize;
    else if (!strcmp(which, "stack"))
        *limit = cudaLimitStackSize;
    else if (!strcmp(which, "fifo"))
        *limit = cudaLimitPrintfFifoSize;
    else
        return -1;
    return 0;
}

static int cmd_limit(void) {
    enum cudaLimit limit;
    size_t before_value = 0, value = 0;
    if (limit_of(opt.which, &limit)) {
        fprintf(stderr, "unknown limit %s\n", opt.which);
        return 2;
    }
    cudaError_t e = cudaDeviceGetLimit(&before_value, limit);
    if (e != cudaSuccess)
        return fail("cudaDeviceGetLimit", e);
    printf("default=%zu\nfree_before=%zu\n", before_value, free_now());
    e = cudaDeviceSetLimit(limit, opt.value);
    printf("set_error=%s\n", cudaGetErrorName(e));
    (void)cudaGetLastError();
    cudaDeviceGetLimit(&value, limit);
    printf("value=%zu\nfree_after=%zu\n", value, free_now());
    if (e == cudaSuccess) {
        e = cudaDeviceSetLimit(limit, before_value);
        if (e != cudaSuccess)
            return fail("cudaDeviceSetLimit (back to the default)", e);
        printf("free_restored=%zu\n", free_now());
    }
    return 0;
}

static int cmd_module(void) {
    module_load_data_fn load = (module_load_data_fn)entry("cuModuleLoadData", 2000);
    module_unload_fn unload = (module_unload_fn)entry("cuModuleUnload", 2000);
    if (!load || !unload)
        return fail("cudaGetDriverEntryPointByVersion(cuModuleLoadData)", cudaErrorSymbolNotFound);
    make_cubin(opt.global);
    printf("free_before=%zu\n", free_now());
    CUmodule m = NULL;
    CUresult rc = load(&m, &cubin);
    printf("cu_error=%d\nfree_loaded=%zu\n", (int)rc, free_now());
    if (rc == CUDA_SUCCESS) {
        rc = unload(m);
        if (rc != CUDA_SUCCESS)
            return fail("cuModuleUnload", cudaErrorUnknown);
        printf("free_unloaded=%zu\n", free_now());
    }
    return 0;
}

static int cmd_library(void) {
    make_fatbin(opt.global);
    printf("free_before=%zu\n", free_now());
    cudaLibrary_t lib = NULL;
    cudaError_t e = cudaLibraryLoadData(&lib, &fatbin, NULL, NULL, 0, NULL, NULL, 0);
    printf("load_error=%s\nfree_loaded=%zu\n", cudaGetErrorName(e), free_now());
    (void)cudaGetLastError();
    if (e == cudaSuccess) {
        e = cudaLibraryUnload(lib);
        if (e != cudaSuccess)
            return fail("cudaLibraryUnload", e);
        printf("free_unloaded=%zu\n", free_now());
    }
    return 0;
}

typedef CUresult (*get_resource_fn)(CUdevice, CUdevResource *, CUdevResourceType);
typedef CUresult (*generate_desc_fn)(CUdevResourceDesc *, CUdevResource *, unsigned);
typedef CUresult (*green_create_fn)(CUgreenCtx *, CUdevResourceDesc, CUdevice, unsigned);
typedef CUresult (*green_destroy_fn)(CUgreenCtx);

/* Green contexts on all the device's SMs until one is refused, then destroyed. */
static int cmd_green(void) {
    get_resource_fn get_resource = (get_resource_fn)entry("cuDeviceGetDevResource", 12040);
    generate_desc_fn generate = (generate_desc_fn)entry("cuDevResourceGenerateDesc", 12040);
    green_create_fn create = (green_create_fn)entry("cuGreenCtxCreate", 12040);
    green_destroy_fn destroy = (green_destroy_fn)entry("cuGreenCtxDestroy", 12040);
    if (!get_resource || !generate || !create || !destroy)
        return fail("cudaGetDriverEntryPointByVersion(cuGreenCtxCreate)", cudaErrorSymbolNotFound);
    CUdevResource sms;
    CUdevResourceDesc desc;
    memset(&sms, 0, sizeof sms);
    if (get_resource(opt.device, &sms, CU_DEV_RESOURCE_TYPE_SM) != CUDA_SUCCESS || generate(&desc, &sms, 1) != CUDA_SUCCESS)
        return fail("cuDeviceGetDevResource/cuDevResourceGenerateDesc", cudaErrorUnknown);
    printf("free_before=%zu\n", free_now());
    CUgreenCtx greens[64];
    int n = 0;
    CUresult rc = CUDA_SUCCESS;
    while (n < 64 && (rc = create(&greens[n], desc, opt.device, CU_GREEN_CTX_DEFAULT_STREAM)) == CUDA_SUCCESS)
        n++;
    printf("created=%d\ncu_error=%d\nfree_full=%zu\n", n, (int)rc, free_now());
    while (n > 0)
        if (destroy(greens[--n]) != CUDA_SUCCESS)
            return fail("cuGreenCtxDestroy", cudaErrorUnknown);
    printf("free_destroyed=%zu\n", free_now());
    return 0;
}

typedef CUresult (*cuCtxGetCurrent_fn)(CUcontext *);
typedef CUresult (*ctx_create_v4_fn)(CUcontext *, CUctxCreateParams *, unsigned, CUdevice);
typedef CUresult (*ctx_destroy_fn)(CUcontext);
typedef CUresult (*ctx_set_current_fn)(CUcontext);

/* Contexts made with cuCtxCreate_v4 and an execution-affinity parameter (half the device's
 * SMs) until one is refused, then destroyed. */
static int cmd_ctx_v4(void) {
    ctx_create_v4_fn create = (ctx_create_v4_fn)entry("cuCtxCreate", 12050);
    ctx_destroy_fn destroy = (ctx_destroy_fn)entry("cuCtxDestroy", 4000);
    ctx_set_current_fn set_current = (ctx_set_current_fn)entry("cuCtxSetCurrent", 4000);
    if (!create || !destroy || !set_current)
        return fail("cudaGetDriverEntryPointByVersion(cuCtxCreate, 12050)", cudaErrorSymbolNotFound);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, opt.device);
    CUexecAffinityParam affinity = {.type = CU_EXEC_AFFINITY_TYPE_SM_COUNT};
    affinity.param.smCount.val = (unsigned)sms / 2;
    CUctxCreateParams params = {.execAffinityParams = &affinity, .numExecAffinityParams = 1, .cigParams = NULL};
    CUcontext primary = NULL;
    cuCtxGetCurrent_fn get_current = (cuCtxGetCurrent_fn)entry("cuCtxGetCurrent", 4000);
    if (!get_current || get_current(&primary) != CUDA_SUCCESS)
        return fail("cuCtxGetCurrent", cudaErrorUnknown);
    printf("free_before=%zu\n", free_now());
    CUcontext ctxs[64];
    int n = 0;
    CUresult rc = CUDA_SUCCESS;
    while (n < 64 && (rc = create(&ctxs[n], &params, 0, opt.device)) == CUDA_SUCCESS) {
        n++;
        set_current(primary);
    }
    printf("created=%d\ncu_error=%d\nfree_full=%zu\n", n, (int)rc, free_now());
    while (n > 0)
        if (destroy(ctxs[--n]) != CUDA_SUCCESS)
            return fail("cuCtxDestroy", cudaErrorUnknown);
    set_current(primary);
    printf("free_destroyed=%zu\n", free_now());
    return 0;
}

static int cmd_reset(void) {
    module_load_data_fn load = (module_load_data_fn)entry("cuModuleLoadData", 2000);
    if (!load)
        return fail("cudaGetDriverEntryPointByVersion(cuModuleLoadData)", cudaErrorSymbolNotFound);
    printf("free_before=%zu\n", free_now());
    cudaError_t e;
    if ((e = cudaDeviceSetLimit(cudaLimitMallocHeapSize, opt.value)) != cudaSuccess)
        return fail("cudaDeviceSetLimit(cudaLimitMallocHeapSize)", e);
    if ((e = cudaDeviceSetLimit(cudaLimitStackSize, 2048)) != cudaSuccess)
        return fail("cudaDeviceSetLimit(cudaLimitStackSize)", e);
    if ((e = cudaDeviceSetLimit(cudaLimitPrintfFifoSize, opt.value)) != cudaSuccess)
        return fail("cudaDeviceSetLimit(cudaLimitPrintfFifoSize)", e);
    make_cubin(opt.global);
    CUmodule m = NULL;
    CUresult rc = load(&m, &cubin);
    if (rc != CUDA_SUCCESS) {
        printf("cu_error=%d\n", (int)rc);
        return fail("cuModuleLoadData", cudaErrorUnknown);
    }
    printf("free_taken=%zu\n", free_now());
    if ((e = cudaDeviceReset()) != cudaSuccess)
        return fail("cudaDeviceReset", e);
    if ((e = cudaSetDevice(opt.device)) != cudaSuccess || (e = cudaFree(0)) != cudaSuccess)
        return fail("cudaFree(0) after the reset", e);
    size_t heap = 0;
    cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize);
    printf("free_after_reset=%zu\nheap_after_reset=%zu\n", free_now(), heap);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: limits-check limit|module|library|reset [options]\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--which"))
            opt.which = argv[i + 1];
        else if (!strcmp(argv[i], "--value"))
            opt.value = parse_size(argv[i + 1]);
        else if (!strcmp(argv[i], "--global"))
            opt.global = parse_size(argv[i + 1]);
        else if (!strcmp(argv[i], "--device"))
            opt.device = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--register"))
            opt.registered = parse_size(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argv[1];
    if (opt.registered)
        register_fatbin(opt.registered);
    cudaError_t e = cudaSetDevice(opt.device);
    if (e == cudaSuccess)
        e = cudaFree(0);
    if (!strcmp(cmd, "start")) {
        printf("start_error=%s\nfree=%zu\n", cudaGetErrorName(e), e == cudaSuccess ? free_now() : 0);
        if (e == cudaSuccess) {
            void *args[] = {NULL};
            e = cudaLaunchKernel((const void *)k, (dim3){1, 1, 1}, (dim3){1, 1, 1}, args, 0, 0);
            printf("launch_error=%s\nfree_launched=%zu\n", cudaGetErrorName(e), free_now());
        }
        return 0;
    }
    if (e != cudaSuccess)
        return fail("cudaSetDevice", e);
    if (!strcmp(cmd, "limit"))
        return cmd_limit();
    if (!strcmp(cmd, "module"))
        return cmd_module();
    if (!strcmp(cmd, "library"))
        return cmd_library();
    if (!strcmp(cmd, "reset"))
        return cmd_reset();
    if (!strcmp(cmd, "green"))
        return cmd_green();
    if (!strcmp(cmd, "ctx-v4"))
        return cmd_ctx_v4();
    if (!strcmp(cmd, "symbol"))
        return cmd_symbol();
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
