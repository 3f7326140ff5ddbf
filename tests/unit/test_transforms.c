/*
 * test_transforms.c - the shipped transforms (json_fields, dedupe,
 * rate_limit, schema_check) loaded from their built .so files into a mock
 * host, with messages whose receive times the test chooses: casts and
 * number forms, windows and buckets to the microsecond, schema reasons,
 * and the configurations create() must refuse.  Single-threaded.
 * The plugins come from $IOTR_PLUGIN_DIR (set by make check).
 */
#include "config.h"

#include <check.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iotrouter/plugin.h"

/* --- a mock host ------------------------------------------------------------ */

#define MAX_PARAMS 16
#define MAX_VALUES 16
#define MAX_COUNTERS 16
#define MAX_HEADERS 8

struct mock_param {
	const char *key;
	const char *values[MAX_VALUES];
	size_t n;
};

struct iotr_counter {
	char name[64];
	uint64_t value;
};

struct iotr_instance {
	const struct iotr_plugin *plugin;
	struct mock_param params[MAX_PARAMS];
	size_t nparams;
	struct iotr_counter counters[MAX_COUNTERS];
	size_t ncounters;
	char log[4096];          /* every line logged, newline-separated */
};

struct iotr_msg {
	char *topic;
	char *payload;
	size_t len;
	char *key;
	int64_t time;
	char *error;
	const char *captures[4][2];
	char *hname[MAX_HEADERS], *hvalue[MAX_HEADERS];
	size_t nheaders;
};

static void mock_log(iotr_instance *inst, int level, const char *fmt, ...)
{
	size_t n = strlen(inst->log);
	va_list ap;

	(void)level;
	va_start(ap, fmt);
	vsnprintf(inst->log + n, sizeof(inst->log) - n, fmt, ap);
	va_end(ap);
	n = strlen(inst->log);
	if (n + 1 < sizeof(inst->log)) {
		inst->log[n] = '\n';
		inst->log[n + 1] = '\0';
	}
}

static int mock_log_enabled(iotr_instance *inst, int level)
{
	(void)inst;
	return level <= IOTR_LOG_DEBUG;
}

static const struct iotr_param *mock_schema(const iotr_instance *inst,
                                            const char *key)
{
	for (const struct iotr_param *p = inst->plugin->params; p->key; p++)
		if (strcmp(p->key, key) == 0)
			return p;
	ck_abort_msg("the plugin asked for '%s', which is not in its schema",
	             key);
	return NULL;
}

static const struct mock_param *mock_set(const iotr_instance *inst,
                                         const char *key)
{
	for (size_t i = 0; i < inst->nparams; i++)
		if (strcmp(inst->params[i].key, key) == 0)
			return &inst->params[i];
	return NULL;
}

/* The value as written, or the schema's default. */
static const char *mock_value(const iotr_instance *inst, const char *key)
{
	const struct mock_param *p = mock_set(inst, key);

	return p ? p->values[0] : mock_schema(inst, key)->default_value;
}

static const char *mock_param_string(const iotr_instance *inst,
                                     const char *key)
{
	return mock_value(inst, key);
}

static int64_t mock_param_int(const iotr_instance *inst, const char *key)
{
	const char *v = mock_value(inst, key);

	return v ? strtoll(v, NULL, 0) : 0;
}

static int mock_param_bool(const iotr_instance *inst, const char *key)
{
	const char *v = mock_value(inst, key);

	return v && strcmp(v, "true") == 0;
}

static double mock_param_double(const iotr_instance *inst, const char *key)
{
	const char *v = mock_value(inst, key);

	return v ? strtod(v, NULL) : 0;
}

static size_t mock_param_count(const iotr_instance *inst, const char *key)
{
	const struct mock_param *p = mock_set(inst, key);

	mock_schema(inst, key);
	return p ? p->n : 0;
}

static const char *mock_param_string_at(const iotr_instance *inst,
                                        const char *key, size_t i)
{
	const struct mock_param *p = mock_set(inst, key);

	return p && i < p->n ? p->values[i] : NULL;
}

static int mock_param_is_set(const iotr_instance *inst, const char *key)
{
	return mock_set(inst, key) != NULL;
}

static const char *mock_msg_topic(const iotr_msg *m) { return m->topic; }

static const void *mock_msg_payload(const iotr_msg *m, size_t *len)
{
	*len = m->len;
	return m->payload;
}

static const char *mock_msg_key(const iotr_msg *m, size_t *len)
{
	if (len)
		*len = m->key ? strlen(m->key) : 0;
	return m->key;
}

static int64_t mock_msg_time(const iotr_msg *m) { return m->time; }

