/* Allow-lists, UTC time text and log-safe text (docs/grants.md). No I/O. */
#include "bk_text.h"

#include <stdio.h>
#include <string.h>

static bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
static bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_hex_lower(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }
static bool is_hex_upper(char c) { return is_digit(c) || (c >= 'A' && c <= 'F'); }
static bool is_unreserved(char c)
{
    return is_lower(c) || is_upper(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

bool bk_span_eq(struct bk_span s, const char *text)
{
    size_t n = strlen(text);
    return s.n == n && memcmp(s.p, text, n) == 0;
}

bool bk_is_grant_id(const char *p, size_t n)
{
    if (n != BK_GRANT_ID_LEN || p[0] != 'g')
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_hex_lower(p[i]))
            return false;
    return true;
}

bool bk_is_posix_name(const char *p, size_t n)
{
    if (n == 0 || n > BK_NAME_MAX || !(is_lower(p[0]) || p[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(is_lower(p[i]) || is_digit(p[i]) || p[i] == '_' || p[i] == '-'))
            return false;
    return true;
}

bool bk_is_node_name(const char *p, size_t n)
{
    if (n == 0 || n > BK_NODE_MAX || p[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(is_lower(p[i]) || is_digit(p[i]) || p[i] == '-'))
            return false;
    return true;
}

bool bk_is_set_name(const char *p, size_t n)
{
    if (n == 0 || n > BK_SET_MAX || !is_lower(p[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(is_lower(p[i]) || is_digit(p[i]) || p[i] == '-'))
            return false;
    return true;
}

bool bk_is_group_name(const char *p, size_t n)
{
    if (n > BK_GROUP_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(is_lower(p[i]) || is_upper(p[i]) || is_digit(p[i]) || p[i] == '_' || p[i] == '.' ||
              p[i] == '-'))
            return false;
    return true;
}

bool bk_is_service_name(const char *p, size_t n)
{
    if (n == 0 || n > BK_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(is_lower(p[i]) || is_digit(p[i]) || p[i] == '_' || p[i] == '.' || p[i] == '-'))
            return false;
    return true;
}

bool bk_is_hex(const char *p, size_t n, size_t want)
{
    if (n != want)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_hex_lower(p[i]))
            return false;
    return true;
}

static int hex_value(char c) { return is_digit(c) ? c - '0' : c - 'A' + 10; }

bool bk_is_reason(const char *p, size_t n)
{
    if (n == 0)
        return false;
    size_t i = 0;
    while (i < n) {
        if (p[i] == '%') {
            if (n - i < 3 || !is_hex_upper(p[i + 1]) || !is_hex_upper(p[i + 2]))
                return false;
            char decoded = (char)(hex_value(p[i + 1]) * 16 + hex_value(p[i + 2]));
            if (is_unreserved(decoded))
                return false; /* not canonical: that byte stays literal */
            i += 3;
        } else if (is_unreserved(p[i])) {
            i++;
        } else {
            return false;
        }
    }
    return true;
}

bool bk_is_list(const char *p, size_t n, bool (*check)(const char *, size_t), bool empty_ok)
{
    if (n == 0)
        return empty_ok;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || p[i] == ',') {
            if (!check(p + start, i - start))
                return false;
            start = i + 1;
        }
    }
    return true;
}

/* Howard Hinnant's days_from_civil: proleptic Gregorian, no time zone involved. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int month_days(int64_t year, int64_t month)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    return month == 2 && leap ? 29 : days[month - 1];
}

static bool digits(const char *p, size_t n, int64_t *out)
{
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(p[i]))
            return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return true;
}

bool bk_parse_utc(const char *p, size_t n, int64_t *out)
{
    int64_t y, mo, d, h, mi, s;
    if (n != BK_UTC_LEN || p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':' ||
        p[16] != ':' || p[19] != 'Z')
        return false;
    if (!digits(p, 4, &y) || !digits(p + 5, 2, &mo) || !digits(p + 8, 2, &d) ||
        !digits(p + 11, 2, &h) || !digits(p + 14, 2, &mi) || !digits(p + 17, 2, &s))
        return false;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > month_days(y, mo) || h > 23 || mi > 59 ||
        s > 59)
        return false;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
    return true;
}

void bk_format_utc(int64_t epoch, char out[BK_UTC_LEN + 1])
{
    int64_t days = epoch / 86400, rest = epoch % 86400;
    if (rest < 0) {
        rest += 86400;
        days -= 1;
    }
    /* civil_from_days */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    if (y < 0 || y > 9999)
        y = y < 0 ? 0 : 9999; /* never reached for the times a node sees; keeps the width */
    snprintf(out, BK_UTC_LEN + 1, "%04d-%02d-%02dT%02d:%02d:%02dZ", (int)y, (int)m, (int)d,
             (int)(rest / 3600), (int)(rest / 60 % 60), (int)(rest % 60));
}

void bk_clean(const char *p, size_t n, char *out, size_t size)
{
    if (size == 0)
        return;
    size_t room = size - 1, o = 0;
    bool cut = n > room;
    size_t keep = cut ? (room >= 3 ? room - 3 : 0) : n;
    for (size_t i = 0; i < keep; i++)
        out[o++] = (p[i] >= ' ' && p[i] <= '~') ? p[i] : '?';
    if (cut)
        for (size_t i = 0; i < 3 && o < room; i++)
            out[o++] = '.';
    out[o] = '\0';
}

bool bk_copy(char *out, size_t size, const char *text)
{
    if (size == 0)
        return false;
    size_t n = strlen(text);
    bool fits = n < size;
    size_t take = fits ? n : size - 1;
    memcpy(out, text, take);
    out[take] = '\0';
    return fits;
}

bool bk_append(char *out, size_t size, const char *text)
{
    size_t used = strnlen(out, size);
    if (used >= size)
        return false;
    return bk_copy(out + used, size - used, text);
}
