/* Parsers of the node's files (docs/grants.md). Every refusal names its reason. */
#include "bk_contract.h"

#include <stdio.h>
#include <string.h>

static const char *const GRANT_KEYS[] = {
    "id",        "node",       "user",         "runas",         "commands",  "not_before",
    "not_after", "login",      "workloads",    "max_sessions",  "policy_sha256",
    "approvers", "reason",     "issued_at",    "key_id",        "signature",
};
#define GRANT_KEY_COUNT (sizeof GRANT_KEYS / sizeof GRANT_KEYS[0])

static void fail(char err[BK_ERR_MAX], const char *what)
{
    bk_copy(err, BK_ERR_MAX, what);
}

static void fail_key(char err[BK_ERR_MAX], const char *prefix, const char *key)
{
    snprintf(err, BK_ERR_MAX, "%s%s", prefix, key);
}

static bool copy_span(char *out, size_t size, struct bk_span s)
{
    if (s.n >= size)
        return false;
    if (s.n > 0)
        memcpy(out, s.p, s.n);
    out[s.n] = '\0';
    return true;
}

static bool flag(struct bk_span s, bool *out)
{
    if (s.n != 1 || (s.p[0] != '0' && s.p[0] != '1'))
        return false;
    *out = s.p[0] == '1';
    return true;
}

static bool sessions_value(struct bk_span s, int *out)
{
    if (s.n == 0 || s.n > 2 || s.p[0] == '0')
        return false;
    int v = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return false;
        v = v * 10 + (s.p[i] - '0');
    }
    if (v < 1 || v > BK_MAX_SESSIONS_LIMIT)
        return false;
    *out = v;
    return true;
}

static bool is_commands(const char *p, size_t n)
{
    return (n == 3 && memcmp(p, "ALL", 3) == 0) || bk_is_list(p, n, bk_is_set_name, false);
}

/* Split the file into lines: printable ASCII, ends in '\n', exactly `want` lines. */
static bool split_lines(const char *data, size_t len, struct bk_span *lines, size_t want,
                        char err[BK_ERR_MAX])
{
    if (len == 0 || data[len - 1] != '\n') {
        fail(err, "does not end with a newline");
        return false;
    }
    size_t count = 0, start = 0;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if ((unsigned char)c > 0x7f) {
            fail(err, "not ASCII");
            return false;
        }
        if (c != '\n' && (c < ' ' || c > '~')) {
            fail(err, "control character in the file");
            return false;
        }
        if (c == '\n') {
            if (count == want) {
                count++;
                break;
            }
            lines[count].p = data + start;
            lines[count].n = i - start;
            count++;
            start = i + 1;
        }
    }
    if (count != want) {
        fail(err, "not a " BK_GRANT_MAGIC " file (wrong magic or number of lines)");
        return false;
    }
    return true;
}

static bool grant_values(const struct bk_span *v, struct bk_grant *g, char err[BK_ERR_MAX]);

bool bk_parse_grant(const char *data, size_t len, struct bk_grant *out, char err[BK_ERR_MAX])
{
    struct bk_span lines[GRANT_KEY_COUNT + 1], values[GRANT_KEY_COUNT];
    memset(out, 0, sizeof *out);
    if (len > BK_MAX_FILE) {
        snprintf(err, BK_ERR_MAX, "larger than %d bytes", BK_MAX_FILE);
        return false;
    }
    if (!split_lines(data, len, lines, GRANT_KEY_COUNT + 1, err))
        return false;
    if (!bk_span_eq(lines[0], BK_GRANT_MAGIC)) {
        fail(err, "not a " BK_GRANT_MAGIC " file (wrong magic or number of lines)");
        return false;
    }
    for (size_t k = 0; k < GRANT_KEY_COUNT; k++) {
        struct bk_span line = lines[k + 1];
        size_t key_len = strlen(GRANT_KEYS[k]);
        if (line.n <= key_len || memcmp(line.p, GRANT_KEYS[k], key_len) != 0 ||
            line.p[key_len] != '=') {
            snprintf(err, BK_ERR_MAX, "line %zu: expected %s=", k + 2, GRANT_KEYS[k]);
            return false;
        }
        values[k].p = line.p + key_len + 1;
        values[k].n = line.n - key_len - 1;
    }
    /* The signature covers every byte before the `signature=` line. */
    out->signed_len = (size_t)(lines[GRANT_KEY_COUNT].p - data);
    return grant_values(values, out, err);
}