static const char *mock_msg_capture(const iotr_msg *m, const char *name)
{
	for (size_t i = 0; i < 4 && m->captures[i][0]; i++)
		if (strcmp(m->captures[i][0], name) == 0)
			return m->captures[i][1];
	return NULL;
}

static int mock_msg_set_payload(iotr_msg *m, const void *p, size_t len)
{
	char *copy = malloc(len + 1);

	ck_assert_ptr_nonnull(copy);
	memcpy(copy, p, len);
	copy[len] = '\0';
	free(m->payload);
	m->payload = copy;
	m->len = len;
	return IOTR_OK;
}

static int mock_msg_add_header(iotr_msg *m, const char *name,
                               const void *value, size_t len)
{
	ck_assert_uint_lt(m->nheaders, MAX_HEADERS);
	m->hname[m->nheaders] = strdup(name);
	m->hvalue[m->nheaders] = strndup(value, len);
	m->nheaders++;
	return IOTR_OK;
}

static void mock_msg_remove_header(iotr_msg *m, const char *name)
{
	size_t i = 0;

	while (i < m->nheaders) {
		if (strcmp(m->hname[i], name) != 0) {
			i++;
			continue;
		}
		free(m->hname[i]);
		free(m->hvalue[i]);
		m->nheaders--;
		memmove(&m->hname[i], &m->hname[i + 1],
		        (m->nheaders - i) * sizeof(char *));
		memmove(&m->hvalue[i], &m->hvalue[i + 1],
		        (m->nheaders - i) * sizeof(char *));
	}
}

static void mock_msg_set_error(iotr_msg *m, const char *reason)
{
	free(m->error);
	m->error = strdup(reason);
}

static iotr_counter *mock_counter(iotr_instance *inst, const char *name)
{
	for (size_t i = 0; i < inst->ncounters; i++)
		if (strcmp(inst->counters[i].name, name) == 0)
			return &inst->counters[i];
	ck_assert_uint_lt(inst->ncounters, MAX_COUNTERS);
	snprintf(inst->counters[inst->ncounters].name,
	         sizeof(inst->counters[0].name), "%s", name);
	return &inst->counters[inst->ncounters++];
}

static void mock_counter_add(iotr_counter *c, uint64_t delta)
{
	c->value += delta;
}

static const struct iotr_host mock_host = {
	.abi_major = IOTR_ABI_MAJOR,
	.abi_minor = IOTR_ABI_MINOR,
	.size = sizeof(struct iotr_host),
	.log = mock_log,
	.log_enabled = mock_log_enabled,
	.param_string = mock_param_string,
	.param_int = mock_param_int,
	.param_bool = mock_param_bool,
	.param_double = mock_param_double,
	.param_count = mock_param_count,
	.param_string_at = mock_param_string_at,
	.param_is_set = mock_param_is_set,
	.msg_topic = mock_msg_topic,
	.msg_payload = mock_msg_payload,
	.msg_key = mock_msg_key,
	.msg_time = mock_msg_time,
	.msg_capture = mock_msg_capture,
	.msg_set_payload = mock_msg_set_payload,
	.msg_add_header = mock_msg_add_header,
	.msg_remove_header = mock_msg_remove_header,
	.msg_set_error = mock_msg_set_error,
	.counter = mock_counter,
	.counter_add = mock_counter_add,
};

/* --- loading and running a plugin ------------------------------------------ */

struct tf {
	void *dl;
	iotr_instance inst;
	void *state;
	int create_rc;
};

static const struct iotr_plugin *tf_load(struct tf *t, const char *name)
{
	const char *dir = getenv("IOTR_PLUGIN_DIR");
	char path[4096];
	iotr_plugin_entry_fn entry;

	snprintf(path, sizeof(path), "%s/%s.so",
	         dir ? dir : "plugins/.libs", name);
	t->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(t->dl, "dlopen %s: %s", path, dlerror());
	*(void **)&entry = dlsym(t->dl, IOTR_PLUGIN_ENTRY_SYMBOL);
	ck_assert_ptr_nonnull(entry);
	return entry();
}

/* tf_new(&t, "dedupe", "window_ms", "1000", NULL, "by", "payload", NULL,
 * NULL): each parameter is a key and its values, ended by NULL; the whole
 * list ends with one more NULL.  Runs create(); t->create_rc has its
 * result. */
static void tf_new(struct tf *t, const char *plugin, ...)
{
	va_list ap;
	const char *key, *v;

	memset(t, 0, sizeof(*t));
	t->inst.plugin = tf_load(t, plugin);
	va_start(ap, plugin);
	while ((key = va_arg(ap, const char *))) {
		struct mock_param *p = &t->inst.params[t->inst.nparams++];

		p->key = key;
		while ((v = va_arg(ap, const char *)))
			p->values[p->n++] = v;
	}
	va_end(ap);
	t->create_rc = t->inst.plugin->create(&t->inst, &mock_host, &t->state);
}

