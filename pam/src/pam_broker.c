/* pam_broker.so: the broker's decision on every sudo, gated login and job launch, in the
 * calling process (no fork, no exec, no network). docs/grants.md is the contract. */
#define PAM_SM_AUTH
#define PAM_SM_ACCOUNT
#define PAM_SM_SESSION
#define PAM_SM_PASSWORD

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "bk_node.h"

#define EXPORT __attribute__((visibility("default")))
#define NSS_BUF_MAX (1 << 20)

/* NSS group membership, the primary group included; any lookup failure is "not a member". */
static bool in_group(const char *user, const char *group)
{
    size_t size = 4096;
    bool member = false, done = false;
    while (!done && size <= NSS_BUF_MAX) {
        char *buf = malloc(size);
        struct group gr, *grp = NULL;
        struct passwd pw, *pwp = NULL;
        if (buf == NULL)
            return false;
        int rc = getgrnam_r(group, &gr, buf, size, &grp);
        if (rc == ERANGE) {
            free(buf);
            size *= 2;
            continue;
        }
        done = true;
        if (rc == 0 && grp != NULL) {
            gid_t gid = grp->gr_gid;
            for (char **m = grp->gr_mem; m != NULL && *m != NULL && !member; m++)
                member = strcmp(*m, user) == 0;
            if (!member && getpwnam_r(user, &pw, buf, size, &pwp) == 0 && pwp != NULL)
                member = pwp->pw_gid == gid;
        }
        free(buf);
    }
    return member;
}

static const char *item(pam_handle_t *pamh, int which)
{
    const void *value = NULL;
    if (pam_get_item(pamh, which, &value) != PAM_SUCCESS || value == NULL)
        return "";
    return (const char *)value;
}

struct call {
    const char *service, *user, *ruser, *tty, *type;
    bool joblaunch; /* `joblaunch` given in this service's PAM file */
    struct bk_ctx ctx;
};

/* The only argument: `joblaunch`, marking the job launcher's stack. Anything else is logged
 * and ignored, so a typo never opens anything (it can only leave the launcher ungated,
 * which node.conf's joblaunch_service still covers, in account and session open). */
static bool read_args(pam_handle_t *pamh, int argc, const char **argv)
{
    bool joblaunch = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "joblaunch") == 0) {
            joblaunch = true;
        } else {
            char shown[64];
            bk_clean(argv[i], strlen(argv[i]), shown, sizeof shown);
            pam_syslog(pamh, LOG_ERR, "unknown argument ignored: %s", shown);
        }
    }
    return joblaunch;
}

static bool is_sudo(const char *service);

static void read_call(pam_handle_t *pamh, const char *type, int argc, const char **argv,
                      struct call *c)
{
    c->joblaunch = read_args(pamh, argc, argv);
    c->service = item(pamh, PAM_SERVICE);
    c->user = item(pamh, PAM_USER);
    c->ruser = item(pamh, PAM_RUSER);
    c->tty = item(pamh, PAM_TTY);
    c->type = type;
    c->ctx.root = "/";
    c->ctx.proc = "/proc";
    c->ctx.now = (int64_t)time(NULL);
    c->ctx.in_group = in_group;
    /* `joblaunch` on sudo's or sshd's lines would swap their rules for the launcher's: the
     * services the module knows keep their own. */
    if (c->joblaunch && (is_sudo(c->service) || strcmp(c->service, "sshd") == 0)) {
        pam_syslog(pamh, LOG_ERR, "argument joblaunch ignored on the %s service",
                   is_sudo(c->service) ? "sudo" : "sshd");
        c->joblaunch = false;
    }
}

static bool is_sudo(const char *service)
{
    return strcmp(service, "sudo") == 0 || strcmp(service, "sudo-i") == 0;
}

static void log_verdict(pam_handle_t *pamh, const struct call *c, const struct bk_verdict *v)
{
    char service[48], user[72], ruser[72];
    bk_clean(c->service, strlen(c->service), service, sizeof service);
    bk_clean(c->user, strlen(c->user), user, sizeof user);
    bk_clean(c->ruser, strlen(c->ruser), ruser, sizeof ruser);
    if (!v->allow)
        pam_syslog(pamh, LOG_WARNING, "deny service=%s type=%s user=%s ruser=%s: %s (%s)",
                   service, c->type, user, ruser, v->log, bk_why_code(v->why));
    else if (v->break_glass)
        pam_syslog(pamh, LOG_NOTICE, "allow service=%s type=%s user=%s ruser=%s: %s", service,
                   c->type, user, ruser, v->log);
}

#define GRANTED_DATA "pam_broker_granted"

static void free_granted(pam_handle_t *pamh, void *data, int status)
{
    (void)pamh, (void)status;
    free(data);
}

/* The grants this handle's sudo was allowed under, for its session open (pam_set_data lives
 * as long as the PAM handle): no second read of node.conf, the key and every grant file. */
