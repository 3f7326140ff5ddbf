/*
 * test_route.c - topic filters with named captures, and route_apply(): what
 * a message looks like after a route has matched it.  Single-threaded.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "route.h"
#include "template.h"

/* --- helpers -------------------------------------------------------------- */

static char err[1024];

/* Parse a filter that must be valid. */
static void parse_ok(const char *text, struct topic_filter *f)
{
	err[0] = '\0';
	ck_assert_msg(filter_parse(text, f, err, sizeof(err)) == 0,
	              "filter '%s' refused: %s", text, err);
}

/* Parse a filter that must be refused; the message is left in err. */
static void parse_fails(const char *text)
{
	struct topic_filter f;

	err[0] = '\0';
	ck_assert_msg(filter_parse(text, &f, err, sizeof(err)) == -1,
	              "filter '%s' was accepted", text ? text : "(null)");
	ck_assert_msg(err[0] != '\0', "no message for '%s'",
	              text ? text : "(null)");
}

static int matches(const char *filter, const char *topic)
{
	struct topic_filter f;
	int m;

	parse_ok(filter, &f);
	m = filter_match(&f, topic, NULL);
	filter_free(&f);
	return m;
}

/* The text of capture `name` after matching topic, as a new string. */
static char *capture_of(const struct topic_filter *f, const char *topic,
                        const char *name)
{
	size_t spans[32];
	int i = filter_capture_index(f, name);

	ck_assert_msg(i >= 0, "filter '%s' has no capture '%s'", f->source,
	              name);
	ck_assert_msg(filter_match(f, topic, spans), "'%s' does not match '%s'",
	              f->source, topic);
	return strndup(topic + spans[2 * i], spans[2 * i + 1]);
}

static void assert_capture(const struct topic_filter *f, const char *topic,
                           const char *name, const char *want)
{
	char *got = capture_of(f, topic, name);

	ck_assert_str_eq(got, want);
	free(got);
}

/* A route as conf.c builds it: name, filter, optional templates. */
static struct route *route_new(const char *name, const char *filter,
                               const char *topic, const char *key,
                               int default_headers)
{
	struct route *r = calloc(1, sizeof(*r));

	ck_assert_ptr_nonnull(r);
	r->name = strdup(name);
	r->file = "test.conf";
	r->line = 1;
	r->default_headers = default_headers;
	parse_ok(filter, &r->filter);
	if (topic) {
		r->topic = template_parse(topic, &r->filter, err, sizeof(err));
		ck_assert_msg(r->topic != NULL, "topic template: %s", err);
	}
	if (key) {
		r->key = template_parse(key, &r->filter, err, sizeof(err));
		ck_assert_msg(r->key != NULL, "key template: %s", err);
	}
	return r;
}

static void route_add_header(struct route *r, const char *name,
                             const char *tpl)
{
	struct route_header *h = realloc(r->headers,
	                                 (r->nheaders + 1) * sizeof(*h));

	ck_assert_ptr_nonnull(h);
	r->headers = h;
	h[r->nheaders].name = strdup(name);
	h[r->nheaders].value = template_parse(tpl, &r->filter, err,
	                                      sizeof(err));
	ck_assert_msg(h[r->nheaders].value != NULL, "header template: %s",
	              err);
	r->nheaders++;
}

static void route_delete(struct route *r)
{
	route_free(r);
	free(r);
}

/* Match msg's topic against the route and apply it, as the pipeline does. */
static int route_msg(const struct route *r, iotr_msg *msg)
{
	size_t spans[32];

	ck_assert_msg(filter_match(&r->filter, msg->topic, spans),
	              "'%s' does not match '%s'", r->filter.source, msg->topic);
	return route_apply(r, msg, spans);
}

/* A header's value as a string, or NULL when absent. */
static char *header_str(const iotr_msg *msg, const char *name)
{
	size_t len;
	const void *v = msg_header(msg, name, &len);

	return v ? strndup(v, len) : NULL;
}

static void assert_header(const iotr_msg *msg, const char *name,
                          const char *want)
{
	char *got = header_str(msg, name);

	ck_assert_msg(got != NULL, "header '%s' missing", name);
	ck_assert_str_eq(got, want);
	free(got);
}

/* --- filter_parse --------------------------------------------------------- */

