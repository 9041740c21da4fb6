/* Plain dlopen and dlsym, as any program does: what the interception library catches. Run by
 * own-loader under a loader that does not read /etc/ld.so.preload, and on its own (through the
 * library) where an attack goes through the slice's region. */
#include "attack.h" /* first: it defines _GNU_SOURCE */

#include <dlfcn.h>

static void *driver;

static void *lookup(const char *name) { return dlsym(driver, name); }

int main(int argc, char **argv) {
    driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        fprintf(stderr, "attack: plain: %s\n", dlerror());
        return 1;
    }
    return run_attack("plain", lookup, argc, argv);
}