static void tf_free(struct tf *t)
{
	if (t->create_rc == IOTR_OK)
		t->inst.plugin->destroy(t->state);
	dlclose(t->dl);
}

static uint64_t tf_counter(struct tf *t, const char *name)
{
	for (size_t i = 0; i < t->inst.ncounters; i++)
		if (strcmp(t->inst.counters[i].name, name) == 0)
			return t->inst.counters[i].value;
	return 0;
}

static iotr_msg *msg_make(const char *key, const char *payload, int64_t time)
{
	iotr_msg *m = calloc(1, sizeof(*m));

	ck_assert_ptr_nonnull(m);
	m->topic = strdup("sensors/s1/d1");
	m->key = key ? strdup(key) : NULL;
	m->payload = strdup(payload);
	m->len = strlen(payload);
	m->time = time;
	return m;
}

static void msg_destroy(iotr_msg *m)
{
	for (size_t i = 0; i < m->nheaders; i++) {
		free(m->hname[i]);
		free(m->hvalue[i]);
	}
	free(m->topic);
	free(m->key);
	free(m->payload);
	free(m->error);
	free(m);
}

/* Run one message through; its outcome, and its payload or reason in out. */
static int tf_run(struct tf *t, const char *key, const char *payload,
                  int64_t time, char *out, size_t size)
{
	iotr_msg *m = msg_make(key, payload, time);
	int rc = t->inst.plugin->process(t->state, m);

	if (out)
		snprintf(out, size, "%s", rc == IOTR_FAIL ? m->error
		         : m->payload);
	msg_destroy(m);
	return rc;
}

/* The payload json_fields makes of `in` (ck-asserted to pass). */
static const char *fields_out(struct tf *t, const char *in)
{
	static char out[1024];
	int rc = tf_run(t, "k", in, 0, out, sizeof(out));

	ck_assert_msg(rc == IOTR_OK, "%s failed: %s", in, out);
	return out;
}

/* The reason json_fields or schema_check gives for `in` (ck-asserted to
 * fail). */
static const char *fail_reason(struct tf *t, const char *in)
{
	static char out[1024];
	int rc = tf_run(t, "k", in, 0, out, sizeof(out));

	ck_assert_msg(rc == IOTR_FAIL, "%s passed as %s", in, out);
	return out;
}

#define SEC 1000000LL

/* --- json_fields -------------------------------------------------------------- */