START_TEST(parse_plain_filters)
{
	struct topic_filter f;

	parse_ok("sensors/+/temp/#", &f);
	ck_assert_uint_eq(f.nlevels, 4);
	ck_assert_uint_eq(f.ncaptures, 0);
	ck_assert_str_eq(f.mqtt, "sensors/+/temp/#");
	ck_assert_str_eq(f.source, "sensors/+/temp/#");
	filter_free(&f);
	parse_ok("#", &f);
	ck_assert_str_eq(f.mqtt, "#");
	ck_assert_uint_eq(f.nlevels, 1);
	filter_free(&f);
	/* Empty levels are legal MQTT ("a//b", "/a"). */
	parse_ok("/a//b", &f);
	ck_assert_str_eq(f.mqtt, "/a//b");
	ck_assert_uint_eq(f.nlevels, 4);
	filter_free(&f);
}
END_TEST

START_TEST(parse_named_captures_strip_names_for_mqtt)
{
	struct topic_filter f;

	/* The broker must be subscribed to the plain MQTT filter. */
	parse_ok("sensors/+site/+device/#rest", &f);
	ck_assert_str_eq(f.mqtt, "sensors/+/+/#");
	ck_assert_str_eq(f.source, "sensors/+site/+device/#rest");
	ck_assert_uint_eq(f.ncaptures, 3);
	ck_assert_str_eq(f.captures[0], "site");
	ck_assert_str_eq(f.captures[1], "device");
	ck_assert_str_eq(f.captures[2], "rest");
	ck_assert_int_eq(filter_capture_index(&f, "site"), 0);
	ck_assert_int_eq(filter_capture_index(&f, "device"), 1);
	ck_assert_int_eq(filter_capture_index(&f, "rest"), 2);
	ck_assert_int_eq(filter_capture_index(&f, "nope"), -1);
	filter_free(&f);

	parse_ok("a/+_x1/+Site_2", &f);
	ck_assert_str_eq(f.captures[0], "_x1");
	ck_assert_str_eq(f.captures[1], "Site_2");
	filter_free(&f);
}
END_TEST

START_TEST(parse_misplaced_wildcards)
{
	parse_fails("a/#/b");
	ck_assert_ptr_nonnull(strstr(err, "a/#/b"));
	ck_assert_ptr_nonnull(strstr(err, "'#' must be the last level"));
	parse_fails("#rest/x");
	ck_assert_ptr_nonnull(strstr(err, "'#' must be the last level"));
	parse_fails("a+b/c");
	ck_assert_ptr_nonnull(strstr(err, "filter 'a+b/c'"));
	ck_assert_ptr_nonnull(strstr(err, "must stand alone in a level"));
	parse_fails("a/b#");
	ck_assert_ptr_nonnull(strstr(err, "must stand alone in a level"));
}
END_TEST

START_TEST(parse_bad_capture_name)
{
	parse_fails("a/+1site");
	ck_assert_ptr_nonnull(strstr(err, "capture name '1site'"));
	ck_assert_ptr_nonnull(strstr(err, "letters, digits and '_'"));
	parse_fails("a/+si-te");
	ck_assert_ptr_nonnull(strstr(err, "capture name 'si-te'"));
	/* a '+' inside a capture name is not a second wildcard */
	parse_fails("a/++x");
	ck_assert_ptr_nonnull(strstr(err, "capture name '+x'"));
}
END_TEST

START_TEST(parse_duplicate_capture)
{
	parse_fails("x/+id/y/+id");
	ck_assert_ptr_nonnull(strstr(err, "filter 'x/+id/y/+id'"));
	ck_assert_ptr_nonnull(strstr(err, "capture 'id' is named twice"));
	/* '+' and '#' captures share one namespace */
	parse_fails("x/+id/#id");
	ck_assert_ptr_nonnull(strstr(err, "'id' is named twice"));
}
END_TEST

START_TEST(parse_reserved_capture)
{
	/* ${topic} and ${qos} already mean something in templates. */
	parse_fails("a/+topic");
	ck_assert_ptr_nonnull(strstr(err, "capture name 'topic' is reserved"));
	parse_fails("a/#qos");
	ck_assert_ptr_nonnull(strstr(err, "capture name 'qos' is reserved"));
	/* only the exact word is reserved */
	ck_assert_int_eq(matches("a/+topics", "a/x"), 1);
}
END_TEST

START_TEST(parse_empty)
{
	parse_fails("");
	ck_assert_str_eq(err, "empty topic filter");
	parse_fails(NULL);
	ck_assert_str_eq(err, "empty topic filter");
}
END_TEST

/* --- filter_match --------------------------------------------------------- */

START_TEST(match_exact)
{
	ck_assert_int_eq(matches("a/b/c", "a/b/c"), 1);
	ck_assert_int_eq(matches("a/b/c", "a/b/d"), 0);
	ck_assert_int_eq(matches("a/b/c", "a/b/cc"), 0);
	ck_assert_int_eq(matches("a/b", "a/bc"), 0);
	/* MQTT topics are case-sensitive */
	ck_assert_int_eq(matches("a/b", "A/b"), 0);
}
END_TEST

