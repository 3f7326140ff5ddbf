/*
 * test_template.c - "${...}" templates: what each reference renders to, and
 * the messages a user gets for a bad template (at config load) or for a
 * message that lacks what the template asks for (at render time).
 * Single-threaded; each test has its own route and message (fixture).
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "route.h"
#include "template.h"

/* --- fixture ---------------------------------------------------------------- */

static struct route rt;      /* holds the filter captures are named in */
static iotr_msg *msg;
static char *out;
static size_t outlen;
static char err[1024];

static void setup(void)
{
	memset(&rt, 0, sizeof(rt));
	msg = NULL;
	out = NULL;
	outlen = 0;
	err[0] = '\0';
}

static void teardown(void)
{
	msg_free(msg);          /* before the route its captures refer to */
	route_free(&rt);
	free(out);
}

static void use_filter(const char *filter)
{
	rt.name = strdup("route #1");
	ck_assert_msg(filter_parse(filter, &rt.filter, err, sizeof(err)) == 0,
	              "filter '%s': %s", filter, err);
}

/* The message under test; captured by the route when a filter is set. */
static void use_msg(const char *topic, const char *payload)
{
	size_t spans[32];

	msg_free(msg);          /* a test may switch messages */
	msg = msg_new(topic, payload, payload ? strlen(payload) : 0);
	ck_assert_ptr_nonnull(msg);
	if (rt.filter.nlevels) {
		ck_assert_msg(filter_match(&rt.filter, topic, spans),
		              "'%s' does not match '%s'", rt.filter.source,
		              topic);
		ck_assert_int_eq(route_apply(&rt, msg, spans), IOTR_OK);
	}
}

static struct template *parse(const char *text)
{
	return template_parse(text, rt.filter.nlevels ? &rt.filter : NULL,
	                      err, sizeof(err));
}

/* Render text for msg; the result is in out/outlen, or the reason in err. */
static int render(const char *text)
{
	struct template *t = parse(text);
	int rc;

	ck_assert_msg(t != NULL, "template '%s' refused: %s", text, err);
	free(out);
	out = NULL;
	rc = template_render(t, msg, &out, &outlen, err, sizeof(err));
	template_free(t);
	return rc;
}

static void assert_renders(const char *text, const char *want)
{
	int rc = render(text);

	ck_assert_msg(rc == IOTR_OK, "'%s' failed (%d): %s", text, rc, err);
	ck_assert_str_eq(out, want);
	ck_assert_uint_eq(outlen, strlen(want));
}

static void assert_render_fails(const char *text, const char *why)
{
	int rc = render(text);

	ck_assert_msg(rc == IOTR_FAIL, "'%s' rendered as '%s' (rc %d)", text,
	              out ? out : "", rc);
	ck_assert_ptr_null(out);
	ck_assert_msg(strstr(err, why) != NULL, "'%s' not in '%s'", why, err);
}

static void assert_parse_fails(const char *text, const char *why)
{
	struct template *t = parse(text);

	ck_assert_msg(t == NULL, "'%s' was accepted", text);
	ck_assert_msg(strstr(err, why) != NULL, "'%s' not in '%s'", why, err);
}

/* --- literals ----------------------------------------------------------- */

START_TEST(literal_text_and_source)
{
	struct template *t;

	use_msg("a/b", NULL);
	t = parse("plain.topic-name");
	ck_assert_ptr_nonnull(t);
	ck_assert_int_ne(template_is_literal(t), 0);
	ck_assert_str_eq(template_source(t), "plain.topic-name");
	template_free(t);
	assert_renders("plain.topic-name", "plain.topic-name");
	assert_renders("", "");
	t = parse("x.${topic}");
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(template_is_literal(t), 0);
	ck_assert_str_eq(template_source(t), "x.${topic}");
	template_free(t);
}
END_TEST

START_TEST(dollar_escapes)
{
	use_msg("a/b", NULL);
	assert_renders("cost $$5", "cost $5");
	assert_renders("$$$$", "$$");
	/* "$${topic}" is a literal "${topic}", not a reference */
	assert_renders("$${topic}", "${topic}");
	/* a lone '$' not followed by '{' or '$' is kept */
	assert_renders("a$b$", "a$b$");
}
END_TEST

/* --- references --------------------------------------------------------- */

