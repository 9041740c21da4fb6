/* A private copy of the driver library, under another name in /tmp, loaded and called: no
 * interposer knows that file. */
#include "attack.h" /* first: it defines _GNU_SOURCE */

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/sendfile.h>
#include <sys/stat.h>

static void *driver;

static void *lookup(const char *name) { return dlsym(driver, name); }

int main(int argc, char **argv) {
    void *original = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    struct link_map *map = NULL;
    if (!original || dlinfo(original, RTLD_DI_LINKMAP, &map) != 0 || !map) {
        fprintf(stderr, "attack: private-copy: %s\n", dlerror());
        return 1;
    }
    const char *copy = "/tmp/libgpu-private-copy.so";
    int in = open(map->l_name, O_RDONLY), out = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    struct stat st;
    if (in < 0 || out < 0 || fstat(in, &st) != 0 || sendfile(out, in, NULL, (size_t)st.st_size) != st.st_size) {
        fprintf(stderr, "attack: private-copy: copying %s failed\n", map->l_name);
        return 1;
    }
    close(in);
    close(out);
    driver = dlopen(copy, RTLD_NOW | RTLD_LOCAL);
    if (!driver) {
        fprintf(stderr, "attack: private-copy: %s\n", dlerror());
        return 1;
    }
    return run_attack("private-copy", lookup, argc, argv);
}
