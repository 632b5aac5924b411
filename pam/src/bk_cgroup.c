/* Containment: the account check puts the sudo process in a cgroup of its own directly below
 * the subtree `broker-node watch` was delegated (flat, so the controllers the watcher enables
 * there reach every session), so that setsid, nohup, double forks and
 * daemons stay inside and revoke, expiry and quarantine end them all with cgroup.kill. */
#include "bk_cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "bk_files.h"

static bool ticks_ok(const char *ticks)
{
    size_t n = strlen(ticks);
    return n > 0 && n <= 20 && strspn(ticks, "0123456789") == n;
}

/* The root as .cgroup names it, opened and proved to be a cgroup v2 directory. */
static int open_root(const char *fs_root, const char *path, char err[BK_ERR_MAX])
{
    struct statfs fs;
    int fd = bk_open_dir(fs_root, path + 1, 0, err);
    if (fd < 0)
        return -1;
    if (fstatfs(fd, &fs) != 0 || fs.f_type != CGROUP2_SUPER_MAGIC) {
        snprintf(err, BK_ERR_MAX, "%s is not a cgroup v2 directory", path);
        close(fd);
        return -1;
    }
    return fd;
}

static bool write_pid(int dir_fd, pid_t pid, char err[BK_ERR_MAX])
{
    char line[24];
    int n = snprintf(line, sizeof line, "%ld\n", (long)pid);
    int fd = openat(dir_fd, "cgroup.procs", O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, BK_ERR_MAX, "cgroup.procs: cannot open (%m)");
        return false;
    }
    bool ok = n > 0 && write(fd, line, (size_t)n) == (ssize_t)n;
    if (!ok)
        snprintf(err, BK_ERR_MAX, "cgroup.procs: cannot move the process (%m)");
    return close(fd) == 0 && ok;
}

enum bk_contain bk_contain(const char *root, int sessions_fd, const char *key, pid_t pid,
                           const char *ticks, char rel[BK_CGROUP_REL_MAX], char err[BK_ERR_MAX])
{
    char buf[BK_CGROUP_PATH_MAX + 2], path[BK_CGROUP_PATH_MAX + 1];
    size_t len = 0;
    bk_copy(rel, BK_CGROUP_REL_MAX, "-");
    switch (bk_read_at(sessions_fd, BK_CGROUP_FILE, 022, buf, sizeof buf - 1, &len, err)) {
    case BK_READ_MISSING:
        return BK_CONTAIN_OFF;
    case BK_READ_BAD:
        return BK_CONTAIN_FAILED;
    case BK_READ_OK:
        break;
    }
    if (!bk_parse_cgroup_root(buf, len, path, err))
        return BK_CONTAIN_FAILED;
    char name[BK_CGROUP_REL_MAX];
    int n = snprintf(name, sizeof name, "%s-%ld-%s", key, (long)pid, ticks_ok(ticks) ? ticks : "0");
    if (n < 0 || (size_t)n >= sizeof name) {
        bk_copy(err, BK_ERR_MAX, "session cgroup name too long");
        return BK_CONTAIN_FAILED;
    }
    int root_fd = open_root(root, path, err);
    if (root_fd < 0)
        return BK_CONTAIN_FAILED;
    int fd = bk_open_dir_at(root_fd, name, 0755, err);
    close(root_fd);
    if (fd < 0)
        return BK_CONTAIN_FAILED;
    bool placed = write_pid(fd, pid, err);
    close(fd);
    if (!placed)
        return BK_CONTAIN_FAILED;
    bk_copy(rel, BK_CGROUP_REL_MAX, name);
    return BK_CONTAIN_OK;
}
