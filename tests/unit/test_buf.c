/* Frame codec and buffer: bounds, overflow-safe lengths, truncation/bit-flip loops. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/proto.h"
#include "mtls-agent/client.h"

static void test_put_get_roundtrip(void **state)
{
	struct buf b;
	struct reader r;
	const uint8_t *p;
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	size_t n;
	char *s;

	(void)state;
	buf_init(&b, 1024);
	assert_int_equal(buf_put_u8(&b, 0xab), 0);
	assert_int_equal(buf_put_u16(&b, 0x1234), 0);
	assert_int_equal(buf_put_u32(&b, 0xdeadbeef), 0);
	assert_int_equal(buf_put_u64(&b, 0x0102030405060708ull), 0);
	assert_int_equal(buf_put_string(&b, "abc", 3), 0);
	assert_int_equal(buf_put_cstring(&b, "hello"), 0);
	assert_int_equal(b.len, 1 + 2 + 4 + 8 + 7 + 9);
	/* Big-endian on the wire. */
	assert_int_equal(b.data[1], 0x12);
	assert_int_equal(b.data[3], 0xde);

	rd_init(&r, b.data, b.len);
	assert_int_equal(rd_u8(&r, &u8), 0);
	assert_int_equal(u8, 0xab);
	assert_int_equal(rd_u16(&r, &u16), 0);
	assert_int_equal(u16, 0x1234);
	assert_int_equal(rd_u32(&r, &u32), 0);
	assert_int_equal(u32, 0xdeadbeef);
	assert_int_equal(rd_u64(&r, &u64), 0);
	assert_true(u64 == 0x0102030405060708ull);
	assert_int_equal(rd_string(&r, &p, &n), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(p, "abc", 3);
	assert_int_equal(rd_cstring(&r, 16, &s), 0);
	assert_string_equal(s, "hello");
	free(s);
	assert_int_equal(rd_done(&r), 0);
	assert_int_equal(rd_u8(&r, &u8), MTLS_AGENT_ERR_TRUNCATED);
	buf_free(&b);
}

static void test_max_enforced(void **state)
{
	struct buf b;

	(void)state;
	buf_init(&b, 8);
	assert_int_equal(buf_put_u64(&b, 1), 0);
	assert_int_equal(buf_put_u8(&b, 1), MTLS_AGENT_ERR_TOO_LARGE);
	assert_int_equal(b.len, 8);
	buf_reset(&b);
	/* A string whose length word fits but whose bytes do not writes nothing. */
	assert_int_equal(buf_put_string(&b, "12345", 5), MTLS_AGENT_ERR_TOO_LARGE);
	assert_int_equal(b.len, 0);
	/* Sizes near SIZE_MAX must not wrap. */
	assert_int_equal(buf_reserve(&b, SIZE_MAX, NULL), MTLS_AGENT_ERR_TOO_LARGE);
	assert_int_equal(buf_reserve(&b, SIZE_MAX - 3, NULL), MTLS_AGENT_ERR_TOO_LARGE);
	buf_free(&b);
}

static void test_string_lengths(void **state)
{
	/* u32 length fields at 0, 1, n-1, n, n+1, 2^31, 2^32-1 over a 4-byte body. */
	static const uint32_t lens[] = {0, 1, 3, 4, 5, 0x80000000u, 0xffffffffu};
	uint8_t msg[8] = {0, 0, 0, 0, 'a', 'b', 'c', 'd'};
	const uint8_t *p;
	struct reader r;
	size_t i, n;
	char *s;
	int e;

	(void)state;
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		msg[0] = (uint8_t)(lens[i] >> 24);
		msg[1] = (uint8_t)(lens[i] >> 16);
		msg[2] = (uint8_t)(lens[i] >> 8);
		msg[3] = (uint8_t)lens[i];
		rd_init(&r, msg, sizeof(msg));
		e = rd_string(&r, &p, &n);
		if (lens[i] <= 4) {
			assert_int_equal(e, 0);
			assert_int_equal(n, lens[i]);
		} else {
			assert_int_equal(e, MTLS_AGENT_ERR_TRUNCATED);
			assert_null(p);
			/* A failed read consumes nothing. */
			assert_int_equal(r.off, 0);
		}
		rd_init(&r, msg, sizeof(msg));
		e = rd_cstring(&r, 2, &s);
		if (lens[i] <= 2)
			assert_int_equal(e, 0);
		else
			assert_int_not_equal(e, 0);
		free(s);
	}
}

