#include "config.h"

#include "common/proto.h"
#include "mtls-agent/client.h"

int proto_frame_begin(struct buf *b, uint8_t type, uint32_t id)
{
	int r;

	buf_reset(b);
	if ((r = buf_put_u32(b, 0)) != 0 || (r = buf_put_u8(b, type)) != 0 ||
	    (r = buf_put_u32(b, id)) != 0)
		return r;
	return 0;
}

int proto_frame_end(struct buf *b)
{
	size_t n;

	if (b->len < PROTO_LEN_SIZE + PROTO_HDR_SIZE || b->len - PROTO_LEN_SIZE > UINT32_MAX)
		return MTLS_AGENT_ERR_INTERNAL;
	n = b->len - PROTO_LEN_SIZE;
	b->data[0] = (uint8_t)(n >> 24);
	b->data[1] = (uint8_t)(n >> 16);
	b->data[2] = (uint8_t)(n >> 8);
	b->data[3] = (uint8_t)n;
	return 0;
}

int proto_frame_peek(const uint8_t *p, size_t len, size_t max, size_t *frame_len)
{
	uint32_t n;

	*frame_len = 0;
	if (len < PROTO_LEN_SIZE)
		return MTLS_AGENT_ERR_TRUNCATED;
	n = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
	if (n > max)
		return MTLS_AGENT_ERR_TOO_LARGE;
	if (n < PROTO_HDR_SIZE)
		return MTLS_AGENT_ERR_BAD_MESSAGE;
	if (len - PROTO_LEN_SIZE < n)
		return MTLS_AGENT_ERR_TRUNCATED;
	*frame_len = PROTO_LEN_SIZE + (size_t)n;
	return 0;
}

int proto_frame_parse(const uint8_t *frame, size_t frame_len, uint8_t *type, uint32_t *id,
		      struct reader *payload)
{
	struct reader r;
	uint32_t n;
	int e;

	rd_init(&r, frame, frame_len);
	if ((e = rd_u32(&r, &n)) != 0)
		return e;
	if (n != frame_len - PROTO_LEN_SIZE || n < PROTO_HDR_SIZE)
		return MTLS_AGENT_ERR_BAD_MESSAGE;
	if ((e = rd_u8(&r, type)) != 0 || (e = rd_u32(&r, id)) != 0)
		return e;
	rd_init(payload, frame + r.off, frame_len - r.off);
	return 0;
}
