/*
 * test_msg.c - messages: creation, copies, setters, headers, the lazily
 * parsed JSON payload and the size counted against max_message_bytes.
 * Single-threaded.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "route.h"

/* The value of a header as a NUL-terminated copy (values are bytes). */
static char *header_str(const iotr_msg *msg, const char *name)
{
	size_t len;
	const void *v = msg_header(msg, name, &len);

	return v ? strndup(v, len) : NULL;
}

/* --- create, copy, free --------------------------------------------------- */

START_TEST(new_copies_topic_and_payload)
{
	char topic[] = "sensors/a";
	char payload[] = "hello";
	int64_t before = msg_now_us();
	iotr_msg *msg = msg_new(topic, payload, 5);
	int64_t after = msg_now_us();
	const char bin[] = { 0x00, 0x01, (char)0xff, 0x00, 0x7f };

	ck_assert_ptr_nonnull(msg);
	/* the caller's buffers may be reused at once */
	topic[0] = 'X';
	payload[0] = 'X';
	ck_assert_str_eq(msg->topic, "sensors/a");
	ck_assert_uint_eq(msg->payload_len, 5);
	ck_assert_mem_eq(msg->payload, "hello", 5);
	/* payload is NUL-terminated for code that treats it as text */
	ck_assert_int_eq(((char *)msg->payload)[5], '\0');
	ck_assert_int_eq(msg->qos, 0);
	ck_assert_int_eq(msg->retain, 0);
	ck_assert_ptr_null(msg->key);
	ck_assert_ptr_null(msg->dest);
	ck_assert_ptr_null(msg->error);
	ck_assert_uint_eq(msg->nheaders, 0);
	ck_assert_int_ge(msg->time_us, before);
	ck_assert_int_le(msg->time_us, after);
	msg_free(msg);

	/* payloads are bytes: NULs and high bytes survive */
	msg = msg_new("bin", bin, sizeof(bin));
	ck_assert_uint_eq(msg->payload_len, sizeof(bin));
	ck_assert_mem_eq(msg->payload, bin, sizeof(bin));
	msg_free(msg);
}
END_TEST

START_TEST(new_without_payload_or_topic)
{
	iotr_msg *msg = msg_new("t", NULL, 123);

	ck_assert_ptr_nonnull(msg);
	ck_assert_uint_eq(msg->payload_len, 0);
	msg_free(msg);
	/* "the source topic ... never NULL" (plugin.h) */
	msg = msg_new(NULL, "x", 1);
	ck_assert_ptr_nonnull(msg);
	ck_assert_str_eq(msg->topic, "");
	msg_free(msg);
	msg_free(NULL);         /* a no-op, like free(3) */
}
END_TEST

START_TEST(clone_is_deep)
{
	iotr_msg *msg = msg_new("a/b", "payload", 7);
	iotr_msg *copy;

	msg_set_key(msg, "k\0ey", 4);
	msg_set_dest(msg, "dest.topic");
	msg_set_qos(msg, 2, 1);
	msg_set_time(msg, 1234567);
	msg_set_error(msg, "why");
	msg_add_header(msg, "h1", "v1", 2);
	msg_add_header(msg, "h2", "v\0", 2);
	copy = msg_clone(msg);
	ck_assert_ptr_nonnull(copy);
	ck_assert_ptr_ne(copy, msg);

	/* change and free the original: the copy keeps its own data */
	msg_set_payload(msg, "other", 5);
	msg_remove_header(msg, "h1");
	msg_free(msg);

	ck_assert_str_eq(copy->topic, "a/b");
	ck_assert_uint_eq(copy->payload_len, 7);
	ck_assert_mem_eq(copy->payload, "payload", 7);
	ck_assert_uint_eq(copy->key_len, 4);
	ck_assert_mem_eq(copy->key, "k\0ey", 4);
	ck_assert_str_eq(copy->dest, "dest.topic");
	ck_assert_int_eq(copy->qos, 2);
	ck_assert_int_eq(copy->retain, 1);
	ck_assert_int_eq(copy->time_us, 1234567);
	ck_assert_str_eq(copy->error, "why");
	ck_assert_uint_eq(copy->nheaders, 2);
	ck_assert_str_eq(copy->headers[0].name, "h1");
	ck_assert_str_eq(copy->headers[1].name, "h2");
	ck_assert_uint_eq(copy->headers[1].len, 2);
	ck_assert_mem_eq(copy->headers[1].value, "v\0", 2);
	msg_free(copy);
}
END_TEST

