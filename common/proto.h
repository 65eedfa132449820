/*
 * Wire protocol constants. docs/PROTOCOL.md is the byte-by-byte description;
 * keep the two in step.
 */
#ifndef MTLS_COMMON_PROTO_H
#define MTLS_COMMON_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define PROTO_VERSION 1u

/* Largest request frame the agent will buffer (after the 4-byte length). */
#define PROTO_MAX_REQUEST (256u * 1024u)
/* Largest reply frame a client will accept. */
#define PROTO_MAX_REPLY (4u * 1024u * 1024u)
/* Largest message the agent will hash and sign (a TLS 1.2 transcript with chains). */
#define PROTO_MAX_SIGN_INPUT (128u * 1024u)
/* LIST flag: only identities the caller may use, even for an administrator. */
#define PROTO_LIST_USABLE 0x01
/* Frame header: u32 length, then u8 type and u32 request id. */
#define PROTO_LEN_SIZE 4u
#define PROTO_HDR_SIZE 5u
#define PROTO_MAX_NAME 128u

enum proto_msg {
	MSG_HELLO = 1,
	MSG_LIST = 2, /* optional u8 flags: PROTO_LIST_USABLE */
	MSG_GET_CHAIN = 3,
	MSG_SIGN = 4,
	MSG_STATUS = 5,
	MSG_GET_IDENTITY = 6,
	MSG_METRICS = 7, /* reply: string, Prometheus text exposition format */
	/* administrator operations */
	MSG_KEYGEN = 16,
	MSG_CSR = 17,
	MSG_IMPORT_CERT = 18,
	MSG_RELOAD = 19,
	MSG_RENEW = 20,
	/* replies */
	MSG_REPLY_OK = 128,
	MSG_REPLY_ERROR = 129,
};

/*
 * Starts a frame in b: reserves the length, writes type and id. Finish with
 * proto_frame_end(), which fills in the length.
 */
int proto_frame_begin(struct buf *b, uint8_t type, uint32_t id);
int proto_frame_end(struct buf *b);

/*
 * Looks at the start of a stream buffer. Returns 0 with *frame_len = total
 * bytes of the complete frame (length field included) when one is there,
 * MTLS_AGENT_ERR_TRUNCATED when more bytes are needed, and
 * MTLS_AGENT_ERR_TOO_LARGE / BAD_MESSAGE when the announced length is over
 * max or too short for a header. Checked from the 4 length bytes alone, so a
 * peer cannot make us buffer more than max.
 */
int proto_frame_peek(const uint8_t *p, size_t len, size_t max, size_t *frame_len);

/* Splits a complete frame (as found by proto_frame_peek) into header and payload. */
int proto_frame_parse(const uint8_t *frame, size_t frame_len, uint8_t *type, uint32_t *id,
		      struct reader *payload);

#endif
