/* Session records, the max_sessions lock and the spool of session events. */
#include "bk_session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bk_cgroup.h"
#include "bk_crypto.h"
#include "bk_files.h"

/* Runtime state (FHS /run, tmpfs): records name running processes, none survives a boot,
 * and writing them never waits on a disk journal. */
#define SESSIONS_DIR "run/broker-sessions"
#define EVENTS_DIR "var/spool/broker/events"
#define LOCK_PREFIX ".lock-"
#define LOCK_TRIES 50
#define LOCK_PAUSE_NS 100000000L /* 50 x 100 ms: then refuse rather than hang sudo */

const char *bk_target_name(const char *user)
{
    return user != NULL && bk_is_posix_name(user, strlen(user)) ? user : "-";
}

const char *bk_record_name(const char *user)
{
    size_t n = user == NULL ? 0 : strnlen(user, 65);
    if (n == 0 || n > 64)
        return "-";
    for (size_t i = 0; i < n; i++) {
        char c = user[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '@'))
            return "-";
    }
    return user;
}

void bk_tty_name(const char *tty, char out[65])
{
    bk_copy(out, 65, "-");
    if (tty == NULL)
        return;
    if (strncmp(tty, "/dev/", 5) == 0)
        tty += 5;
    size_t n = strnlen(tty, 64);
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        char c = tty[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '.' || c == '_' || c == ':' || c == '-'))
            return;
    }
    memcpy(out, tty, n);
    out[n] = '\0';
}

static bool pid_alive(const struct bk_ctx *ctx, const char *pid)
{
    char path[96];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", ctx->proc, pid);
    return stat(path, &st) == 0;
}

static bool is_pid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++)
        if (name[i] < '0' || name[i] > '9')
            return false;
    return true;
}

/* ------------------------------------------------------------ json */

/* A JSON string of printable ASCII (anything else escaped) appended to `out`. */
static void json_string(char *out, size_t size, const char *text)
{
    char piece[8];
    bk_append(out, size, "\"");
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\' || *p < 0x20 || *p > 0x7e)
            snprintf(piece, sizeof piece, "\\u%04x", *p);
        else
            snprintf(piece, sizeof piece, "%c", *p);
        bk_append(out, size, piece);
    }
    bk_append(out, size, "\"");
}

static void json_field(char *out, size_t size, const char *key, const char *value, bool first)
{
    bk_append(out, size, first ? "{\"" : ", \"");
    bk_append(out, size, key);
    bk_append(out, size, "\": ");
    json_string(out, size, value);
}

bool bk_spool_event(const struct bk_ctx *ctx, const char *event_id, const char *kind,
                    const char *grant_id, const char *user, const char *runas,
                    const char *service, const char *tty, pid_t pid, const char *reason)
{
    char body[2048] = "", name[160], at[BK_UTC_LEN + 1], number[32], err[BK_ERR_MAX];
    bk_format_utc(ctx->now, at);
    json_field(body, sizeof body, "event_id", event_id, true);
    json_field(body, sizeof body, "kind", kind, false);
    json_field(body, sizeof body, "grant_id", grant_id, false);
    json_field(body, sizeof body, "user", user, false);
    json_field(body, sizeof body, "runas", runas, false);
    json_field(body, sizeof body, "service", service, false);
    json_field(body, sizeof body, "tty", tty, false);
    snprintf(number, sizeof number, ", \"pid\": %ld", (long)pid);
    bk_append(body, sizeof body, number);
    json_field(body, sizeof body, "at", at, false);
    if (reason != NULL)
        json_field(body, sizeof body, "reason", reason, false);
    if (!bk_append(body, sizeof body, "}\n"))
        return false;
    snprintf(name, sizeof name, "%s.json", event_id);
    int fd = bk_open_dir(ctx->root, EVENTS_DIR, 0700, err);
    if (fd < 0)
        return false;
    bool ok = bk_write_atomic(fd, name, body, strlen(body), 0600, true);
    close(fd);
    return ok;
}