START_TEST(clone_keeps_captures)
{
	struct route r;
	char err[256];
	size_t spans[4];
	iotr_msg *msg, *copy;

	memset(&r, 0, sizeof(r));
	r.name = strdup("route #1");
	ck_assert_int_eq(filter_parse("s/+site/#rest", &r.filter, err,
	                              sizeof(err)), 0);
	msg = msg_new("s/berlin/x/y", "", 0);
	ck_assert_int_eq(filter_match(&r.filter, msg->topic, spans), 1);
	ck_assert_int_eq(route_apply(&r, msg, spans), IOTR_OK);
	copy = msg_clone(msg);
	msg_free(msg);
	/* a transform's fan-out copy can still render ${site} */
	ck_assert_str_eq(msg_capture(copy, "site"), "berlin");
	ck_assert_str_eq(msg_capture(copy, "rest"), "x/y");
	msg_free(copy);
	route_free(&r);
	/* before routing there are no captures */
	msg = msg_new("s/berlin/x", "", 0);
	ck_assert_ptr_null(msg_capture(msg, "site"));
	msg_free(msg);
}
END_TEST

/* --- setters -------------------------------------------------------------- */

START_TEST(set_payload_copies)
{
	iotr_msg *msg = msg_new("t", "old", 3);
	char buf[] = "newer";

	ck_assert_int_eq(msg_set_payload(msg, buf, 5), IOTR_OK);
	buf[0] = 'X';
	ck_assert_uint_eq(msg->payload_len, 5);
	ck_assert_mem_eq(msg->payload, "newer", 5);
	ck_assert_int_eq(msg_set_payload(msg, NULL, 10), IOTR_OK);
	ck_assert_uint_eq(msg->payload_len, 0);
	msg_free(msg);
}
END_TEST

START_TEST(set_key_binary_and_clear)
{
	iotr_msg *msg = msg_new("t", "", 0);

	ck_assert_int_eq(msg_set_key(msg, "dev\0-1", 6), IOTR_OK);
	ck_assert_uint_eq(msg->key_len, 6);
	ck_assert_mem_eq(msg->key, "dev\0-1", 6);
	ck_assert_int_eq(msg_set_key(msg, "k2", 2), IOTR_OK);
	ck_assert_str_eq(msg->key, "k2");
	/* NULL: the message has no key (Kafka then spreads by itself) */
	ck_assert_int_eq(msg_set_key(msg, NULL, 5), IOTR_OK);
	ck_assert_ptr_null(msg->key);
	ck_assert_uint_eq(msg->key_len, 0);
	msg_free(msg);
}
END_TEST

START_TEST(set_dest_time_and_error)
{
	iotr_msg *msg = msg_new("t", "", 0);

	ck_assert_int_eq(msg_set_dest(msg, "telemetry"), IOTR_OK);
	ck_assert_str_eq(msg->dest, "telemetry");
	ck_assert_int_eq(msg_set_dest(msg, "other"), IOTR_OK);
	ck_assert_str_eq(msg->dest, "other");
	ck_assert_int_eq(msg_set_dest(msg, NULL), IOTR_OK);
	ck_assert_ptr_null(msg->dest);

	ck_assert_int_eq(msg_set_time(msg, 1700000000000000LL), IOTR_OK);
	ck_assert_int_eq(msg->time_us, 1700000000000000LL);
	msg_set_error(msg, "first");
	msg_set_error(msg, "second");
	ck_assert_str_eq(msg->error, "second");
	msg_set_error(msg, NULL);
	ck_assert_ptr_null(msg->error);
	msg_free(msg);
}
END_TEST

