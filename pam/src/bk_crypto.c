/* Thin wrappers over libsodium: no curve arithmetic, no hash of ours. */
#include "bk_crypto.h"

#include <string.h>
#include <sys/random.h>

#include <sodium.h>

/* sodium_init is idempotent and thread-safe; a failure (no entropy source) is "no". */
static bool ready(void)
{
    return sodium_init() >= 0;
}

static void to_hex(const unsigned char *raw, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
    out[2 * n] = '\0';
}

bool bk_b64_exact(const char *text, size_t n, unsigned char *out, size_t want)
{
    /* Both buffers fit the largest thing decoded here (a 64-byte signature). */
    unsigned char decoded[64];
    char again[96];
    size_t got = 0;
    const char *end = NULL;
    if (want > sizeof decoded || n != 4 * ((want + 2) / 3) || !ready())
        return false;
    if (sodium_base642bin(decoded, sizeof decoded, text, n, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        got != want || end != text + n)
        return false;
    /* Canonical form only: encoding the bytes again must give back the very same text. */
    sodium_bin2base64(again, sizeof again, decoded, want, sodium_base64_VARIANT_ORIGINAL);
    if (strlen(again) != n || memcmp(again, text, n) != 0)
        return false;
    memcpy(out, decoded, want);
    return true;
}

bool bk_ed25519_verify(const unsigned char pub[BK_PUBKEY_LEN], const unsigned char *msg,
                       size_t len, const unsigned char sig[BK_SIG_LEN])
{
    /* libsodium's verification is strict: non-canonical signatures and small-order keys
     * are refused. */
    return ready() && crypto_sign_verify_detached(sig, msg, len, pub) == 0;
}

bool bk_ed25519_key_ok(const unsigned char pub[BK_PUBKEY_LEN])
{
    return ready() && crypto_core_ed25519_is_valid_point(pub) == 1;
}

bool bk_sha256_hex(const void *data, size_t len, size_t bytes, char *out)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    if (bytes > sizeof digest || !ready() ||
        crypto_hash_sha256(digest, (const unsigned char *)data, len) != 0)
        return false;
    to_hex(digest, bytes, out);
    return true;
}

bool bk_random_hex(size_t bytes, char *out)
{
    unsigned char raw[16];
    if (bytes > sizeof raw || getrandom(raw, bytes, 0) != (ssize_t)bytes)
        return false;
    to_hex(raw, bytes, out);
    return true;
}