static bool new_event_id(char out[96])
{
    char tag[9];
    struct timespec ts;
    if (!bk_random_hex(4, tag) || clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return false;
    snprintf(out, 96, "%lld%09ld-%ld-%s", (long long)ts.tv_sec, (long)ts.tv_nsec,
             (long)getpid(), tag);
    return true;
}

/* ------------------------------------------------------------ records */

static bool process_start(const struct bk_ctx *ctx, pid_t pid, char out[32]);

/* `user runas tty started ticks cgroup`: ticks is the recorded process's start time (clock
 * ticks since boot), "-" when /proc does not say; cgroup the session's cgroup below the
 * node's root ("-": not contained). */
static void record_text(const struct bk_ctx *ctx, const char *ruser, const char *user,
                        const char *tty, pid_t pid, const char *cgroup, char out[256])
{
    char at[BK_UTC_LEN + 1], tty_name[65], ticks[32];
    bk_format_utc(ctx->now, at);
    bk_tty_name(tty, tty_name);
    if (!process_start(ctx, pid, ticks))
        bk_copy(ticks, sizeof ticks, "-");
    snprintf(out, 256, "%s %s %s %s %s %s\n", bk_record_name(ruser), bk_target_name(user),
             tty_name, at, ticks, cgroup);
}

/* The grant whose session cgroup the process goes in: the one that ends first, so that
 * what a session leaves behind ends no later than any grant it ran under. */
static const char *first_to_end(const struct bk_grants *grants)
{
    size_t first = 0;
    for (size_t i = 1; i < grants->count; i++)
        if (grants->valid[i].not_after < grants->valid[first].not_after)
            first = i;
    return grants->valid[first].id;
}

static enum bk_contain contain(const struct bk_ctx *ctx, int sessions_fd, const char *key,
                               pid_t pid, char rel[BK_CGROUP_REL_MAX], char err[BK_ERR_MAX])
{
    char ticks[32];
    if (!process_start(ctx, pid, ticks))
        bk_copy(ticks, sizeof ticks, "-");
    return bk_contain(ctx->root, sessions_fd, key, pid, ticks, rel, err);
}

/* Write sessions/<key>/<pid>; true when it was written. Not fsynced: a record names a
 * running process, and after a crash no process it names runs (a stale record is removed
 * when next counted). Written at the account check (the slot) and again at session open,
 * where sudo has set PAM_USER to the target user. */
static bool write_record(int sessions_fd, const char *key, const char *text, pid_t pid)
{
    char err[BK_ERR_MAX], name[24];
    int fd = bk_open_dir_at(sessions_fd, key, 0700, err);
    if (fd < 0)
        return false;
    snprintf(name, sizeof name, "%ld", (long)pid);
    bool ok = bk_write_atomic(fd, name, text, strlen(text), 0600, false);
    close(fd);
    return ok;
}

/* A record of a running process counts only if that process is the one that wrote it: the
 * record ends with its process's start time (clock ticks since boot, /proc/<pid>/stat field
 * 22), and a process with another start time has only reused the pid. Ticks, not the wall
 * clock: a clock stepped by NTP changes neither side. */
static bool record_stale(const struct bk_ctx *ctx, int dir_fd, const char *name, long pid)
{
    char buf[256], err[BK_ERR_MAX], now_ticks[32];
    size_t len = 0;
    if (bk_read_at(dir_fd, name, 077, buf, sizeof buf - 1, &len, err) != BK_READ_OK || len < 2 ||
        buf[len - 1] != '\n')
        return false; /* unreadable: keep counting it (closed), revoke cleans up */
    buf[len - 1] = '\0';
    /* The fifth field; records written before containment end with it. */
    const char *ticks = buf;
    for (int field = 0; field < 4 && ticks != NULL; field++) {
        ticks = strchr(ticks, ' ');
        ticks = ticks != NULL ? ticks + 1 : NULL;
    }
    size_t n = ticks != NULL ? strcspn(ticks, " ") : 0;
    if (n == 0 || strspn(ticks, "0123456789") != n || !process_start(ctx, (pid_t)pid, now_ticks))
        return false; /* a record without ticks, or no start time to compare: counts */
    return strlen(now_ticks) != n || strncmp(ticks, now_ticks, n) != 0;
}

/* Live pids recorded under `key`, not counting `self`, into `*live`; records of dead (or
 * reused) pids are removed. Pids already seen under another grant are not counted twice.
 * False when the records could not be read: the caller refuses (closed). */
static bool count_live(const struct bk_ctx *ctx, int sessions_fd, const char *key, pid_t self,
                       long *seen, size_t *seen_count, size_t seen_max, size_t *live)
{
    char err[BK_ERR_MAX];
    int fd = bk_open_dir_at(sessions_fd, key, 0, err);
    int saved = errno;
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (dir == NULL) {
        if (fd >= 0)
            close(fd);
        return fd < 0 && saved == ENOENT; /* no records yet */
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!is_pid_name(entry->d_name))
            continue;
        long pid = strtol(entry->d_name, NULL, 10);
        if (!pid_alive(ctx, entry->d_name) || record_stale(ctx, dirfd(dir), entry->d_name, pid)) {
            unlinkat(dirfd(dir), entry->d_name, 0);
            continue;
        }
        bool counted = pid == (long)self;
        for (size_t i = 0; i < *seen_count && !counted; i++)
            counted = seen[i] == pid;
        if (counted)
            continue;
        if (*seen_count < seen_max)
            seen[(*seen_count)++] = pid;
        (*live)++;
    }
    closedir(dir);
    return true;
}

