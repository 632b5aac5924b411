/* Which grants a user holds on this node, and the sudo / sshd / job-launch decisions. */
#include "bk_node.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bk_files.h"
#include "bk_session.h"

#define ETC_BROKER "etc/broker"
#define GRANTS_DIR "var/lib/broker/grants"
#define REVOKED_DIR "var/lib/broker/revoked"
#define ASK "request one: broker elevate %s --for 30m --reason \"...\""

const char *bk_why_code(enum bk_why why)
{
    switch (why) {
    case BK_WHY_NONE: return "none";
    case BK_WHY_NO_GRANT: return "no_grant";
    case BK_WHY_EXPIRED: return "expired";
    case BK_WHY_NOT_YET_VALID: return "not_yet_valid";
    case BK_WHY_REVOKED: return "revoked";
    case BK_WHY_BAD_SIGNATURE: return "bad_signature";
    case BK_WHY_OTHER_NODE: return "other_node";
    case BK_WHY_QUARANTINED: return "quarantined";
    case BK_WHY_MAX_SESSIONS: return "max_sessions";
    case BK_WHY_BAD_FILE: return "bad_file";
    case BK_WHY_BAD_CONFIG: return "bad_config";
    case BK_WHY_NO_LOGIN: return "no_login";
    case BK_WHY_WORKLOADS: return "workloads";
    case BK_WHY_NO_USER: return "no_user";
    case BK_WHY_UNCONTAINED: return "uncontained";
    }
    return "unknown";
}

/* ------------------------------------------------------------ configuration */

static bool read_config_file(int dir_fd, const char *name, size_t limit, char *buf, size_t *len,
                             char problem[BK_ERR_MAX])
{
    char err[BK_ERR_MAX];
    if (bk_read_at(dir_fd, name, 022, buf, limit, len, err) != BK_READ_OK) {
        snprintf(problem, BK_ERR_MAX, "%s: %s", name, err);
        return false;
    }
    return true;
}

void bk_load_config(const struct bk_ctx *ctx, struct bk_config *out)
{
    char buf[BK_MAX_FILE + 1], err[BK_ERR_MAX];
    size_t len = 0;
    memset(out, 0, sizeof *out);
    int fd = bk_open_dir(ctx->root, ETC_BROKER, 0, err);
    if (fd < 0) {
        snprintf(out->problem, BK_ERR_MAX, "node.conf: %s", err);
        return;
    }
    if (!read_config_file(fd, "node.conf", BK_MAX_FILE, buf, &len, out->problem) ||
        !bk_parse_conf(buf, len, &out->conf, out->problem)) {
        close(fd);
        return;
    }
    /* one line past the most allowed, so a ninth key is refused as that, not as a size */
    if (!read_config_file(fd, "grant-key.pub", BK_KEYS_FILE_MAX + BK_KEY_LINE_LEN, buf, &len,
                          out->problem)) {
        close(fd);
        return;
    }
    close(fd);
    if (!bk_parse_keys(buf, len, &out->keys, err)) {
        snprintf(out->problem, BK_ERR_MAX, "grant-key.pub: %s", err);
        return;
    }
    out->ok = true;
}

/* ------------------------------------------------------------ one grant */

int bk_open_revoked(const struct bk_ctx *ctx, char err[BK_ERR_MAX])
{
    int fd = bk_open_dir(ctx->root, REVOKED_DIR, 0, err);
    if (fd >= 0)
        return fd;
    return errno == ENOENT ? -1 : -2;
}