static void keep_granted(pam_handle_t *pamh, const struct bk_granted *granted)
{
    struct bk_granted *copy = malloc(sizeof *copy);
    if (copy == NULL)
        return; /* session open then reads the grants again */
    *copy = *granted;
    if (pam_set_data(pamh, GRANTED_DATA, copy, free_granted) != PAM_SUCCESS)
        free(copy);
}

static const struct bk_granted *kept_granted(pam_handle_t *pamh)
{
    const void *data = NULL;
    if (pam_get_data(pamh, GRANTED_DATA, &data) != PAM_SUCCESS)
        return NULL;
    return (const struct bk_granted *)data;
}

/* auth and account: one row of the decision table; a refusal is said to the person too.
 * It is said even under PAM_SILENT: sudo passes that flag by default, and a refusal that
 * explains nothing sends people to the operators. Nothing is said on an allow. */
static int gate(pam_handle_t *pamh, const char *type, int refuse, int argc, const char **argv)
{
    struct call c;
    struct bk_verdict v;
    read_call(pamh, type, argc, argv, &c);
    if (c.joblaunch && strcmp(type, "auth") != 0) {
        bk_decide_other(&c.ctx, c.service, c.user, true, &v);
    } else if (is_sudo(c.service)) {
        bk_decide_sudo(&c.ctx, c.ruser, c.user, c.tty, getpid(), &v);
        if (!v.allow && c.ruser[0] != '\0' && strcmp(c.ruser, "root") != 0)
            bk_spool_deny(&c.ctx, c.service, c.ruser, c.user, c.tty, getpid(), v.why);
    } else if (strcmp(type, "account") != 0) {
        return PAM_IGNORE; /* only sudo is gated in auth */
    } else if (strcmp(c.service, "sshd") == 0) {
        bk_decide_sshd(&c.ctx, c.user, &v);
    } else {
        bk_decide_other(&c.ctx, c.service, c.user, false, &v);
    }
    /* A job launch refused while its user holds root (AC-6) reaches the broker as a deny
     * event like a refused sudo; the user is both the person and the account. */
    if (!v.allow && v.why == BK_WHY_WORKLOADS)
        bk_spool_deny(&c.ctx, c.service, c.user, c.user, c.tty, getpid(), v.why);
    log_verdict(pamh, &c, &v);
    if (v.allow && (v.granted.count > 0 || v.granted.break_glass))
        keep_granted(pamh, &v.granted);
    if (v.allow)
        return PAM_SUCCESS;
    if (v.say[0] != '\0')
        pam_error(pamh, "%s", v.say);
    return refuse;
}

EXPORT int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)flags;
    return gate(pamh, "auth", PAM_AUTH_ERR, argc, argv);
}

EXPORT int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh, (void)flags, (void)argc, (void)argv;
    return PAM_IGNORE;
}

EXPORT int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)flags;
    return gate(pamh, "account", PAM_PERM_DENIED, argc, argv);
}

/* node.conf's joblaunch_service: gated at session open too. A node.conf that cannot be read
 * answers "no" here; the account stack, where it runs, refuses then. */
static bool is_joblaunch_service(const struct bk_ctx *ctx, const char *service)
{
    struct bk_config config;
    if (is_sudo(service) || strcmp(service, "sshd") == 0)
        return false;
    bk_load_config(ctx, &config);
    return config.ok && config.conf.joblaunch_service[0] != '\0' &&
           strcmp(service, config.conf.joblaunch_service) == 0;
}

/* sudo sessions never refuse (the decision was made in auth/account): they are recorded.
 * The job launcher's session open is a decision, though: Slurm's slurmstepd calls only
 * pam_setcred and pam_open_session, never pam_acct_mgmt. */
static int session(pam_handle_t *pamh, bool open, int argc, const char **argv)
{
    struct call c;
    char note[BK_MSG_MAX];
    read_call(pamh, open ? "open_session" : "close_session", argc, argv, &c);
    if (open && (c.joblaunch || is_joblaunch_service(&c.ctx, c.service)))
        return gate(pamh, "open_session", PAM_PERM_DENIED, argc, argv);
    if (!is_sudo(c.service))
        return PAM_IGNORE;
    if (open)
        bk_open_session(&c.ctx, c.service, c.ruser, c.user, c.tty, getpid(),
                        kept_granted(pamh), note);
    else
        bk_close_session(&c.ctx, c.service, c.ruser, c.user, c.tty, getpid(), note);
    return PAM_SUCCESS;
}

EXPORT int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)flags;
    return session(pamh, true, argc, argv);
}

EXPORT int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)flags;
    return session(pamh, false, argc, argv);
}

EXPORT int pam_sm_chauthtok(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh, (void)flags, (void)argc, (void)argv;
    return PAM_IGNORE;
}