START_TEST(set_qos_checks_range)
{
	iotr_msg *msg = msg_new("t", "", 0);

	ck_assert_int_eq(msg_set_qos(msg, 1, 5), IOTR_OK);
	ck_assert_int_eq(msg->qos, 1);
	ck_assert_int_eq(msg->retain, 1);
	ck_assert_int_eq(msg_set_qos(msg, 3, 0), IOTR_EINVAL);
	ck_assert_int_eq(msg_set_qos(msg, -1, 0), IOTR_EINVAL);
	/* a refused call changes nothing */
	ck_assert_int_eq(msg->qos, 1);
	ck_assert_int_eq(msg->retain, 1);
	ck_assert_int_eq(msg_set_qos(msg, 0, 0), IOTR_OK);
	ck_assert_int_eq(msg->retain, 0);
	msg_free(msg);
}
END_TEST

/*
 * Routing attaches captures, key, destination and headers to a message in
 * the spare room of its own allocation, then from malloc() once that is
 * used up.  Whatever a part came from, it reads back right and freeing the
 * message frees it (ASan and valgrind runs of this suite check the latter).
 */
START_TEST(parts_outgrow_the_spare_room)
{
	iotr_msg *msg = msg_new("sensors/site-1/dev-1", "{}", 2);
	char name[32], value[200];
	void *big;
	int i;

	/* many replacements: each leaves its old part behind */
	for (i = 0; i < 100; i++) {
		snprintf(value, sizeof(value), "dev-%d", i);
		ck_assert_int_eq(msg_set_key(msg, value, strlen(value)), IOTR_OK);
		ck_assert_int_eq(msg_set_dest(msg, value), IOTR_OK);
	}
	ck_assert_str_eq(msg->key, "dev-99");
	ck_assert_str_eq(msg->dest, "dev-99");
	for (i = 0; i < 64; i++) {
		snprintf(name, sizeof(name), "h%d", i);
		memset(value, 'a' + i % 26, sizeof(value));
		ck_assert_int_eq(msg_add_header(msg, name, value, sizeof(value)),
		                 IOTR_OK);
	}
	ck_assert_uint_eq(msg->nheaders, 64);
	for (i = 0; i < 64; i++) {
		size_t len;
		const char *v;

		snprintf(name, sizeof(name), "h%d", i);
		v = msg_header(msg, name, &len);
		ck_assert_ptr_nonnull(v);
		ck_assert_uint_eq(len, sizeof(value));
		ck_assert_int_eq(v[0], 'a' + i % 26);
		ck_assert_int_eq(v[len - 1], 'a' + i % 26);
	}
	msg_remove_header(msg, "h0");
	ck_assert_uint_eq(msg->nheaders, 63);
	msg_set_error(msg, "a reason");
	ck_assert_str_eq(msg->error, "a reason");
	/* a part bigger than any spare room, given back early */
	big = msg_alloc(msg, 1 << 20);
	ck_assert_ptr_nonnull(big);
	memset(big, 0, 1 << 20);
	msg_release(msg, big);
	/* parts are 8-aligned: captures hold pointers */
	{
		void *a = msg_alloc(msg, 3), *b = msg_alloc(msg, 8);

		ck_assert_uint_eq((uintptr_t)b % 8, 0);
		msg_release(msg, a);
		msg_release(msg, b);
	}
	msg_free(msg);
}
END_TEST

/* Messages freed on another thread (a delivery report's) go back to the
 * pool of the thread that made them, which reuses them whole and clean. */
#define POOL_MSGS 500
static iotr_msg *handed[POOL_MSGS];

static void *free_them(void *arg)
{
	size_t i;

	(void)arg;
	for (i = 0; i < POOL_MSGS; i++)
		msg_free(handed[i]);
	return NULL;
}