/* The user's own lock (max_sessions is per user): one user who stops a sudo while it holds
 * the lock delays only themself, and even then gives up after LOCK_TRIES. */
/* The first of `grants` that has a revocation marker now (or whose markers cannot be read). */
static const char *revoked_since(const struct bk_ctx *ctx, const struct bk_grants *grants)
{
    char err[BK_ERR_MAX];
    int fd = bk_open_revoked(ctx, err);
    const char *found = NULL;
    for (size_t i = 0; i < grants->count && found == NULL; i++)
        if (fd == -2 || (fd >= 0 && bk_exists_at(fd, grants->valid[i].id)))
            found = grants->valid[i].id;
    if (fd >= 0)
        close(fd);
    return found;
}

static void remove_record(int sessions_fd, const char *key, pid_t pid)
{
    char err[BK_ERR_MAX], name[24];
    int fd = bk_open_dir_at(sessions_fd, key, 0, err);
    if (fd < 0)
        return;
    snprintf(name, sizeof name, "%ld", (long)pid);
    unlinkat(fd, name, 0);
    close(fd);
}

static int lock_sessions(const struct bk_ctx *ctx, const char *ruser, int *sessions_fd)
{
    char err[BK_ERR_MAX], name[BK_NAME_MAX + 16];
    const struct timespec pause_ms = {0, LOCK_PAUSE_NS};
    *sessions_fd = bk_open_dir(ctx->root, SESSIONS_DIR, 0700, err);
    if (*sessions_fd < 0)
        return -1;
    snprintf(name, sizeof name, "%s%s", LOCK_PREFIX, ruser);
    int lock = openat(*sessions_fd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                      0600);
    struct stat st;
    bool ok = lock >= 0 && fstat(lock, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0;
    bool held = false;
    for (int i = 0; ok && !held && i < LOCK_TRIES; i++) {
        held = flock(lock, LOCK_EX | LOCK_NB) == 0;
        if (!held)
            nanosleep(&pause_ms, NULL);
    }
    if (!held) {
        if (lock >= 0)
            close(lock);
        close(*sessions_fd);
        *sessions_fd = -1;
        return -1;
    }
    return lock;
}

static void reserve_slot(const struct bk_ctx *ctx, int sessions_fd, const struct bk_grants *grants,
                         const char *ruser, const char *user, const char *tty, pid_t pid,
                         struct bk_verdict *out);

void bk_reserve_session(const struct bk_ctx *ctx, const struct bk_grants *grants,
                        const char *ruser, const char *user, const char *tty, pid_t pid,
                        struct bk_verdict *out)
{
    int sessions_fd = -1, limit = 0;
    long seen[BK_MAX_SESSIONS_LIMIT * 4];
    size_t seen_count = 0, open_now = 0;
    int lock = lock_sessions(ctx, ruser, &sessions_fd);
    bool counted = true;
    if (lock < 0) {
        out->why = BK_WHY_BAD_FILE;
        bk_copy(out->log, sizeof out->log, "session records cannot be locked or written");
        bk_copy(out->say, sizeof out->say,
                "broker: this node cannot record your session: refused (ask an operator)");
        return;
    }
    for (size_t i = 0; i < grants->count; i++) {
        if (grants->valid[i].max_sessions > limit)
            limit = grants->valid[i].max_sessions;
        counted = count_live(ctx, sessions_fd, grants->valid[i].id, pid, seen, &seen_count,
                             sizeof seen / sizeof seen[0], &open_now) &&
                  counted;
    }
    if (!counted) {
        out->why = BK_WHY_BAD_FILE;
        bk_copy(out->log, sizeof out->log, "open sessions could not be counted");
        bk_copy(out->say, sizeof out->say,
                "broker: this node cannot count your open sessions: refused (ask an operator)");
    } else if (open_now >= (size_t)limit) {
        out->why = BK_WHY_MAX_SESSIONS;
        snprintf(out->log, sizeof out->log,
                 "max_sessions reached: %zu open elevated sessions (limit %d)", open_now, limit);
        snprintf(out->say, sizeof out->say,
                 "broker: you already have %zu elevated session(s) open here (limit %d); close "
                 "one first",
                 open_now, limit);
    } else {
        reserve_slot(ctx, sessions_fd, grants, ruser, user, tty, pid, out);
    }
    flock(lock, LOCK_UN);
    close(lock);
    close(sessions_fd);
}

/* The slot is free: contain the process, record it under each grant, allow. */
static void reserve_slot(const struct bk_ctx *ctx, int sessions_fd, const struct bk_grants *grants,
                         const char *ruser, const char *user, const char *tty, pid_t pid,
                         struct bk_verdict *out)
{
    char text[256], rel[BK_CGROUP_REL_MAX], err[BK_ERR_MAX];
    if (contain(ctx, sessions_fd, first_to_end(grants), pid, rel, err) == BK_CONTAIN_FAILED) {
        out->why = BK_WHY_UNCONTAINED;
        snprintf(out->log, sizeof out->log, "session cannot be contained: %s", err);
        bk_copy(out->say, sizeof out->say,
                "broker: this node cannot contain your session (cgroup): refused (ask an "
                "operator)");
        return;
    }
    /* The slot is taken now, in the same lock: open_session finds the record there. */
    record_text(ctx, ruser, user, tty, pid, rel, text);
    bool written = true;
    for (size_t i = 0; i < grants->count; i++)
        written = write_record(sessions_fd, grants->valid[i].id, text, pid) && written;
    /* A revoke may have run between the grant check and the record: it writes its
     * marker before it lists records, so one of the two always sees the other. */
    const char *revoked = written ? revoked_since(ctx, grants) : NULL;
    if (revoked != NULL) {
        for (size_t i = 0; i < grants->count; i++)
            remove_record(sessions_fd, grants->valid[i].id, pid);
        out->why = BK_WHY_REVOKED;
        snprintf(out->log, sizeof out->log, "grant %s revoked while checking", revoked);
        snprintf(out->say, sizeof out->say, "broker: your grant %s was revoked just now",
                 revoked);
    } else if (written) {
        out->allow = true;
        bk_copy(out->granted.ruser, sizeof out->granted.ruser, ruser);
        out->granted.count = grants->count;
        bk_copy(out->granted.cgroup, sizeof out->granted.cgroup, rel);
        for (size_t i = 0; i < grants->count; i++)
            bk_copy(out->granted.ids[i], sizeof out->granted.ids[i], grants->valid[i].id);
        out->why = BK_WHY_NONE;
        snprintf(out->log, sizeof out->log, "grant %s", grants->valid[0].id);
        out->say[0] = '\0';
    } else {
        out->why = BK_WHY_BAD_FILE;
        bk_copy(out->log, sizeof out->log, "session record could not be written");
        bk_copy(out->say, sizeof out->say,
                "broker: this node cannot record your session: refused (ask an operator)");
    }
}

/* ------------------------------------------------------------ open and close */

static void record_and_spool(const struct bk_ctx *ctx, int sessions_fd, const char *key,
                             const char *service, const char *ruser, const char *user,
                             const char *tty, pid_t pid, const char *text)
{
    char event_id[96], tty_name[65];
    bk_tty_name(tty, tty_name);
    write_record(sessions_fd, key, text, pid);
    if (new_event_id(event_id))
        bk_spool_event(ctx, event_id, "open", key, bk_record_name(ruser), bk_target_name(user),
                       service, tty_name, pid, NULL);
}

/* Record and spool under the grants the account check allowed this process under. */
static bool open_granted(const struct bk_ctx *ctx, const char *service, const char *ruser,
                         const char *user, const char *tty, pid_t pid,
                         const struct bk_granted *granted, char note[BK_MSG_MAX])
{
    char text[256], err[BK_ERR_MAX];
    if (granted == NULL || granted->count == 0 || strcmp(granted->ruser, ruser) != 0)
        return false;
    int sessions_fd = bk_open_dir(ctx->root, SESSIONS_DIR, 0700, err);
    if (sessions_fd < 0)
        return false;
    record_text(ctx, ruser, user, tty, pid, granted->cgroup, text);
    for (size_t i = 0; i < granted->count; i++)
        record_and_spool(ctx, sessions_fd, granted->ids[i], service, ruser, user, tty, pid, text);
    close(sessions_fd);
    snprintf(note, BK_MSG_MAX, "session %s/%ld recorded", granted->ids[0], (long)pid);
    return true;
}

void bk_open_session(const struct bk_ctx *ctx, const char *service, const char *ruser,
                     const char *user, const char *tty, pid_t pid,
                     const struct bk_granted *granted, char note[BK_MSG_MAX])
{
    struct bk_config config;
    char text[256], err[BK_ERR_MAX], rel[BK_CGROUP_REL_MAX] = "-";
    bk_copy(note, BK_MSG_MAX, "no grant: session not recorded");
    if (ruser[0] == '\0' || strcmp(ruser, "root") == 0)
        return;
    if (open_granted(ctx, service, ruser, user, tty, pid, granted, note))
        return;
    /* The account check let it through as break-glass (a grant it holds could not take the
     * session): a break-glass session, not one of that grant's. */
    bool as_glass = granted != NULL && granted->break_glass && strcmp(granted->ruser, ruser) == 0;
    bk_load_config(ctx, &config);
    if (!config.ok)
        return;
    struct bk_grants *grants = malloc(sizeof *grants);
    if (grants == NULL)
        return;
    bk_user_grants(ctx, &config, ruser, grants);
    int sessions_fd = bk_open_dir(ctx->root, SESSIONS_DIR, 0700, err);
    if (sessions_fd >= 0 && grants->count > 0 && !as_glass) {
        /* The account check contained it already (same name): this only finds the name. */
        contain(ctx, sessions_fd, first_to_end(grants), pid, rel, err);
        record_text(ctx, ruser, user, tty, pid, rel, text);
        /* Which grant sudo matched is not known here: the session belongs to each of them,
         * so revoking any one of them ends it. */
        for (size_t i = 0; i < grants->count; i++)
            record_and_spool(ctx, sessions_fd, grants->valid[i].id, service, ruser, user, tty,
                             pid, text);
        snprintf(note, BK_MSG_MAX, "session %s/%ld recorded", grants->valid[0].id, (long)pid);
    } else if (sessions_fd >= 0 &&
               (as_glass || (config.conf.break_glass_group[0] != '\0' &&
                             ctx->in_group(ruser, config.conf.break_glass_group)))) {
        /* Break-glass is for when things are broken: contained when possible, never refused. */
        contain(ctx, sessions_fd, BK_BREAK_GLASS, pid, rel, err);
        record_text(ctx, ruser, user, tty, pid, rel, text);
        record_and_spool(ctx, sessions_fd, BK_BREAK_GLASS, service, ruser, user, tty, pid, text);
        snprintf(note, BK_MSG_MAX, "break-glass session %ld recorded", (long)pid);
    }
    if (sessions_fd >= 0)
        close(sessions_fd);
    free(grants);
}

static bool is_session_key(const char *name)
{
    return bk_is_grant_id(name, strlen(name)) || strcmp(name, BK_BREAK_GLASS) == 0;
}

void bk_close_session(const struct bk_ctx *ctx, const char *service, const char *ruser,
                      const char *user, const char *tty, pid_t pid, char note[BK_MSG_MAX])
{
    char err[BK_ERR_MAX], name[24], event_id[96], tty_name[65];
    size_t closed = 0;
    bk_copy(note, BK_MSG_MAX, "no session record");
    int sessions_fd = bk_open_dir(ctx->root, SESSIONS_DIR, 0, err);
    DIR *dir = sessions_fd >= 0 ? fdopendir(sessions_fd) : NULL;
    if (dir == NULL) {
        if (sessions_fd >= 0)
            close(sessions_fd);
        return;
    }
    snprintf(name, sizeof name, "%ld", (long)pid);
    bk_tty_name(tty, tty_name);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!is_session_key(entry->d_name))
            continue;
        int fd = bk_open_dir_at(dirfd(dir), entry->d_name, 0, err);
        if (fd < 0)
            continue;
        if (unlinkat(fd, name, 0) == 0) {
            closed++;
            if (new_event_id(event_id))
                bk_spool_event(ctx, event_id, "close", entry->d_name,
                               bk_record_name(ruser), bk_target_name(user), service, tty_name,
                               pid, NULL);
        }
        close(fd);
    }
    closedir(dir);
    if (closed > 0)
        snprintf(note, BK_MSG_MAX, "%zu session record(s) of %ld closed", closed, (long)pid);
}