static bool grant_names(const struct bk_span *v, struct bk_grant *g, char err[BK_ERR_MAX])
{
    if (!bk_is_grant_id(v[0].p, v[0].n) || !copy_span(g->id, sizeof g->id, v[0])) {
        fail(err, "bad id");
        return false;
    }
    if (!bk_is_node_name(v[1].p, v[1].n) || !copy_span(g->node, sizeof g->node, v[1])) {
        fail(err, "bad node");
        return false;
    }
    if (!bk_is_posix_name(v[2].p, v[2].n) || !copy_span(g->user, sizeof g->user, v[2])) {
        fail(err, "bad user");
        return false;
    }
    if (!bk_is_posix_name(v[3].p, v[3].n) || !copy_span(g->runas, sizeof g->runas, v[3])) {
        fail(err, "bad runas");
        return false;
    }
    if (!is_commands(v[4].p, v[4].n)) {
        fail(err, "bad commands");
        return false;
    }
    g->commands = v[4];
    return true;
}

static bool grant_times(const struct bk_span *v, struct bk_grant *g, char err[BK_ERR_MAX])
{
    if (!bk_parse_utc(v[5].p, v[5].n, &g->not_before)) {
        fail(err, "bad not_before");
        return false;
    }
    if (!bk_parse_utc(v[6].p, v[6].n, &g->not_after)) {
        fail(err, "bad not_after");
        return false;
    }
    if (!bk_parse_utc(v[13].p, v[13].n, &g->issued_at)) {
        fail(err, "bad issued_at");
        return false;
    }
    if (g->not_before >= g->not_after) {
        fail(err, "not_before is not before not_after");
        return false;
    }
    return true;
}

static bool grant_values(const struct bk_span *v, struct bk_grant *g, char err[BK_ERR_MAX])
{
    if (!grant_names(v, g, err) || !grant_times(v, g, err))
        return false;
    if (!flag(v[7], &g->login)) {
        fail_key(err, "bad ", "login");
        return false;
    }
    if (!flag(v[8], &g->workloads)) {
        fail_key(err, "bad ", "workloads");
        return false;
    }
    if (!sessions_value(v[9], &g->max_sessions)) {
        fail(err, "bad max_sessions");
        return false;
    }
    if (!bk_is_hex(v[10].p, v[10].n, 64) ||
        !copy_span(g->policy_sha256, sizeof g->policy_sha256, v[10])) {
        fail(err, "bad policy_sha256");
        return false;
    }
    if (!bk_is_list(v[11].p, v[11].n, bk_is_posix_name, true)) {
        fail(err, "bad approvers");
        return false;
    }
    g->approvers = v[11];
    if (!bk_is_reason(v[12].p, v[12].n)) {
        fail(err, "bad reason");
        return false;
    }
    g->reason = v[12];
    if (!bk_is_hex(v[14].p, v[14].n, BK_KEY_ID_HEX) ||
        !copy_span(g->key_id, sizeof g->key_id, v[14])) {
        fail(err, "bad key_id");
        return false;
    }
    if (!bk_b64_exact(v[15].p, v[15].n, g->signature, BK_SIG_LEN)) {
        fail(err, "bad signature encoding");
        return false;
    }
    return true;
}

bool bk_grant_signed_by(const struct bk_grant *grant, const char *data, const struct bk_key *key,
                        char err[BK_ERR_MAX])
{
    if (strcmp(grant->key_id, key->key_id) != 0) {
        snprintf(err, BK_ERR_MAX, "signed by key %s, this node trusts %s", grant->key_id,
                 key->key_id);
        return false;
    }
    if (!bk_ed25519_verify(key->raw, (const unsigned char *)data, grant->signed_len,
                           grant->signature)) {
        fail(err, "bad signature");
        return false;
    }
    return true;
}

