/* Everything cryptographic comes from libsodium: Ed25519, SHA-256, base64 (docs/grants.md
 * says why libsodium and not OpenSSL's libcrypto). None of it is ours. */
#ifndef BK_CRYPTO_H
#define BK_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BK_PUBKEY_LEN 32
#define BK_SIG_LEN 64
#define BK_KEY_ID_HEX 16

/* Canonical, padded, standard-alphabet base64 of exactly `want` bytes, or false. */
bool bk_b64_exact(const char *text, size_t n, unsigned char *out, size_t want);
/* Ed25519 (RFC 8032, pure) verification; false on any failure, never "unsure". */
bool bk_ed25519_verify(const unsigned char pub[BK_PUBKEY_LEN], const unsigned char *msg,
                       size_t len, const unsigned char sig[BK_SIG_LEN]);
/* True when `pub` is a valid Ed25519 point of the main subgroup (not of small order). */
bool bk_ed25519_key_ok(const unsigned char pub[BK_PUBKEY_LEN]);
/* The first `bytes` bytes of SHA-256(data) as lower-case hex into `out` (2*bytes+1). */
bool bk_sha256_hex(const void *data, size_t len, size_t bytes, char *out);
/* `bytes` random bytes from the kernel as lower-case hex into `out` (2*bytes+1). */
bool bk_random_hex(size_t bytes, char *out);

#endif