START_TEST(ref_captures)
{
	use_filter("sensors/+site/+device/#rest");
	use_msg("sensors/berlin/dev-7/env/temp", NULL);
	assert_renders("${site}.${device}", "berlin.dev-7");
	assert_renders("[${rest}]", "[env/temp]");
}
END_TEST

/* Routes render into a buffer on the stack; a longer text moves it to the
 * heap, and the next render starts over in it. */
START_TEST(render_to_outgrows_a_small_buffer)
{
	char small[16], topic[600];
	struct msg_buf b = MSG_BUF_ON(small);
	struct template *t;

	memset(topic, 'x', sizeof(topic) - 1);
	topic[sizeof(topic) - 1] = '\0';
	topic[3] = '/';
	use_filter("+site/+device");
	use_msg(topic, NULL);
	ck_assert_ptr_nonnull(t = parse("${site}:${device}"));
	ck_assert_int_eq(template_render_to(t, msg, &b, err, sizeof(err)),
	                 IOTR_OK);
	ck_assert_ptr_ne(b.data, small);
	ck_assert_uint_eq(b.len, sizeof(topic) - 1);
	ck_assert_str_eq(b.data + 4, topic + 4);
	ck_assert_int_eq(b.data[3], ':');
	template_free(t);
	ck_assert_ptr_nonnull(t = parse("${site}"));
	ck_assert_int_eq(template_render_to(t, msg, &b, err, sizeof(err)),
	                 IOTR_OK);
	ck_assert_str_eq(b.data, "xxx");
	ck_assert_uint_eq(b.len, 3);
	template_free(t);
	msg_buf_release(&b);
	ck_assert_ptr_eq(b.data, small);
	/* the route copied its long captures out of the spare room too */
	ck_assert_uint_eq(strlen(msg_capture(msg, "device")), sizeof(topic) - 5);
}
END_TEST

START_TEST(ref_topic_and_levels)
{
	use_msg("sensors/berlin//dev-7", NULL);
	assert_renders("mqtt:${topic}", "mqtt:sensors/berlin//dev-7");
	assert_renders("${topic[0]}", "sensors");
	assert_renders("${topic[1]}", "berlin");
	assert_renders("<${topic[2]}>", "<>");  /* an empty level */
	assert_renders("${topic[3]}", "dev-7");
}
END_TEST

START_TEST(ref_qos)
{
	use_msg("a", NULL);
	assert_renders("q${qos}", "q0");
	ck_assert_int_eq(msg_set_qos(msg, 2, 0), IOTR_OK);
	assert_renders("q${qos}", "q2");
}
END_TEST

/* ${key} is the message's key (from a Kafka record, or set by a rule),
 * unless the route names a capture "key", which keeps its meaning. */
START_TEST(ref_key)
{
	use_msg("vehicle.commands", NULL);
	assert_render_fails("vehicles/${key}/cmd", "${key}: message has no key");
	ck_assert_int_eq(msg_set_key(msg, "VIN-42", 6), IOTR_OK);
	assert_renders("vehicles/${key}/cmd", "vehicles/VIN-42/cmd");
	/* a key cannot add levels or wildcards, nor be cut at a NUL */
	ck_assert_int_eq(msg_set_key(msg, "VIN/config", 10), IOTR_OK);
	assert_render_fails("vehicles/${key}/cmd", "cannot be one topic level");
	ck_assert_int_eq(msg_set_key(msg, "#", 1), IOTR_OK);
	assert_render_fails("vehicles/${key}/cmd", "cannot be one topic level");
	ck_assert_int_eq(msg_set_key(msg, "VIN\0x", 5), IOTR_OK);
	assert_render_fails("vehicles/${key}/cmd", "cannot be one topic level");

	use_filter("devices/+key");
	use_msg("devices/captured", NULL);
	ck_assert_int_eq(msg_set_key(msg, "other", 5), IOTR_OK);
	assert_renders("k=${key}", "k=captured");
}
END_TEST

START_TEST(ref_header)
{
	use_msg("a", NULL);
	msg_add_header(msg, "tenant", "acme", 4);
	msg_add_header(msg, "tenant", "other", 5);
	/* the first header of a name wins */
	assert_renders("t-${header:tenant}", "t-acme");
	/* values are bytes, and render as they are */
	msg_add_header(msg, "bin", "x\0y", 3);
	ck_assert_int_eq(render("${header:bin}!"), IOTR_OK);
	ck_assert_uint_eq(outlen, 4);
	ck_assert_mem_eq(out, "x\0y!", 4);
}
END_TEST