bool bk_check_grant(const struct bk_ctx *ctx, const struct bk_config *config, int revoked_fd,
                    const char *data, const struct bk_grant *grant, bool any_start,
                    enum bk_why *why, char err[BK_ERR_MAX])
{
    char when[BK_UTC_LEN + 1];
    if (strcmp(grant->node, config->conf.node) != 0) {
        *why = BK_WHY_OTHER_NODE;
        snprintf(err, BK_ERR_MAX, "for node %s, this is %s", grant->node, config->conf.node);
        return false;
    }
    if (!any_start && ctx->now < grant->not_before) {
        *why = BK_WHY_NOT_YET_VALID;
        bk_format_utc(grant->not_before, when);
        snprintf(err, BK_ERR_MAX, "not valid before %s", when);
        return false;
    }
    if (ctx->now >= grant->not_after) {
        *why = BK_WHY_EXPIRED;
        bk_format_utc(grant->not_after, when);
        snprintf(err, BK_ERR_MAX, "expired at %s", when);
        return false;
    }
    if (revoked_fd == -2 || (revoked_fd >= 0 && bk_exists_at(revoked_fd, grant->id))) {
        *why = BK_WHY_REVOKED;
        bk_copy(err, BK_ERR_MAX, revoked_fd == -2 ? "revocation markers cannot be trusted"
                                                  : "revoked");
        return false;
    }
    if (!bk_grant_signed_by_any(grant, data, &config->keys, err)) {
        *why = BK_WHY_BAD_SIGNATURE;
        return false;
    }
    *why = BK_WHY_NONE;
    return true;
}

/* ------------------------------------------------------------ the user's grants */

/* Security-relevant reasons first: they are what an operator must see. */
static int rank(enum bk_why why)
{
    switch (why) {
    case BK_WHY_REVOKED: return 6;
    case BK_WHY_BAD_SIGNATURE: return 5;
    case BK_WHY_OTHER_NODE: return 4;
    case BK_WHY_EXPIRED: return 3;
    case BK_WHY_NOT_YET_VALID: return 2;
    case BK_WHY_BAD_FILE: return 1;
    default: return 0;
    }
}

struct scan {
    struct bk_grants *out;
    size_t problems;
    char listed[BK_MSG_MAX];
};

static void note_problem(struct scan *s, const char *name, const char *problem, enum bk_why why,
                         const struct bk_grant *grant)
{
    char line[BK_MSG_MAX], label[48];
    bk_clean(name, strlen(name), label, sizeof label);
    if (rank(why) > rank(s->out->why)) {
        s->out->why = why;
        bk_copy(s->out->first_bad, sizeof s->out->first_bad, grant ? grant->id : "");
        s->out->first_bad_time = !grant ? 0
                                 : why == BK_WHY_NOT_YET_VALID ? grant->not_before
                                                               : grant->not_after;
    }
    if (s->problems++ < 3) {
        snprintf(line, sizeof line, "%s%s: %s", s->problems > 1 ? "; " : "", label, problem);
        bk_append(s->listed, sizeof s->listed, line);
    }
}

static void keep_valid(struct bk_grants *out, const struct bk_grant *g)
{
    if (out->count >= BK_MAX_VALID)
        return; /* more than enough to decide: the rest changes nothing */
    struct bk_valid *v = &out->valid[out->count++];
    bk_copy(v->id, sizeof v->id, g->id);
    bk_copy(v->runas, sizeof v->runas, g->runas);
    v->not_after = g->not_after;
    v->max_sessions = g->max_sessions;
    v->login = g->login;
    v->workloads = g->workloads;
}

static void scan_one(const struct bk_ctx *ctx, const struct bk_config *config, int dir_fd,
                     int revoked_fd, const char *name, const char *user, struct scan *s)
{
    char buf[BK_MAX_FILE + 1], err[BK_ERR_MAX];
    size_t len = 0;
    struct bk_grant grant;
    enum bk_why why = BK_WHY_NONE;
    if (!bk_is_grant_id(name, strlen(name))) {
        note_problem(s, name, "not a grant id", BK_WHY_BAD_FILE, NULL);
        return;
    }
    if (bk_read_at(dir_fd, name, 077, buf, BK_MAX_FILE, &len, err) != BK_READ_OK ||
        !bk_parse_grant(buf, len, &grant, err)) {
        note_problem(s, name, err, BK_WHY_BAD_FILE, NULL);
        return;
    }
    if (strcmp(grant.id, name) != 0) {
        snprintf(err, sizeof err, "holds grant %s", grant.id);
        note_problem(s, name, err, BK_WHY_BAD_FILE, NULL);
        return;
    }
    if (strcmp(grant.user, user) != 0)
        return;
    if (bk_check_grant(ctx, config, revoked_fd, buf, &grant, false, &why, err))
        keep_valid(s->out, &grant);
    else
        note_problem(s, name, err, why, &grant);
}