START_TEST(fields_keep_numbers_exact_and_compact)
{
	struct tf t;

	tf_new(&t, "json_fields", NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	/* jansson alone would write 0.10000000000000001 */
	ck_assert_str_eq(fields_out(&t, "{ \"a\" : 0.1, \"b\": 21.50, \"c\": 3.0,"
	                 " \"d\": 1e300, \"e\": -0.0, \"f\": 12345678901234567,"
	                 " \"g\": 0.30000000000000004, \"h\": 1e3, \"i\": 1500.0,"
	                 " \"j\": 1e-7, \"k\": 0.0001, \"l\": 1e17, \"m\": 5e-324 }"),
	                 "{\"a\":0.1,\"b\":21.5,\"c\":3.0,\"d\":1e+300,"
	                 "\"e\":-0.0,\"f\":12345678901234567,"
	                 "\"g\":0.30000000000000004,\"h\":1000.0,\"i\":1500.0,"
	                 "\"j\":1e-07,\"k\":0.0001,\"l\":1e+17,\"m\":5e-324}");
	ck_assert_str_eq(fields_out(&t, "{\"s\":\"a\\\"b\\\\c\\n\\u0001\\u00e9\\u0000\","
	                 "\"n\":[1,{\"x\":null}],\"t\":true}"),
	                 "{\"s\":\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\\u0000\","
	                 "\"n\":[1,{\"x\":null}],\"t\":true}");
	ck_assert_uint_eq(tf_counter(&t, "passed"), 2);
	tf_free(&t);
}
END_TEST

START_TEST(fields_keep_drop_rename)
{
	struct tf t;

	tf_new(&t, "json_fields", "keep", "a", "b", "c", NULL,
	       "drop", "c", NULL, "rename", "a=alpha", "b=c", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	/* keep and drop use the names as received; a field keeps its place */
	ck_assert_str_eq(fields_out(&t, "{\"x\":1,\"b\":2,\"c\":3,\"a\":4}"),
	                 "{\"c\":2,\"alpha\":4}");
	tf_free(&t);

	/* a renamed field replaces one that had its new name, either order */
	tf_new(&t, "json_fields", "rename", "t=temp", NULL, NULL);
	ck_assert_str_eq(fields_out(&t, "{\"t\":1,\"temp\":2}"), "{\"temp\":1}");
	ck_assert_str_eq(fields_out(&t, "{\"temp\":2,\"t\":1}"), "{\"temp\":1}");
	tf_free(&t);
}
END_TEST

START_TEST(fields_casts)
{
	struct tf t;

	tf_new(&t, "json_fields", "cast", "i1=int", "i2=int", "i3=int",
	       "i4=int", "f1=float", "f2=float", "f3=float", "s1=string",
	       "s2=string", "s3=string", "s4=string", "b1=bool", "b2=bool",
	       "b3=bool", "n=int", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	ck_assert_str_eq(fields_out(&t,
	        "{\"i1\":\"42\",\"i2\":21.7,\"i3\":\"-21.7\",\"i4\":true,"
	        "\"f1\":\"0.1\",\"f2\":7,\"f3\":false,"
	        "\"s1\":42,\"s2\":0.1,\"s3\":{\"a\":[1,2.5]},\"s4\":false,"
	        "\"b1\":\"ON\",\"b2\":0,\"b3\":\"no\",\"n\":null,\"z\":\"7\"}"),
	        "{\"i1\":42,\"i2\":21,\"i3\":-21,\"i4\":1,"
	        "\"f1\":0.1,\"f2\":7.0,\"f3\":0.0,"
	        "\"s1\":\"42\",\"s2\":\"0.1\",\"s3\":\"{\\\"a\\\":[1,2.5]}\","
	        "\"s4\":\"false\",\"b1\":true,\"b2\":false,\"b3\":false,"
	        "\"n\":null,\"z\":\"7\"}");
	/* a missing field is no error */
	ck_assert_str_eq(fields_out(&t, "{}"), "{}");
	ck_assert_str_eq(fail_reason(&t, "{\"i1\":\"hot\"}"),
	                 "cannot cast field 'i1' to int: a string \"hot\" "
	                 "is not a number");
	ck_assert_str_eq(fail_reason(&t, "{\"i1\":1e30}"),
	                 "cannot cast field 'i1' to int: a number 1e+30 is "
	                 "outside the 64-bit integer range");
	ck_assert_str_eq(fail_reason(&t, "{\"b1\":2}"),
	                 "cannot cast field 'b1' to bool: a number 2 is "
	                 "neither 0 nor 1");
	ck_assert_str_eq(fail_reason(&t, "{\"f1\":[1]}"),
	                 "cannot cast field 'f1' to float: an array [1] is "
	                 "not a number");
	ck_assert_str_eq(fail_reason(&t, "{\"i1\":\"0x1A\"}"),
	                 "cannot cast field 'i1' to int: a string \"0x1A\" "
	                 "is not a number");
	/* long values are cut in the reason */
	ck_assert_str_eq(fail_reason(&t, "{\"i1\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}"),
	                 "cannot cast field 'i1' to int: a string "
	                 "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa... is not "
	                 "a number");
	ck_assert_uint_eq(tf_counter(&t, "failed"), 6);
	tf_free(&t);

	tf_new(&t, "json_fields", "cast", "a=int", "b=float", NULL,
	       "on_cast_error", "skip", NULL, NULL);
	ck_assert_str_eq(fields_out(&t, "{\"a\":\"x\",\"b\":\"2.5\"}"),
	                 "{\"a\":\"x\",\"b\":2.5}");
	ck_assert_uint_eq(tf_counter(&t, "cast_skipped"), 1);
	tf_free(&t);
}
END_TEST

START_TEST(fields_tags_and_timestamp)
{
	struct tf t;
	iotr_msg *m;

	tf_new(&t, "json_fields", "tags", "fleet=north", "where=${site}/$${x}$",
	       "empty=", "n=7", NULL, "cast", "n=int", NULL,
	       "timestamp_field", "at", NULL, "timestamp_unit", "rfc3339", NULL,
	       NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	m = msg_make("k", "{\"fleet\":\"x\",\"v\":1}", 1700000000123456LL);
	m->captures[0][0] = "site";
	m->captures[0][1] = "s-7";
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_OK);
	/* tags replace fields in place, cast sees them, the time comes last */
	ck_assert_str_eq(m->payload, "{\"fleet\":\"north\",\"v\":1,"
	                 "\"where\":\"s-7/${x}$\",\"empty\":\"\",\"n\":7,"
	                 "\"at\":\"2023-11-14T22:13:20.123456Z\"}");
	msg_destroy(m);
	/* a route without the capture fails the message */
	ck_assert_str_eq(fail_reason(&t, "{}"),
	                 "tag 'where': the route has no capture 'site'");
	tf_free(&t);

	tf_new(&t, "json_fields", "timestamp_field", "ts", NULL,
	       "timestamp_unit", "ms", NULL, NULL);
	m = msg_make(NULL, "{}", 1700000000123456LL);
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_OK);
	ck_assert_str_eq(m->payload, "{\"ts\":1700000000123}");
	msg_destroy(m);
	tf_free(&t);

	tf_new(&t, "json_fields", "timestamp_field", "ts", NULL, NULL);
	m = msg_make(NULL, "{}", 1700000000123456LL);
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_OK);
	ck_assert_str_eq(m->payload, "{\"ts\":1700000000123456}");
	msg_destroy(m);
	tf_free(&t);
}
END_TEST

START_TEST(fields_bad_payloads)
{
	struct tf t;

	tf_new(&t, "json_fields", NULL);
	ck_assert_str_eq(fail_reason(&t, "not json"), "payload is not JSON: "
	                 "invalid token near 'not' (line 1, column 3)");
	ck_assert_str_eq(fail_reason(&t, ""), "payload is empty, not a JSON "
	                 "object");
	ck_assert_str_eq(fail_reason(&t, "[1,2]"), "payload is an array, not "
	                 "a JSON object");
	ck_assert_str_eq(fail_reason(&t, "\"x\""), "payload is a string, not "
	                 "a JSON object");
	ck_assert_uint_eq(tf_counter(&t, "failed"), 4);
	tf_free(&t);
}
END_TEST

/* create() refuses a configuration with a message naming the entry. */
static void refused(struct tf *t, const char *expect)
{
	ck_assert_int_ne(t->create_rc, IOTR_OK);
	ck_assert_msg(strstr(t->inst.log, expect), "log \"%s\" lacks \"%s\"",
	              t->inst.log, expect);
	tf_free(t);
}

START_TEST(fields_refused_configs)
{
	struct tf t;

	tf_new(&t, "json_fields", "rename", "a=b", "temp", NULL, NULL);
	refused(&t, "rename entry \"temp\" has no '='; write it as \"old=new\"");
	tf_new(&t, "json_fields", "rename", "=b", NULL, NULL);
	refused(&t, "rename entry \"=b\" has nothing before '='");
	tf_new(&t, "json_fields", "rename", "a=", NULL, NULL);
	refused(&t, "rename entry \"a=\" has nothing after '='");
	tf_new(&t, "json_fields", "rename", "a=b", "a=c", NULL, NULL);
	refused(&t, "rename names field \"a\" twice");
	tf_new(&t, "json_fields", "cast", "a=number", NULL, NULL);
	refused(&t, "cast entry \"a=number\": the type must be one of int, "
	        "float, string, bool");
	tf_new(&t, "json_fields", "cast", "a=int", "a=bool", NULL, NULL);
	refused(&t, "cast names field \"a\" twice");
	tf_new(&t, "json_fields", "tags", "site", NULL, NULL);
	refused(&t, "tags entry \"site\" has no '='; write it as \"name=value\"");
	tf_new(&t, "json_fields", "tags", "s=${site", NULL, NULL);
	refused(&t, "tags entry \"s=${site\": \"${\" must be followed by a "
	        "capture name");
	tf_new(&t, "json_fields", "keep", "", NULL, NULL);
	refused(&t, "keep entry 1 is empty");
	tf_new(&t, "json_fields", "on_cast_error", "ignore", NULL, NULL);
	refused(&t, "on_cast_error = \"ignore\" is not one of fail, skip");
	tf_new(&t, "json_fields", "timestamp_field", "t", NULL,
	       "timestamp_unit", "ns", NULL, NULL);
	refused(&t, "timestamp_unit = \"ns\" is not one of us, ms, s, rfc3339");
}
END_TEST

/* --- dedupe ------------------------------------------------------------------- */

START_TEST(dedupe_key_window)
{
	struct tf t;

	tf_new(&t, "dedupe", "window_ms", "1000", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "a", "1", 100 * SEC, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "a", "2", 100 * SEC + 999999, NULL, 0),
	                 IOTR_DROP);
	ck_assert_int_eq(tf_run(&t, "b", "1", 100 * SEC, NULL, 0), IOTR_OK);
	/* the window counts from the message that passed, not the drops */
	ck_assert_int_eq(tf_run(&t, "a", "3", 101 * SEC, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "a", "4", 101 * SEC + 500000, NULL, 0),
	                 IOTR_DROP);
	/* a message without a key is known by its topic */
	ck_assert_int_eq(tf_run(&t, NULL, "x", 101 * SEC, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, NULL, "y", 101 * SEC, NULL, 0), IOTR_DROP);
	/* a clock set back by more than the window starts it anew */
	ck_assert_int_eq(tf_run(&t, "a", "5", 50 * SEC, NULL, 0), IOTR_OK);
	ck_assert_uint_eq(tf_counter(&t, "passed"), 5);
	ck_assert_uint_eq(tf_counter(&t, "dropped"), 3);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 0);
	tf_free(&t);
}
END_TEST