START_TEST(ref_json_string_as_is)
{
	use_msg("a", "{\"kind\": \"temp \\\"x\\\"\", \"u\": \"\\u00e9\"}");
	/* strings render without quotes or escapes */
	assert_renders("${json:kind}", "temp \"x\"");
	assert_renders("${json:u}", "\xc3\xa9");
}
END_TEST

START_TEST(ref_json_nested_path_with_arrays)
{
	use_msg("a", "{\"dev\": {\"readings\": [{\"v\": \"a\"}, "
	        "{\"v\": \"b\", \"tags\": [\"x\", \"y\"]}]}}");
	assert_renders("${json:dev.readings.0.v}", "a");
	assert_renders("${json:dev.readings.1.v}", "b");
	assert_renders("${json:dev.readings.1.tags.1}", "y");
	/* a top-level array */
	msg_set_payload(msg, "[{\"id\": 1}, {\"id\": \"second\"}]", 29);
	assert_renders("${json:1.id}", "second");
}
END_TEST

START_TEST(ref_json_numbers)
{
	use_msg("a", "{\"i\": 42, \"n\": -7, \"big\": 9007199254740993, "
	        "\"r\": 21.5}");
	assert_renders("${json:i}", "42");
	assert_renders("${json:n}", "-7");
	assert_renders("${json:big}", "9007199254740993");
	assert_renders("${json:r}", "21.5");
	/* Decimal readings keep the digits a device sent, not 17 of them. */
	use_msg("a", "{\"t\": 21.3, \"p\": 0.1}");
	assert_renders("dev-${json:t}-${json:p}", "dev-21.3-0.1");
}
END_TEST

START_TEST(ref_json_bools_objects_arrays)
{
	use_msg("a", "{\"on\": true, \"off\": false, "
	        "\"o\": {\"k\": 1, \"s\": \"v\"}, \"l\": [1, \"two\"]}");
	assert_renders("${json:on}", "true");
	assert_renders("${json:off}", "false");
	/* other values render as compact JSON text */
	assert_renders("${json:o}", "{\"k\":1,\"s\":\"v\"}");
	assert_renders("${json:l}", "[1,\"two\"]");
}
END_TEST

START_TEST(ref_mixed)
{
	use_filter("sensors/+site/#");
	use_msg("sensors/berlin/x", "{\"kind\": \"temp\"}");
	msg_set_qos(msg, 1, 0);
	assert_renders("${topic[0]}.${site}.${json:kind}-q${qos}$$",
	               "sensors.berlin.temp-q1$");
}
END_TEST

START_TEST(render_sees_new_payload)
{
	/* A transform that rewrites the payload changes what a later
	 * template reads from it. */
	use_msg("a", "{\"k\": \"old\"}");
	assert_renders("${json:k}", "old");
	msg_set_payload(msg, "{\"k\": \"new\"}", 12);
	assert_renders("${json:k}", "new");
}
END_TEST

/* --- errors at parse time ------------------------------------------------- */

START_TEST(parse_unknown_capture_lists_known)
{
	use_filter("sensors/+site/+device/#");
	assert_parse_fails("t.${dev}", "template 't.${dev}'");
	ck_assert_ptr_nonnull(strstr(err, "no capture 'dev'"));
	ck_assert_ptr_nonnull(strstr(err, "'sensors/+site/+device/#'"));
	ck_assert_ptr_nonnull(strstr(err, "(it has: site, device)"));
}
END_TEST

START_TEST(parse_unknown_capture_without_captures)
{
	/* A filter without captures: say how to name one. */
	use_filter("sensors/+/#");
	assert_parse_fails("${site}", "no capture 'site'");
	ck_assert_ptr_nonnull(strstr(err, "'sensors/+site/#'"));
	/* nor may a template without any filter use one */
	filter_free(&rt.filter);
	assert_parse_fails("${site}", "no capture 'site'");
}
END_TEST

