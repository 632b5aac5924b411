/* broker-grant-check: the node program's way to check grant files with the very code the PAM
 * module runs (docs/grants.md, "The node program"). Output is `key=value` lines, one block per
 * grant ending in `end`; exit 0 when it gave a verdict, 2 on bad usage. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bk_files.h"
#include "bk_node.h"
#include "bk_version.h"

#define GRANTS_DIR "var/lib/broker/grants"

static bool no_groups(const char *user, const char *group)
{
    (void)user, (void)group;
    return false;
}

static void print_span(const char *key, struct bk_span s)
{
    char clean[BK_MAX_FILE + 1];
    bk_clean(s.p, s.n, clean, sizeof clean);
    printf("%s=%s\n", key, clean);
}

static void print_grant(const struct bk_grant *g)
{
    printf("id=%s\nnode=%s\nuser=%s\nrunas=%s\n", g->id, g->node, g->user, g->runas);
    print_span("commands", g->commands);
    printf("not_before=%lld\nnot_after=%lld\nissued_at=%lld\n", (long long)g->not_before,
           (long long)g->not_after, (long long)g->issued_at);
    printf("login=%d\nworkloads=%d\nmax_sessions=%d\n", g->login, g->workloads, g->max_sessions);
    print_span("approvers", g->approvers);
    printf("key_id=%s\n", g->key_id);
}

/* One verdict block for the grant file bytes `data` named `name`. */
static void verdict(const struct bk_ctx *ctx, const struct bk_config *config, int revoked_fd,
                    const char *name, const char *data, size_t len, const char *read_problem,
                    bool any_start)
{
    struct bk_grant grant;
    char err[BK_ERR_MAX] = "", clean[BK_ERR_MAX];
    enum bk_why why = BK_WHY_BAD_FILE;
    bool parsed = read_problem == NULL && bk_parse_grant(data, len, &grant, err);
    bool valid = false;
    if (read_problem != NULL)
        bk_copy(err, sizeof err, read_problem);
    if (parsed && strcmp(name, "-") != 0 && strcmp(grant.id, name) != 0) {
        snprintf(err, sizeof err, "holds grant %s", grant.id);
    } else if (parsed && !config->ok) {
        why = BK_WHY_BAD_CONFIG;
        bk_copy(err, sizeof err, config->problem);
    } else if (parsed) {
        valid = bk_check_grant(ctx, config, revoked_fd, data, &grant, any_start, &why, err);
    }
    bk_clean(name, strlen(name), clean, sizeof clean);
    printf("name=%s\nvalid=%d\n", clean, valid);
    if (!valid) {
        bk_clean(err, strlen(err), clean, sizeof clean);
        printf("reason=%s\nproblem=%s\n", bk_why_code(why), clean);
    }
    if (parsed)
        print_grant(&grant);
    printf("end\n");
}

static int check_stdin(const struct bk_ctx *ctx, const struct bk_config *config, int revoked_fd,
                       bool any_start)
{
    static char buf[BK_MAX_FILE + 2];
    size_t len = fread(buf, 1, sizeof buf - 1, stdin);
    const char *problem = ferror(stdin)      ? "cannot read standard input"
                          : len > BK_MAX_FILE ? "larger than 8192 bytes"
                                              : NULL;
    verdict(ctx, config, revoked_fd, "-", buf, len, problem, any_start);
    return 0;
}

static int check_all(const struct bk_ctx *ctx, const struct bk_config *config, int revoked_fd)
{
    static char buf[BK_MAX_FILE + 1];
    char err[BK_ERR_MAX];
    int fd = bk_open_dir(ctx->root, GRANTS_DIR, 0, err);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (dir == NULL) {
        bk_clean(err, strlen(err), buf, sizeof buf);
        printf("grants_problem=%s\n", buf);
        return 0;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        const char *name = entry->d_name;
        size_t len = 0;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
            strncmp(name, BK_TMP_PREFIX, strlen(BK_TMP_PREFIX)) == 0)
            continue;
        if (!bk_is_grant_id(name, strlen(name))) {
            verdict(ctx, config, revoked_fd, name, buf, 0, "not a grant id", false);
            continue;
        }
        enum bk_read got = bk_read_at(dirfd(dir), name, 077, buf, BK_MAX_FILE, &len, err);
        verdict(ctx, config, revoked_fd, name, buf, len, got == BK_READ_OK ? NULL : err, false);
    }
    closedir(dir);
    return 0;
}

static int usage(void)
{
    fputs("usage: broker-grant-check [--root DIR] [--now EPOCH] [--any-start] --stdin\n"
          "       broker-grant-check [--root DIR] [--now EPOCH] --all\n"
          "       broker-grant-check --version\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct bk_ctx ctx = {"/", "/proc", (int64_t)time(NULL), no_groups};
    struct bk_config config;
    bool any_start = false;
    const char *mode = NULL;
    char err[BK_ERR_MAX];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            printf("broker-grant-check %s\n", BK_HOOK_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc && argv[i + 1][0] == '/') {
            ctx.root = argv[++i];
        } else if (strcmp(argv[i], "--now") == 0 && i + 1 < argc) {
            char *end = NULL;
            long long now = strtoll(argv[++i], &end, 10);
            if (end == NULL || *end != '\0' || now < 0)
                return usage();
            ctx.now = (int64_t)now;
        } else if (strcmp(argv[i], "--any-start") == 0) {
            any_start = true;
        } else if (strcmp(argv[i], "--stdin") == 0 || strcmp(argv[i], "--all") == 0) {
            mode = argv[i];
        } else {
            return usage();
        }
    }
    if (mode == NULL)
        return usage();
    bk_load_config(&ctx, &config);
    if (!config.ok) {
        bk_clean(config.problem, strlen(config.problem), err, sizeof err);
        printf("config_problem=%s\n", err);
    }
    int revoked_fd = bk_open_revoked(&ctx, err);
    int rc = strcmp(mode, "--stdin") == 0 ? check_stdin(&ctx, &config, revoked_fd, any_start)
                                          : check_all(&ctx, &config, revoked_fd);
    if (revoked_fd >= 0)
        close(revoked_fd);
    return fflush(stdout) == 0 ? rc : 1;
}