bool bk_parse_key(const char *data, size_t len, struct bk_key *out, char err[BK_ERR_MAX])
{
    const size_t magic = sizeof BK_KEY_MAGIC - 1, b64 = 44;
    memset(out, 0, sizeof *out);
    /* `broker-grant-key-v1 <base64 of 32 bytes>\n`, nothing else */
    if (len != magic + 1 + b64 + 1 || memcmp(data, BK_KEY_MAGIC, magic) != 0 ||
        data[magic] != ' ' || data[len - 1] != '\n' ||
        !bk_b64_exact(data + magic + 1, b64, out->raw, BK_PUBKEY_LEN) ||
        !bk_ed25519_key_ok(out->raw) ||
        !bk_sha256_hex(out->raw, BK_PUBKEY_LEN, BK_KEY_ID_HEX / 2, out->key_id)) {
        fail(err, "not a " BK_KEY_MAGIC " line");
        return false;
    }
    return true;
}

/* Each line must be a whole key line: its length is checked before anything is parsed, so
 * a long or short line is refused by its number and no line is read past its end. */
bool bk_parse_keys(const char *data, size_t len, struct bk_keys *out, char err[BK_ERR_MAX])
{
    char line_err[BK_ERR_MAX];
    memset(out, 0, sizeof *out);
    if (len == 0) {
        fail(err, "no key listed");
        return false;
    }
    size_t start = 0;
    while (start < len) {
        size_t number = out->count + 1;
        const char *nl = memchr(data + start, '\n', len - start);
        size_t n = nl == NULL ? len - start : (size_t)(nl - (data + start)) + 1;
        if (out->count == BK_MAX_KEYS) {
            snprintf(err, BK_ERR_MAX, "more than %d keys listed", BK_MAX_KEYS);
            return false;
        }
        if (n != BK_KEY_LINE_LEN) {
            snprintf(err, BK_ERR_MAX, "line %zu: %s", number,
                     n > BK_KEY_LINE_LEN ? "too long for a " BK_KEY_MAGIC " line"
                                         : "not a " BK_KEY_MAGIC " line");
            return false;
        }
        struct bk_key *key = &out->key[out->count];
        if (!bk_parse_key(data + start, n, key, line_err)) {
            snprintf(err, BK_ERR_MAX, "line %zu: %s", number, line_err);
            return false;
        }
        for (size_t k = 0; k < out->count; k++) {
            if (strcmp(out->key[k].key_id, key->key_id) == 0) {
                snprintf(err, BK_ERR_MAX, "line %zu: key %s is also on line %zu", number,
                         key->key_id, k + 1);
                return false;
            }
        }
        out->count++;
        start += n;
    }
    return true;
}

bool bk_grant_signed_by_any(const struct bk_grant *grant, const char *data,
                            const struct bk_keys *keys, char err[BK_ERR_MAX])
{
    for (size_t k = 0; k < keys->count; k++) {
        if (strcmp(grant->key_id, keys->key[k].key_id) == 0)
            return bk_grant_signed_by(grant, data, &keys->key[k], err);
    }
    if (keys->count == 1)
        return bk_grant_signed_by(grant, data, &keys->key[0], err);
    snprintf(err, BK_ERR_MAX, "signed by key %s, which is not among the %zu keys this node trusts",
             grant->key_id, keys->count);
    return false;
}

/* ------------------------------------------------------------ key=value files */

struct kv {
    const char *key;
    struct bk_span value;
    bool seen;
};

static struct bk_span trim(const char *p, size_t n)
{
    while (n > 0 && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' ||
                     p[n - 1] == '\v' || p[n - 1] == '\f'))
        n--;
    struct bk_span s = {p, n};
    return s;
}

