/* The driver loaded into a new link-map namespace (dlmopen LM_ID_NEWLM), where preloaded
 * libraries are not: its functions are the driver's own, whatever the main namespace
 * interposes. */
#include "attack.h" /* first: it defines _GNU_SOURCE */

#include <dlfcn.h>

static void *driver;

static void *lookup(const char *name) { return dlsym(driver, name); }

int main(int argc, char **argv) {
    driver = dlmopen(LM_ID_NEWLM, "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        fprintf(stderr, "attack: dlmopen: %s\n", dlerror());
        return 1;
    }
    return run_attack("dlmopen", lookup, argc, argv);
}
