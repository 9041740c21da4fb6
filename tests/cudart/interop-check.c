/* interop-check: GL and VDPAU interop contexts through NVIDIA's runtime (libcudart), for the
 * cudart tier. cuGLCtxCreate and cuVDPAUCtxCreate are reached as a program that does not link
 * libcuda reaches them, through cudaGetDriverEntryPointByVersion at a CUDA version, which
 * selects the exported variant (cuGLCtxCreate at 2000, cuGLCtxCreate_v2 from 3020;
 * cuVDPAUCtxCreate at 3010, cuVDPAUCtxCreate_v2 from 3020). No OpenGL context or VDPAU device
 * is made: the simulated driver checks none.
 *
 *   interop-check gl|vdpau --version V [--device N]
 *       contexts until one is refused (at most 16), the primary one made current again after
 *       each, then cuCtxDestroy of each
 *
 * Output: key=value lines; free_* are cudaMemGetInfo's free bytes, cu_error the refusal's
 * CUresult. A call that should not fail prints call=<what> and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>
#include <cuda_runtime_api.h>
#include "check.h"

/* cudaGL.h's and cudaVDPAU.h's signatures (those headers need GL's and VDPAU's own). */
typedef CUresult (*gl_ctx_create_fn)(CUcontext *, unsigned, CUdevice);
typedef CUresult (*vdpau_ctx_create_fn)(CUcontext *, unsigned, CUdevice, unsigned, void *);
typedef CUresult (*ctx_destroy_fn)(CUcontext);
typedef CUresult (*ctx_current_fn)(CUcontext);
typedef CUresult (*ctx_get_current_fn)(CUcontext *);

static int fail(const char *call, cudaError_t e) {
    printf("call=%s\nerror=%s\n", call, cudaGetErrorName(e));
    return 1;
}

static void *entry(const char *name, unsigned version) {
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
        return NULL;
    return fn;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: interop-check gl|vdpau --version V [--device N]\n");
        return 2;
    }
    const char *kind = argv[1];
    unsigned version = 3020;
    int device = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--version"))
            version = (unsigned)strtoul(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--device"))
            device = atoi(argv[i + 1]);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int gl = !strcmp(kind, "gl");
    if (!gl && strcmp(kind, "vdpau")) {
        fprintf(stderr, "unknown kind %s\n", kind);
        return 2;
    }
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaFree(0);
    if (e != cudaSuccess)
        return fail("cudaSetDevice", e);
    void *create = entry(gl ? "cuGLCtxCreate" : "cuVDPAUCtxCreate", version);
    ctx_destroy_fn destroy = (ctx_destroy_fn)entry("cuCtxDestroy", 4000);
    ctx_current_fn set_current = (ctx_current_fn)entry("cuCtxSetCurrent", 4000);
    ctx_get_current_fn get_current = (ctx_get_current_fn)entry("cuCtxGetCurrent", 4000);
    if (!create || !destroy || !set_current || !get_current)
        return fail("cudaGetDriverEntryPointByVersion", cudaErrorSymbolNotFound);
    CUcontext primary = NULL;
    if (get_current(&primary) != CUDA_SUCCESS)
        return fail("cuCtxGetCurrent", cudaErrorUnknown);
    printf("free_before=%zu\n", free_now());
    CUcontext ctxs[16];
    int n = 0;
    CUresult rc = CUDA_SUCCESS;
    while (n < 16) {
        rc = gl ? ((gl_ctx_create_fn)create)(&ctxs[n], 0, device)
                : ((vdpau_ctx_create_fn)create)(&ctxs[n], 0, device, 1, NULL);
        if (rc != CUDA_SUCCESS)
            break;
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