static bool kv_line(struct bk_span line, struct kv *known, size_t count)
{
    const char *eq = memchr(line.p, '=', line.n);
    if (eq == NULL)
        return false;
    struct bk_span key = trim(line.p, (size_t)(eq - line.p));
    struct bk_span value = trim(eq + 1, line.n - (size_t)(eq - line.p) - 1);
    for (size_t k = 0; k < count; k++) {
        if (bk_span_eq(key, known[k].key)) {
            if (known[k].seen)
                return false;
            known[k].seen = true;
            known[k].value = value;
            return true;
        }
    }
    return false;
}

/* `key=value` lines, blank lines and `#` comments, each known key at most once. */
static bool key_values(const char *data, size_t len, struct kv *known, size_t count,
                       char err[BK_ERR_MAX])
{
    size_t start = 0, number = 1;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] > 0x7f) {
            fail(err, "not ASCII");
            return false;
        }
    for (size_t i = 0; i <= len; i++) {
        if (i < len && data[i] != '\n')
            continue;
        struct bk_span line = trim(data + start, i - start);
        if (line.n > 0 && line.p[0] != '#' && !kv_line(line, known, count)) {
            snprintf(err, BK_ERR_MAX, "line %zu: unknown or repeated setting", number);
            return false;
        }
        start = i + 1;
        number++;
    }
    return true;
}

static bool conf_service_ok(struct bk_span s)
{
    if (s.n == 0)
        return true;
    return bk_is_service_name(s.p, s.n) && !bk_span_eq(s, "sudo") && !bk_span_eq(s, "sudo-i") &&
           !bk_span_eq(s, "sshd");
}

bool bk_parse_conf(const char *data, size_t len, struct bk_conf *out, char err[BK_ERR_MAX])
{
    struct kv known[] = {
        {"node", {NULL, 0}, false},
        {"login_gated", {NULL, 0}, false},
        {"break_glass_group", {NULL, 0}, false},
        {"joblaunch_service", {NULL, 0}, false},
    };
    char inner[BK_ERR_MAX];
    memset(out, 0, sizeof *out);
    if (!key_values(data, len, known, 4, inner)) {
        snprintf(err, BK_ERR_MAX, "node.conf: %s", inner);
        return false;
    }
    if (!known[0].seen || !bk_is_node_name(known[0].value.p, known[0].value.n) ||
        !copy_span(out->node, sizeof out->node, known[0].value)) {
        fail(err, "node.conf: node is missing or not a node name");
        return false;
    }
    if (!flag(known[1].value, &out->login_gated)) {
        fail(err, "node.conf: login_gated must be 0 or 1");
        return false;
    }
    if (!bk_is_group_name(known[2].value.p, known[2].value.n) ||
        !copy_span(out->break_glass_group, sizeof out->break_glass_group, known[2].value)) {
        fail(err, "node.conf: bad break_glass_group");
        return false;
    }
    if (!conf_service_ok(known[3].value) ||
        !copy_span(out->joblaunch_service, sizeof out->joblaunch_service, known[3].value)) {
        fail(err, "node.conf: bad joblaunch_service");
        return false;
    }
    return true;
}

static bool cgroup_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '@' || c == '-';
}

bool bk_parse_cgroup_root(const char *data, size_t len, char out[BK_CGROUP_PATH_MAX + 1],
                          char err[BK_ERR_MAX])
{
    size_t prefix = strlen(BK_CGROUP_PREFIX);
    out[0] = '\0';
    if (len < 2 || data[len - 1] != '\n' || len - 1 > BK_CGROUP_PATH_MAX) {
        fail(err, ".cgroup: not one line of at most 200 characters");
        return false;
    }
    size_t n = len - 1;
    if (n <= prefix || memcmp(data, BK_CGROUP_PREFIX, prefix) != 0) {
        fail(err, ".cgroup: not a directory below " BK_CGROUP_PREFIX);
        return false;
    }
    for (size_t i = prefix, start = prefix; i <= n; i++) {
        if (i < n && data[i] != '/') {
            if (!cgroup_char(data[i])) {
                fail(err, ".cgroup: a character outside [A-Za-z0-9._@-]");
                return false;
            }
            continue;
        }
        size_t part = i - start;
        if (part == 0 || (part == 1 && data[start] == '.') ||
            (part == 2 && data[start] == '.' && data[start + 1] == '.')) {
            fail(err, ".cgroup: an empty, `.` or `..` path component");
            return false;
        }
        start = i + 1;
    }
    memcpy(out, data, n);
    out[n] = '\0';
    return true;
}

