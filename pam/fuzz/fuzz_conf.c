/* libFuzzer: the node.conf parser. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bk_contract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bk_conf conf;
    char err[BK_ERR_MAX];
    if (bk_parse_conf((const char *)data, size, &conf, err) &&
        !bk_is_node_name(conf.node, strlen(conf.node)))
        __builtin_trap();
    return 0;
}