START_TEST(pool_takes_back_messages_freed_elsewhere)
{
	pthread_t t;
	size_t i, j, reused = 0;
	iotr_msg *again;

	for (i = 0; i < POOL_MSGS; i++) {
		ck_assert_ptr_nonnull(handed[i] = msg_new("a/b", "12345", 5));
		ck_assert_int_eq(msg_set_key(handed[i], "k", 1), IOTR_OK);
		ck_assert_int_eq(msg_add_header(handed[i], "h", "v", 1), IOTR_OK);
	}
	ck_assert_int_eq(pthread_create(&t, NULL, free_them, NULL), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	for (i = 0; i < POOL_MSGS; i++) {
		again = msg_new("c/d", "xy", 2);
		ck_assert_ptr_nonnull(again);
		for (j = 0; j < POOL_MSGS; j++)
			reused += again == handed[j];
		/* nothing of the block's last message shows through */
		ck_assert_str_eq(again->topic, "c/d");
		ck_assert_str_eq(again->payload, "xy");
		ck_assert_ptr_null(again->key);
		ck_assert_uint_eq(again->nheaders, 0);
		ck_assert_ptr_null(msg_header(again, "h", NULL));
		handed[i] = again;
	}
	for (i = 0; i < POOL_MSGS; i++)
		msg_free(handed[i]);
#if !defined(__SANITIZE_ADDRESS__)
	ck_assert_uint_gt(reused, POOL_MSGS / 2);
#endif
	/* a message too big for any pool class is malloc'd and freed */
	{
		static char big[64 * 1024];
		iotr_msg *m = msg_new("big", big, sizeof(big));

		ck_assert_ptr_nonnull(m);
		ck_assert_uint_eq(m->payload_len, sizeof(big));
		msg_free(m);
	}
	msg_pools_free();
}
END_TEST

/* --- headers ---------------------------------------------------------------- */

START_TEST(header_add_and_lookup)
{
	iotr_msg *msg = msg_new("t", "", 0);
	size_t len = 99;
	char *v;

	ck_assert_int_eq(msg_add_header(msg, "tenant", "acme", 4), IOTR_OK);
	ck_assert_int_eq(msg_add_header(msg, "site", "berlin", 6), IOTR_OK);
	ck_assert_uint_eq(msg->nheaders, 2);
	ck_assert_ptr_nonnull(msg_header(msg, "site", &len));
	ck_assert_uint_eq(len, 6);
	v = header_str(msg, "tenant");
	ck_assert_str_eq(v, "acme");
	free(v);
	/* names are exact and case-sensitive */
	ck_assert_ptr_null(msg_header(msg, "Tenant", NULL));
	ck_assert_ptr_null(msg_header(msg, "missing", &len));
	ck_assert_int_eq(msg_add_header(msg, NULL, "x", 1), IOTR_EINVAL);
	ck_assert_uint_eq(msg->nheaders, 2);
	msg_free(msg);
}
END_TEST

START_TEST(header_binary_and_empty_values)
{
	iotr_msg *msg = msg_new("t", "", 0);
	const char bin[] = { 'a', 0, (char)0xfe, 0 };
	const void *v;
	size_t len;

	ck_assert_int_eq(msg_add_header(msg, "bin", bin, sizeof(bin)),
	                 IOTR_OK);
	ck_assert_int_eq(msg_add_header(msg, "empty", NULL, 7), IOTR_OK);
	v = msg_header(msg, "bin", &len);
	ck_assert_uint_eq(len, sizeof(bin));
	ck_assert_mem_eq(v, bin, sizeof(bin));
	/* an empty value is present, with length 0 */
	v = msg_header(msg, "empty", &len);
	ck_assert_ptr_nonnull(v);
	ck_assert_uint_eq(len, 0);
	msg_free(msg);
}
END_TEST

START_TEST(header_duplicates)
{
	iotr_msg *msg = msg_new("t", "", 0);
	char *v;

	msg_add_header(msg, "x", "1", 1);
	msg_add_header(msg, "y", "keep", 4);
	msg_add_header(msg, "x", "2", 1);
	ck_assert_uint_eq(msg->nheaders, 3);
	/* lookup gives the first of a name */
	v = header_str(msg, "x");
	ck_assert_str_eq(v, "1");
	free(v);
	ck_assert_str_eq(msg->headers[2].name, "x");
	ck_assert_mem_eq(msg->headers[2].value, "2", 1);
	msg_free(msg);
}
END_TEST

START_TEST(header_remove_all_of_a_name)
{
	iotr_msg *msg = msg_new("t", "", 0);

	msg_add_header(msg, "x", "1", 1);
	msg_add_header(msg, "a", "A", 1);
	msg_add_header(msg, "x", "2", 1);
	msg_add_header(msg, "b", "B", 1);
	msg_remove_header(msg, "x");
	ck_assert_uint_eq(msg->nheaders, 2);
	ck_assert_ptr_null(msg_header(msg, "x", NULL));
	/* the others keep their order */
	ck_assert_str_eq(msg->headers[0].name, "a");
	ck_assert_str_eq(msg->headers[1].name, "b");
	msg_remove_header(msg, "not-there");
	ck_assert_uint_eq(msg->nheaders, 2);
	/* the message still takes new headers after a removal */
	ck_assert_int_eq(msg_add_header(msg, "x", "3", 1), IOTR_OK);
	ck_assert_uint_eq(msg->nheaders, 3);
	msg_free(msg);
}
END_TEST

START_TEST(header_many_keep_order)
{
	iotr_msg *msg = msg_new("t", "", 0);
	char name[16], value[16];
	int i;

	for (i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "h%d", i);
		snprintf(value, sizeof(value), "v%d", i);
		ck_assert_int_eq(msg_add_header(msg, name, value,
		                                strlen(value)), IOTR_OK);
	}
	ck_assert_uint_eq(msg->nheaders, 50);
	for (i = 0; i < 50; i++) {
		char *v;

		snprintf(name, sizeof(name), "h%d", i);
		snprintf(value, sizeof(value), "v%d", i);
		ck_assert_str_eq(msg->headers[i].name, name);
		v = header_str(msg, name);
		ck_assert_str_eq(v, value);
		free(v);
	}
	msg_free(msg);
}
END_TEST

