#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "mtls-agent/client.h"

void buf_init(struct buf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
}

void buf_free(struct buf *b)
{
	if (b->data != NULL) {
		wipe(b->data, b->cap);
		free(b->data);
	}
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void buf_reset(struct buf *b)
{
	if (b->data != NULL)
		wipe(b->data, b->len);
	b->len = 0;
}

int buf_reserve(struct buf *b, size_t n, uint8_t **p)
{
	uint8_t *nd;
	size_t ncap;

	if (p != NULL)
		*p = NULL;
	if (n > b->max || b->len > b->max - n)
		return MTLS_AGENT_ERR_TOO_LARGE;
	if (b->cap - b->len < n) {
		/* Grow geometrically, but never past max. Reallocation goes through a
		 * fresh block so the old contents can be wiped. */
		ncap = b->cap < 256 ? 256 : b->cap;
		while (ncap - b->len < n)
			ncap = ncap > b->max / 2 ? b->max : ncap * 2;
		if ((nd = malloc(ncap)) == NULL)
			return MTLS_AGENT_ERR_NOMEM;
		if (b->data != NULL) {
			memcpy(nd, b->data, b->len);
			wipe(b->data, b->cap);
			free(b->data);
		}
		b->data = nd;
		b->cap = ncap;
	}
	if (p != NULL)
		*p = b->data + b->len;
	return 0;
}

int buf_consume(struct buf *b, size_t n)
{
	if (n > b->len)
		return MTLS_AGENT_ERR_INTERNAL;
	memmove(b->data, b->data + n, b->len - n);
	wipe(b->data + (b->len - n), n);
	b->len -= n;
	return 0;
}

int buf_put(struct buf *b, const void *p, size_t n)
{
	uint8_t *d;
	int r;

	if (n == 0)
		return 0;
	if ((r = buf_reserve(b, n, &d)) != 0)
		return r;
	memcpy(d, p, n);
	b->len += n;
	return 0;
}

int buf_put_u8(struct buf *b, uint8_t v)
{
	return buf_put(b, &v, 1);
}

int buf_put_u16(struct buf *b, uint16_t v)
{
	uint8_t d[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	return buf_put(b, d, sizeof(d));
}

int buf_put_u32(struct buf *b, uint32_t v)
{
	uint8_t d[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	return buf_put(b, d, sizeof(d));
}

int buf_put_u64(struct buf *b, uint64_t v)
{
	int r;

	if ((r = buf_put_u32(b, (uint32_t)(v >> 32))) != 0)
		return r;
	return buf_put_u32(b, (uint32_t)v);
}

int buf_put_string(struct buf *b, const void *p, size_t n)
{
	int r;

	if (n > UINT32_MAX)
		return MTLS_AGENT_ERR_TOO_LARGE;
	/* Check the whole string fits before writing its length. */
	if ((r = buf_reserve(b, 4 + n, NULL)) != 0)
		return r;
	if ((r = buf_put_u32(b, (uint32_t)n)) != 0)
		return r;
	return buf_put(b, p, n);
}

int buf_put_cstring(struct buf *b, const char *s)
{
	return buf_put_string(b, s == NULL ? "" : s, s == NULL ? 0 : strlen(s));
}

void rd_init(struct reader *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
}

size_t rd_left(const struct reader *r)
{
	return r->len - r->off;
}

int rd_bytes(struct reader *r, size_t n, const uint8_t **p)
{
	if (p != NULL)
		*p = NULL;
	if (n > r->len - r->off)
		return MTLS_AGENT_ERR_TRUNCATED;
	if (p != NULL)
		*p = r->p + r->off;
	r->off += n;
	return 0;
}

int rd_u8(struct reader *r, uint8_t *v)
{
	const uint8_t *p;
	int e;

	if ((e = rd_bytes(r, 1, &p)) != 0)
		return e;
	*v = p[0];
	return 0;
}

int rd_u16(struct reader *r, uint16_t *v)
{
	const uint8_t *p;
	int e;

	if ((e = rd_bytes(r, 2, &p)) != 0)
		return e;
	*v = (uint16_t)((p[0] << 8) | p[1]);
	return 0;
}

int rd_u32(struct reader *r, uint32_t *v)
{
	const uint8_t *p;
	int e;

	if ((e = rd_bytes(r, 4, &p)) != 0)
		return e;
	*v = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
	return 0;
}

int rd_u64(struct reader *r, uint64_t *v)
{
	uint32_t hi, lo;
	int e;

	if ((e = rd_u32(r, &hi)) != 0 || (e = rd_u32(r, &lo)) != 0)
		return e;
	*v = ((uint64_t)hi << 32) | lo;
	return 0;
}

int rd_string(struct reader *r, const uint8_t **p, size_t *n)
{
	size_t save = r->off;
	uint32_t len;
	int e;

	*p = NULL;
	*n = 0;
	if ((e = rd_u32(r, &len)) != 0)
		return e;
	if ((e = rd_bytes(r, len, p)) != 0) {
		r->off = save;
		return e;
	}
	*n = len;
	return 0;
}

int rd_cstring(struct reader *r, size_t max, char **s)
{
	const uint8_t *p;
	size_t n;
	int e;

	*s = NULL;
	if ((e = rd_string(r, &p, &n)) != 0)
		return e;
	if (n > max)
		return MTLS_AGENT_ERR_TOO_LARGE;
	if (n > 0 && memchr(p, '\0', n) != NULL)
		return MTLS_AGENT_ERR_BAD_MESSAGE;
	if ((*s = malloc(n + 1)) == NULL)
		return MTLS_AGENT_ERR_NOMEM;
	if (n > 0)
		memcpy(*s, p, n);
	(*s)[n] = '\0';
	return 0;
}

int rd_done(const struct reader *r)
{
	return r->off == r->len ? 0 : MTLS_AGENT_ERR_BAD_MESSAGE;
}