START_TEST(match_plus_is_one_level)
{
	ck_assert_int_eq(matches("a/+/c", "a/b/c"), 1);
	ck_assert_int_eq(matches("a/+/c", "a//c"), 1);  /* empty level */
	ck_assert_int_eq(matches("a/+/c", "a/b/x/c"), 0);
	ck_assert_int_eq(matches("a/+", "a/b"), 1);
	ck_assert_int_eq(matches("a/+", "a/b/c"), 0);
	ck_assert_int_eq(matches("+/+", "a/b"), 1);
	ck_assert_int_eq(matches("+", "a"), 1);
}
END_TEST

START_TEST(match_hash_is_the_rest)
{
	ck_assert_int_eq(matches("a/#", "a/b"), 1);
	ck_assert_int_eq(matches("a/#", "a/b/c/d"), 1);
	ck_assert_int_eq(matches("a/#", "b/c"), 0);
	ck_assert_int_eq(matches("#", "anything/at/all"), 1);
	ck_assert_int_eq(matches("a/+/#", "a/b/c"), 1);
	/* MQTT 3.1.1 4.7.1.2: "sport/#" also matches "sport". */
	ck_assert_int_eq(matches("a/#", "a"), 1);
	ck_assert_int_eq(matches("a/+/#", "a/b"), 1);
	ck_assert_int_eq(matches("a/b/#", "a"), 0);
	ck_assert_int_eq(matches("a/+", "a"), 0);
}
END_TEST

START_TEST(match_dollar_topics_need_literal_first_level)
{
	/* MQTT 4.7.2: wildcards at the first level never match $-topics. */
	ck_assert_int_eq(matches("#", "$SYS/broker/uptime"), 0);
	ck_assert_int_eq(matches("+/broker/uptime", "$SYS/broker/uptime"), 0);
	ck_assert_int_eq(matches("+/#", "$SYS/x"), 0);
	ck_assert_int_eq(matches("$SYS/#", "$SYS/broker/uptime"), 1);
	ck_assert_int_eq(matches("$SYS/+/uptime", "$SYS/broker/uptime"), 1);
	/* a '$' further in is an ordinary character */
	ck_assert_int_eq(matches("a/+", "a/$x"), 1);
}
END_TEST

START_TEST(match_fewer_and_more_levels)
{
	ck_assert_int_eq(matches("a/b/c", "a/b"), 0);
	ck_assert_int_eq(matches("a/b", "a/b/c"), 0);
	ck_assert_int_eq(matches("a/+/+", "a/b"), 0);
	ck_assert_int_eq(matches("a/b", "a/b/"), 0);
	ck_assert_int_eq(matches("a/b/", "a/b/"), 1);
}
END_TEST

START_TEST(match_captures_plus)
{
	struct topic_filter f;

	parse_ok("sensors/+site/+device/temp", &f);
	assert_capture(&f, "sensors/berlin/dev-42/temp", "site", "berlin");
	assert_capture(&f, "sensors/berlin/dev-42/temp", "device", "dev-42");
	assert_capture(&f, "sensors//dev/temp", "site", "");
	filter_free(&f);
	/* unnamed wildcards take no capture slot */
	parse_ok("a/+/+dev/#", &f);
	ck_assert_uint_eq(f.ncaptures, 1);
	assert_capture(&f, "a/x/y/z", "dev", "y");
	filter_free(&f);
}
END_TEST

START_TEST(match_captures_hash)
{
	struct topic_filter f;
	size_t spans[4];

	parse_ok("sensors/+site/#rest", &f);
	assert_capture(&f, "sensors/berlin/a/b/c", "rest", "a/b/c");
	assert_capture(&f, "sensors/berlin/x", "rest", "x");
	/* "sensors/berlin" matches too; #rest then captures nothing */
	assert_capture(&f, "sensors/berlin", "site", "berlin");
	assert_capture(&f, "sensors/berlin", "rest", "");
	ck_assert_int_eq(filter_match(&f, "sensors/berlin", spans), 1);
	ck_assert_uint_eq(spans[3], 0);
	filter_free(&f);

	parse_ok("#all", &f);
	assert_capture(&f, "a/b/c", "all", "a/b/c");
	filter_free(&f);
}
END_TEST

/* --- route_apply ---------------------------------------------------------- */

