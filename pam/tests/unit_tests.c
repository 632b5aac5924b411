/* Unit tests of the node-side C code, built with AddressSanitizer and UBSan (make test).
 * Grants are signed here with libsodium, the node's files live in a temporary root. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "bk_contract.h"
#include "bk_crypto.h"
#include "bk_files.h"
#include "bk_node.h"
#include "bk_session.h"
#include "check.h"

static const int64_t NOW = 1795000000; /* 2026-11-18 */
struct test_key {
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
};
static struct test_key signing_key_store, other_key_store;
static struct test_key *signing_key = &signing_key_store, *other_key = &other_key_store;
static char root[64];
static char key_line[128];

/* ------------------------------------------------------------ helpers */

static void key_id_of(const struct test_key *key, char out[17])
{
    if (!bk_sha256_hex(key->pk, 32, 8, out))
        abort();
}

/* A signed grant like broker/grants/grantfile.py writes it, into `out`. */
static size_t make_grant(char *out, size_t size, const struct test_key *key, const char *id,
                         const char *node, const char *user, int64_t start, int64_t end,
                         int login, int workloads, int max_sessions)
{
    char nb[21], na[21], kid[17], b64[100];
    unsigned char sig[64];
    bk_format_utc(start, nb);
    bk_format_utc(end, na);
    key_id_of(key, kid);
    int n = snprintf(out, size,
                     "broker-grant-v1\nid=%s\nnode=%s\nuser=%s\nrunas=root\ncommands=ALL\n"
                     "not_before=%s\nnot_after=%s\nlogin=%d\nworkloads=%d\nmax_sessions=%d\n"
                     "policy_sha256=%064d\napprovers=frank,grace\nreason=INC-4711%%20test\n"
                     "issued_at=%s\nkey_id=%s\n",
                     id, node, user, nb, na, login, workloads, max_sessions, 0, nb, kid);
    crypto_sign_detached(sig, NULL, (const unsigned char *)out, (size_t)n, key->sk);
    sodium_bin2base64(b64, sizeof b64, sig, 64, sodium_base64_VARIANT_ORIGINAL);
    n += snprintf(out + n, size - (size_t)n, "signature=%s\n", b64);
    return (size_t)n;
}

static void write_file(const char *rel, const char *data, size_t len, mode_t mode)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len || fchmod(fd, mode) != 0)
        abort();
    close(fd);
}

static void remove_file(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    unlink(path);
}

static void make_dirs(void)
{
    const char *dirs[] = {"etc", "etc/broker", "var", "var/lib", "var/lib/broker",
                          "var/lib/broker/grants", "var/lib/broker/revoked",
                          "run", "run/broker-sessions", "var/spool", "var/spool/broker",
                          "var/spool/broker/events", "proc"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            abort();
    }
}

static bool test_groups(const char *user, const char *group)
{
    return (strcmp(user, "heidi") == 0 &&
            (strcmp(group, "break-glass") == 0 || strcmp(group, "ir") == 0)) ||
           (strcmp(user, "John.Doe") == 0 && strcmp(group, "break-glass") == 0);
}

static struct bk_ctx ctx_at(int64_t now)
{
    static char proc[96];
    snprintf(proc, sizeof proc, "%s/proc", root);
    struct bk_ctx ctx = {root, proc, now, test_groups};
    return ctx;
}

static void install_grant(const char *id, const char *user, int64_t start, int64_t end,
                          int login, int workloads, int max_sessions,
                          const struct test_key *key, const char *node)
{
    char buf[BK_MAX_FILE], rel[128];
    size_t n = make_grant(buf, sizeof buf, key, id, node, user, start, end, login, workloads,
                          max_sessions);
    snprintf(rel, sizeof rel, "var/lib/broker/grants/%s", id);
    write_file(rel, buf, n, 0600);
}

static void clear_dir(const char *rel)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/%s' && mkdir -m 0755 '%s/%s'", root, rel, root, rel);
    if (system(cmd) != 0)
        abort();
}

static void reset_node(void)
{
    clear_dir("var/lib/broker/grants");
    clear_dir("var/lib/broker/revoked");
    clear_dir("run/broker-sessions");
    clear_dir("var/spool/broker/events");
    clear_dir("proc");
    remove_file("etc/broker/quarantine");
    const char conf[] = "node=gpu01\nlogin_gated=1\nbreak_glass_group=break-glass\n"
                        "joblaunch_service=slurm\n";
    write_file("etc/broker/node.conf", conf, sizeof conf - 1, 0644);
    write_file("etc/broker/grant-key.pub", key_line, strlen(key_line), 0644);
}

/* ------------------------------------------------------------ text */

static void test_text(void)
{
    int64_t t = 0;
    char out[21];
    CHECK(bk_parse_utc("1970-01-01T00:00:00Z", 20, &t) && t == 0);
    CHECK(bk_parse_utc("2026-11-23T10:00:00Z", 20, &t) && t == 1795428000);
    bk_format_utc(1795428000, out);
    CHECK_STR(out, "2026-11-23T10:00:00Z");
    CHECK(bk_parse_utc("2024-02-29T23:59:59Z", 20, &t));
    CHECK(!bk_parse_utc("2023-02-29T00:00:00Z", 20, &t));
    CHECK(!bk_parse_utc("1900-02-28T00:00:00Z", 20, &t));
    CHECK(!bk_parse_utc("2026-11-23T10:00:00+", 20, &t));
    CHECK(!bk_parse_utc("2026-11-23 10:00:00Z", 20, &t));
    CHECK(!bk_parse_utc("2026-11-23T24:00:00Z", 20, &t));
    CHECK(!bk_parse_utc("2026-1a-23T10:00:00Z", 20, &t));
    for (int64_t e = 0; e < 4102444800; e += 86399 * 37) { /* round trip to 2100 */
        bk_format_utc(e, out);
        CHECK(bk_parse_utc(out, 20, &t) && t == e);
    }
    CHECK(bk_is_grant_id("g0123456789abcdef", 17));
    CHECK(!bk_is_grant_id("g0123456789ABCDEF", 17));
    CHECK(!bk_is_grant_id("x0123456789abcdef", 17));
    CHECK(bk_is_posix_name("alice", 5) && bk_is_posix_name("_svc-1", 6));
    CHECK(!bk_is_posix_name("Alice", 5) && !bk_is_posix_name("1abc", 4));
    CHECK(!bk_is_posix_name("", 0) && !bk_is_posix_name("a%b", 3));
    CHECK(bk_is_node_name("gpu01", 5) && !bk_is_node_name("-gpu", 4));
    CHECK(bk_is_reason("INC-4711%20a%2Fb", 16));
    CHECK(!bk_is_reason("a%41", 4));   /* 'A' must stay literal */
    CHECK(!bk_is_reason("a%2f", 4));   /* lower-case hex */
    CHECK(!bk_is_reason("a b", 3) && !bk_is_reason("", 0) && !bk_is_reason("%2", 2));
    CHECK(bk_is_list("a,b-c", 5, bk_is_set_name, false));
    CHECK(!bk_is_list("a,,b", 4, bk_is_set_name, false) && !bk_is_list("", 0, bk_is_set_name, false));
    char clean[8];
    bk_clean("ab\ncd\x01" "efghij", 12, clean, sizeof clean);
    CHECK_STR(clean, "ab?c...");
}

