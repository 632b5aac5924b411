/* Allow-lists, UTC time text and log-safe text: the pure pieces of docs/grants.md. */
#ifndef BK_TEXT_H
#define BK_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BK_GRANT_ID_LEN 17   /* "g" + 16 lower-case hex */
#define BK_NAME_MAX 32       /* POSIX user names */
#define BK_NODE_MAX 63
#define BK_GROUP_MAX 64
#define BK_SERVICE_MAX 64
#define BK_SET_MAX 48
#define BK_UTC_LEN 20        /* YYYY-MM-DDTHH:MM:SSZ */

/* A view into a caller's buffer: parsers never copy what they only check. */
struct bk_span {
    const char *p;
    size_t n;
};

bool bk_span_eq(struct bk_span s, const char *text);
bool bk_is_grant_id(const char *p, size_t n);
bool bk_is_posix_name(const char *p, size_t n);
bool bk_is_node_name(const char *p, size_t n);
bool bk_is_set_name(const char *p, size_t n);
bool bk_is_group_name(const char *p, size_t n);   /* may be empty */
bool bk_is_service_name(const char *p, size_t n);
bool bk_is_hex(const char *p, size_t n, size_t want);
bool bk_is_reason(const char *p, size_t n);       /* canonical percent-encoding, not empty */
/* `check` over a comma-joined list; empty is allowed only when `empty_ok`. */
bool bk_is_list(const char *p, size_t n, bool (*check)(const char *, size_t), bool empty_ok);

/* `YYYY-MM-DDTHH:MM:SSZ` -> seconds since the epoch; false unless exactly that. */
bool bk_parse_utc(const char *p, size_t n, int64_t *out);
/* Seconds since the epoch -> `YYYY-MM-DDTHH:MM:SSZ` in `out` (at least 21 bytes). */
void bk_format_utc(int64_t epoch, char out[BK_UTC_LEN + 1]);

/* Copy `p[0..n)` into `out` (size `size` > 0) keeping printable ASCII, `?` for the rest,
 * cut with "..." when longer than fits: for log lines and the person's message. */
void bk_clean(const char *p, size_t n, char *out, size_t size);
/* Bounded copy of a NUL-terminated string; always terminates; false when it was cut. */
bool bk_copy(char *out, size_t size, const char *text);
/* Append a NUL-terminated string at `out`'s end, bounded by `size`; false when cut. */
bool bk_append(char *out, size_t size, const char *text);

#endif