START_TEST(apply_copies_captures_into_message)
{
	struct route *r = route_new("route 'telemetry'",
	                            "sensors/+site/+device/#rest", NULL, NULL,
	                            0);
	iotr_msg *msg = msg_new("sensors/berlin/dev-7/env/temp", "21", 2);

	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_ptr_eq(msg->route, r);
	ck_assert_str_eq(msg_capture(msg, "site"), "berlin");
	ck_assert_str_eq(msg_capture(msg, "device"), "dev-7");
	ck_assert_str_eq(msg_capture(msg, "rest"), "env/temp");
	ck_assert_ptr_null(msg_capture(msg, "nope"));
	/* no topic/key template: the output's defaults apply */
	ck_assert_ptr_null(msg->dest);
	ck_assert_ptr_null(msg->key);
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_renders_topic_and_key)
{
	struct route *r = route_new("route #1", "sensors/+site/+device/#",
	                            "telemetry.${site}", "${site}:${device}",
	                            0);
	iotr_msg *msg = msg_new("sensors/berlin/dev-7/temp", "{}", 2);
	const char *payload;

	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_str_eq(msg->dest, "telemetry.berlin");
	ck_assert_str_eq(msg->key, "berlin:dev-7");
	ck_assert_uint_eq(msg->key_len, strlen("berlin:dev-7"));
	ck_assert_ptr_null(msg->error);
	msg_free(msg);
	route_delete(r);

	r = route_new("route #1", "sensors/+site/#",
	                            "${topic[0]}.${json:meta.kind}",
	                            "${json:id}", 0);
	payload = "{\"id\": 17, \"meta\": {\"kind\": \"temp\"}}";
	msg = msg_new("sensors/berlin/x", payload, strlen(payload));
	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_str_eq(msg->dest, "sensors.temp");
	ck_assert_str_eq(msg->key, "17");
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_renders_headers_in_order)
{
	struct route *r = route_new("route #1", "sensors/+site/+device", NULL,
	                            NULL, 0);
	iotr_msg *msg = msg_new("sensors/berlin/dev-7", "x", 1);

	route_add_header(r, "site", "${site}");
	route_add_header(r, "origin", "mqtt:${topic} qos=${qos}");
	msg_set_qos(msg, 1, 0);
	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_uint_eq(msg->nheaders, 2);
	ck_assert_str_eq(msg->headers[0].name, "site");
	ck_assert_str_eq(msg->headers[1].name, "origin");
	assert_header(msg, "site", "berlin");
	assert_header(msg, "origin", "mqtt:sensors/berlin/dev-7 qos=1");
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_default_headers_present)
{
	struct route *r = route_new("route #1", "a/#", NULL, NULL, 1);
	iotr_msg *msg = msg_new("a/b", "x", 1);

	msg_set_qos(msg, 2, 0);
	msg_set_time(msg, 1700000000123456LL);
	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	assert_header(msg, "mqtt.topic", "a/b");
	assert_header(msg, "mqtt.qos", "2");
	assert_header(msg, "received_at", "1700000000123456");
	ck_assert_uint_eq(msg->nheaders, 3);
	msg_free(msg);
	route_delete(r);

	/* the route's own headers come after the default ones */
	r = route_new("route #1", "a/+x", NULL, NULL, 1);
	msg = msg_new("a/b", "x", 1);
	route_add_header(r, "x", "${x}");
	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_uint_eq(msg->nheaders, 4);
	ck_assert_str_eq(msg->headers[0].name, "mqtt.topic");
	ck_assert_str_eq(msg->headers[3].name, "x");
	assert_header(msg, "x", "b");
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_default_headers_absent_when_off)
{
	struct route *r = route_new("route #1", "a/#", NULL, NULL, 0);
	iotr_msg *msg = msg_new("a/b", "x", 1);

	ck_assert_int_eq(route_msg(r, msg), IOTR_OK);
	ck_assert_uint_eq(msg->nheaders, 0);
	ck_assert_ptr_null(msg_header(msg, "mqtt.topic", NULL));
	ck_assert_ptr_null(msg_header(msg, "mqtt.qos", NULL));
	ck_assert_ptr_null(msg_header(msg, "received_at", NULL));
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_fails_on_missing_json_field_in_topic)
{
	struct route *r = route_new("route 'by-kind'", "a/#",
	                            "t.${json:kind}", NULL, 0);
	const char *payload = "{\"other\": 1}";
	iotr_msg *msg = msg_new("a/b", payload, strlen(payload));

	ck_assert_int_eq(route_msg(r, msg), IOTR_FAIL);
	ck_assert_ptr_nonnull(msg->error);
	/* The dead-letter reason names the route, the field and what is
	 * wrong, so a user can find the config line and the bad payload. */
	ck_assert_ptr_nonnull(strstr(msg->error, "route 'by-kind'"));
	ck_assert_ptr_nonnull(strstr(msg->error, "topic"));
	ck_assert_ptr_nonnull(strstr(msg->error, "${json:kind}"));
	ck_assert_ptr_nonnull(strstr(msg->error, "no such field"));
	ck_assert_ptr_null(msg->dest);
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_fails_on_missing_json_field_in_key)
{
	struct route *r = route_new("route #3", "a/#", NULL, "${json:id}", 0);
	iotr_msg *msg = msg_new("a/b", "not json", 8);

	ck_assert_int_eq(route_msg(r, msg), IOTR_FAIL);
	ck_assert_ptr_nonnull(msg->error);
	ck_assert_ptr_nonnull(strstr(msg->error, "route #3"));
	ck_assert_ptr_nonnull(strstr(msg->error, "key"));
	ck_assert_ptr_nonnull(strstr(msg->error, "${json:id}"));
	ck_assert_ptr_nonnull(strstr(msg->error, "not JSON"));
	msg_free(msg);
	route_delete(r);
}
END_TEST