void bk_user_grants(const struct bk_ctx *ctx, const struct bk_config *config, const char *user,
                    struct bk_grants *out)
{
    char err[BK_ERR_MAX], who[BK_NAME_MAX + 8];
    struct scan s = {out, 0, ""};
    memset(out, 0, sizeof *out);
    out->why = BK_WHY_NO_GRANT;
    bk_clean(user, strlen(user), who, sizeof who);
    int dir_fd = bk_is_posix_name(user, strlen(user)) ? bk_open_dir(ctx->root, GRANTS_DIR, 0, err)
                                                      : -1;
    DIR *dir = dir_fd >= 0 ? fdopendir(dir_fd) : NULL;
    if (dir_fd >= 0 && dir == NULL)
        close(dir_fd);
    if (dir != NULL) {
        int revoked_fd = bk_open_revoked(ctx, err);
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL) {
            const char *name = entry->d_name;
            if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
                strncmp(name, BK_TMP_PREFIX, strlen(BK_TMP_PREFIX)) == 0)
                continue;
            scan_one(ctx, config, dirfd(dir), revoked_fd, name, user, &s);
        }
        if (revoked_fd >= 0)
            close(revoked_fd);
        closedir(dir);
    }
    if (out->count > 0) {
        out->why = BK_WHY_NONE;
        return;
    }
    snprintf(out->detail, sizeof out->detail, "no valid grant for %s on %s%s%s", who,
             config->conf.node, s.problems ? ": " : "", s.listed);
    if (s.problems > 3) {
        char more[32];
        snprintf(more, sizeof more, " (+%zu more)", s.problems - 3);
        bk_append(out->detail, sizeof out->detail, more);
    }
}

/* ------------------------------------------------------------ quarantine */

/* True when a quarantine keeps `user` (not root) out; `out` then holds the refusal. */
static bool quarantined(const struct bk_ctx *ctx, const char *user, struct bk_verdict *out)
{
    char buf[BK_MAX_FILE + 1], err[BK_ERR_MAX], since[BK_UTC_LEN + 1], reason[220];
    size_t len = 0;
    struct bk_quarantine marker;
    int fd = bk_open_dir(ctx->root, ETC_BROKER, 0, err);
    enum bk_read got = fd < 0 ? BK_READ_BAD : bk_read_at(fd, "quarantine", 022, buf, BK_MAX_FILE,
                                                        &len, err);
    if (fd >= 0)
        close(fd);
    if (got == BK_READ_MISSING)
        return false;
    out->why = BK_WHY_QUARANTINED;
    if (got != BK_READ_OK || !bk_parse_quarantine(buf, len, &marker, err)) {
        snprintf(out->log, sizeof out->log,
                 "node quarantined (quarantine marker: %s): only root may pass", err);
        bk_copy(out->say, sizeof out->say,
                "broker: this node is quarantined (its marker cannot be read): only root may pass");
        return true;
    }
    if (marker.group[0] != '\0' && ctx->in_group(user, marker.group))
        return false;
    bk_format_utc(marker.since, since);
    bk_clean(marker.reason, strlen(marker.reason), reason, sizeof reason);
    snprintf(out->log, sizeof out->log, "node quarantined since %s: %s", since, reason);
    snprintf(out->say, sizeof out->say,
             "broker: %s is quarantined since %s; only incident response may elevate",
             marker.node, since);
    return true;
}

/* ------------------------------------------------------------ decisions */

static void deny_config(const struct bk_config *config, struct bk_verdict *out)
{
    out->why = BK_WHY_BAD_CONFIG;
    bk_copy(out->log, sizeof out->log, config->problem);
    snprintf(out->say, sizeof out->say,
             "broker: this node's broker configuration is broken (%s): only root may pass; an "
             "operator can repair it with: broker node bootstrap NODE",
             config->problem);
}

