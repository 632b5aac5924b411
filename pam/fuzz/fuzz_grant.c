/* libFuzzer: the grant parser, then the signature check against a fixed key. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char key_line[] = "broker-grant-key-v1 "
                                   "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=\n";
    struct bk_grant grant;
    struct bk_key key;
    char err[BK_ERR_MAX];
    if (!bk_parse_key(key_line, sizeof key_line - 1, &key, err))
        __builtin_trap();
    if (bk_parse_grant((const char *)data, size, &grant, err)) {
        if (grant.signed_len > size || grant.max_sessions < 1 || grant.max_sessions > 16 ||
            grant.not_before >= grant.not_after)
            __builtin_trap();
        bk_grant_signed_by(&grant, (const char *)data, &key, err);
    }
    if (strnlen(err, BK_ERR_MAX) >= BK_ERR_MAX)
        __builtin_trap();
    return 0;
}
