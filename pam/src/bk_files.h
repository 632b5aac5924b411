/* File access for the node's trees: directory fds walked from a root without following
 * links, root-owned checks, bounded reads, atomic writes (docs/grants.md). */
#ifndef BK_FILES_H
#define BK_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "bk_contract.h"

#define BK_TMP_PREFIX ".broker-tmp-"

enum bk_read {
    BK_READ_OK = 0,
    BK_READ_MISSING = 1,
    BK_READ_BAD = 2,
};

/* Open `rel` (relative, '/'-separated) below the directory fd `base`, one component at a
 * time with O_NOFOLLOW; every directory must be root-owned and closed to group/other
 * writes. `create_mode` non-zero creates missing components with that mode. Returns the fd,
 * or -1 with `err` set (errno ENOENT kept when something was missing). */
int bk_open_dir_at(int base, const char *rel, mode_t create_mode, char err[BK_ERR_MAX]);
/* The same from a path: `root` (absolute) is opened and checked like the rest. */
int bk_open_dir(const char *root, const char *rel, mode_t create_mode, char err[BK_ERR_MAX]);

/* Read `name` in `dir_fd`: regular, root-owned, no `forbidden` mode bits, one link, at most
 * `limit` bytes (buf holds limit+1). */
enum bk_read bk_read_at(int dir_fd, const char *name, mode_t forbidden, char *buf, size_t limit,
                        size_t *len, char err[BK_ERR_MAX]);

/* Temporary file with its final mode, written, renamed over `name`: a reader sees all of it
 * or nothing. `durable`: the file is fsynced before the rename and the directory after it,
 * so it survives a crash too (spool events); without, it costs no disk flush (session
 * records, which describe running processes: after a crash none of them runs). */
bool bk_write_atomic(int dir_fd, const char *name, const char *data, size_t len, mode_t mode,
                     bool durable);

/* Does `name` exist in `dir_fd` (without following a link)? Errors other than ENOENT say
 * yes: the callers ask about revocation markers. */
bool bk_exists_at(int dir_fd, const char *name);

#endif
