/* The node's decisions (docs/grants.md, "The PAM module"): which grants a user holds, who
 * passes sudo, sshd and the job launcher, and the session records and spool events. The
 * PAM entry points (pam_broker.c) and the grant checker (grant_check.c) are thin callers. */
#ifndef BK_NODE_H
#define BK_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bk_contract.h"

#define BK_BREAK_GLASS "break-glass"
#define BK_MAX_VALID 64
#define BK_MSG_MAX 640
/* Spooled events at which denials stop being spooled (sessions still are), and the share
 * of that one user's bucket may take: a deny event's tag starts with two hex digits of the
 * hash of the user it refused, so a user looping on sudo fills only their bucket (one of
 * 256) and other users' refusals are still spooled until the broker collects. */
#define BK_DENY_SPOOL_LIMIT 5000
#define BK_DENY_SPOOL_BUCKET_LIMIT 200

/* Why a node refused (the `reason` of a spooled deny event; docs/grants.md). */
enum bk_why {
    BK_WHY_NONE = 0,
    BK_WHY_NO_GRANT,
    BK_WHY_EXPIRED,
    BK_WHY_NOT_YET_VALID,
    BK_WHY_REVOKED,
    BK_WHY_BAD_SIGNATURE,
    BK_WHY_OTHER_NODE,
    BK_WHY_QUARANTINED,
    BK_WHY_MAX_SESSIONS,
    BK_WHY_BAD_FILE,
    BK_WHY_BAD_CONFIG,
    BK_WHY_NO_LOGIN,
    BK_WHY_WORKLOADS,
    BK_WHY_NO_USER,
    BK_WHY_UNCONTAINED,
};
const char *bk_why_code(enum bk_why why);

typedef bool (*bk_group_check)(const char *user, const char *group);

/* Where the node's files are and what time it is; `root` is "/" on a node. */
struct bk_ctx {
    const char *root;
    const char *proc; /* "/proc" */
    int64_t now;
    bk_group_check in_group;
};

struct bk_valid {
    char id[BK_GRANT_ID_LEN + 1];
    char runas[BK_NAME_MAX + 1];
    int64_t not_after;
    int max_sessions;
    bool login, workloads;
};

/* The user's valid grants on this node, or why there are none. */
struct bk_grants {
    size_t count;
    struct bk_valid valid[BK_MAX_VALID];
    enum bk_why why;            /* when count == 0 */
    char first_bad[BK_GRANT_ID_LEN + 1];
    int64_t first_bad_time;     /* expiry or start of the grant named in first_bad */
    char detail[BK_MSG_MAX];    /* "no valid grant for U on N[: name: problem; ...]" */
};

/* The grants a sudo was allowed under, and its session recorded under (by the account
 * check): session open records under the same ones without reading them all again. */
struct bk_granted {
    char ruser[BK_NAME_MAX + 1];
    size_t count;
    char ids[BK_MAX_VALID][BK_GRANT_ID_LEN + 1];
    char cgroup[64]; /* the session's cgroup below the node's root ("-": not contained) */
    bool break_glass; /* allowed as break-glass (count 0): recorded as break-glass at open */
};

struct bk_verdict {
    bool allow;
    bool break_glass;
    enum bk_why why;
    char log[BK_MSG_MAX]; /* the reason for syslog */
    char say[BK_MSG_MAX]; /* one line for the person (denies only) */
    struct bk_granted granted; /* allowed under grants: which (count 0 otherwise) */
};

/* The configuration every decision rests on: node.conf and the verification keys. */
struct bk_config {
    bool ok;
    struct bk_conf conf;
    struct bk_keys keys;
    char problem[BK_ERR_MAX];
};
void bk_load_config(const struct bk_ctx *ctx, struct bk_config *out);

/* Check a grant file's bytes against the node (the hook's rules): true when valid. The time
 * window's start is skipped with `any_start` (a grant may be installed before it starts). */
bool bk_check_grant(const struct bk_ctx *ctx, const struct bk_config *config, int revoked_fd,
                    const char *data, const struct bk_grant *grant, bool any_start,
                    enum bk_why *why, char err[BK_ERR_MAX]);
int bk_open_revoked(const struct bk_ctx *ctx, char err[BK_ERR_MAX]); /* -1 none, -2 untrusted */

void bk_user_grants(const struct bk_ctx *ctx, const struct bk_config *config, const char *user,
                    struct bk_grants *out);

/* The decisions; `pid` is the process that called PAM (sudo), `tty` may be NULL. */
void bk_decide_sudo(const struct bk_ctx *ctx, const char *ruser, const char *user,
                    const char *tty, pid_t pid, struct bk_verdict *out);
void bk_decide_sshd(const struct bk_ctx *ctx, const char *user, struct bk_verdict *out);
/* Any other service: the job launcher (named in node.conf, or `joblaunch` given to the
 * module in that service's PAM file) refuses root-grant holders; others pass. */
void bk_decide_other(const struct bk_ctx *ctx, const char *service, const char *user,
                     bool joblaunch, struct bk_verdict *out);

/* Sessions: records under sessions/<id>/<pid> and `open`/`close` events; never refuse.
 * `granted` (may be NULL): what this process's account check allowed it under; without it
 * the user's grants are read and checked again. Return a short note for the log. */
void bk_open_session(const struct bk_ctx *ctx, const char *service, const char *ruser,
                     const char *user, const char *tty, pid_t pid,
                     const struct bk_granted *granted, char note[BK_MSG_MAX]);
void bk_close_session(const struct bk_ctx *ctx, const char *service, const char *ruser,
                      const char *user, const char *tty, pid_t pid, char note[BK_MSG_MAX]);

/* One `deny` event per refused sudo process (deduplicated by pid and start time). */
void bk_spool_deny(const struct bk_ctx *ctx, const char *service, const char *ruser,
                   const char *user, const char *tty, pid_t pid, enum bk_why why);

#endif
