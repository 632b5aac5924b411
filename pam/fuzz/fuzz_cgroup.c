/* libFuzzer: the parser of `.cgroup` (the session cgroup root). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[BK_CGROUP_PATH_MAX + 1], err[BK_ERR_MAX];
    if (!bk_parse_cgroup_root((const char *)data, size, out, err))
        return 0;
    /* what it accepts stays below the mount point and never climbs */
    if (strncmp(out, BK_CGROUP_PREFIX, strlen(BK_CGROUP_PREFIX)) != 0 || strstr(out, "/../") ||
        strstr(out, "/./") || strstr(out, "//") || strchr(out, '\n') ||
        out[strlen(out) - 1] == '/')
        __builtin_trap();
    size_t n = strlen(out);
    if ((n >= 3 && strcmp(out + n - 3, "/..") == 0) || (n >= 2 && strcmp(out + n - 2, "/.") == 0))
        __builtin_trap();
    return 0;
}