static void say_no_grant(const struct bk_config *config, const struct bk_grants *grants,
                         const char *user, struct bk_verdict *out)
{
    char when[BK_UTC_LEN + 1], ask[160], who[BK_NAME_MAX + 8];
    const char *node = config->conf.node;
    bk_clean(user, strlen(user), who, sizeof who);
    snprintf(ask, sizeof ask, ASK, node);
    bk_format_utc(grants->first_bad_time, when);
    out->why = grants->why;
    bk_copy(out->log, sizeof out->log, grants->detail);
    switch (grants->why) {
    case BK_WHY_EXPIRED:
        snprintf(out->say, sizeof out->say, "broker: your grant %s on %s expired at %s (%s)",
                 grants->first_bad, node, when, ask);
        break;
    case BK_WHY_NOT_YET_VALID:
        snprintf(out->say, sizeof out->say, "broker: your grant %s on %s is not valid before %s",
                 grants->first_bad, node, when);
        break;
    case BK_WHY_REVOKED:
        snprintf(out->say, sizeof out->say, "broker: your grant %s on %s was revoked (%s)",
                 grants->first_bad, node, ask);
        break;
    case BK_WHY_BAD_SIGNATURE:
    case BK_WHY_OTHER_NODE:
    case BK_WHY_BAD_FILE:
        snprintf(out->say, sizeof out->say,
                 "broker: no grant for %s on %s can be trusted (%s); an operator can check it "
                 "with: broker node status %s",
                 who, node, bk_why_code(grants->why), node);
        break;
    default:
        snprintf(out->say, sizeof out->say, "broker: no active grant for %s on %s (%s)", who,
                 node, ask);
    }
}

static bool break_glass(const struct bk_ctx *ctx, const struct bk_config *config,
                        const char *user, struct bk_verdict *out)
{
    const char *group = config->conf.break_glass_group;
    if (group[0] == '\0' || user[0] == '\0' || !ctx->in_group(user, group))
        return false;
    out->allow = true;
    out->break_glass = true;
    out->why = BK_WHY_NONE;
    /* Not under a grant, even when the user holds one the session could not use: the session
     * open records it as break-glass. */
    memset(&out->granted, 0, sizeof out->granted);
    out->granted.break_glass = bk_copy(out->granted.ruser, sizeof out->granted.ruser, user);
    char who[BK_NAME_MAX + 8];
    bk_clean(user, strlen(user), who, sizeof who);
    snprintf(out->log, sizeof out->log, "break-glass: %s is in %s", who, group);
    out->say[0] = '\0';
    return true;
}

static void allow(struct bk_verdict *out, const char *why)
{
    out->allow = true;
    out->why = BK_WHY_NONE;
    bk_copy(out->log, sizeof out->log, why);
    out->say[0] = '\0';
}

void bk_decide_sudo(const struct bk_ctx *ctx, const char *ruser, const char *user,
                    const char *tty, pid_t pid, struct bk_verdict *out)
{
    struct bk_config config;
    struct bk_grants *grants;
    memset(out, 0, sizeof *out);
    if (strcmp(ruser, "root") == 0) {
        allow(out, "root");
        return;
    }
    if (ruser[0] == '\0') {
        /* A name that is not a POSIX name holds no grant, but may be in break-glass. */
        out->why = BK_WHY_NO_USER;
        bk_copy(out->log, sizeof out->log, "no PAM_RUSER: the invoking user is unknown");
        bk_copy(out->say, sizeof out->say, "broker: sudo did not say who is asking: refused");
        return;
    }
    if (quarantined(ctx, ruser, out))
        return;
    bk_load_config(ctx, &config);
    if (!config.ok) {
        deny_config(&config, out);
        return;
    }
    grants = malloc(sizeof *grants);
    if (grants == NULL) {
        bk_copy(out->log, sizeof out->log, "out of memory");
        return;
    }
    bk_user_grants(ctx, &config, ruser, grants);
    if (grants->count > 0) {
        bk_reserve_session(ctx, grants, ruser, user, tty, pid, out);
        if (out->allow) {
            free(grants);
            return;
        }
    } else {
        say_no_grant(&config, grants, ruser, out);
    }
    free(grants);
    break_glass(ctx, &config, ruser, out);
}