/* ------------------------------------------------------------ crypto */

static void unhex(const char *hex, unsigned char *out)
{
    for (size_t i = 0; hex[2 * i] != '\0'; i++) {
        unsigned int b;
        sscanf(hex + 2 * i, "%2x", &b);
        out[i] = (unsigned char)b;
    }
}

static void test_crypto(void)
{
    /* RFC 8032, section 7.1, TEST 2 (one-byte message 0x72). */
    unsigned char pub[32], sig[64], msg[1] = {0x72};
    unhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", pub);
    unhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
          "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
          sig);
    CHECK(bk_ed25519_verify(pub, msg, 1, sig));
    msg[0] ^= 1;
    CHECK(!bk_ed25519_verify(pub, msg, 1, sig));
    msg[0] ^= 1;
    sig[63] ^= 0x80;
    CHECK(!bk_ed25519_verify(pub, msg, 1, sig));
    unsigned char out[64];
    CHECK(bk_b64_exact("AAECAw==", 8, out, 4) && out[3] == 3);
    CHECK(!bk_b64_exact("AAECAx==", 8, out, 4)); /* non-zero padding bits: not canonical */
    CHECK(!bk_b64_exact("AAECAw=", 7, out, 4));
    CHECK(!bk_b64_exact("AAEC Aw=", 8, out, 4));
    CHECK(!bk_b64_exact("AAECAwQ=", 8, out, 4)); /* five bytes, not four */
    /* keys that are no point, or a point of small order (the identity), are refused */
    unsigned char bad[32];
    memset(bad, 0xff, sizeof bad);
    CHECK(!bk_ed25519_key_ok(bad));
    memset(bad, 0, sizeof bad);
    bad[0] = 1;
    CHECK(!bk_ed25519_key_ok(bad));
    CHECK(bk_ed25519_key_ok(pub));
    char hex[17];
    CHECK(bk_sha256_hex("abc", 3, 8, hex));
    CHECK_STR(hex, "ba7816bf8f01cfea");
}

/* ------------------------------------------------------------ contract */

static void test_grant_parse(void)
{
    char buf[BK_MAX_FILE], err[BK_ERR_MAX];
    struct bk_grant g;
    struct bk_key key;
    size_t n = make_grant(buf, sizeof buf, signing_key, "g0123456789abcdef", "gpu01", "alice",
                          NOW - 60, NOW + 600, 1, 0, 2);
    CHECK(bk_parse_grant(buf, n, &g, err));
    CHECK_STR(g.id, "g0123456789abcdef");
    CHECK_STR(g.user, "alice");
    CHECK(g.not_after == NOW + 600 && g.login && !g.workloads && g.max_sessions == 2);
    CHECK(bk_parse_key(key_line, strlen(key_line), &key, err));
    CHECK(bk_grant_signed_by(&g, buf, &key, err));

    /* Every single-byte change is refused: by the parser or by the signature. */
    size_t refused = 0;
    for (size_t i = 0; i < n; i++) {
        char saved = buf[i];
        for (int delta = 1; delta < 256; delta += 37) {
            buf[i] = (char)(saved ^ delta);
            struct bk_grant h;
            if (!bk_parse_grant(buf, n, &h, err) || !bk_grant_signed_by(&h, buf, &key, err))
                refused++;
        }
        buf[i] = saved;
    }
    CHECK(refused == n * 7);

    /* Signed by another key: its key id differs; claiming ours, the signature fails. */
    char other[BK_MAX_FILE];
    size_t m = make_grant(other, sizeof other, other_key, "g0123456789abcdef", "gpu01", "alice",
                          NOW - 60, NOW + 600, 1, 0, 2);
    CHECK(bk_parse_grant(other, m, &g, err));
    CHECK(!bk_grant_signed_by(&g, other, &key, err));
    CHECK_HAS(err, "signed by key ");
    bk_copy(g.key_id, sizeof g.key_id, key.key_id);
    CHECK(!bk_grant_signed_by(&g, other, &key, err));
    CHECK_STR(err, "bad signature");

    const char *bad[][2] = {
        {"broker-grant-v2\n", "wrong magic"},
        {"", "newline"},
    };
    for (size_t i = 0; i < 2; i++) {
        CHECK(!bk_parse_grant(bad[i][0], strlen(bad[i][0]), &g, err));
        CHECK_HAS(err, bad[i][1]);
    }
    n = make_grant(buf, sizeof buf, signing_key, "g0123456789abcdef", "gpu01", "alice", NOW + 10,
                   NOW, 0, 0, 1);
    CHECK(!bk_parse_grant(buf, n, &g, err));
    CHECK_STR(err, "not_before is not before not_after");
    n = make_grant(buf, sizeof buf, signing_key, "g0123456789abcdef", "gpu01", "alice", NOW,
                   NOW + 10, 0, 0, 17);
    CHECK(!bk_parse_grant(buf, n, &g, err));
    CHECK_STR(err, "bad max_sessions");
    char big[BK_MAX_FILE + 2];
    memset(big, 'a', sizeof big);
    CHECK(!bk_parse_grant(big, sizeof big, &g, err));
    CHECK_HAS(err, "larger than");
}