static void test_cstring_rejects_nul(void **state)
{
	const uint8_t msg[] = {0, 0, 0, 3, 'a', 0, 'b'};
	struct reader r;
	char *s;

	(void)state;
	rd_init(&r, msg, sizeof(msg));
	assert_int_equal(rd_cstring(&r, 64, &s), MTLS_AGENT_ERR_BAD_MESSAGE);
	assert_null(s);
}

static void test_frame_peek(void **state)
{
	uint8_t hdr[9] = {0};
	size_t fl;

	(void)state;
	assert_int_equal(proto_frame_peek(hdr, 3, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_TRUNCATED);
	/* Length below the 5-byte header. */
	hdr[3] = 4;
	assert_int_equal(proto_frame_peek(hdr, 9, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_BAD_MESSAGE);
	hdr[3] = 0;
	assert_int_equal(proto_frame_peek(hdr, 9, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_BAD_MESSAGE);
	/* Exactly a header. */
	hdr[3] = 5;
	assert_int_equal(proto_frame_peek(hdr, 9, PROTO_MAX_REQUEST, &fl), 0);
	assert_int_equal(fl, 9);
	/* One more than we have: wait. */
	hdr[3] = 6;
	assert_int_equal(proto_frame_peek(hdr, 9, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_TRUNCATED);
	/* The cap is judged from the 4 length bytes alone. */
	hdr[0] = 0;
	hdr[1] = 4;
	hdr[2] = 0;
	hdr[3] = 0; /* 262144 = cap */
	assert_int_equal(proto_frame_peek(hdr, 4, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_TRUNCATED);
	hdr[3] = 1; /* cap + 1 */
	assert_int_equal(proto_frame_peek(hdr, 4, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_TOO_LARGE);
	memset(hdr, 0xff, 4); /* 2^32 - 1 */
	assert_int_equal(proto_frame_peek(hdr, 4, PROTO_MAX_REQUEST, &fl),
			 MTLS_AGENT_ERR_TOO_LARGE);
}

static void test_frame_roundtrip_and_mutations(void **state)
{
	struct buf b;
	struct reader pl;
	uint8_t type, *copy;
	uint32_t id;
	size_t fl, cut, i, bit;

	(void)state;
	buf_init(&b, 4096);
	assert_int_equal(proto_frame_begin(&b, 4, 77), 0);
	assert_int_equal(buf_put_cstring(&b, "device"), 0);
	assert_int_equal(buf_put_u16(&b, 0x0403), 0);
	assert_int_equal(proto_frame_end(&b), 0);
	assert_int_equal(proto_frame_peek(b.data, b.len, PROTO_MAX_REQUEST, &fl), 0);
	assert_int_equal(fl, b.len);
	assert_int_equal(proto_frame_parse(b.data, fl, &type, &id, &pl), 0);
	assert_int_equal(type, 4);
	assert_int_equal(id, 77);
	assert_int_equal(rd_left(&pl), 4 + 6 + 2);

	/* Every truncation is "need more", never a frame. */
	for (cut = 0; cut < b.len; cut++)
		assert_int_equal(proto_frame_peek(b.data, cut, PROTO_MAX_REQUEST, &fl),
				 MTLS_AGENT_ERR_TRUNCATED);
	/* Every single-bit flip parses or fails cleanly, never reads out of bounds. */
	copy = malloc(b.len);
	assert_non_null(copy);
	for (i = 0; i < b.len; i++) {
		for (bit = 0; bit < 8; bit++) {
			memcpy(copy, b.data, b.len);
			copy[i] ^= (uint8_t)(1u << bit);
			if (proto_frame_peek(copy, b.len, PROTO_MAX_REQUEST, &fl) == 0)
				(void)proto_frame_parse(copy, fl, &type, &id, &pl);
		}
	}
	free(copy);
	buf_free(&b);
}

static void test_consume(void **state)
{
	struct buf b;

	(void)state;
	buf_init(&b, 64);
	assert_int_equal(buf_put(&b, "abcdef", 6), 0);
	assert_int_equal(buf_consume(&b, 2), 0);
	assert_int_equal(b.len, 4);
	assert_memory_equal(b.data, "cdef", 4);
	assert_int_equal(buf_consume(&b, 5), MTLS_AGENT_ERR_INTERNAL);
	buf_free(&b);
	assert_null(b.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get_roundtrip),
		cmocka_unit_test(test_max_enforced),
		cmocka_unit_test(test_string_lengths),
		cmocka_unit_test(test_cstring_rejects_nul),
		cmocka_unit_test(test_frame_peek),
		cmocka_unit_test(test_frame_roundtrip_and_mutations),
		cmocka_unit_test(test_consume),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