START_TEST(dedupe_payload_and_both)
{
	struct tf t;

	tf_new(&t, "dedupe", "by", "payload", NULL, NULL);
	ck_assert_int_eq(tf_run(&t, "a", "same", 0, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "b", "same", 1, NULL, 0), IOTR_DROP);
	ck_assert_int_eq(tf_run(&t, "a", "other", 2, NULL, 0), IOTR_OK);
	tf_free(&t);

	tf_new(&t, "dedupe", "by", "both", NULL, NULL);
	ck_assert_int_eq(tf_run(&t, "a", "same", 0, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "b", "same", 1, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "a", "same", 2, NULL, 0), IOTR_DROP);
	/* the key and payload are not just glued together */
	ck_assert_int_eq(tf_run(&t, "as", "ame", 3, NULL, 0), IOTR_OK);
	tf_free(&t);

	tf_new(&t, "dedupe", "by", "topic", NULL, NULL);
	refused(&t, "by = \"topic\" is not one of key, payload, both");
}
END_TEST

START_TEST(dedupe_bounded)
{
	struct tf t;

	tf_new(&t, "dedupe", "max_entries", "2", NULL, "window_ms", "1000",
	       NULL, NULL);
	ck_assert_int_eq(tf_run(&t, "a", "", 0, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "b", "", 1, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "c", "", 2, NULL, 0), IOTR_OK);
	/* a was forgotten to make room for c */
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 1);
	ck_assert_int_eq(tf_run(&t, "a", "", 3, NULL, 0), IOTR_OK);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 2);
	ck_assert_int_eq(tf_run(&t, "c", "", 4, NULL, 0), IOTR_DROP);
	/* entries past their window leave without counting as evicted */
	ck_assert_int_eq(tf_run(&t, "d", "", 2 * SEC, NULL, 0), IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "e", "", 2 * SEC, NULL, 0), IOTR_OK);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 2);
	tf_free(&t);
}
END_TEST