START_TEST(parse_malformed_references)
{
	assert_parse_fails("t.${json:kind", "template 't.${json:kind'");
	ck_assert_ptr_nonnull(strstr(err, "'${' without a closing '}'"));
	assert_parse_fails("a${}b", "empty reference");
	assert_parse_fails("${json:}", "empty field name in ${json:...}");
	assert_parse_fails("${json:a..b}", "empty field name");
	assert_parse_fails("${json:a.}", "empty field name");
	assert_parse_fails("${header:}", "${header:} needs a header name");
}
END_TEST

START_TEST(parse_bad_level)
{
	assert_parse_fails("${topic[x]}", "${topic[x]} needs a level number");
	ck_assert_ptr_nonnull(strstr(err, "as in ${topic[1]}"));
	assert_parse_fails("${topic[-1]}", "needs a level number");
	assert_parse_fails("${topic[]}", "needs a level number");
	assert_parse_fails("${topic[1}", "needs a level number");
	assert_parse_fails("${topic[1]x}", "needs a level number");
}
END_TEST

/* --- errors at render time ------------------------------------------------ */

START_TEST(render_payload_not_json)
{
	use_msg("a", "21.5 degrees");
	assert_render_fails("t.${json:kind}", "${json:kind}: payload is not JSON");
}
END_TEST

START_TEST(render_missing_field)
{
	use_msg("a", "{\"a\": {\"b\": 1}, \"arr\": [1], \"s\": \"x\", "
	        "\"n\": null}");
	assert_render_fails("${json:c}", "${json:c}: payload has no such "
	                    "field");
	assert_render_fails("${json:a.c}", "no such field");
	assert_render_fails("${json:arr.5}", "no such field");
	assert_render_fails("${json:arr.x}", "no such field");
	/* walking into a scalar */
	assert_render_fails("${json:s.x}", "no such field");
	/* null has no text to route by */
	assert_render_fails("${json:n}", "no such field");
}
END_TEST

START_TEST(render_error_names_full_json_path)
{
	/* The reason must name the whole path the user wrote, or they look
	 * for the wrong field in the payload. */
	use_msg("a", "{\"device\": {\"name\": \"x\"}}");
	assert_render_fails("${json:device.id}", "${json:device.id}: payload "
	                    "has no such field");
}
END_TEST

START_TEST(render_missing_header)
{
	use_msg("a", NULL);
	msg_add_header(msg, "other", "v", 1);
	assert_render_fails("${header:tenant}", "${header:tenant}: message "
	                    "has no such header");
}
END_TEST

START_TEST(render_level_out_of_range)
{
	use_msg("a/b", NULL);
	assert_render_fails("${topic[5]}", "${topic[5]}: topic 'a/b' has only "
	                    "2 levels");
	assert_render_fails("${topic[2]}", "has only 2 levels");
}
END_TEST

static Suite *template_suite(void)
{
	Suite *s = suite_create("template");
	TCase *tc;

	tc = tcase_create("literals");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, literal_text_and_source);
	tcase_add_test(tc, dollar_escapes);
	suite_add_tcase(s, tc);

	tc = tcase_create("references");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ref_captures);
	tcase_add_test(tc, render_to_outgrows_a_small_buffer);
	tcase_add_test(tc, ref_topic_and_levels);
	tcase_add_test(tc, ref_qos);
	tcase_add_test(tc, ref_key);
	tcase_add_test(tc, ref_header);
	tcase_add_test(tc, ref_json_string_as_is);
	tcase_add_test(tc, ref_json_nested_path_with_arrays);
	tcase_add_test(tc, ref_json_numbers);
	tcase_add_test(tc, ref_json_bools_objects_arrays);
	tcase_add_test(tc, ref_mixed);
	tcase_add_test(tc, render_sees_new_payload);
	suite_add_tcase(s, tc);

	tc = tcase_create("parse errors");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, parse_unknown_capture_lists_known);
	tcase_add_test(tc, parse_unknown_capture_without_captures);
	tcase_add_test(tc, parse_malformed_references);
	tcase_add_test(tc, parse_bad_level);
	suite_add_tcase(s, tc);

	tc = tcase_create("render errors");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, render_payload_not_json);
	tcase_add_test(tc, render_missing_field);
	tcase_add_test(tc, render_error_names_full_json_path);
	tcase_add_test(tc, render_missing_header);
	tcase_add_test(tc, render_level_out_of_range);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(template_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
