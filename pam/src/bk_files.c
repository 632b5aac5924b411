/* fd-based file access: nothing here follows a symbolic link or trusts a path twice. */
#include "bk_files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bk_crypto.h"

#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

static bool trusted_dir(int fd, const char *what, char err[BK_ERR_MAX])
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, BK_ERR_MAX, "%s: not a directory", what);
        return false;
    }
    if (st.st_uid != 0 || (st.st_mode & 022) != 0) {
        snprintf(err, BK_ERR_MAX, "%s: directory not root-owned or writable by others", what);
        return false;
    }
    return true;
}

static int open_component(int base, const char *name, mode_t create_mode, char err[BK_ERR_MAX])
{
    int fd = openat(base, name, DIR_FLAGS);
    if (fd < 0 && errno == ENOENT && create_mode != 0) {
        if (mkdirat(base, name, create_mode) != 0 && errno != EEXIST) {
            snprintf(err, BK_ERR_MAX, "%s: cannot create (%m)", name);
            return -1;
        }
        fd = openat(base, name, DIR_FLAGS);
        if (fd >= 0 && fchmod(fd, create_mode) != 0) { /* the umask must not decide */
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        int saved = errno;
        if (saved == ENOENT)
            snprintf(err, BK_ERR_MAX, "%s is missing", name);
        else if (saved == ELOOP || saved == ENOTDIR)
            snprintf(err, BK_ERR_MAX, "%s: not a directory (or a symlink)", name);
        else
            snprintf(err, BK_ERR_MAX, "%s: cannot open (%m)", name);
        errno = saved;
        return -1;
    }
    if (!trusted_dir(fd, name, err)) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

int bk_open_dir_at(int base, const char *rel, mode_t create_mode, char err[BK_ERR_MAX])
{
    char part[256];
    int fd = fcntl(base, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, BK_ERR_MAX, "cannot duplicate a directory fd (%m)");
        return -1;
    }
    const char *p = rel;
    while (*p != '\0') {
        while (*p == '/')
            p++;
        size_t n = strcspn(p, "/");
        if (n == 0)
            break;
        if (n >= sizeof part || (n == 2 && p[0] == '.' && p[1] == '.')) {
            snprintf(err, BK_ERR_MAX, "bad path component");
            close(fd);
            errno = EINVAL;
            return -1;
        }
        memcpy(part, p, n);
        part[n] = '\0';
        int next = open_component(fd, part, create_mode, err);
        int saved = errno;
        close(fd);
        if (next < 0) {
            errno = saved;
            return -1;
        }
        fd = next;
        p += n;
    }
    return fd;
}

int bk_open_dir(const char *root, const char *rel, mode_t create_mode, char err[BK_ERR_MAX])
{
    int base = open(root, DIR_FLAGS);
    if (base < 0) {
        int saved = errno;
        snprintf(err, BK_ERR_MAX, "%s: cannot open (%m)", root);
        errno = saved;
        return -1;
    }
    if (!trusted_dir(base, root, err)) {
        close(base);
        errno = EPERM;
        return -1;
    }
    int fd = bk_open_dir_at(base, rel, create_mode, err);
    int saved = errno;
    close(base);
    errno = saved;
    return fd;
}

static enum bk_read check_file(int fd, mode_t forbidden, char err[BK_ERR_MAX])
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, BK_ERR_MAX, "cannot stat (%m)");
        return BK_READ_BAD;
    }
    if (!S_ISREG(st.st_mode)) {
        bk_copy(err, BK_ERR_MAX, "not a regular file");
        return BK_READ_BAD;
    }
    if (st.st_uid != 0) {
        snprintf(err, BK_ERR_MAX, "owned by uid %lu, not root", (unsigned long)st.st_uid);
        return BK_READ_BAD;
    }
    if ((st.st_mode & forbidden) != 0) {
        snprintf(err, BK_ERR_MAX, "mode %04o is too open", (unsigned)(st.st_mode & 07777));
        return BK_READ_BAD;
    }
    if (st.st_nlink != 1) {
        snprintf(err, BK_ERR_MAX, "%lu hard links", (unsigned long)st.st_nlink);
        return BK_READ_BAD;
    }
    return BK_READ_OK;
}

enum bk_read bk_read_at(int dir_fd, const char *name, mode_t forbidden, char *buf, size_t limit,
                        size_t *len, char err[BK_ERR_MAX])
{
    int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    *len = 0;
    if (fd < 0) {
        if (errno == ENOENT) {
            bk_copy(err, BK_ERR_MAX, "missing");
            return BK_READ_MISSING;
        }
        if (errno == ELOOP)
            bk_copy(err, BK_ERR_MAX, "a symlink");
        else
            snprintf(err, BK_ERR_MAX, "cannot open (%m)");
        return BK_READ_BAD;
    }
    enum bk_read result = check_file(fd, forbidden, err);
    size_t size = 0;
    while (result == BK_READ_OK && size <= limit) {
        ssize_t got = read(fd, buf + size, limit + 1 - size);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            snprintf(err, BK_ERR_MAX, "cannot read (%m)");
            result = BK_READ_BAD;
        } else if (got == 0) {
            break;
        } else {
            size += (size_t)got;
        }
    }
    if (result == BK_READ_OK && size > limit) {
        snprintf(err, BK_ERR_MAX, "larger than %zu bytes", limit);
        result = BK_READ_BAD;
    }
    close(fd);
    *len = result == BK_READ_OK ? size : 0;
    return result;
}

static bool write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t put = write(fd, data, len);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return false;
        data += put;
        len -= (size_t)put;
    }
    return true;
}

bool bk_write_atomic(int dir_fd, const char *name, const char *data, size_t len, mode_t mode,
                     bool durable)
{
    char tag[9], temp[256];
    if (!bk_random_hex(4, tag))
        return false;
    int n = snprintf(temp, sizeof temp, "%s%s.%s", BK_TMP_PREFIX, name, tag);
    if (n < 0 || (size_t)n >= sizeof temp)
        return false;
    int fd = openat(dir_fd, temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return false;
    bool ok = fchmod(fd, mode) == 0 && write_all(fd, data, len) && (!durable || fsync(fd) == 0);
    ok = close(fd) == 0 && ok;
    ok = ok && renameat(dir_fd, temp, dir_fd, name) == 0;
    if (!ok) {
        int saved = errno;
        unlinkat(dir_fd, temp, 0);
        errno = saved;
        return false;
    }
    return !durable || fsync(dir_fd) == 0;
}

bool bk_exists_at(int dir_fd, const char *name)
{
    struct stat st;
    /* Anything but "no such file" counts as present: a marker we cannot look at is not
     * proof of its absence. */
    return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT;
}
