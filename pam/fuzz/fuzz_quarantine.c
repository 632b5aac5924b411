/* libFuzzer: the quarantine marker parser. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bk_quarantine q;
    char err[BK_ERR_MAX];
    if (bk_parse_quarantine((const char *)data, size, &q, err) &&
        !bk_is_reason(q.reason, strlen(q.reason)))
        __builtin_trap();
    return 0;
}