void bk_decide_sshd(const struct bk_ctx *ctx, const char *user, struct bk_verdict *out)
{
    struct bk_config config;
    struct bk_grants *grants;
    memset(out, 0, sizeof *out);
    if (strcmp(user, "root") == 0) {
        allow(out, "root");
        return;
    }
    bk_load_config(ctx, &config);
    if (!config.ok) {
        deny_config(&config, out);
        return;
    }
    if (!config.conf.login_gated) {
        allow(out, "logins not gated");
        return;
    }
    if (quarantined(ctx, user, out)) {
        char inner[BK_MSG_MAX];
        bk_copy(inner, sizeof inner, out->log);
        snprintf(out->log, sizeof out->log, "login gated: %s", inner);
        return;
    }
    grants = malloc(sizeof *grants);
    if (grants == NULL) {
        bk_copy(out->log, sizeof out->log, "out of memory");
        return;
    }
    bk_user_grants(ctx, &config, user, grants);
    for (size_t i = 0; i < grants->count; i++) {
        if (grants->valid[i].login) {
            char why[64];
            snprintf(why, sizeof why, "login grant %s", grants->valid[i].id);
            free(grants);
            allow(out, why);
            return;
        }
    }
    if (break_glass(ctx, &config, user, out)) {
        free(grants);
        return;
    }
    if (grants->count > 0) {
        out->why = BK_WHY_NO_LOGIN;
        snprintf(out->log, sizeof out->log, "login gated: grant %s has login=0",
                 grants->valid[0].id);
        snprintf(out->say, sizeof out->say,
                 "broker: logins to %s are gated and your grant %s does not include login",
                 config.conf.node, grants->valid[0].id);
    } else {
        say_no_grant(&config, grants, user, out);
        char inner[BK_MSG_MAX];
        bk_copy(inner, sizeof inner, out->log);
        snprintf(out->log, sizeof out->log, "login gated: %s", inner);
    }
    free(grants);
}

static void decide_joblaunch(const struct bk_ctx *ctx, const struct bk_config *config,
                             const char *user, struct bk_verdict *out)
{
    struct bk_grants *grants = malloc(sizeof *grants);
    if (grants == NULL) {
        bk_copy(out->log, sizeof out->log, "out of memory");
        return;
    }
    bk_user_grants(ctx, config, user, grants);
    for (size_t i = 0; i < grants->count; i++) {
        const struct bk_valid *v = &grants->valid[i];
        if (strcmp(v->runas, "root") == 0 && !v->workloads) {
            char until[BK_UTC_LEN + 1];
            bk_format_utc(v->not_after, until);
            out->why = BK_WHY_WORKLOADS;
            snprintf(out->log, sizeof out->log,
                     "holds root grant %s (workloads=0): no jobs while elevated", v->id);
            snprintf(out->say, sizeof out->say,
                     "broker: no jobs while you hold root grant %s on %s (workloads=0); it ends "
                     "at %s",
                     v->id, config->conf.node, until);
            free(grants);
            return;
        }
    }
    free(grants);
    allow(out, "no root grant");
}

void bk_decide_other(const struct bk_ctx *ctx, const char *service, const char *user,
                     bool joblaunch, struct bk_verdict *out)
{
    struct bk_config config;
    memset(out, 0, sizeof *out);
    bk_load_config(ctx, &config);
    if (!config.ok) {
        if (strcmp(user, "root") == 0) {
            allow(out, "root");
            return;
        }
        deny_config(&config, out); /* the job launcher cannot be told apart: closed */
        return;
    }
    if (joblaunch || (config.conf.joblaunch_service[0] != '\0' &&
                      strcmp(service, config.conf.joblaunch_service) == 0)) {
        decide_joblaunch(ctx, &config, user, out);
        return;
    }
    allow(out, "not gated");
}