/* --- JSON payload ------------------------------------------------------------ */

START_TEST(json_parsed_once)
{
	const char *p = "{\"a\": 1}";
	iotr_msg *msg = msg_new("t", p, strlen(p));
	json_t *j = msg_json(msg);

	ck_assert_ptr_nonnull(j);
	ck_assert_int_eq(json_integer_value(json_object_get(j, "a")), 1);
	/* the same parse serves every ${json:...} of the message */
	ck_assert_ptr_eq(msg_json(msg), j);
	msg_free(msg);
	/* any JSON value, not only objects */
	msg = msg_new("t", "42", 2);
	ck_assert_int_eq(json_integer_value(msg_json(msg)), 42);
	msg_free(msg);
	/* a payload is bytes, not a C string: only len bytes count */
	msg = msg_new("t", "{\"a\":1}garbage", 7);
	ck_assert_ptr_nonnull(msg_json(msg));
	msg_free(msg);
}
END_TEST

START_TEST(json_not_json)
{
	iotr_msg *msg = msg_new("t", "{\"a\": ", 6);

	ck_assert_ptr_null(msg_json(msg));
	ck_assert_ptr_null(msg_json(msg));
	msg_free(msg);
	msg = msg_new("t", NULL, 0);
	ck_assert_ptr_null(msg_json(msg));
	msg_free(msg);
}
END_TEST

START_TEST(json_invalidated_by_set_payload)
{
	const char *p1 = "{\"v\": \"one\"}", *p2 = "{\"v\": \"two\"}";
	iotr_msg *msg = msg_new("t", p1, strlen(p1));
	json_t *j;

	ck_assert_str_eq(json_string_value(json_object_get(msg_json(msg),
	                                                   "v")), "one");
	msg_set_payload(msg, p2, strlen(p2));
	j = msg_json(msg);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "v")), "two");
	/* and from JSON to not JSON */
	msg_set_payload(msg, "plain", 5);
	ck_assert_ptr_null(msg_json(msg));
	/* and back */
	msg_set_payload(msg, p1, strlen(p1));
	ck_assert_ptr_nonnull(msg_json(msg));
	msg_free(msg);
}
END_TEST

/* --- size ---------------------------------------------------------------------- */

START_TEST(size_counts_everything_a_message_carries)
{
	iotr_msg *msg = msg_new("a/b", "12345", 5);        /* 3 + 5 */

	ck_assert_uint_eq(msg_size(msg), 8);
	msg_set_key(msg, "key", 3);                         /* + 3 */
	ck_assert_uint_eq(msg_size(msg), 11);
	msg_add_header(msg, "hdr", "value", 5);             /* + 3 + 5 */
	ck_assert_uint_eq(msg_size(msg), 19);
	msg_add_header(msg, "bin", "\0\0", 2);              /* + 3 + 2 */
	ck_assert_uint_eq(msg_size(msg), 24);
	msg_remove_header(msg, "hdr");
	ck_assert_uint_eq(msg_size(msg), 16);
	msg_set_payload(msg, NULL, 0);
	ck_assert_uint_eq(msg_size(msg), 11);
	msg_free(msg);
}
END_TEST