/* --- rate_limit --------------------------------------------------------------- */

/* How many of n messages of key at time pass. */
static int passes(struct tf *t, const char *key, int n, int64_t time)
{
	int ok = 0;

	for (int i = 0; i < n; i++)
		ok += tf_run(t, key, "{}", time, NULL, 0) == IOTR_OK;
	return ok;
}

START_TEST(rate_limit_bucket)
{
	struct tf t;

	tf_new(&t, "rate_limit", "rate", "2", NULL, "burst", "3", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	ck_assert_int_eq(passes(&t, "a", 5, 10 * SEC), 3);
	/* each key has its own bucket */
	ck_assert_int_eq(passes(&t, "b", 5, 10 * SEC), 3);
	/* 2 a second refill */
	ck_assert_int_eq(passes(&t, "a", 5, 10 * SEC + SEC / 2), 1);
	ck_assert_int_eq(passes(&t, "a", 5, 11 * SEC + SEC / 2), 2);
	/* never more than the burst */
	ck_assert_int_eq(passes(&t, "a", 10, 100 * SEC), 3);
	/* a clock set back adds nothing */
	ck_assert_int_eq(passes(&t, "a", 3, 50 * SEC), 0);
	ck_assert_uint_eq(tf_counter(&t, "passed"), 12);
	ck_assert_uint_eq(tf_counter(&t, "dropped"), 21);
	tf_free(&t);

	tf_new(&t, "rate_limit", "rate", "0.1", NULL, "burst", "1", NULL, NULL);
	ck_assert_int_eq(passes(&t, "a", 3, 0), 1);
	ck_assert_int_eq(passes(&t, "a", 3, 9 * SEC), 0);
	ck_assert_int_eq(passes(&t, "a", 3, 10 * SEC), 1);
	tf_free(&t);
}
END_TEST

START_TEST(rate_limit_sample)
{
	struct tf t;
	int verdict[9];
	iotr_msg *m;

	tf_new(&t, "rate_limit", "rate", "1", NULL, "burst", "1", NULL,
	       "policy", "sample", NULL, "sample_every", "3", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	for (int i = 0; i < 8; i++)
		verdict[i] = tf_run(&t, "a", "{}", 0, NULL, 0);
	/* 1 within the limit; of the 7 over it, the 1st, 4th and 7th */
	ck_assert_int_eq(verdict[0], IOTR_OK);
	ck_assert_int_eq(verdict[1], IOTR_OK);
	ck_assert_int_eq(verdict[2], IOTR_DROP);
	ck_assert_int_eq(verdict[3], IOTR_DROP);
	ck_assert_int_eq(verdict[4], IOTR_OK);
	ck_assert_int_eq(verdict[5], IOTR_DROP);
	ck_assert_int_eq(verdict[6], IOTR_DROP);
	ck_assert_int_eq(verdict[7], IOTR_OK);
	ck_assert_uint_eq(tf_counter(&t, "passed"), 1);
	ck_assert_uint_eq(tf_counter(&t, "sampled"), 3);
	ck_assert_uint_eq(tf_counter(&t, "dropped"), 4);
	/* a sampled message says so */
	m = msg_make("a", "{}", 0);
	mock_msg_add_header(m, "iotrouter.sampled", "old", 3);
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_DROP);
	msg_destroy(m);
	m = msg_make("a", "{}", 0);
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_DROP);
	msg_destroy(m);
	m = msg_make("a", "{}", 0);
	mock_msg_add_header(m, "iotrouter.sampled", "old", 3);
	ck_assert_int_eq(t.inst.plugin->process(t.state, m), IOTR_OK);
	ck_assert_uint_eq(m->nheaders, 1);
	ck_assert_str_eq(m->hvalue[0], "3");
	msg_destroy(m);
	/* back under the limit, the next run starts with a sample */
	ck_assert_int_eq(passes(&t, "a", 2, 2 * SEC), 2);
	ck_assert_uint_eq(tf_counter(&t, "sampled"), 5);
	tf_free(&t);
}
END_TEST