START_TEST(apply_fails_on_missing_json_field_in_header)
{
	struct route *r = route_new("route 'h'", "a/#", NULL, NULL, 0);
	iotr_msg *msg = msg_new("a/b", "{}", 2);

	route_add_header(r, "device-id", "${json:device_id}");
	ck_assert_int_eq(route_msg(r, msg), IOTR_FAIL);
	ck_assert_ptr_nonnull(strstr(msg->error, "route 'h'"));
	ck_assert_ptr_nonnull(strstr(msg->error, "device-id"));
	ck_assert_ptr_nonnull(strstr(msg->error, "${json:device_id}"));
	ck_assert_ptr_null(msg_header(msg, "device-id", NULL));
	msg_free(msg);
	route_delete(r);
}
END_TEST

/* A header's bytes may hold a NUL; a topic made from them would be cut
 * short and name another topic, so the message fails instead. */
START_TEST(apply_fails_on_nul_in_topic)
{
	struct route *r = route_new("route 'n'", "a/#", "t.${header:x}", NULL,
	                            0);
	iotr_msg *msg = msg_new("a/b", "{}", 2);

	ck_assert_int_eq(msg_add_header(msg, "x", "ok\0evil", 7), IOTR_OK);
	ck_assert_int_eq(route_msg(r, msg), IOTR_FAIL);
	ck_assert_ptr_nonnull(strstr(msg->error, "route 'n'"));
	ck_assert_ptr_nonnull(strstr(msg->error, "NUL"));
	ck_assert_ptr_null(msg->dest);
	msg_free(msg);
	route_delete(r);
}
END_TEST

static Suite *route_suite(void)
{
	Suite *s = suite_create("route");
	TCase *tc;

	tc = tcase_create("filter_parse");
	tcase_add_test(tc, parse_plain_filters);
	tcase_add_test(tc, parse_named_captures_strip_names_for_mqtt);
	tcase_add_test(tc, parse_misplaced_wildcards);
	tcase_add_test(tc, parse_bad_capture_name);
	tcase_add_test(tc, parse_duplicate_capture);
	tcase_add_test(tc, parse_reserved_capture);
	tcase_add_test(tc, parse_empty);
	suite_add_tcase(s, tc);

	tc = tcase_create("filter_match");
	tcase_add_test(tc, match_exact);
	tcase_add_test(tc, match_plus_is_one_level);
	tcase_add_test(tc, match_hash_is_the_rest);
	tcase_add_test(tc, match_dollar_topics_need_literal_first_level);
	tcase_add_test(tc, match_fewer_and_more_levels);
	tcase_add_test(tc, match_captures_plus);
	tcase_add_test(tc, match_captures_hash);
	suite_add_tcase(s, tc);

	tc = tcase_create("route_apply");
	tcase_add_test(tc, apply_copies_captures_into_message);
	tcase_add_test(tc, apply_renders_topic_and_key);
	tcase_add_test(tc, apply_renders_headers_in_order);
	tcase_add_test(tc, apply_default_headers_present);
	tcase_add_test(tc, apply_default_headers_absent_when_off);
	tcase_add_test(tc, apply_fails_on_missing_json_field_in_topic);
	tcase_add_test(tc, apply_fails_on_missing_json_field_in_key);
	tcase_add_test(tc, apply_fails_on_missing_json_field_in_header);
	tcase_add_test(tc, apply_fails_on_nul_in_topic);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(route_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
