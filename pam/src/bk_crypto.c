/* Thin wrappers over libcrypto: no curve arithmetic, no hash of ours. */
#include "bk_crypto.h"

#include <string.h>
#include <sys/random.h>

#include <openssl/evp.h>

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
    unsigned char decoded[96];
    unsigned char again[132];
    size_t encoded_len = 4 * ((want + 2) / 3);
    if (want > 64 || n != encoded_len)
        return false;
    int got = EVP_DecodeBlock(decoded, (const unsigned char *)text, (int)n);
    if (got < 0 || (size_t)got < want)
        return false;
    /* Canonical form only: encoding the bytes again must give back the very same text. */
    int back = EVP_EncodeBlock(again, decoded, (int)want);
    if (back < 0 || (size_t)back != n || memcmp(again, text, n) != 0)
        return false;
    memcpy(out, decoded, want);
    return true;
}

bool bk_ed25519_verify(const unsigned char pub[BK_PUBKEY_LEN], const unsigned char *msg,
                       size_t len, const unsigned char sig[BK_SIG_LEN])
{
    bool ok = false;
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, BK_PUBKEY_LEN);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (key != NULL && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1)
        ok = EVP_DigestVerify(ctx, sig, BK_SIG_LEN, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok;
}

bool bk_ed25519_key_ok(const unsigned char pub[BK_PUBKEY_LEN])
{
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, BK_PUBKEY_LEN);
    bool ok = key != NULL;
    EVP_PKEY_free(key);
    return ok;
}

bool bk_sha256_hex(const void *data, size_t len, size_t bytes, char *out)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int got = 0;
    if (bytes > 32 || EVP_Digest(data, len, digest, &got, EVP_sha256(), NULL) != 1 || got < bytes)
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