START_TEST(rate_limit_bounded)
{
	struct tf t;

	tf_new(&t, "rate_limit", "rate", "1", NULL, "burst", "1", NULL,
	       "max_keys", "2", NULL, NULL);
	ck_assert_int_eq(passes(&t, "a", 2, 0), 1);
	ck_assert_int_eq(passes(&t, "b", 2, 0), 1);
	/* c pushes a out; a comes back with a full bucket */
	ck_assert_int_eq(passes(&t, "c", 1, 0), 1);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 1);
	ck_assert_int_eq(passes(&t, "a", 1, 0), 1);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 2);
	/* keys whose buckets are full again leave without counting */
	ck_assert_int_eq(passes(&t, "d", 1, 5 * SEC), 1);
	ck_assert_int_eq(passes(&t, "e", 1, 5 * SEC), 1);
	ck_assert_uint_eq(tf_counter(&t, "evicted"), 2);
	tf_free(&t);
}
END_TEST

START_TEST(rate_limit_refused_configs)
{
	struct tf t;

	tf_new(&t, "rate_limit", "rate", "0", NULL, NULL);
	refused(&t, "rate = 0 is out of range; it must be more than 0");
	tf_new(&t, "rate_limit", "rate", "-1", NULL, NULL);
	refused(&t, "rate = -1 is out of range");
	tf_new(&t, "rate_limit", "policy", "sampel", NULL, NULL);
	refused(&t, "policy = \"sampel\" is not one of drop, sample");
}
END_TEST

/* --- schema_check ------------------------------------------------------------- */

START_TEST(schema_types_and_paths)
{
	struct tf t;
	char out[1024];

	tf_new(&t, "schema_check", "require", "device:string", "seq:integer",
	       "reading.value:number|null", "reading.unit:string", NULL,
	       "optional", "gps.lat:number", "tags:array", "meta:any", NULL,
	       NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "k", "{\"device\":\"d\",\"seq\":3.0,"
	                 "\"reading\":{\"value\":null,\"unit\":\"C\"},\"x\":1}",
	                 0, out, sizeof(out)), IOTR_OK);
	/* passing leaves the payload as it was */
	ck_assert_str_eq(out, "{\"device\":\"d\",\"seq\":3.0,"
	                 "\"reading\":{\"value\":null,\"unit\":\"C\"},\"x\":1}");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":\"d\",\"seq\":3.5,"
	                 "\"reading\":{\"value\":1,\"unit\":\"C\"}}"),
	                 "field 'seq' must be integer, not number");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":1,\"seq\":1}"),
	                 "field 'device' must be string, not integer; field "
	                 "'reading' is missing");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":\"d\",\"seq\":1,"
	                 "\"reading\":{\"value\":\"1\"}}"),
	                 "field 'reading.value' must be number or null, not "
	                 "string; field 'reading.unit' is missing");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":\"d\",\"seq\":1,"
	                 "\"reading\":{\"value\":1,\"unit\":\"C\"},"
	                 "\"gps\":{\"lat\":\"n\"},\"tags\":{},\"meta\":[]}"),
	                 "field 'gps.lat' must be number, not string; "
	                 "field 'tags' must be array, not object");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":\"d\",\"seq\":1,"
	                 "\"reading\":[]}"),
	                 "field 'reading' must be object, not array");
	ck_assert_str_eq(fail_reason(&t, "[]"), "payload is a JSON array, not "
	                 "an object");
	ck_assert_str_eq(fail_reason(&t, "{\"device\":"), "payload is not "
	                 "JSON: unexpected token near end of file (line 1, "
	                 "column 10)");
	ck_assert_uint_eq(tf_counter(&t, "passed"), 1);
	ck_assert_uint_eq(tf_counter(&t, "failed"), 7);
	tf_free(&t);
}
END_TEST

