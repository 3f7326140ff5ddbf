/*
 * test_config.c - config_load(): a good config gives the instances, routes
 * and settings it says; a bad one gives every problem as "FILE:LINE: text"
 * that names the thing and the fix.  Also the loader's refusals of plugins
 * it cannot use.
 *
 * Plugins come from $IOTR_TEST_PLUGIN_DIR (passthru, bad_abi, ...) and
 * $IOTR_PLUGIN_DIR (mqtt, stdout, file), both set by `make check`.  Each test
 * writes its config to a fresh temporary directory.  Single-threaded.
 */
#include "config.h"

#include <check.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "host.h"
#include "template.h"

/* --- fixture -------------------------------------------------------------- */

static char tmpdir[256];
static char conf_path[300];
static char conf_text[8192];   /* what load() wrote, for line_of() */
static struct router_config cfg;
static struct cfg_errors errs;
static char *dirs[2];

static void setup(void)
{
	const char *base = getenv("TMPDIR");

	snprintf(tmpdir, sizeof(tmpdir), "%s/iotr-conf-XXXXXX",
	         base && *base ? base : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(conf_path, sizeof(conf_path), "%s/router.conf", tmpdir);
	memset(&cfg, 0, sizeof(cfg));
	memset(&errs, 0, sizeof(errs));
	dirs[0] = getenv("IOTR_TEST_PLUGIN_DIR");
	dirs[1] = getenv("IOTR_PLUGIN_DIR");
	if (!dirs[0])
		dirs[0] = "tests/plugins/.libs";
	if (!dirs[1])
		dirs[1] = "plugins/.libs";
}

static void teardown(void)
{
	char path[400];

	config_free(&cfg);
	cfg_errors_free(&errs);
	unlink(conf_path);
	snprintf(path, sizeof(path), "%s/fake.so", tmpdir);
	unlink(path);
	rmdir(tmpdir);
}

/* Write text as the config file and load it (dropping what an earlier
 * load() gave); returns config_load's result. */
static int load(const char *text)
{
	FILE *f = fopen(conf_path, "w");

	config_free(&cfg);
	cfg_errors_free(&errs);

	ck_assert_ptr_nonnull(f);
	ck_assert_int_ge(fputs(text, f), 0);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_uint_lt(strlen(text), sizeof(conf_text));
	strcpy(conf_text, text);
	return config_load(conf_path, dirs, 2, &cfg, &errs);
}

/* All errors, for a failure message. */
static const char *all_errors(void)
{
	static char buf[8192];
	size_t i;

	buf[0] = '\0';
	for (i = 0; i < errs.n; i++) {
		strncat(buf, "\n  ", sizeof(buf) - strlen(buf) - 1);
		strncat(buf, errs.lines[i], sizeof(buf) - strlen(buf) - 1);
	}
	return errs.n ? buf : " (none)";
}

static void load_ok(const char *text)
{
	int rc = load(text);

	ck_assert_msg(rc == 0 && errs.n == 0, "config refused:%s",
	              all_errors());
}

/* The line (from 1) of the config on which needle first appears. */
static int line_of(const char *needle)
{
	const char *hit = strstr(conf_text, needle), *p;
	int line = 1;

	ck_assert_msg(hit != NULL, "'%s' is not in the config", needle);
	for (p = conf_text; p < hit; p++)
		line += *p == '\n';
	return line;
}

/*
 * Assert that an error reads "CONF:LINE: ..." and contains each of the
 * NULL-terminated strings that follow; line 0 means "FILE: ..." (no line).
 * Returns the error.
 */
static const char *expect_error(int line, ...)
{
	char prefix[400];
	const char *want;
	size_t i;
	va_list ap;

	if (line > 0)
		snprintf(prefix, sizeof(prefix), "%s:%d: ", conf_path, line);
	else
		snprintf(prefix, sizeof(prefix), "%s: ", conf_path);
	for (i = 0; i < errs.n; i++) {
		int ok = strncmp(errs.lines[i], prefix, strlen(prefix)) == 0;

		va_start(ap, line);
		while (ok && (want = va_arg(ap, const char *)))
			ok = strstr(errs.lines[i], want) != NULL;
		va_end(ap);
		if (ok)
			return errs.lines[i];
	}
	va_start(ap, line);
	want = va_arg(ap, const char *);
	va_end(ap);
	ck_abort_msg("no error at %s mentioning '%s'; errors:%s", prefix,
	             want ? want : "", all_errors());
	return NULL;
}

/* Load text, expect it refused with exactly n errors. */
static void load_fails(const char *text, size_t n)
{
	int rc = load(text);

	ck_assert_msg(rc == -1, "config accepted");
	ck_assert_msg(errs.n == n, "expected %zu errors, got %zu:%s", n,
	              errs.n, all_errors());
}

/* The parts of a working config, one instance per line. */
#define INPUT "inputs = ( { name = \"in\"; plugin = \"mqtt\"; " \
	"client_id = \"test\"; topics = [\"sensors/#\"]; } );\n"
#define OUTPUT "outputs = ( { name = \"out\"; plugin = \"stdout\"; } );\n"
#define ROUTE "routes = ( { match = \"sensors/#\"; } );\n"

static const struct iotr_host *host;

static struct iotr_instance *instance(const char *name)
{
	struct iotr_instance *inst = config_instance(&cfg, name);

	ck_assert_msg(inst != NULL, "no instance '%s'", name);
	return inst;
}

/* --- a good config ------------------------------------------------------------ */

START_TEST(valid_config_loads)
{
	struct iotr_instance *in, *tag, *out;
	const struct route *r;

	load_ok("# a complete config\n"
	        "router = { workers = 4; };\n"
	        INPUT
	        "transforms = ( { name = \"tag\"; plugin = \"passthru\"; } );\n"
	        OUTPUT
	        "routes = (\n"
	        "  { name = \"telemetry\";\n"
	        "    input = \"in\";\n"
	        "    match = \"sensors/+site/+device/#\";\n"
	        "    transforms = [ \"tag\" ];\n"
	        "    output = \"out\";\n"
	        "    topic = \"telemetry.${site}\";\n"
	        "    key = \"${device}\";\n"
	        "    headers = { site = \"${site}\"; };\n"
	        "  },\n"
	        "  { match = \"$SYS/#\"; }\n"
	        ");\n");
	ck_assert_int_eq(cfg.workers, 4);
	ck_assert_uint_eq(cfg.ninstances, 3);
	in = instance("in");
	tag = instance("tag");
	out = instance("out");
	ck_assert_int_eq(in->kind, IOTR_PLUGIN_INPUT);
	ck_assert_str_eq(in->plugin->name, "mqtt");
	ck_assert_int_eq(tag->kind, IOTR_PLUGIN_TRANSFORM);
	ck_assert_str_eq(tag->plugin->name, "passthru");
	ck_assert_int_eq(out->kind, IOTR_PLUGIN_OUTPUT);
	ck_assert_str_eq(out->plugin->name, "stdout");
	ck_assert_int_eq(out->line, line_of("outputs"));
	ck_assert_ptr_null(config_instance(&cfg, "nope"));

	ck_assert_uint_eq(cfg.nroutes, 2);
	r = &cfg.routes[0];
	ck_assert_str_eq(r->name, "route 'telemetry'");
	ck_assert_int_eq(r->line, line_of("{ name = \"telemetry\""));
	ck_assert_ptr_eq(r->input, in);
	ck_assert_ptr_eq(r->output, out);
	ck_assert_uint_eq(r->ntransforms, 1);
	ck_assert_ptr_eq(r->transforms[0], tag);
	ck_assert_str_eq(r->filter.mqtt, "sensors/+/+/#");
	ck_assert_str_eq(template_source(r->topic), "telemetry.${site}");
	ck_assert_str_eq(template_source(r->key), "${device}");
	ck_assert_uint_eq(r->nheaders, 1);
	ck_assert_str_eq(r->headers[0].name, "site");
	/* the second route: unnamed, any input, the only output */
	r = &cfg.routes[1];
	ck_assert_str_eq(r->name, "route #2");
	ck_assert_ptr_null(r->input);
	ck_assert_ptr_eq(r->output, out);
	ck_assert_ptr_null(r->topic);
	ck_assert_ptr_null(r->key);
}
END_TEST

START_TEST(router_defaults)
{
	load_ok(INPUT OUTPUT ROUTE);
	ck_assert_int_eq(cfg.log_level, -1);
	ck_assert_ptr_null(cfg.syslog_ident);
	ck_assert_int_eq(cfg.workers, 2);
	ck_assert_int_eq(cfg.queue_size, 10000);
	ck_assert_int_eq(cfg.shutdown_timeout_ms, 15000);
	ck_assert_int_eq(cfg.max_message_bytes, 1048576);
	ck_assert_int_eq(cfg.stats_interval_s, 60);
	ck_assert_int_eq(cfg.retry_backoff_ms, 500);
	ck_assert_int_eq(cfg.message_pool_bytes, 4 << 20);
	ck_assert_int_eq(cfg.default_headers, 1);
	ck_assert_int_eq(cfg.routes[0].default_headers, 1);
	ck_assert_int_eq(cfg.direct_output, 1);
	ck_assert_int_eq(cfg.inline_transforms, ROUTER_INLINE_AUTO);
	ck_assert_int_eq(cfg.inline_max_us, 2);
	ck_assert_int_eq(cfg.inline_drain_wait_us, 2000);
	ck_assert_ptr_null(cfg.dead_letter_topic);
	ck_assert_ptr_null(cfg.dead_letter_output);
	ck_assert_ptr_null(cfg.unmatched_topic);
	ck_assert_ptr_null(cfg.unmatched_output);
}
END_TEST

START_TEST(router_settings)
{
	load_ok("router = {\n"
	        "  log_level = \"debug\";\n"
	        "  syslog = true;\n"
	        "  workers = 8;\n"
	        "  queue_size = 50;\n"
	        "  shutdown_timeout_ms = 0;\n"
	        "  max_message_bytes = 4096;\n"
	        "  stats_interval = 0;\n"
	        "  retry_backoff_ms = 100;\n"
	        "  message_pool_bytes = 0;\n"
	        "  default_headers = false;\n"
	        "  direct_output = false;\n"
	        "  inline_transforms = true;\n"
	        "  inline_max_us = 50;\n"
	        "  inline_drain_wait_us = 0;\n"
	        "  dead_letter_topic = \"dlq\";\n"
	        "  unmatched_topic = \"unmatched\";\n"
	        "};\n"
	        INPUT OUTPUT
	        "routes = ( { match = \"a/#\"; },\n"
	        "           { match = \"b/#\"; default_headers = true; } );\n");
	ck_assert_int_eq(cfg.log_level, IOTR_LOG_DEBUG);
	ck_assert_str_eq(cfg.syslog_ident, "iotrouter");
	ck_assert_int_eq(cfg.workers, 8);
	ck_assert_int_eq(cfg.queue_size, 50);
	ck_assert_int_eq(cfg.shutdown_timeout_ms, 0);
	ck_assert_int_eq(cfg.max_message_bytes, 4096);
	ck_assert_int_eq(cfg.stats_interval_s, 0);
	ck_assert_int_eq(cfg.retry_backoff_ms, 100);
	ck_assert_int_eq(cfg.message_pool_bytes, 0);
	ck_assert_int_eq(cfg.default_headers, 0);
	ck_assert_int_eq(cfg.direct_output, 0);
	ck_assert_int_eq(cfg.inline_transforms, ROUTER_INLINE_ON);
	ck_assert_int_eq(cfg.inline_max_us, 50);
	ck_assert_int_eq(cfg.inline_drain_wait_us, 0);
	/* router.default_headers is each route's default... */
	ck_assert_int_eq(cfg.routes[0].default_headers, 0);
	/* ...which a route may override */
	ck_assert_int_eq(cfg.routes[1].default_headers, 1);
	ck_assert_str_eq(cfg.dead_letter_topic, "dlq");
	ck_assert_str_eq(cfg.unmatched_topic, "unmatched");
	/* with one output, dead letters and unmatched messages go there */
	ck_assert_ptr_eq(cfg.dead_letter_output, instance("out"));
	ck_assert_ptr_eq(cfg.unmatched_output, instance("out"));
}
END_TEST

START_TEST(plugin_params_as_plugins_see_them)
{
	struct iotr_instance *t;

	load_ok(INPUT OUTPUT ROUTE
	        "transforms = (\n"
	        "  { name = \"t\"; plugin = \"passthru\";\n"
	        "    tag = \"hello\";\n"
	        "    ratio = 2;\n"
	        "    names = [ \"a\", \"b\" ];\n"
	        "    levels = 2;\n"
	        "  }\n"
	        ");\n");
	t = instance("t");
	host = host_table();
	/* written values */
	ck_assert_str_eq(host->param_string(t, "tag"), "hello");
	ck_assert_int_ne(host->param_is_set(t, "tag"), 0);
	/* an integer is accepted where a number is expected */
	ck_assert_double_eq(host->param_double(t, "ratio"), 2.0);
	ck_assert_uint_eq(host->param_count(t, "names"), 2);
	ck_assert_str_eq(host->param_string_at(t, "names", 1), "b");
	/* a scalar where a list is expected is a list of one */
	ck_assert_uint_eq(host->param_count(t, "levels"), 1);
	ck_assert_int_eq(host->param_int_at(t, "levels", 0), 2);
	/* defaults from the schema */
	ck_assert_int_eq(host->param_is_set(t, "count"), 0);
	ck_assert_int_eq(host->param_int(t, "count"), 3);
	ck_assert_int_eq(host->param_bool(t, "enabled"), 1);
	ck_assert_int_eq(host->param_bool(t, "drop_all"), 0);
	ck_assert_ptr_null(host->param_string(t, "must"));
}
END_TEST

START_TEST(side_outputs_named)
{
	load_ok("router = { dead_letter_topic = \"dlq\";\n"
	        "  dead_letter_output = \"errors\"; };\n"
	        INPUT
	        "outputs = ( { name = \"out\"; plugin = \"stdout\"; },\n"
	        "  { name = \"errors\"; plugin = \"stdout\"; } );\n"
	        "routes = ( { match = \"a/#\"; output = \"out\"; } );\n");
	ck_assert_ptr_eq(cfg.dead_letter_output, instance("errors"));
	ck_assert_ptr_null(cfg.unmatched_output);
}
END_TEST

/* --- file-level errors ------------------------------------------------------- */

START_TEST(missing_file)
{
	ck_assert_int_eq(config_load("/nonexistent/iotrouter.conf", dirs, 2,
	                             &cfg, &errs), -1);
	ck_assert_uint_eq(errs.n, 1);
	ck_assert_str_eq(errs.lines[0], "/nonexistent/iotrouter.conf: cannot "
	                 "read the config: No such file or directory");
}
END_TEST

START_TEST(syntax_error_has_line)
{
	load_fails(INPUT OUTPUT
	           "routes = (\n"
	           "  { match = \"a/#\" }\n"      /* missing ';' is fine... */
	           "  { match = \"b/#\"; }\n"     /* ...a missing ',' is not */
	           ");\n", 1);
	expect_error(line_of("{ match = \"b/#\""), "syntax error", NULL);
}
END_TEST

START_TEST(empty_config_says_what_to_add)
{
	load_fails("# nothing yet\n", 1);
	expect_error(0, "no inputs", "plugin = \"mqtt\"", NULL);
}
END_TEST

START_TEST(unknown_section)
{
	load_fails(INPUT OUTPUT ROUTE
	           "output = { name = \"x\"; };\n", 1);
	expect_error(line_of("output = {"), "unknown section 'output'",
	             "router, inputs, transforms, outputs and routes", NULL);
}
END_TEST

/* --- the router group --------------------------------------------------------- */

START_TEST(unknown_router_key)
{
	load_fails("router = {\n"
	           "  worker = 4;\n"
	           "};\n" INPUT OUTPUT ROUTE, 1);
	expect_error(2, "router has no setting 'worker'", "iotrouter.conf(5)",
	             NULL);
}
END_TEST

START_TEST(router_wrong_type)
{
	load_fails("router = {\n"
	           "  workers = \"4\";\n"
	           "  default_headers = 1;\n"
	           "  dead_letter_topic = [ \"a\" ];\n"
	           "  inline_transforms = \"yes\";\n"
	           "};\n" INPUT OUTPUT ROUTE, 4);
	expect_error(2, "router.workers must be an integer, not a string",
	             NULL);
	expect_error(3, "router.default_headers must be true or false, "
	             "not an integer", NULL);
	expect_error(4, "router.dead_letter_topic must be a string, not an "
	             "array", NULL);
	expect_error(5, "router.inline_transforms must be true, false or "
	             "\"auto\", not \"yes\"", NULL);
}
END_TEST

START_TEST(router_bad_values)
{
	load_fails("router = {\n"
	           "  workers = 0;\n"
	           "  queue_size = 200000000;\n"
	           "  log_level = \"loud\";\n"
	           "  message_pool_bytes = -1;\n"
	           "  inline_max_us = -1;\n"
	           "};\n" INPUT OUTPUT ROUTE, 5);
	expect_error(2, "router.workers is 0; it must be between 1 and 256",
	             NULL);
	expect_error(3, "router.queue_size is 200000000; it must be between "
	             "1 and 100000000", NULL);
	expect_error(4, "router.log_level 'loud' is not a level",
	             "error, warning, notice, info or debug", NULL);
	expect_error(5, "router.message_pool_bytes is -1; it must be between "
	             "0 and 1073741824", NULL);
	expect_error(6, "router.inline_max_us is -1; it must be between 0 and "
	             "1000000", NULL);
}
END_TEST

START_TEST(router_inline_modes)
{
	load_ok("router = { inline_transforms = \"auto\"; };\n"
	        INPUT OUTPUT ROUTE);
	ck_assert_int_eq(cfg.inline_transforms, ROUTER_INLINE_AUTO);
	load_ok("router = { inline_transforms = false; };\n"
	        INPUT OUTPUT ROUTE);
	ck_assert_int_eq(cfg.inline_transforms, ROUTER_INLINE_OFF);
}
END_TEST

START_TEST(side_output_errors)
{
	load_fails("router = { dead_letter_topic = \"dlq\"; };\n"
	           INPUT
	           "outputs = ( { name = \"a\"; plugin = \"stdout\"; },\n"
	           "            { name = \"b\"; plugin = \"stdout\"; } );\n"
	           "routes = ( { match = \"x/#\"; output = \"a\"; } );\n", 1);
	expect_error(1, "router.dead_letter_topic is set and there are several "
	             "outputs", "router.dead_letter_output", NULL);

	load_fails("router = { unmatched_topic = \"u\";\n"
	           "  unmatched_output = \"nope\"; };\n"
	           INPUT OUTPUT ROUTE, 1);
	expect_error(2, "router.unmatched_output names output 'nope'",
	             "there is no output of that name", NULL);
}
END_TEST

/* --- instances ---------------------------------------------------------------- */

START_TEST(unknown_plugin_lists_dirs)
{
	const char *e;

	load_fails(INPUT ROUTE
	           "outputs = (\n"
	           "  { name = \"k\";\n"
	           "    plugin = \"kafak\"; },\n"
	           "  { name = \"out\"; plugin = \"stdout\"; }\n"
	           ");\n", 1);
	e = expect_error(line_of("\"kafak\""), "output 'k'",
	                 "unknown plugin 'kafak'", "no kafak.so in",
	                 "router.plugin_dirs", "--plugin-dir", NULL);
	/* every directory searched, so the user sees where it looked */
	ck_assert_ptr_nonnull(strstr(e, dirs[0]));
	ck_assert_ptr_nonnull(strstr(e, dirs[1]));
}
END_TEST

START_TEST(plugin_dirs_from_config)
{
	char text[1024];

	/* router.plugin_dirs is searched, so no --plugin-dir is needed */
	snprintf(text, sizeof(text), "router = { plugin_dirs = [ \"%s\" ]; };\n"
	         INPUT OUTPUT ROUTE
	         "transforms = ( { name = \"t\"; plugin = \"passthru\"; } );\n",
	         dirs[0]);
	ck_assert_int_eq(load(text), 0);
	ck_assert_uint_eq(errs.n, 0);
	config_free(&cfg);
	/* again, without the test directory on the command line */
	ck_assert_int_eq(config_load(conf_path, dirs + 1, 1, &cfg, &errs), 0);
	ck_assert_str_eq(instance("t")->plugin->name, "passthru");
}
END_TEST

START_TEST(plugin_kind_mismatch)
{
	load_fails(INPUT ROUTE
	           "outputs = ( { name = \"out\"; plugin = \"stdout\"; },\n"
	           "  { name = \"p\"; plugin = \"passthru\"; } );\n", 1);
	expect_error(line_of("\"passthru\""), "output 'p'",
	             "plugin 'passthru' is", "transform plugin",
	             "list it under transforms", NULL);
}
END_TEST

START_TEST(unknown_parameter_lists_known)
{
	load_fails(INPUT OUTPUT ROUTE
	           "transforms = ( { name = \"t\"; plugin = \"passthru\";\n"
	           "  tags = \"x\"; } );\n", 1);
	expect_error(line_of("tags ="), "transform 't'",
	             "plugin 'passthru' has no parameter 'tags'",
	             "its parameters are: tag, count, enabled, ratio, names, "
	             "levels, drop_all, must",
	             "iotrouter --help-plugin passthru", NULL);
}
END_TEST

START_TEST(missing_required_parameter)
{
	load_fails(INPUT ROUTE
	           "outputs = (\n"
	           "  { name = \"f\"; plugin = \"file\";\n"
	           "    fsync = true; }\n"
	           ");\n", 1);
	/* reported where the instance starts, with the parameter's doc */
	expect_error(line_of("{ name = \"f\""), "output 'f'",
	             "plugin 'file' needs parameter 'path' (string)", NULL);
}
END_TEST

START_TEST(wrong_parameter_type)
{
	load_fails(INPUT OUTPUT ROUTE
	           "transforms = ( { name = \"t\"; plugin = \"passthru\";\n"
	           "  count = \"3\";\n"
	           "  enabled = 1;\n"
	           "  ratio = \"half\";\n"
	           "  names = [ 1, 2 ];\n"
	           "  levels = [ \"x\" ];\n"
	           "  tag = true;\n"
	           "} );\n", 6);
	expect_error(line_of("count ="), "transform 't': parameter 'count' "
	             "must be integer, not a string", NULL);
	expect_error(line_of("enabled ="), "parameter 'enabled' must be "
	             "boolean, not an integer", NULL);
	expect_error(line_of("ratio ="), "parameter 'ratio' must be number, "
	             "not a string", NULL);
	expect_error(line_of("names ="), "parameter 'names' must be list of "
	             "strings, not an array", NULL);
	expect_error(line_of("levels ="), "parameter 'levels' must be list "
	             "of integers", NULL);
	expect_error(line_of("tag ="), "parameter 'tag' must be string, not "
	             "a boolean", NULL);
}
END_TEST

START_TEST(parameter_range_from_schema)
{
	load_fails(INPUT OUTPUT ROUTE
	           "transforms = ( { name = \"t\"; plugin = \"passthru\";\n"
	           "  count = 11;\n"
	           "  levels = [ 0, 1,\n"
	           "             3 ];\n"
	           "} );\n", 2);
	expect_error(line_of("count ="), "transform 't': parameter 'count' is "
	             "11; it must be between 1 and 10", NULL);
	/* a list element is reported on its own line */
	expect_error(line_of("3 ]"), "parameter 'levels' is 3; it must be "
	             "between 0 and 2", NULL);
	/* the bounds themselves are allowed */
	load_ok(INPUT OUTPUT ROUTE
	        "transforms = ( { name = \"lo\"; plugin = \"passthru\"; "
	        "count = 1; levels = [ 0 ]; },\n"
	        "  { name = \"hi\"; plugin = \"passthru\"; "
	        "count = 10; levels = [ 2, 2 ]; } );\n");
	host = host_table();
	ck_assert_int_eq(host->param_int(instance("lo"), "count"), 1);
	ck_assert_int_eq(host->param_int(instance("hi"), "count"), 10);
	ck_assert_uint_eq(host->param_count(instance("hi"), "levels"), 2);
}
END_TEST

START_TEST(duplicate_instance_names)
{
	load_fails(INPUT ROUTE
	           "outputs = ( { name = \"out\"; plugin = \"stdout\"; },\n"
	           "  { name = \"out\"; plugin = \"stdout\"; } );\n"
	           "transforms = ( { name = \"in\"; plugin = \"passthru\"; } );\n",
	           2);
	expect_error(line_of("  { name = \"out\""), "the name 'out' is used "
	             "twice", "each input, transform and output needs its own "
	             "name", NULL);
	/* one namespace across kinds, so a route's names are unambiguous;
	 * inputs are read after transforms, so the input is the second */
	expect_error(line_of("inputs ="), "the name 'in' is used twice",
	             NULL);
}
END_TEST

START_TEST(instance_name_too_long)
{
	char text[1024];

	snprintf(text, sizeof(text), INPUT ROUTE "outputs = ( { name = \"out\"; "
	         "plugin = \"stdout\"; },\n  { name = \"%0256d\"; "
	         "plugin = \"stdout\"; } );\n", 0);
	load_fails(text, 1);
	expect_error(line_of("  { name = \"0000"), "is 256 bytes long",
	             "a name may have at most 255", NULL);
}
END_TEST

START_TEST(instance_without_name_or_plugin)
{
	load_fails(INPUT ROUTE
	           "outputs = ( { plugin = \"stdout\"; },\n"
	           "  { name = \"o\"; },\n"
	           "  { name = \"out\"; plugin = \"stdout\"; } );\n", 2);
	expect_error(line_of("{ plugin"), "output has no name",
	             "add name = \"...\";", NULL);
	expect_error(line_of("{ name = \"o\""), "output 'o' has no plugin",
	             "add plugin = \"...\";", NULL);
}
END_TEST

START_TEST(tick_ms_only_for_transforms)
{
	load_fails(INPUT ROUTE
	           "outputs = ( { name = \"o\"; plugin = \"stdout\";\n"
	           "  tick_ms = 100; },\n"
	           "  { name = \"out\"; plugin = \"stdout\"; } );\n", 1);
	expect_error(line_of("tick_ms"), "output 'o'",
	             "tick_ms is for transforms", NULL);
}
END_TEST

/* --- routes ----------------------------------------------------------------------- */

START_TEST(route_without_match)
{
	load_fails(INPUT OUTPUT
	           "routes = (\n"
	           "  { match = \"a/#\"; },\n"
	           "  { name = \"r2\"; topic = \"x\"; }\n"
	           ");\n", 1);
	expect_error(line_of("{ name = \"r2\""), "route 'r2' needs match = "
	             "\"topic/filter/#\";", NULL);
}
END_TEST

START_TEST(route_bad_filter)
{
	load_fails(INPUT OUTPUT
	           "routes = (\n"
	           "  { match = \"a/#/b\"; }\n"
	           ");\n", 1);
	expect_error(line_of("a/#/b"), "route #1: filter 'a/#/b': '#' must be "
	             "the last level", NULL);
}
END_TEST

START_TEST(route_names_unknown_instances)
{
	load_fails(INPUT OUTPUT
	           "transforms = ( { name = \"tag\"; plugin = \"passthru\"; } );\n"
	           "routes = ( { name = \"r\"; match = \"a/#\";\n"
	           "  output = \"kafka\";\n"
	           "  input = \"out\";\n"
	           "  transforms = [ \"tag\",\n"
	           "                 \"enrich\" ]; } );\n", 3);
	expect_error(line_of("output = \"kafka\""), "route 'r' names output "
	             "'kafka', and there is no output of that name", NULL);
	/* "out" exists, but it is an output */
	expect_error(line_of("input = \"out\""), "route 'r' names input "
	             "'out', and there is no input of that name", NULL);
	expect_error(line_of("\"enrich\""), "route 'r' names transform "
	             "'enrich', and there is no transform of that name", NULL);
}
END_TEST

START_TEST(route_needs_output_choice)
{
	load_fails(INPUT
	           "outputs = ( { name = \"a\"; plugin = \"stdout\"; },\n"
	           "            { name = \"b\"; plugin = \"stdout\"; } );\n"
	           "routes = ( { match = \"x/#\"; } );\n", 1);
	expect_error(line_of("{ match"), "route #1 has no output",
	             "add output = \"NAME\"", NULL);
}
END_TEST

START_TEST(route_unknown_setting)
{
	load_fails(INPUT OUTPUT
	           "routes = ( { match = \"a/#\";\n"
	           "  topik = \"x\"; } );\n", 1);
	expect_error(line_of("topik"), "route #1: routes have no setting "
	             "'topik'", NULL);
}
END_TEST

START_TEST(route_template_unknown_capture)
{
	load_fails(INPUT OUTPUT
	           "routes = ( { name = \"t\"; match = \"s/+site/+device/#\";\n"
	           "  topic = \"t.${dev}\";\n"
	           "  key = \"${site}\";\n"
	           "  headers = [ \"loc=${location}\" ]; } );\n", 2);
	expect_error(line_of("topic ="), "route 't': topic: template "
	             "'t.${dev}': no capture 'dev'", "(it has: site, device)",
	             NULL);
	expect_error(line_of("headers ="), "route 't': header 'loc':",
	             "no capture 'location'", NULL);
}
END_TEST

START_TEST(route_template_syntax)
{
	load_fails(INPUT OUTPUT
	           "routes = ( { match = \"a/#\";\n"
	           "  key = \"${json:id\";\n"
	           "  headers = [ \"no-equals-sign\" ]; } );\n", 2);
	expect_error(line_of("key ="), "route #1: key:",
	             "'${' without a closing '}'", NULL);
	expect_error(line_of("headers ="), "header 'no-equals-sign' must read "
	             "\"name=template\"", NULL);
}
END_TEST

START_TEST(many_errors_in_one_run)
{
	/* --check shows everything at once, not one problem per run:
	 * seven problems, on lines 1, 2, 5, 8 (two), 10 and 11 */
	load_fails("router = { workers = 0; };\n"
	           "inputs = ( { name = \"in\"; plugin = \"mqtt\";\n"
	           "  topics = [ \"a/#\" ]; } );\n"
	           "outputs = (\n"
	           "  { name = \"out\"; plugin = \"nope\"; },\n"
	           "  { name = \"o2\"; plugin = \"stdout\"; } );\n"
	           "transforms = ( { name = \"t\"; plugin = \"passthru\";\n"
	           "  count = 0; colour = \"red\"; } );\n"
	           "routes = (\n"
	           "  { match = \"a/+x\"; topic = \"${y}\"; },\n"
	           "  { topic = \"z\"; }\n"
	           ");\n", 7);
	expect_error(1, "router.workers is 0", NULL);
	expect_error(2, "input 'in'", "needs parameter 'client_id'", NULL);
	expect_error(5, "output 'out'", "unknown plugin 'nope'", NULL);
	expect_error(8, "parameter 'count' is 0", NULL);
	expect_error(8, "has no parameter 'colour'", NULL);
	expect_error(10, "route #1: topic:", "no capture 'y'", NULL);
	expect_error(11, "route #2 needs match", NULL);
}
END_TEST

/* --- plugins the loader refuses --------------------------------------------------- */

/* A config whose only transform is the plugin `plugin`. */
static void load_transform(const char *plugin)
{
	char text[2048];

	snprintf(text, sizeof(text), INPUT OUTPUT ROUTE
	         "transforms = (\n"
	         "  { name = \"t\";\n"
	         "    plugin = \"%s\"; }\n"
	         ");\n", plugin);
	ck_assert_int_eq(load(text), -1);
	ck_assert_msg(errs.n == 1, "expected 1 error:%s", all_errors());
}

static void load_output(const char *plugin)
{
	char text[2048];

	snprintf(text, sizeof(text), INPUT ROUTE
	         "outputs = (\n"
	         "  { name = \"o\";\n"
	         "    plugin = \"%s\"; },\n"
	         "  { name = \"out\"; plugin = \"stdout\"; }\n"
	         ");\n", plugin);
	ck_assert_int_eq(load(text), -1);
	ck_assert_msg(errs.n == 1, "expected 1 error:%s", all_errors());
}

START_TEST(abi_major_mismatch)
{
	char path[1024], versions[128];

	snprintf(versions, sizeof(versions), "built for ABI 2.0, this router "
	         "provides %d.%d", IOTR_ABI_MAJOR, IOTR_ABI_MINOR);
	snprintf(path, sizeof(path), "%s/bad_abi.so", dirs[0]);
	load_transform(path);
	expect_error(line_of("    plugin ="), "transform 't'",
	             "plugin 'bad_abi'", path, versions, "rebuild the plugin",
	             NULL);
	/* the same check when the plugin is found by name */
	load_transform("bad_abi");
	expect_error(line_of("    plugin ="), versions, "/bad_abi.so", NULL);
}
END_TEST

START_TEST(no_entry_point)
{
	char path[1024];

	snprintf(path, sizeof(path), "%s/no_entry.so", dirs[0]);
	load_transform(path);
	expect_error(line_of("    plugin ="), path, "is not an iotrouter plugin",
	             "does not export iotr_plugin_entry", NULL);
}
END_TEST

START_TEST(missing_required_callback)
{
	load_output("no_deliver");
	expect_error(line_of("    plugin ="), "output 'o'", "plugin 'no_deliver'",
	             "must define deliver()", NULL);
}
END_TEST

START_TEST(plugin_path_does_not_exist)
{
	load_transform("/nonexistent/dir/plugin.so");
	expect_error(line_of("    plugin ="), "transform 't'", "cannot load plugin "
	             "/nonexistent/dir/plugin.so", "No such file or directory",
	             NULL);
}
END_TEST

START_TEST(plugin_not_a_shared_object)
{
	char path[400], dlerr[1024];
	FILE *f;
	void *h;

	snprintf(path, sizeof(path), "%s/fake.so", tmpdir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs("this is not an ELF file, it only ends in .so\n", f);
	fclose(f);
	/* what the dynamic linker says about it, which the user must see */
	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_ptr_null(h);
	snprintf(dlerr, sizeof(dlerr), "%s", dlerror());

	load_transform(path);
	expect_error(line_of("    plugin ="), "cannot load plugin", path, dlerr,
	             "ldd(1)", NULL);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc;

	tc = tcase_create("valid");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, valid_config_loads);
	tcase_add_test(tc, router_defaults);
	tcase_add_test(tc, router_settings);
	tcase_add_test(tc, plugin_params_as_plugins_see_them);
	tcase_add_test(tc, side_outputs_named);
	tcase_add_test(tc, plugin_dirs_from_config);
	suite_add_tcase(s, tc);

	tc = tcase_create("file");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, missing_file);
	tcase_add_test(tc, syntax_error_has_line);
	tcase_add_test(tc, empty_config_says_what_to_add);
	tcase_add_test(tc, unknown_section);
	tcase_add_test(tc, many_errors_in_one_run);
	suite_add_tcase(s, tc);

	tc = tcase_create("router");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, unknown_router_key);
	tcase_add_test(tc, router_wrong_type);
	tcase_add_test(tc, router_bad_values);
	tcase_add_test(tc, router_inline_modes);
	tcase_add_test(tc, side_output_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("instances");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, unknown_plugin_lists_dirs);
	tcase_add_test(tc, plugin_kind_mismatch);
	tcase_add_test(tc, unknown_parameter_lists_known);
	tcase_add_test(tc, missing_required_parameter);
	tcase_add_test(tc, wrong_parameter_type);
	tcase_add_test(tc, parameter_range_from_schema);
	tcase_add_test(tc, duplicate_instance_names);
	tcase_add_test(tc, instance_name_too_long);
	tcase_add_test(tc, instance_without_name_or_plugin);
	tcase_add_test(tc, tick_ms_only_for_transforms);
	suite_add_tcase(s, tc);

	tc = tcase_create("routes");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, route_without_match);
	tcase_add_test(tc, route_bad_filter);
	tcase_add_test(tc, route_names_unknown_instances);
	tcase_add_test(tc, route_needs_output_choice);
	tcase_add_test(tc, route_unknown_setting);
	tcase_add_test(tc, route_template_unknown_capture);
	tcase_add_test(tc, route_template_syntax);
	suite_add_tcase(s, tc);

	tc = tcase_create("loader");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, abi_major_mismatch);
	tcase_add_test(tc, no_entry_point);
	tcase_add_test(tc, missing_required_callback);
	tcase_add_test(tc, plugin_path_does_not_exist);
	tcase_add_test(tc, plugin_not_a_shared_object);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