/* --- write-ahead log records ----------------------------------------------- */

START_TEST(record_round_trip_keeps_what_the_input_gave)
{
	iotr_msg *msg = msg_new("sensors/s1/d1/t", "{\"v\":1}\0x", 9), *back;
	struct msg_buf b = { 0 };
	char source[64];
	const void *v;
	size_t len;

	msg_set_qos(msg, 2, 1);
	msg_set_time(msg, 1732550000123456LL);
	msg_add_header(msg, "mqtt.correlation_data", "\x01\0\x02", 3);
	msg_add_header(msg, "driver", "alice", 5);
	ck_assert_int_eq(msg_encode(msg, "sensors", &b), IOTR_OK);
	back = msg_decode(b.data, b.len, source, sizeof(source));
	ck_assert_ptr_nonnull(back);
	ck_assert_str_eq(source, "sensors");
	ck_assert_str_eq(back->topic, "sensors/s1/d1/t");
	ck_assert_uint_eq(back->payload_len, 9);
	ck_assert_mem_eq(back->payload, "{\"v\":1}\0x", 9);
	ck_assert_int_eq(back->qos, 2);
	ck_assert_int_eq(back->retain, 1);
	ck_assert_int_eq(back->time_us, 1732550000123456LL);
	ck_assert_uint_eq(back->nheaders, 2);
	v = msg_header(back, "mqtt.correlation_data", &len);
	ck_assert_uint_eq(len, 3);
	ck_assert_mem_eq(v, "\x01\0\x02", 3);
	ck_assert_ptr_null(back->key);
	ck_assert_ptr_null(back->dest);
	msg_free(back);
	msg_free(msg);
	free(b.data);
}
END_TEST

/* A message a transform made outside process() keeps, through the log, the
 * transform that made it and its destination; every truncation fails. */
START_TEST(record_of_a_made_message)
{
	iotr_msg *msg = msg_new("sensors/site-1/dev-1/temperature", "{\"avg\":21}", 11);
	iotr_msg *back;
	struct msg_buf b = { 0 };
	char source[64];

	ck_assert_int_eq(msg_set_key(msg, "dev-1", 5), IOTR_OK);
	ck_assert_int_eq(msg_set_dest(msg, "iot.windows"), IOTR_OK);
	ck_assert_int_eq(msg_encode_made(msg, "window_stats", &b), IOTR_OK);
	ck_assert_ptr_nonnull(back = msg_decode(b.data, b.len, source, sizeof(source)));
	ck_assert(back->made);
	ck_assert_str_eq(source, "window_stats");
	ck_assert_str_eq(back->dest, "iot.windows");
	ck_assert_str_eq(back->topic, "sensors/site-1/dev-1/temperature");
	ck_assert_mem_eq(back->key, "dev-1", 5);
	ck_assert_mem_eq(back->payload, "{\"avg\":21}", 11);
	msg_free(back);
	for (size_t cut = 0; cut < b.len; cut++)
		ck_assert_ptr_null(msg_decode(b.data, cut, NULL, 0));
	/* only a made record may carry a destination */
	b.data[3] &= ~0x02;
	ck_assert_ptr_null(msg_decode(b.data, b.len, NULL, 0));
	msg_free(msg);

	/* without a destination; and an input's record is not "made" */
	msg = msg_new("a/b", "p", 1);
	ck_assert_int_eq(msg_encode_made(msg, "rule", &b), IOTR_OK);
	ck_assert_ptr_nonnull(back = msg_decode(b.data, b.len, NULL, 0));
	ck_assert(back->made);
	ck_assert_ptr_null(back->dest);
	msg_free(back);
	ck_assert_int_eq(msg_encode(msg, "in", &b), IOTR_OK);
	ck_assert_ptr_nonnull(back = msg_decode(b.data, b.len, NULL, 0));
	ck_assert(!back->made);
	msg_free(back);
	msg_free(msg);
	free(b.data);
}
END_TEST

/* A key an input set (the kafka input: the record's key) survives the log,
 * bytes and all; a record of a router that kept no keys still reads. */