START_TEST(schema_no_extra)
{
	struct tf t;

	tf_new(&t, "schema_check", "require", "a:number", "o.b:boolean", NULL,
	       "optional", "p:object", NULL, "allow_extra", "false", NULL,
	       "max_errors", "2", NULL, NULL);
	ck_assert_int_eq(t.create_rc, IOTR_OK);
	ck_assert_int_eq(tf_run(&t, "k", "{\"a\":1,\"o\":{\"b\":true},"
	                 "\"p\":{\"free\":1}}", 0, NULL, 0), IOTR_OK);
	ck_assert_str_eq(fail_reason(&t, "{\"a\":1,\"o\":{\"b\":true,\"c\":1},"
	                 "\"x\":1}"),
	                 "field 'o.c' is not allowed (allow_extra = false); "
	                 "field 'x' is not allowed (allow_extra = false)");
	ck_assert_str_eq(fail_reason(&t, "{\"o\":{\"c\":1},\"x\":1,\"y\":2}"),
	                 "field 'a' is missing; field 'o.b' is missing "
	                 "(and 3 more)");
	tf_free(&t);

	/* a reason cut short does not end inside a UTF-8 character */
	tf_new(&t, "schema_check", "allow_extra", "false", NULL, NULL);
	{
		char in[1024] = "{\"", *reason;
		size_t n;

		for (int i = 0; i < 400; i++)
			strcat(in, "\xc3\xa9");
		strcat(in, "\":1}");
		reason = (char *)fail_reason(&t, in);
		n = strlen(reason);
		ck_assert_uint_gt(n, 600);
		ck_assert_uint_lt(n, 768);
		ck_assert_int_eq(strncmp(reason, "field '\xc3\xa9", 9), 0);
		ck_assert_uint_eq((n - strlen("field '")) % 2, 0);
	}
	tf_free(&t);
}
END_TEST

START_TEST(schema_refused_configs)
{
	struct tf t;

	tf_new(&t, "schema_check", "require", "a:strng", NULL, NULL);
	refused(&t, "require entry \"a:strng\": the type must be one of "
	        "string, number, integer, boolean, object, array, null, any");
	tf_new(&t, "schema_check", "require", "a", NULL, NULL);
	refused(&t, "require entry \"a\" has no ':TYPE'; write it as "
	        "\"path:TYPE\"");
	tf_new(&t, "schema_check", "optional", "a..b:number", NULL, NULL);
	refused(&t, "optional entry \"a..b:number\": the path has an empty "
	        "name");
	tf_new(&t, "schema_check", "require", "a:number", NULL, "optional",
	       "a:string", NULL, NULL);
	refused(&t, "optional entry \"a:string\": field 'a' is declared twice");
	tf_new(&t, "schema_check", "require", "a:string", "a.b:number", NULL,
	       NULL);
	refused(&t, "field 'a' is declared without type object, but 'a.b' is "
	        "a path into it");
	tf_new(&t, "schema_check", "require", "a:number|", NULL, NULL);
	refused(&t, "require entry \"a:number|\": the type must be one of");
}
END_TEST

static Suite *transforms_suite(void)
{
	Suite *s = suite_create("transforms");
	TCase *tc = tcase_create("json_fields");

	tcase_add_test(tc, fields_keep_numbers_exact_and_compact);
	tcase_add_test(tc, fields_keep_drop_rename);
	tcase_add_test(tc, fields_casts);
	tcase_add_test(tc, fields_tags_and_timestamp);
	tcase_add_test(tc, fields_bad_payloads);
	tcase_add_test(tc, fields_refused_configs);
	suite_add_tcase(s, tc);
	tc = tcase_create("dedupe");
	tcase_add_test(tc, dedupe_key_window);
	tcase_add_test(tc, dedupe_payload_and_both);
	tcase_add_test(tc, dedupe_bounded);
	suite_add_tcase(s, tc);
	tc = tcase_create("rate_limit");
	tcase_add_test(tc, rate_limit_bucket);
	tcase_add_test(tc, rate_limit_sample);
	tcase_add_test(tc, rate_limit_bounded);
	tcase_add_test(tc, rate_limit_refused_configs);
	suite_add_tcase(s, tc);
	tc = tcase_create("schema_check");
	tcase_add_test(tc, schema_types_and_paths);
	tcase_add_test(tc, schema_no_extra);
	tcase_add_test(tc, schema_refused_configs);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(transforms_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
