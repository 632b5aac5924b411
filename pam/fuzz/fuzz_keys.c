/* libFuzzer: the verification key list parser (grant-key.pub: 1..8 key lines). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bk_keys keys;
    char err[BK_ERR_MAX];
    if (bk_parse_keys((const char *)data, size, &keys, err)) {
        /* what a list the parser accepts must be: 1..8 keys, each line whole, ids distinct */
        if (keys.count == 0 || keys.count > BK_MAX_KEYS || size != keys.count * BK_KEY_LINE_LEN)
            __builtin_trap();
        for (size_t i = 0; i < keys.count; i++) {
            if (strlen(keys.key[i].key_id) != BK_KEY_ID_HEX)
                __builtin_trap();
            for (size_t j = 0; j < i; j++)
                if (strcmp(keys.key[i].key_id, keys.key[j].key_id) == 0)
                    __builtin_trap();
        }
    } else if (strnlen(err, BK_ERR_MAX) == 0 || strnlen(err, BK_ERR_MAX) == BK_ERR_MAX) {
        __builtin_trap(); /* every refusal says why, in a terminated string */
    }
    return 0;
}
