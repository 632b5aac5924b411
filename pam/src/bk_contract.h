/* The node's files as docs/grants.md defines them: the grant file (broker-grant-v1), the
 * verification key, node.conf and the quarantine marker. Parsers only: no I/O, every length
 * bounded by the buffer they are given, a reason string on every refusal. */
#ifndef BK_CONTRACT_H
#define BK_CONTRACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bk_crypto.h"
#include "bk_text.h"

#define BK_MAX_FILE 8192
#define BK_MAX_SESSIONS_LIMIT 16
#define BK_ERR_MAX 256
#define BK_GRANT_MAGIC "broker-grant-v1"
#define BK_KEY_MAGIC "broker-grant-key-v1"
#define BK_KEY_LINE_LEN (sizeof BK_KEY_MAGIC - 1 + 1 + 44 + 1) /* magic, space, base64, \n */
#define BK_MAX_KEYS 8
#define BK_KEYS_FILE_MAX (BK_MAX_KEYS * BK_KEY_LINE_LEN)
#define BK_QUARANTINE_REASON_MAX 200
#define BK_CGROUP_PREFIX "/sys/fs/cgroup/"
#define BK_CGROUP_PATH_MAX 200

/* A parsed grant; the spans point into the buffer that was parsed. */
struct bk_grant {
    char id[BK_GRANT_ID_LEN + 1];
    char node[BK_NODE_MAX + 1];
    char user[BK_NAME_MAX + 1];
    char runas[BK_NAME_MAX + 1];
    struct bk_span commands; /* "ALL" or set names joined by ',' */
    int64_t not_before, not_after, issued_at;
    bool login, workloads;
    int max_sessions;
    char policy_sha256[65];
    struct bk_span approvers; /* names joined by ',' (may be empty) */
    struct bk_span reason;    /* percent-encoded, never decoded by the node */
    char key_id[BK_KEY_ID_HEX + 1];
    unsigned char signature[BK_SIG_LEN];
    size_t signed_len; /* the signature covers data[0..signed_len) */
};

struct bk_key {
    unsigned char raw[BK_PUBKEY_LEN];
    char key_id[BK_KEY_ID_HEX + 1];
};

/* The keys a node trusts (grant-key.pub): 1..BK_MAX_KEYS, one per broker, in file order. */
struct bk_keys {
    size_t count;
    struct bk_key key[BK_MAX_KEYS];
};

struct bk_conf {
    char node[BK_NODE_MAX + 1];
    bool login_gated;
    char break_glass_group[BK_GROUP_MAX + 1];
    char joblaunch_service[BK_SERVICE_MAX + 1];
};

struct bk_quarantine {
    char node[BK_NODE_MAX + 1];
    int64_t since;
    char group[BK_GROUP_MAX + 1];
    char reason[BK_QUARANTINE_REASON_MAX * 4 * 3 + 1]; /* kept percent-encoded */
};

/* Each returns true when `data[0..len)` is exactly a valid file; else false with `err`. */
bool bk_parse_grant(const char *data, size_t len, struct bk_grant *out, char err[BK_ERR_MAX]);
bool bk_parse_key(const char *data, size_t len, struct bk_key *out, char err[BK_ERR_MAX]);
/* grant-key.pub: 1..BK_MAX_KEYS key lines (each exactly as bk_parse_key takes one), no blank
 * line, no comment, no key twice (by key id); anything else refuses the whole file. */
bool bk_parse_keys(const char *data, size_t len, struct bk_keys *out, char err[BK_ERR_MAX]);
bool bk_parse_conf(const char *data, size_t len, struct bk_conf *out, char err[BK_ERR_MAX]);
bool bk_parse_quarantine(const char *data, size_t len, struct bk_quarantine *out,
                         char err[BK_ERR_MAX]);

/* `.cgroup` beside the session records (written by `broker-node watch`): the cgroup v2
 * directory sessions are contained under, an absolute path below /sys/fs/cgroup/ made of
 * components of [A-Za-z0-9._@-] (none `.` or `..`), then one "\n". */
bool bk_parse_cgroup_root(const char *data, size_t len, char out[BK_CGROUP_PATH_MAX + 1],
                          char err[BK_ERR_MAX]);

/* The signature check of a parsed grant against the node's key: key id, then Ed25519. */
bool bk_grant_signed_by(const struct bk_grant *grant, const char *data, const struct bk_key *key,
                        char err[BK_ERR_MAX]);
/* The same against the node's key list: the key whose id the grant names must be listed and
 * must verify the signature; no other key is tried. */
bool bk_grant_signed_by_any(const struct bk_grant *grant, const char *data,
                            const struct bk_keys *keys, char err[BK_ERR_MAX]);

#endif
