/*
 * Growable byte buffer with a hard maximum, and a bounds-checked reader.
 *
 * Every put/get returns 0 or a negative MTLS_AGENT_ERR_* code; nothing
 * aborts on bad input. Integers travel big-endian; strings as a u32 length
 * followed by the bytes. Buffers are wiped before their memory is released.
 */
#ifndef MTLS_COMMON_BUF_H
#define MTLS_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t max; /* hard limit on len */
};

/* Initialises an empty buffer that will refuse to grow past max bytes. */
void buf_init(struct buf *b, size_t max);
/* Wipes and frees the contents; the struct may be reused after buf_init. */
void buf_free(struct buf *b);
/* Wipes the contents and sets the length to 0, keeping the allocation. */
void buf_reset(struct buf *b);
/* Ensures room for n more bytes; returns a pointer to them in *p (may be NULL). */
int buf_reserve(struct buf *b, size_t n, uint8_t **p);
/* Removes the first n bytes. */
int buf_consume(struct buf *b, size_t n);

int buf_put(struct buf *b, const void *p, size_t n);
int buf_put_u8(struct buf *b, uint8_t v);
int buf_put_u16(struct buf *b, uint16_t v);
int buf_put_u32(struct buf *b, uint32_t v);
int buf_put_u64(struct buf *b, uint64_t v);
/* u32 length + bytes. */
int buf_put_string(struct buf *b, const void *p, size_t n);
/* u32 length + bytes of a NUL-terminated string (the NUL is not sent); NULL sends "". */
int buf_put_cstring(struct buf *b, const char *s);

/* A read-only cursor over a byte range; never reads outside [p, p+len). */
struct reader {
	const uint8_t *p;
	size_t len;
	size_t off;
};

void rd_init(struct reader *r, const void *p, size_t len);
size_t rd_left(const struct reader *r);
int rd_u8(struct reader *r, uint8_t *v);
int rd_u16(struct reader *r, uint16_t *v);
int rd_u32(struct reader *r, uint32_t *v);
int rd_u64(struct reader *r, uint64_t *v);
int rd_bytes(struct reader *r, size_t n, const uint8_t **p);
/* u32 length + bytes, without copying; *p points into the reader's range. */
int rd_string(struct reader *r, const uint8_t **p, size_t *n);
/*
 * u32 length + bytes as a new NUL-terminated string (caller frees). Refuses
 * embedded NULs and strings longer than max bytes.
 */
int rd_cstring(struct reader *r, size_t max, char **s);
/* Returns MTLS_AGENT_ERR_BAD_MESSAGE if unread bytes remain. */
int rd_done(const struct reader *r);

#endif
