// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI, ext4 and btrfs use it: the
// checksum of save files. With SSE4.2 the crc32 instruction does 8 bytes a step; elsewhere a
// byte-wise table does the same computation.
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "CProcvisor.h"

static uint32_t crc32c_table[256];
static int crc32c_table_ready;

static void crc32c_make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc32c_table[i] = c;
    }
    __atomic_store_n(&crc32c_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) {
    if (!__atomic_load_n(&crc32c_table_ready, __ATOMIC_ACQUIRE)) crc32c_make_table();
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

/* Advancing a CRC register over `len` zero bytes is linear in the register: a 32x32 matrix
 * over GF(2), applied here through four byte-indexed tables. It lets three parts of a buffer be
 * checksummed at once (the crc32 instruction has a latency of three cycles and a throughput of
 * one) and their registers joined: reg(A B) = advance(reg(A), |B|) ^ reg0(B). */
#define CRC32C_LANE 1024
static uint32_t crc32c_lane_tables[4][256];
static int crc32c_lane_ready;

/* One zero bit through the reflected register: shift right, fold the polynomial in. */
static uint32_t crc32c_zero_bit(uint32_t r) { return (r >> 1) ^ (0x82F63B78u & (0u - (r & 1u))); }

static void crc32c_make_lane_tables(void) {
    /* Column j of the matrix is the image of the register with only bit j set. */
    uint32_t m[32], sq[32];
    for (int j = 0; j < 32; j++) m[j] = crc32c_zero_bit(1u << j);
    /* Square log2(8 * CRC32C_LANE) times: one bit, two, four... 8192 bits. */
    for (unsigned bits = 1; bits < 8u * CRC32C_LANE; bits <<= 1) {
        for (int j = 0; j < 32; j++) {
            uint32_t v = m[j], out = 0;
            for (int k = 0; v; k++, v >>= 1) if (v & 1u) out ^= m[k];
            sq[j] = out;
        }
        memcpy(m, sq, sizeof m);
    }
    for (int t = 0; t < 4; t++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t v = b << (8 * t), out = 0;
            for (int k = 0; v; k++, v >>= 1) if (v & 1u) out ^= m[k];
            crc32c_lane_tables[t][b] = out;
        }
    }
    __atomic_store_n(&crc32c_lane_ready, 1, __ATOMIC_RELEASE);
}

static inline uint32_t crc32c_advance_lane(uint32_t r) {
    return crc32c_lane_tables[0][r & 0xff] ^ crc32c_lane_tables[1][(r >> 8) & 0xff] ^
           crc32c_lane_tables[2][(r >> 16) & 0xff] ^ crc32c_lane_tables[3][r >> 24];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    if (n >= 3 * CRC32C_LANE && !__atomic_load_n(&crc32c_lane_ready, __ATOMIC_ACQUIRE)) crc32c_make_lane_tables();
    while (n >= 3 * CRC32C_LANE) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *a = p, *b = p + CRC32C_LANE, *d = p + 2 * CRC32C_LANE;
        for (size_t i = 0; i < CRC32C_LANE; i += 8) {
            uint64_t va, vb, vd;
            memcpy(&va, a + i, 8);
            memcpy(&vb, b + i, 8);
            memcpy(&vd, d + i, 8);
            c = __builtin_ia32_crc32di(c, va);
            c1 = __builtin_ia32_crc32di(c1, vb);
            c2 = __builtin_ia32_crc32di(c2, vd);
        }
        c = crc32c_advance_lane((uint32_t)c) ^ (uint32_t)c1;
        c = crc32c_advance_lane((uint32_t)c) ^ (uint32_t)c2;
        p += 3 * CRC32C_LANE;
        n -= 3 * CRC32C_LANE;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t pv_crc32c(uint32_t crc, const void *buf, size_t len) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_sse42(crc, buf, len);
#endif
    return ~crc32c_soft(crc, buf, len);
}