/* ------------------------------------------------------------ the key list */

static void line_of(const struct test_key *key, char out[128])
{
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, key->pk, 32, sodium_base64_VARIANT_ORIGINAL);
    snprintf(out, 128, "broker-grant-key-v1 %s\n", b64);
}

static void test_key_list_parse(void)
{
    char err[BK_ERR_MAX], other_line[128], buf[BK_KEYS_FILE_MAX + 200];
    struct bk_keys keys;
    line_of(other_key, other_line);
    /* one key: today's file, unchanged */
    CHECK(bk_parse_keys(key_line, strlen(key_line), &keys, err));
    CHECK(keys.count == 1);
    /* two brokers' keys, in file order */
    snprintf(buf, sizeof buf, "%s%s", key_line, other_line);
    CHECK(bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK(keys.count == 2);
    char kid[17];
    key_id_of(other_key, kid);
    CHECK_STR(keys.key[1].key_id, kid);
    /* eight distinct keys pass, a ninth is refused */
    buf[0] = '\0';
    for (int k = 0; k < BK_MAX_KEYS + 1; k++) {
        struct test_key extra;
        char line[128];
        crypto_sign_keypair(extra.pk, extra.sk);
        line_of(&extra, line);
        strcat(buf, line);
        if (k == BK_MAX_KEYS - 1)
            CHECK(bk_parse_keys(buf, strlen(buf), &keys, err) && keys.count == BK_MAX_KEYS);
    }
    CHECK(!bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK_STR(err, "more than 8 keys listed");

    struct {
        const char *text;
        const char *why;
    } bad[] = {
        {"", "no key listed"},
        {"\n", "line 1: not a broker-grant-key-v1 line"},
        {"# the broker's key\n", "line 1: not a broker-grant-key-v1 line"},
        {"broker-grant-key-v1 AAAA\n", "line 1: not a broker-grant-key-v1 line"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(!bk_parse_keys(bad[i].text, strlen(bad[i].text), &keys, err));
        CHECK_STR(err, bad[i].why);
    }
    /* the same key twice, a blank line between keys, a key without its newline, a long line */
    snprintf(buf, sizeof buf, "%s%s%s", key_line, other_line, key_line);
    CHECK(!bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK_HAS(err, "line 3: key ");
    CHECK_HAS(err, " is also on line 1");
    snprintf(buf, sizeof buf, "%s\n%s", key_line, other_line);
    CHECK(!bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK_STR(err, "line 2: not a broker-grant-key-v1 line");
    snprintf(buf, sizeof buf, "%s%s", key_line, other_line);
    CHECK(!bk_parse_keys(buf, strlen(buf) - 1, &keys, err));
    CHECK_STR(err, "line 2: not a broker-grant-key-v1 line");
    snprintf(buf, sizeof buf, "%s%.*s \n", key_line, (int)strlen(other_line) - 1, other_line);
    CHECK(!bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK_STR(err, "line 2: too long for a broker-grant-key-v1 line");
    /* an all-zero (small-order) point is not a key */
    snprintf(buf, sizeof buf, "%s%s", key_line,
             "broker-grant-key-v1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
    CHECK(!bk_parse_keys(buf, strlen(buf), &keys, err));
    CHECK_STR(err, "line 2: not a broker-grant-key-v1 line");
}

/* A node that lists two brokers' keys takes grants from either, and from no one else. */
static void test_key_list_decisions(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    struct bk_verdict v;
    char other_line[128], both[300];
    line_of(other_key, other_line);
    reset_node();
    snprintf(both, sizeof both, "%s%s", other_line, key_line);
    write_file("etc/broker/grant-key.pub", both, strlen(both), 0644);
    install_grant("g00000000000000b1", "alice", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu01");
    install_grant("g00000000000000b2", "bob", NOW - 60, NOW + 600, 0, 0, 1, other_key, "gpu01");
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4301, &v);
    CHECK(v.allow);
    bk_decide_sudo(&ctx, "bob", "root", NULL, 4302, &v);
    CHECK(v.allow);

    struct test_key third;
    crypto_sign_keypair(third.pk, third.sk);
    install_grant("g00000000000000b3", "carol", NOW - 60, NOW + 600, 0, 0, 1, &third, "gpu01");
    bk_decide_sudo(&ctx, "carol", "root", NULL, 4303, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_SIGNATURE);
    CHECK_HAS(v.log, "which is not among the 2 keys this node trusts");

    /* a broken list stops every grant (fail closed), naming the line */
    snprintf(both, sizeof both, "%s%s", key_line, key_line);
    write_file("etc/broker/grant-key.pub", both, strlen(both), 0644);
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4304, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_CONFIG);
    CHECK_HAS(v.log, "grant-key.pub: line 2: key ");
    reset_node();
}

static void test_other_files(void)
{
    char err[BK_ERR_MAX];
    struct bk_conf conf;
    struct bk_key key;
    struct bk_quarantine q;
    const char good[] = "# comment\nnode=gpu01\n login_gated = 0\nbreak_glass_group=\n";
    CHECK(bk_parse_conf(good, sizeof good - 1, &conf, err));
    CHECK_STR(conf.node, "gpu01");
    CHECK(!conf.login_gated && conf.break_glass_group[0] == '\0');
    const char twice[] = "node=gpu01\nnode=gpu02\nlogin_gated=1\n";
    CHECK(!bk_parse_conf(twice, sizeof twice - 1, &conf, err));
    CHECK_STR(err, "node.conf: line 2: unknown or repeated setting");
    const char sudo_launch[] = "node=gpu01\nlogin_gated=1\njoblaunch_service=sudo\n";
    CHECK(!bk_parse_conf(sudo_launch, sizeof sudo_launch - 1, &conf, err));
    const char no_gate[] = "node=gpu01\n";
    CHECK(!bk_parse_conf(no_gate, sizeof no_gate - 1, &conf, err));
    CHECK_STR(err, "node.conf: login_gated must be 0 or 1");

    char line[128];
    bk_copy(line, sizeof line, key_line);
    CHECK(bk_parse_key(line, strlen(line), &key, err));
    line[strlen(line) - 1] = '\0'; /* no newline */
    CHECK(!bk_parse_key(line, strlen(line), &key, err));
    CHECK_STR(err, "not a broker-grant-key-v1 line");

    const char marker[] = "node=gpu01\nsince=2026-11-20T10:00:00Z\ngroup=ir\nreason=INC%201\n";
    CHECK(bk_parse_quarantine(marker, sizeof marker - 1, &q, err));
    CHECK_STR(q.group, "ir");
    const char missing[] = "node=gpu01\nsince=2026-11-20T10:00:00Z\ngroup=ir\n";
    CHECK(!bk_parse_quarantine(missing, sizeof missing - 1, &q, err));
    CHECK_STR(err, "a setting is missing");
    const char control[] = "node=gpu01\nsince=2026-11-20T10:00:00Z\ngroup=\nreason=a%0Ab\n";
    CHECK(!bk_parse_quarantine(control, sizeof control - 1, &q, err));
    /* the reason as the broker writes it: up to 200 characters of UTF-8 */
    char text[4096];
    const char head[] = "node=gpu01\nsince=2026-11-20T10:00:00Z\ngroup=ir\nreason=";
    const char *cases[][2] = {
        {"%C3%A9", "ok"},      /* e-acute */
        {"%E2%80%9C", "ok"},   /* a curly quote */
        {"%FF%FE", "no"},      /* not UTF-8 */
        {"%C0%AF", "no"},      /* overlong */
        {"%C2%85", "no"},      /* C1 control (NEL) */
        {"%ED%A0%80", "no"},   /* a surrogate */
        {"%20%20", "no"},      /* only blanks */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int n = snprintf(text, sizeof text, "%s%s\n", head, cases[c][0]);
        bool ok = bk_parse_quarantine(text, (size_t)n, &q, err);
        CHECK(ok == (strcmp(cases[c][1], "ok") == 0));
    }
    for (int count = 200; count <= 201; count++) { /* 200 two-byte characters fit, 201 not */
        int n = snprintf(text, sizeof text, "%s", head);
        for (int i = 0; i < count; i++)
            n += snprintf(text + n, sizeof text - (size_t)n, "%%C3%%A9");
        n += snprintf(text + n, sizeof text - (size_t)n, "\n");
        CHECK(bk_parse_quarantine(text, (size_t)n, &q, err) == (count == 200));
    }
}

/* ------------------------------------------------------------ files */

static void test_files(void)
{
    char err[BK_ERR_MAX], buf[64];
    size_t len = 0;
    reset_node();
    int fd = bk_open_dir(root, "etc/broker", 0, err);
    CHECK(fd >= 0);
    write_file("etc/broker/loose", "x", 1, 0666);
    CHECK(bk_read_at(fd, "loose", 022, buf, 32, &len, err) == BK_READ_BAD);
    CHECK_STR(err, "mode 0666 is too open");
    CHECK(bk_read_at(fd, "nothing", 022, buf, 32, &len, err) == BK_READ_MISSING);
    char target[512], link_path[512];
    snprintf(target, sizeof target, "%s/etc/broker/node.conf", root);
    snprintf(link_path, sizeof link_path, "%s/etc/broker/link", root);
    CHECK(symlink(target, link_path) == 0);
    CHECK(bk_read_at(fd, "link", 022, buf, 32, &len, err) == BK_READ_BAD);
    CHECK_STR(err, "a symlink");
    char hard[512];
    snprintf(hard, sizeof hard, "%s/etc/broker/hard", root);
    CHECK(link(target, hard) == 0);
    CHECK(bk_read_at(fd, "node.conf", 022, buf, 63, &len, err) == BK_READ_BAD);
    CHECK_STR(err, "2 hard links");
    unlink(hard);
    CHECK(bk_read_at(fd, "node.conf", 022, buf, 10, &len, err) == BK_READ_BAD);
    CHECK_STR(err, "larger than 10 bytes");
    CHECK(bk_write_atomic(fd, "written", "hello", 5, 0640, true));
    CHECK(bk_read_at(fd, "written", 0, buf, 32, &len, err) == BK_READ_OK && len == 5);
    struct stat st;
    CHECK(fstatat(fd, "written", &st, 0) == 0 && (st.st_mode & 07777) == 0640);
    unlinkat(fd, "written", 0);
    unlinkat(fd, "loose", 0);
    unlinkat(fd, "link", 0);
    close(fd);
    /* A directory others can write is not trusted, nor is anything below it. */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/var/lib/broker", root);
    chmod(dir, 0777);
    CHECK(bk_open_dir(root, "var/lib/broker/grants", 0, err) < 0);
    CHECK_HAS(err, "writable by others");
    chmod(dir, 0700);
}

/* ------------------------------------------------------------ decisions */

static void test_sudo_decisions(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    struct bk_verdict v;
    reset_node();
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/1", 4242, &v);
    CHECK(!v.allow && v.why == BK_WHY_NO_GRANT);
    CHECK_STR(v.log, "no valid grant for alice on gpu01");
    CHECK_HAS(v.say, "broker: no active grant for alice on gpu01 (request one: broker elevate "
                     "gpu01 --for 30m");

    install_grant("g00000000000000a1", "alice", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu01");
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/1", 4242, &v);
    CHECK(v.allow);
    CHECK_STR(v.log, "grant g00000000000000a1");
    bk_decide_sudo(&ctx, "bob", "root", NULL, 4243, &v);
    CHECK(!v.allow && v.why == BK_WHY_NO_GRANT);

    struct bk_ctx later = ctx_at(NOW + 601);
    bk_decide_sudo(&later, "alice", "root", NULL, 4244, &v);
    CHECK(!v.allow && v.why == BK_WHY_EXPIRED);
    CHECK_HAS(v.log, "expired at ");
    CHECK_HAS(v.say, "expired at");

    write_file("var/lib/broker/revoked/g00000000000000a1", "2099-01-01T00:00:00Z\n", 21, 0600);
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4245, &v);
    CHECK(!v.allow && v.why == BK_WHY_REVOKED);
    CHECK_HAS(v.say, "was revoked");

    reset_node();
    install_grant("g00000000000000a2", "alice", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu02");
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4246, &v);
    CHECK(!v.allow && v.why == BK_WHY_OTHER_NODE);
    CHECK_HAS(v.log, "for node gpu02, this is gpu01");

    reset_node();
    install_grant("g00000000000000a3", "alice", NOW - 60, NOW + 600, 0, 0, 1, other_key, "gpu01");
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4247, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_SIGNATURE);

    reset_node();
    install_grant("g00000000000000a4", "alice", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu01");
    char path[512];
    snprintf(path, sizeof path, "%s/var/lib/broker/grants/g00000000000000a4", root);
    CHECK(chmod(path, 0640) == 0);
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4248, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_FILE);
    CHECK_HAS(v.log, "mode 0640 is too open");

    /* root passes; break-glass passes without a grant; a broken key stops break-glass too */
    bk_decide_sudo(&ctx, "root", "root", NULL, 4249, &v);
    CHECK(v.allow);
    bk_decide_sudo(&ctx, "heidi", "root", NULL, 4250, &v);
    CHECK(v.allow && v.break_glass);
    write_file("etc/broker/grant-key.pub", "broker-grant-key-v1 AAAA\n", 25, 0644);
    bk_decide_sudo(&ctx, "heidi", "root", NULL, 4251, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_CONFIG);
    CHECK_HAS(v.log, "grant-key.pub: line 1: not a broker-grant-key-v1 line");
    remove_file("etc/broker/node.conf");
    bk_decide_sudo(&ctx, "alice", "root", NULL, 4252, &v);
    CHECK(!v.allow && v.why == BK_WHY_BAD_CONFIG);
    CHECK_HAS(v.log, "node.conf: ");
    bk_decide_other(&ctx, "slurm", "alice", false, &v);
    CHECK(!v.allow);
    bk_decide_other(&ctx, "slurm", "root", false, &v);
    CHECK(v.allow);
}

static void test_quarantine_and_login(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    struct bk_verdict v;
    reset_node();
    install_grant("g00000000000000b1", "alice", NOW - 60, NOW + 600, 1, 0, 1, signing_key,
                  "gpu01");
    install_grant("g00000000000000b2", "heidi", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu01");
    bk_decide_sshd(&ctx, "alice", &v);
    CHECK(v.allow);
    bk_decide_sshd(&ctx, "bob", &v);
    CHECK(!v.allow);
    CHECK_STR(v.log, "login gated: no valid grant for bob on gpu01");
    const char marker[] = "node=gpu01\nsince=2026-11-20T10:00:00Z\ngroup=ir\nreason=INC%201\n";
    write_file("etc/broker/quarantine", marker, sizeof marker - 1, 0644);
    bk_decide_sudo(&ctx, "alice", "root", NULL, 5001, &v);
    CHECK(!v.allow && v.why == BK_WHY_QUARANTINED);
    CHECK_HAS(v.log, "node quarantined since 2026-11-20T10:00:00Z: INC%201");
    bk_decide_sudo(&ctx, "heidi", "root", NULL, 5002, &v); /* in `ir`, holds a grant */
    CHECK(v.allow);
    bk_decide_sshd(&ctx, "alice", &v);
    CHECK(!v.allow);
    CHECK_HAS(v.log, "login gated: node quarantined");
    write_file("etc/broker/quarantine", marker, sizeof marker - 1, 0666);
    bk_decide_sudo(&ctx, "heidi", "root", NULL, 5003, &v);
    CHECK(!v.allow);
    CHECK_HAS(v.log, "only root may pass");
    bk_decide_sudo(&ctx, "root", "root", NULL, 5004, &v);
    CHECK(v.allow);
    remove_file("etc/broker/quarantine");

    /* job launch: a root grant without workloads refuses jobs */
    bk_decide_other(&ctx, "slurm", "alice", false, &v);
    CHECK(!v.allow && v.why == BK_WHY_WORKLOADS);
    bk_decide_other(&ctx, "slurm", "bob", false, &v);
    CHECK(v.allow);
    bk_decide_other(&ctx, "cron", "alice", false, &v);
    CHECK(v.allow);
    /* `joblaunch` in the PAM file marks the launcher whatever node.conf names */
    bk_decide_other(&ctx, "slurm-prolog", "alice", true, &v);
    CHECK(!v.allow && v.why == BK_WHY_WORKLOADS);
    CHECK_HAS(v.say, "broker: no jobs while you hold root grant g00000000000000b1 on gpu01");

    /* a directory name that is not a POSIX name holds no grant but may be break-glass */
    bk_decide_sudo(&ctx, "John.Doe", "root", NULL, 5005, &v);
    CHECK(v.allow && v.break_glass);
    bk_decide_sudo(&ctx, "Jane.Roe", "root", NULL, 5006, &v);
    CHECK(!v.allow && v.why == BK_WHY_NO_GRANT);
    bk_decide_sudo(&ctx, "", "root", NULL, 5007, &v);
    CHECK(!v.allow && v.why == BK_WHY_NO_USER);
}

/* ------------------------------------------------------------ sessions */

static void mark_alive(long pid, bool alive)
{
    char rel[64];
    snprintf(rel, sizeof rel, "proc/%ld", pid);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    if (alive)
        mkdir(path, 0755);
    else
        rmdir(path);
}

static size_t count_events(const char *kind)
{
    char cmd[600], line[64];
    snprintf(cmd, sizeof cmd, "grep -l '\"kind\": \"%s\"' %s/var/spool/broker/events/*.json "
             "2>/dev/null | wc -l", kind, root);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (p != NULL && fgets(line, sizeof line, p) != NULL)
        n = (size_t)strtoul(line, NULL, 10);
    if (p != NULL)
        pclose(p);
    return n;
}

static void test_sessions(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    struct bk_verdict v;
    char note[BK_MSG_MAX], path[512];
    struct stat st;
    reset_node();
    install_grant("g00000000000000c1", "alice", NOW - 60, NOW + 600, 0, 0, 1, signing_key,
                  "gpu01");
    mark_alive(7001, true);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/3", 7001, &v);
    CHECK(v.allow);
    snprintf(path, sizeof path, "%s/run/broker-sessions/g00000000000000c1/7001", root);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600);
    /* the same process asks again (auth, then account): its own record does not count */
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/3", 7001, &v);
    CHECK(v.allow);
    /* another process while 7001 lives: max_sessions=1 refuses */
    mark_alive(7002, true);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/4", 7002, &v);
    CHECK(!v.allow && v.why == BK_WHY_MAX_SESSIONS);
    CHECK_STR(v.log, "max_sessions reached: 1 open elevated sessions (limit 1)");
    bk_spool_deny(&ctx, "sudo", "alice", "root", "/dev/pts/4", 7002, v.why);
    bk_spool_deny(&ctx, "sudo", "alice", "root", "/dev/pts/4", 7002, v.why);
    CHECK(count_events("deny") >= 1);
    bk_open_session(&ctx, "sudo", "alice", "root", "/dev/pts/3", 7001, NULL, note);
    CHECK_HAS(note, "recorded");
    CHECK(count_events("open") == 1);
    bk_close_session(&ctx, "sudo", "alice", "root", "/dev/pts/3", 7001, note);
    CHECK(stat(path, &st) != 0);
    CHECK(count_events("close") == 1);
    /* a dead pid's record no longer counts and is removed */
    bk_decide_sudo(&ctx, "alice", "root", NULL, 7002, &v);
    CHECK(v.allow);
    mark_alive(7002, false);
    mark_alive(7003, true);
    bk_decide_sudo(&ctx, "alice", "root", NULL, 7003, &v);
    CHECK(v.allow);
    /* session open records under what the account check allowed, without reading the
     * grants again: here the grant file is gone by then, and the session is still recorded */
    mark_alive(7003, false); /* its slot is free again */
    mark_alive(7005, true);
    bk_decide_sudo(&ctx, "alice", "alice", "/dev/pts/5", 7005, &v);
    CHECK(v.allow && v.granted.count == 1);
    CHECK_STR(v.granted.ids[0], "g00000000000000c1");
    remove_file("var/lib/broker/grants/g00000000000000c1");
    bk_open_session(&ctx, "sudo", "alice", "root", "/dev/pts/5", 7005, &v.granted, note);
    CHECK_STR(note, "session g00000000000000c1/7005 recorded");
    snprintf(path, sizeof path, "%s/run/broker-sessions/g00000000000000c1/7005", root);
    CHECK(stat(path, &st) == 0);
    /* kept for another user it is not used: the grants are read (none left) */
    bk_open_session(&ctx, "sudo", "bob", "root", "/dev/pts/5", 7005, &v.granted, note);
    CHECK_STR(note, "no grant: session not recorded");
    /* break-glass sessions are recorded under the pseudo id */
    mark_alive(7004, true);
    bk_open_session(&ctx, "sudo", "heidi", "root", "/dev/pts/9", 7004, NULL, note);
    snprintf(path, sizeof path, "%s/run/broker-sessions/break-glass/7004", root);
    CHECK(stat(path, &st) == 0);
}

static void read_rel(const char *rel, char *out, size_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(out, 1, size - 1, f);
    out[n] = '\0';
    fclose(f);
}

static void test_cgroup_root_parse(void)
{
    char out[BK_CGROUP_PATH_MAX + 1], err[BK_ERR_MAX], long_path[260];
    const char good[] = "/sys/fs/cgroup/system.slice/broker-node.service/sessions\n";
    CHECK(bk_parse_cgroup_root(good, sizeof good - 1, out, err));
    CHECK_STR(out, "/sys/fs/cgroup/system.slice/broker-node.service/sessions");
    const char *bad[] = {
        "/sys/fs/cgroup/a",                 /* no newline */
        "/sys/fs/cgroup/\n",               /* the mount point itself */
        "/sys/fs/cgroupx/a\n",             /* not below it */
        "/tmp/a\n",
        "/sys/fs/cgroup/a/../../..\n",     /* climbs out */
        "/sys/fs/cgroup/a/./b\n",
        "/sys/fs/cgroup/a//b\n",
        "/sys/fs/cgroup/a/\n",             /* trailing slash */
        "/sys/fs/cgroup/a b\n",
        "/sys/fs/cgroup/a\\x2d\n",
        "/sys/fs/cgroup/a\n\n",
        "/sys/fs/cgroup/a\nb\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!bk_parse_cgroup_root(bad[i], strlen(bad[i]), out, err) && out[0] == '\0');
    memset(long_path, 'a', sizeof long_path);
    memcpy(long_path, "/sys/fs/cgroup/", 15);
    long_path[201] = '\n';
    CHECK(!bk_parse_cgroup_root(long_path, 202, out, err));
    long_path[200] = '\n';
    CHECK(bk_parse_cgroup_root(long_path, 201, out, err) && strlen(out) == 200);
}

/* A node whose .cgroup names no cgroup v2 directory refuses sudo under a grant (closed) and
 * records nothing; without .cgroup the session is recorded as not contained; break-glass is
 * recorded either way. The placement itself is shown on real cgroups by the lab tests. */
static void test_containment_fails_closed(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    struct bk_verdict v;
    char note[BK_MSG_MAX], text[256], path[512];
    struct stat st;
    reset_node();
    install_grant("g00000000000000d1", "alice", NOW - 60, NOW + 600, 0, 0, 2, signing_key,
                  "gpu01");
    mark_alive(7101, true);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/3", 7101, &v);
    CHECK(v.allow);
    CHECK_STR(v.granted.cgroup, "-");
    read_rel("run/broker-sessions/g00000000000000d1/7101", text, sizeof text);
    CHECK(strlen(text) > 3 && strcmp(text + strlen(text) - 3, " -\n") == 0);
    const char missing[] = "/sys/fs/cgroup/broker/sessions\n";
    write_file("run/broker-sessions/.cgroup", missing, sizeof missing - 1, 0644);
    mark_alive(7102, true);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/4", 7102, &v);
    CHECK(!v.allow && v.why == BK_WHY_UNCONTAINED);
    CHECK_STR(bk_why_code(v.why), "uncontained");
    CHECK_HAS(v.say, "cannot contain your session");
    snprintf(path, sizeof path, "%s/run/broker-sessions/g00000000000000d1/7102", root);
    CHECK(stat(path, &st) != 0);
    /* a plain directory is not a cgroup: refused too */
    clear_dir("sys");
    snprintf(path, sizeof path, "mkdir -p -m 0755 '%s/sys/fs/cgroup/broker/sessions'", root);
    CHECK(system(path) == 0);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/4", 7102, &v);
    CHECK(!v.allow && v.why == BK_WHY_UNCONTAINED);
    CHECK_HAS(v.log, "not a cgroup v2 directory");
    /* a .cgroup others may write is not trusted */
    write_file("run/broker-sessions/.cgroup", missing, sizeof missing - 1, 0666);
    bk_decide_sudo(&ctx, "alice", "root", "/dev/pts/4", 7102, &v);
    CHECK(!v.allow && v.why == BK_WHY_UNCONTAINED);
    /* break-glass is never refused at session open */
    mark_alive(7103, true);
    bk_open_session(&ctx, "sudo", "heidi", "root", "/dev/pts/9", 7103, NULL, note);
    CHECK_STR(note, "break-glass session 7103 recorded");
    /* heidi holds a grant that cannot take the session (uncontained) and passes as
     * break-glass: her session is recorded as break-glass, not as one of the grant's */
    install_grant("g00000000000000d2", "heidi", NOW - 60, NOW + 600, 0, 0, 2, signing_key,
                  "gpu01");
    mark_alive(7104, true);
    bk_decide_sudo(&ctx, "heidi", "root", "/dev/pts/9", 7104, &v);
    CHECK(v.allow && v.break_glass && v.granted.count == 0 && v.granted.break_glass);
    bk_open_session(&ctx, "sudo", "heidi", "root", "/dev/pts/9", 7104, &v.granted, note);
    CHECK_STR(note, "break-glass session 7104 recorded");
    snprintf(path, sizeof path, "%s/run/broker-sessions/g00000000000000d2/7104", root);
    CHECK(stat(path, &st) != 0);
    snprintf(path, sizeof path, "%s/run/broker-sessions/break-glass/7104", root);
    CHECK(stat(path, &st) == 0);
    clear_dir("sys");
    remove_file("run/broker-sessions/.cgroup");
}

static void fake_stat(long pid, long long start)
{
    char rel[64], text[512];
    snprintf(rel, sizeof rel, "proc/%ld/stat", pid);
    /* the command name holds ") (" on purpose: fields are counted from the last ')' */
    int n = snprintf(text, sizeof text,
                     "%ld (evil) (name) S 1 %ld %ld 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 "
                     "%lld 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0\n",
                     pid, pid, pid, start);
    write_file(rel, text, (size_t)n, 0644);
}

static void test_deny_events_one_per_process(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    reset_node();
    mark_alive(8001, true);
    fake_stat(8001, 555);
    bk_spool_deny(&ctx, "sudo", "bob", "root", "/dev/pts/2", 8001, BK_WHY_NO_GRANT);
    bk_spool_deny(&ctx, "sudo", "bob", "root", "/dev/pts/2", 8001, BK_WHY_NO_GRANT);
    CHECK(count_events("deny") == 1); /* auth and account of one sudo: one event */
    fake_stat(8001, 556);             /* the pid reused by a later sudo: a new event */
    bk_spool_deny(&ctx, "sudo", "bob", "root", "/dev/pts/2", 8001, BK_WHY_NO_GRANT);
    CHECK(count_events("deny") == 2);
    char cmd[600], line[64] = "";
    snprintf(cmd, sizeof cmd, "cat %s/var/spool/broker/events/*.json | grep -c "
             "'\"reason\": \"no_grant\"'", root);
    FILE *p = popen(cmd, "r");
    if (p != NULL && fgets(line, sizeof line, p) == NULL)
        line[0] = '\0';
    if (p != NULL)
        pclose(p);
    CHECK_STR(line, "2\n");
}

/* A user looping on refused sudo fills their own bucket and stops there: another user's
 * refusal (another bucket) and sessions are still spooled. */
static void test_deny_events_bucketed_per_user(void)
{
    struct bk_ctx ctx = ctx_at(NOW);
    char mallory[3], carol[3];
    reset_node();
    CHECK(bk_sha256_hex("mallory", 7, 1, mallory) && bk_sha256_hex("carol", 5, 1, carol));
    CHECK(strcmp(mallory, carol) != 0); /* the test needs two buckets */
    for (long pid = 20000; pid < 20000 + BK_DENY_SPOOL_BUCKET_LIMIT + 50; pid++)
        bk_spool_deny(&ctx, "sudo", "mallory", "root", "/dev/pts/2", (pid_t)pid,
                      BK_WHY_NO_GRANT);
    CHECK(count_events("deny") == BK_DENY_SPOOL_BUCKET_LIMIT);
    bk_spool_deny(&ctx, "sudo", "carol", "root", "/dev/pts/3", 30001, BK_WHY_NO_GRANT);
    CHECK(count_events("deny") == BK_DENY_SPOOL_BUCKET_LIMIT + 1);
    char cmd[600], line[64] = "";
    snprintf(cmd, sizeof cmd, "grep -l '\"user\": \"carol\"' %s/var/spool/broker/events/"
             "*-30001-%s??????.json | wc -l", root, carol);
    FILE *p = popen(cmd, "r");
    if (p != NULL && fgets(line, sizeof line, p) == NULL)
        line[0] = '\0';
    if (p != NULL)
        pclose(p);
    CHECK_STR(line, "1\n"); /* named with carol's bucket */
    clear_dir("var/spool/broker/events");
}

/* The start time (clock ticks since boot) of a real process, from /proc/<pid>/stat. */
static void real_start_ticks(pid_t pid, char out[32])
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    for (int field = 3; p != NULL && field <= 22; field++)
        p = strchr(p + 1, ' ');
    snprintf(out, 32, "%.*s", p != NULL ? (int)strspn(p + 1, "0123456789") : 0,
             p != NULL ? p + 1 : "");
}

/* A record left by a process whose pid a newer process took is not a live session; nor does a
 * clock step change that (the record carries the process's start in ticks, not a time). */
static void test_reused_pid_does_not_hold_a_slot(void)
{
    int64_t now = (int64_t)time(NULL);
    char text[128], rel[96], ticks[32];
    reset_node();
    install_grant("g00000000000000e1", "alice", now - 60, now + 600, 0, 0, 1, signing_key,
                  "gpu01");
    struct bk_ctx ctx = ctx_at(now);
    struct bk_verdict v;
    ctx.proc = "/proc";
    pid_t sleeper = fork();
    if (sleeper == 0) {
        pause();
        _exit(0);
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/run/broker-sessions/g00000000000000e1", root);
    mkdir(dir, 0700);
    snprintf(rel, sizeof rel, "run/broker-sessions/g00000000000000e1/%ld", (long)sleeper);
    int n = snprintf(text, sizeof text, "alice root pts/1 2020-01-01T00:00:00Z 1\n");
    write_file(rel, text, (size_t)n, 0600);
    bk_decide_sudo(&ctx, "alice", "root", NULL, getpid(), &v);
    CHECK(v.allow); /* written by a process that started at tick 1: not the sleeper's */
    real_start_ticks(sleeper, ticks);
    CHECK(ticks[0] != '\0');
    n = snprintf(text, sizeof text, "alice root pts/1 2020-01-01T00:00:00Z %s\n", ticks);
    write_file(rel, text, (size_t)n, 0600);
    bk_decide_sudo(&ctx, "alice", "root", NULL, getpid(), &v);
    CHECK(!v.allow && v.why == BK_WHY_MAX_SESSIONS); /* the sleeper's own: counts, any date */
    kill(sleeper, SIGKILL);
    waitpid(sleeper, NULL, 0);
}

/* A revoke that lands between the grant check and the session record wins. */
static void test_revoke_during_the_check_wins(void)
{
    int64_t now = (int64_t)time(NULL);
    struct bk_grants grants;
    struct bk_verdict v;
    reset_node();
    struct bk_ctx ctx = ctx_at(now);
    ctx.proc = "/proc";
    memset(&grants, 0, sizeof grants);
    grants.count = 1;
    bk_copy(grants.valid[0].id, sizeof grants.valid[0].id, "g00000000000000f1");
    grants.valid[0].max_sessions = 1;
    /* the grant was valid when read; its marker appears before the record is written */
    write_file("var/lib/broker/revoked/g00000000000000f1", "2099-01-01T00:00:00Z\n", 21, 0600);
    memset(&v, 0, sizeof v);
    bk_reserve_session(&ctx, &grants, "alice", "root", NULL, getpid(), &v);
    CHECK(!v.allow && v.why == BK_WHY_REVOKED);
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/run/broker-sessions/g00000000000000f1/%ld", root,
             (long)getpid());
    CHECK(stat(path, &st) != 0); /* and its record is gone again */
}

/* Two real processes race for the last slot (max_sessions = 1): exactly one passes. */
static void test_concurrent_max_sessions(void)
{
    /* Real processes and real time: a record is checked against its process's start. */
    int64_t now = (int64_t)time(NULL);
    reset_node();
    install_grant("g00000000000000d1", "alice", now - 60, now + 600, 0, 0, 1, signing_key,
                  "gpu01");
    for (int round = 0; round < 20; round++) {
        int go[2], result[2];
        if (pipe(go) != 0 || pipe(result) != 0)
            abort();
        pid_t kids[2];
        for (int k = 0; k < 2; k++) {
            kids[k] = fork();
            if (kids[k] == 0) {
                char byte;
                struct bk_ctx ctx = ctx_at(now);
                struct bk_verdict v;
                ctx.proc = "/proc"; /* real processes, really alive */
                close(go[1]);
                if (read(go[0], &byte, 1) != 1)
                    _exit(3);
                bk_decide_sudo(&ctx, "alice", "root", NULL, getpid(), &v);
                byte = v.allow ? 'y' : 'n';
                if (write(result[1], &byte, 1) != 1)
                    _exit(3);
                pause(); /* stay alive: the slot stays taken until we are killed */
                _exit(0);
            }
        }
        close(go[0]);
        if (write(go[1], "gg", 2) != 2)
            abort();
        close(go[1]);
        int allowed = 0;
        for (int k = 0; k < 2; k++) {
            char byte = 0;
            if (read(result[0], &byte, 1) != 1)
                abort();
            allowed += byte == 'y';
        }
        CHECK(allowed == 1);
        for (int k = 0; k < 2; k++) {
            kill(kids[k], SIGKILL);
            waitpid(kids[k], NULL, 0);
        }
        close(result[0]);
        close(result[1]);
    }
}

int main(void)
{
    char b64[64];
    if (geteuid() != 0) {
        fprintf(stderr, "unit_tests: run as root (the node's files must be root-owned)\n");
        return 2;
    }
    if (sodium_init() < 0)
        return 2;
    crypto_sign_keypair(signing_key->pk, signing_key->sk);
    crypto_sign_keypair(other_key->pk, other_key->sk);
    sodium_bin2base64(b64, sizeof b64, signing_key->pk, 32, sodium_base64_VARIANT_ORIGINAL);
    snprintf(key_line, sizeof key_line, "broker-grant-key-v1 %s\n", b64);
    bk_copy(root, sizeof root, "/tmp/bk-unit-XXXXXX");
    if (mkdtemp(root) == NULL)
        return 2;
    make_dirs();

    test_text();
    test_crypto();
    test_grant_parse();
    test_other_files();
    test_key_list_parse();
    test_files();
    test_sudo_decisions();
    test_key_list_decisions();
    test_quarantine_and_login();
    test_sessions();
    test_cgroup_root_parse();
    test_containment_fails_closed();
    test_deny_events_one_per_process();
    test_deny_events_bucketed_per_user();
    test_reused_pid_does_not_hold_a_slot();
    test_revoke_during_the_check_wins();
    test_concurrent_max_sessions();

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", root);
    printf("%d passed, %d failed\n", check_count - check_failures, check_failures);
    return check_failures == 0 ? 0 : 1;
}
