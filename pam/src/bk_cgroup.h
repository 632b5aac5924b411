/* Elevated sessions contained in cgroup v2 (docs/grants.md, "Containment"). */
#ifndef BK_CGROUP_H
#define BK_CGROUP_H

#include <stdbool.h>
#include <sys/types.h>

#include "bk_contract.h"

/* The file beside the session records that names the cgroup root (bk_parse_cgroup_root). */
#define BK_CGROUP_FILE ".cgroup"
/* "<key>-<pid>-<ticks>" (ticks 0 when unknown): the session's cgroup, directly below the
 * root; "-" when not contained. */
#define BK_CGROUP_REL_MAX 64

enum bk_contain {
    BK_CONTAIN_OFF = 0, /* no .cgroup: the node is not delegated a subtree (fallback) */
    BK_CONTAIN_OK,      /* the process is in its session's cgroup now */
    BK_CONTAIN_FAILED,  /* .cgroup names a root, but the process could not be placed there */
};

/* Move `pid` (the sudo process, so everything it starts) into <root>/<key>-<pid>-<ticks>,
 * creating it; `sessions_fd` is the session records' directory. Placing the
 * same process twice is harmless (auth and account both check). `rel` gets the cgroup's
 * path below the root, or "-"; `err` why it failed. */
enum bk_contain bk_contain(const char *root, int sessions_fd, const char *key, pid_t pid,
                           const char *ticks, char rel[BK_CGROUP_REL_MAX], char err[BK_ERR_MAX]);

#endif
