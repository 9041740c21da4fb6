/* The real dlsym, fetched with dlvsym from libc by its symbol version, so that an interposed
 * dlsym (the interception library's) never sees the lookups. */
#include "attack.h" /* first: it defines _GNU_SOURCE */

#include <dlfcn.h>

static void *(*real_dlsym)(void *, const char *);
static void *driver;

static void *lookup(const char *name) { return real_dlsym(driver, name); }

int main(int argc, char **argv) {
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    real_dlsym = (void *(*)(void *, const char *))dlvsym(libc, "dlsym", "GLIBC_2.34");
    if (!real_dlsym) real_dlsym = (void *(*)(void *, const char *))dlvsym(libc, "dlsym", "GLIBC_2.2.5");
    driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!real_dlsym || !driver) {
        fprintf(stderr, "attack: dlvsym: %s\n", dlerror());
        return 1;
    }
    return run_attack("dlvsym", lookup, argc, argv);
}