/* ------------------------------------------------------------ deny events */

/* The start time of `pid` (field 22 of /proc/<pid>/stat), or false. */
static bool process_start(const struct bk_ctx *ctx, pid_t pid, char out[32])
{
    char path[96], buf[1024];
    snprintf(path, sizeof path, "%s/%ld/stat", ctx->proc, (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0)
        return false;
    buf[got] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL)
        return false;
    /* `p` is at ')'; each hop lands on the space before the next field: 20 hops reach the
     * one before field 22 (starttime) */
    for (int field = 3; field <= 22; field++) {
        p = strchr(p + 1, ' ');
        if (p == NULL)
            return false;
    }
    size_t n = strspn(p + 1, "0123456789");
    if (n == 0 || n >= 32)
        return false;
    memcpy(out, p + 1, n);
    out[n] = '\0';
    return true;
}

/* Whether an event ending in `suffix` is spooled, how many events are, and how many of
 * them carry the tag prefix `bucket` (two hex digits: one user's share, see bk_node.h). */
static bool already_spooled(int events_fd, const char *suffix, const char *bucket,
                            size_t *count, size_t *in_bucket)
{
    int fd = fcntl(events_fd, F_DUPFD_CLOEXEC, 0);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    bool found = false;
    size_t suffix_len = strlen(suffix);
    /* "<tag>.json": the tag is the last 8 hex digits before the extension */
    const size_t tag_tail = 8 + sizeof ".json" - 1;
    *count = 0;
    *in_bucket = 0;
    if (dir == NULL) {
        if (fd >= 0)
            close(fd);
        return false;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        size_t n = strlen(entry->d_name);
        if (entry->d_name[0] == '.')
            continue;
        (*count)++;
        if (n > tag_tail && memcmp(entry->d_name + n - tag_tail, bucket, 2) == 0)
            (*in_bucket)++;
        if (n >= suffix_len && strcmp(entry->d_name + n - suffix_len, suffix) == 0)
            found = true;
    }
    closedir(dir);
    return found;
}

