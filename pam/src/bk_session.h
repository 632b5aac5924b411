/* Session records (`sessions/<id>/<pid>`) and spool events (`events/<id>.json`). */
#ifndef BK_SESSION_H
#define BK_SESSION_H

#include "bk_node.h"

/* Under the sessions lock: count the user's live elevated sessions (other processes than
 * `pid`) over `grants`, and when a slot is free record `pid` under each grant and allow.
 * So two sudo racing for the last slot cannot both pass (docs/grants.md). */
void bk_reserve_session(const struct bk_ctx *ctx, const struct bk_grants *grants,
                        const char *ruser, const char *user, const char *tty, pid_t pid,
                        struct bk_verdict *out);

/* A name fit for the records: a POSIX name, or "-". */
const char *bk_target_name(const char *user);
/* The invoking user as records show it: a directory name (letters, digits, . _ - @, at most
 * 64) as it is, anything else "-". */
const char *bk_record_name(const char *user);
/* PAM_TTY without /dev/, when it is made of safe characters; else "-". */
void bk_tty_name(const char *tty, char out[65]);

/* Write one event file; false when it could not be written. */
bool bk_spool_event(const struct bk_ctx *ctx, const char *event_id, const char *kind,
                    const char *grant_id, const char *user, const char *runas,
                    const char *service, const char *tty, pid_t pid, const char *reason);

#endif