START_TEST(record_keeps_the_inputs_key)
{
	iotr_msg *msg = msg_new("vehicle.commands", "{}", 2), *back;
	struct msg_buf b = { 0 };

	ck_assert_int_eq(msg_set_key(msg, "VIN\0\x01", 5), IOTR_OK);
	ck_assert_int_eq(msg_encode(msg, "commands", &b), IOTR_OK);
	ck_assert_ptr_nonnull(back = msg_decode(b.data, b.len, NULL, 0));
	ck_assert_uint_eq(back->key_len, 5);
	ck_assert_mem_eq(back->key, "VIN\0\x01", 5);
	msg_free(back);
	/* every truncation is refused, also inside the key */
	for (size_t cut = 0; cut < b.len; cut++)
		ck_assert_ptr_null(msg_decode(b.data, cut, NULL, 0));
	/* an unknown flag is refused */
	b.data[3] |= 0x80;
	ck_assert_ptr_null(msg_decode(b.data, b.len, NULL, 0));
	msg_free(msg);
	free(b.data);
	b = (struct msg_buf){ 0 };

	/* without a key: flags 0, the layout of the first records */
	msg = msg_new("a/b", "p", 1);
	ck_assert_int_eq(msg_encode(msg, "in", &b), IOTR_OK);
	ck_assert_int_eq(b.data[3], 0);
	ck_assert_ptr_nonnull(back = msg_decode(b.data, b.len, NULL, 0));
	ck_assert_ptr_null(back->key);
	msg_free(back);
	msg_free(msg);
	free(b.data);
}
END_TEST

START_TEST(record_damaged_is_refused)
{
	iotr_msg *msg = msg_new("a/b", "payload", 7);
	struct msg_buf b = { 0 };
	size_t cut;

	msg_add_header(msg, "h", "v", 1);
	ck_assert_int_eq(msg_encode(msg, "in", &b), IOTR_OK);
	/* Every truncation, and a wrong version, is refused, never read
	 * past its end. */
	for (cut = 0; cut < b.len; cut++)
		ck_assert_ptr_null(msg_decode(b.data, cut, NULL, 0));
	b.data[0] = 99;
	ck_assert_ptr_null(msg_decode(b.data, b.len, NULL, 0));
	msg_free(msg);
	free(b.data);
}
END_TEST

static Suite *msg_suite(void)
{
	Suite *s = suite_create("msg");
	TCase *tc;

	tc = tcase_create("lifecycle");
	tcase_add_test(tc, new_copies_topic_and_payload);
	tcase_add_test(tc, new_without_payload_or_topic);
	tcase_add_test(tc, clone_is_deep);
	tcase_add_test(tc, clone_keeps_captures);
	suite_add_tcase(s, tc);

	tc = tcase_create("setters");
	tcase_add_test(tc, set_payload_copies);
	tcase_add_test(tc, set_key_binary_and_clear);
	tcase_add_test(tc, set_dest_time_and_error);
	tcase_add_test(tc, set_qos_checks_range);
	tcase_add_test(tc, parts_outgrow_the_spare_room);
	tcase_add_test(tc, pool_takes_back_messages_freed_elsewhere);
	suite_add_tcase(s, tc);

	tc = tcase_create("records");
	tcase_add_test(tc, record_round_trip_keeps_what_the_input_gave);
	tcase_add_test(tc, record_keeps_the_inputs_key);
	tcase_add_test(tc, record_damaged_is_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("headers");
	tcase_add_test(tc, header_add_and_lookup);
	tcase_add_test(tc, header_binary_and_empty_values);
	tcase_add_test(tc, header_duplicates);
	tcase_add_test(tc, header_remove_all_of_a_name);
	tcase_add_test(tc, header_many_keep_order);
	suite_add_tcase(s, tc);

	tc = tcase_create("json");
	tcase_add_test(tc, json_parsed_once);
	tcase_add_test(tc, json_not_json);
	tcase_add_test(tc, json_invalidated_by_set_payload);
	suite_add_tcase(s, tc);

	tc = tcase_create("size");
	tcase_add_test(tc, size_counts_everything_a_message_carries);
	tcase_add_test(tc, record_of_a_made_message);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(msg_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
