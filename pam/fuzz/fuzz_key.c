/* libFuzzer: the verification key line parser. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bk_key key;
    char err[BK_ERR_MAX];
    if (bk_parse_key((const char *)data, size, &key, err) && strlen(key.key_id) != 16)
        __builtin_trap();
    return 0;
}
