/* The driver's entry points found by reading its ELF symbol table from the file that
 * /proc/self/maps names and adding the load address: no dlsym, interposed or not. */
#include "attack.h" /* first: it defines _GNU_SOURCE */

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

static uintptr_t base;
static const Elf64_Sym *symbols;
static const char *names;
static size_t count;

static void *lookup(const char *name) {
    for (size_t i = 0; i < count; i++)
        if (symbols[i].st_value && strcmp(names + symbols[i].st_name, name) == 0)
            return (void *)(base + symbols[i].st_value);
    return NULL;
}

int main(int argc, char **argv) {
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
        fprintf(stderr, "attack: elf-lookup: %s\n", dlerror());
        return 1;
    }
    /* The lowest mapping of the driver's file (offset 0) is its load address. */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096], path[4096] = "";
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long start, offset;
        char file[4096];
        if (sscanf(line, "%lx-%*x %*s %lx %*s %*s %4095s", &start, &offset, file) == 3 && offset == 0 &&
            strstr(file, "libcuda") && !base) {
            base = start;
            strcpy(path, file);
        }
    }
    int fd = path[0] ? open(path, O_RDONLY) : -1;
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "attack: elf-lookup: no libcuda mapping in /proc/self/maps\n");
        return 1;
    }
    const unsigned char *elf = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)elf;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(elf + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type == SHT_DYNSYM) {
            symbols = (const Elf64_Sym *)(elf + sh[i].sh_offset);
            count = sh[i].sh_size / sizeof(Elf64_Sym);
            names = (const char *)(elf + sh[sh[i].sh_link].sh_offset);
        }
    }
    if (!symbols) {
        fprintf(stderr, "attack: elf-lookup: %s has no dynamic symbol table\n", path);
        return 1;
    }
    return run_attack("elf-lookup", lookup, argc, argv);
}