void bk_spool_deny(const struct bk_ctx *ctx, const char *service, const char *ruser,
                   const char *user, const char *tty, pid_t pid, enum bk_why why)
{
    char err[BK_ERR_MAX], start[32], seed[128], bucket[3], rest[7], tag[9], suffix[64];
    char event_id[96], tty_name[65];
    size_t count = 0, in_bucket = 0;
    struct timespec ts;
    /* No spool directory: not bootstrapped, nothing would collect it. */
    int events_fd = bk_open_dir(ctx->root, EVENTS_DIR, 0, err);
    if (events_fd < 0)
        return;
    /* The user's bucket: the first byte of the hash of the (checked, bounded) name refused;
     * names that are not valid user names all share the bucket of "-". */
    const char *who = bk_record_name(ruser);
    if (!bk_sha256_hex(who, strlen(who), 1, bucket)) {
        close(events_fd);
        return;
    }
    bool named = process_start(ctx, pid, start);
    if (named)
        snprintf(seed, sizeof seed, "deny %ld %s %s", (long)pid, start, ruser);
    if (named ? !bk_sha256_hex(seed, strlen(seed), 3, rest) : !bk_random_hex(3, rest)) {
        close(events_fd);
        return;
    }
    snprintf(tag, sizeof tag, "%s%s", bucket, rest);
    snprintf(suffix, sizeof suffix, "-%ld-%s.json", (long)pid, tag);
    bool seen = already_spooled(events_fd, suffix, bucket, &count, &in_bucket);
    close(events_fd);
    /* One event per sudo process; a user looping on sudo must not crowd out sessions (the
     * total limit) nor other users' refusals (their bucket's limit). */
    if (seen || count >= BK_DENY_SPOOL_LIMIT || in_bucket >= BK_DENY_SPOOL_BUCKET_LIMIT ||
        clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return;
    snprintf(event_id, sizeof event_id, "%lld%09ld-%ld-%s", (long long)ts.tv_sec,
             (long)ts.tv_nsec, (long)pid, tag);
    bk_tty_name(tty, tty_name);
    bk_spool_event(ctx, event_id, "deny", "-", bk_record_name(ruser), bk_target_name(user),
                   service, tty_name, pid, bk_why_code(why));
}