static int hex_digit(char c) { return c <= '9' ? c - '0' : c - 'A' + 10; }

/* Length of the UTF-8 sequence starting with `lead` and its smallest code point. */
static int utf8_length(unsigned char lead, uint32_t *min)
{
    if (lead < 0x80) { *min = 0; return 1; }
    if (lead >= 0xc2 && lead <= 0xdf) { *min = 0x80; return 2; }
    if (lead >= 0xe0 && lead <= 0xef) { *min = 0x800; return 3; }
    if (lead >= 0xf0 && lead <= 0xf4) { *min = 0x10000; return 4; }
    return 0;
}

/* The reason as the broker writes it (detect/quarantine.py): percent-encoded UTF-8 of 1 to
 * 200 characters, none of them a control character (C0, DEL, C1), not only blanks. */
static bool quarantine_reason_ok(struct bk_span s)
{
    unsigned char bytes[BK_QUARANTINE_REASON_MAX * 4];
    size_t n = 0, chars = 0;
    bool blank = true;
    if (!bk_is_reason(s.p, s.n))
        return false;
    for (size_t i = 0; i < s.n; n++) {
        if (n == sizeof bytes)
            return false;
        if (s.p[i] == '%') {
            bytes[n] = (unsigned char)(hex_digit(s.p[i + 1]) * 16 + hex_digit(s.p[i + 2]));
            i += 3;
        } else {
            bytes[n] = (unsigned char)s.p[i++];
        }
    }
    for (size_t i = 0; i < n; chars++) {
        uint32_t min = 0, cp;
        int len = utf8_length(bytes[i], &min);
        if (len == 0 || (size_t)len > n - i)
            return false;
        cp = len == 1 ? bytes[i] : (uint32_t)(bytes[i] & (0x7f >> len));
        for (int k = 1; k < len; k++) {
            if ((bytes[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (bytes[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false; /* overlong, out of range, surrogate */
        if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
            return false;
        if (cp != ' ')
            blank = false;
        i += (size_t)len;
    }
    return !blank && chars > 0 && chars <= BK_QUARANTINE_REASON_MAX;
}

bool bk_parse_quarantine(const char *data, size_t len, struct bk_quarantine *out,
                         char err[BK_ERR_MAX])
{
    struct kv known[] = {
        {"node", {NULL, 0}, false},
        {"since", {NULL, 0}, false},
        {"group", {NULL, 0}, false},
        {"reason", {NULL, 0}, false},
    };
    memset(out, 0, sizeof *out);
    if (!key_values(data, len, known, 4, err))
        return false;
    for (size_t k = 0; k < 4; k++)
        if (!known[k].seen) {
            fail(err, "a setting is missing");
            return false;
        }
    if (!bk_is_node_name(known[0].value.p, known[0].value.n) ||
        !copy_span(out->node, sizeof out->node, known[0].value)) {
        fail(err, "bad node");
        return false;
    }
    if (!bk_parse_utc(known[1].value.p, known[1].value.n, &out->since)) {
        fail(err, "bad since");
        return false;
    }
    if (!bk_is_group_name(known[2].value.p, known[2].value.n) ||
        !copy_span(out->group, sizeof out->group, known[2].value)) {
        fail(err, "bad group");
        return false;
    }
    if (!quarantine_reason_ok(known[3].value) ||
        !copy_span(out->reason, sizeof out->reason, known[3].value)) {
        fail(err, "bad reason");
        return false;
    }
    return true;
}
