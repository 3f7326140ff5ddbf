/*
 * testscript.c - `iotrouter test-script RULE.lua`: run a Lua rule offline
 * over sample messages (JSON lines on stdin) and print, one JSON line each,
 * what it would produce, drop or dead-letter, with simulated ticks.
 *
 * One thread.  The lua plugin is loaded by the router's own loader and
 * driven through the router's host table; only emit() is swapped for a
 * function that collects what the rule sends, since there is no pipeline.
 * With --config, the routes of a real config give each message its
 * captures, destination, key and headers, as the router would.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../plugins/common/jsonline.h"
#include "conf.h"
#include "host.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "route.h"

#ifndef PLUGINDIR
#define PLUGINDIR "/usr/lib/iotrouter"
#endif

/* More simulated ticks than this between two messages are skipped. */
#define TS_MAX_TICKS_PER_GAP 100000

int testscript_main(int argc, char **argv);

struct ts {
	const char *rule;
	const char *config;
	const char *transform;
	int64_t tick_us;            /* 0: no ticks */
	long long bench;            /* --bench N: time N calls, print no lines */
	char **dirs;
	size_t ndirs;

	struct iotr_host host;      /* the router's, with emit() collecting */
	struct router_config cfg;   /* with --config */
	int have_cfg;
	struct loader loader;       /* without --config */
	struct iotr_instance *inst;
	int own_inst;
	void *state;
	int created;

	iotr_msg **out;             /* what the rule emitted in this call */
	size_t nout, outcap;

	/* summary */
	unsigned long inputs, passed, dropped, dead, invalid, skipped;
	unsigned long emitted, ticks, tick_emitted, stop_emitted;
};

static struct ts *ts_current;

static void ts_usage(FILE *out)
{
	fprintf(out,
"Usage: iotrouter test-script RULE.lua [OPTION]... < messages.jsonl\n"
"\n"
"Run a Lua rule over sample messages without brokers, and print what it\n"
"would produce, drop or dead-letter: one JSON line each, then a summary.\n"
"\n"
"  -c, --config FILE      take the rule's settings (allow, budgets, vars,\n"
"                         tick_ms) from the lua transform in FILE, and give\n"
"                         each message its route's captures, topic, key and\n"
"                         headers\n"
"  -T, --transform NAME   the lua transform of FILE to use (default: the one\n"
"                         whose script is RULE.lua, else the only one)\n"
"  -t, --tick-every MS    call on_tick every MS milliseconds of simulated\n"
"                         time, taken from each message's \"time\" (default:\n"
"                         the transform's tick_ms, else no ticks)\n"
"  -P, --plugin-dir DIR   look for lua.so in DIR first (repeatable)\n"
"  -b, --bench N          run the first message through the rule N times and\n"
"                         print the time per call (what the rule costs)\n"
"  -q, --quiet            log only warnings and errors (router.log output\n"
"                         at info is shown by default)\n"
"  -v, --verbose          log debug lines too\n"
"  -h, --help             print this help and exit\n"
"\n"
"Input, one JSON object per line (blank lines and lines starting with #\n"
"are skipped); only topic is required:\n"
"  {\"topic\": \"sensors/site-1/dev-1/temperature\", \"payload\": {...} or \"text\",\n"
"   \"key\": \"dev-1\", \"headers\": {\"name\": \"value\"}, \"qos\": 1,\n"
"   \"retain\": false, \"time\": 1700000000.25}\n"
"time is in seconds since the epoch (default: now); a payload given as a\n"
"JSON value is sent as compact JSON text.\n"
"\n"
"Output: {\"input\":N,\"result\":\"produced\"|\"dropped\"|\"dead-lettered\"|...}\n"
"with the message (topic, source_topic, key, qos, retain, time in\n"
"microseconds, headers, payload) as the file output writes it; messages\n"
"from on_tick carry \"tick\":SECONDS, those from on_stop \"stop\":true.\n"
"\n"
"Exit status: 0 when every message was produced or dropped, 1 when some\n"
"were dead-lettered or an input line was invalid, 2 on a usage error, 3\n"
"when the rule or the config cannot be loaded.  See iotrouter-lua(7).\n");
}

/* --- collecting and printing ------------------------------------------------ */

static int ts_emit(iotr_instance *inst, iotr_msg *msg)
{
	struct ts *ts = ts_current;

	(void)inst;
	if (!msg)
		return IOTR_EINVAL;
	if (ts->nout == ts->outcap) {
		size_t cap = ts->outcap ? ts->outcap * 2 : 16;
		iotr_msg **p = realloc(ts->out, cap * sizeof(*p));

		if (!p) {
			msg_free(msg);
			return IOTR_ENOMEM;
		}
		ts->out = p;
		ts->outcap = cap;
	}
	ts->out[ts->nout++] = msg;
	return IOTR_OK;
}

/* Seconds as JSON: an integer when whole. */
static json_t *ts_seconds(int64_t us)
{
	if (us % 1000000 == 0)
		return json_integer(us / 1000000);
	return json_real((double)us / 1e6);
}

/* Print the object head (its fields first) followed by msg's fields. */
static void ts_print(struct ts *ts, json_t *head, const iotr_msg *msg)
{
	char *text = json_dumps(head, JSON_COMPACT | JSON_REAL_PRECISION(16));
	char reason[256], *line = NULL;
	size_t len = 0, n;

	json_decref(head);
	if (!text) {
		fprintf(stderr, "iotrouter test-script: out of memory\n");
		return;
	}
	n = strlen(text);
	if (!msg) {
		printf("%s\n", text);
	} else if (jsonline_format(&ts->host, msg, JSONLINE_PAYLOAD_AUTO, &line,
	                           &len, reason, sizeof(reason)) == IOTR_OK) {
		/* {"input":1,...} + {"topic":...}\n -> {"input":1,...,"topic":...}\n */
		printf("%.*s,%.*s", (int)(n - 1), text, (int)(len - 1),
		       line + 1);
		free(line);
	} else {
		printf("%.*s,\"format_error\":\"%s\"}\n", (int)(n - 1), text,
		       reason);
	}
	free(text);
}

/* Print and free what the rule emitted; from says where it came from. */
static void ts_print_emitted(struct ts *ts, const char *from_key,
                             json_t *from_value, unsigned long *count)
{
	size_t i;

	for (i = 0; i < ts->nout; i++) {
		json_t *head = json_object();

		json_object_set(head, from_key, from_value);
		json_object_set_new(head, "result", json_string("produced"));
		ts_print(ts, head, ts->out[i]);
		msg_free(ts->out[i]);
		(*count)++;
	}
	ts->nout = 0;
	json_decref(from_value);
}

/* --- input lines ---------------------------------------------------------------- */

static int ts_invalid(struct ts *ts, unsigned long n, const char *fmt, ...)
	IOTR_PRINTF(3, 4);

static int ts_invalid(struct ts *ts, unsigned long n, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	ts->invalid++;
	ts_print(ts, json_pack("{s:I,s:s,s:s}", "input", (json_int_t)n,
	                       "result", "invalid", "error", why), NULL);
	return -1;
}

/* A message from one input line; NULL after printing why not. */
static iotr_msg *ts_parse(struct ts *ts, unsigned long n, const char *text,
                          size_t len, int64_t *time_us)
{
	static const char *const fields[] = { "topic", "payload", "key",
		"headers", "qos", "retain", "time", NULL };
	json_error_t error;
	json_t *line, *v;
	const char *name;
	iotr_msg *msg = NULL;
	char *payload = NULL;
	size_t plen = 0, i;

	if (!(line = json_loadb(text, len, 0, &error))) {
		ts_invalid(ts, n, "not a JSON object: %s (column %d)",
		           error.text, error.column);
		return NULL;
	}
	json_object_foreach(line, name, v) {
		for (i = 0; fields[i] && strcmp(fields[i], name); i++)
			;
		if (!fields[i]) {
			ts_invalid(ts, n, "unknown field \"%s\"; a message has "
			           "topic, payload, key, headers, qos, retain, "
			           "time", name);
			goto out;
		}
	}
	if (!json_is_string(json_object_get(line, "topic"))) {
		ts_invalid(ts, n, "needs \"topic\": \"...\" (the MQTT topic "
		           "it came in on)");
		goto out;
	}
	v = json_object_get(line, "payload");
	if (json_is_string(v)) {
		payload = strdup(json_string_value(v));
		plen = json_string_length(v);
	} else if (v) {
		payload = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
		                     JSON_REAL_PRECISION(15));
		plen = payload ? strlen(payload) : 0;
	}
	if (v && !payload) {
		ts_invalid(ts, n, "out of memory");
		goto out;
	}
	msg = msg_new(json_string_value(json_object_get(line, "topic")),
	              payload ? payload : "", plen);
	free(payload);
	if (!msg) {
		ts_invalid(ts, n, "out of memory");
		goto out;
	}
	if ((v = json_object_get(line, "key"))) {
		if (!json_is_string(v)) {
			ts_invalid(ts, n, "\"key\" must be a string");
			goto fail;
		}
		msg_set_key(msg, json_string_value(v), json_string_length(v));
	}
	if ((v = json_object_get(line, "headers"))) {
		json_t *hv;

		if (!json_is_object(v)) {
			ts_invalid(ts, n, "\"headers\" must be an object of "
			           "name: \"value\"");
			goto fail;
		}
		json_object_foreach(v, name, hv) {
			if (!json_is_string(hv)) {
				ts_invalid(ts, n, "header \"%s\" must be a "
				           "string", name);
				goto fail;
			}
			msg_add_header(msg, name, json_string_value(hv),
			               json_string_length(hv));
		}
	}
	v = json_object_get(line, "qos");
	if (v && (!json_is_integer(v) || json_integer_value(v) < 0 ||
	          json_integer_value(v) > 2)) {
		ts_invalid(ts, n, "\"qos\" must be 0, 1 or 2");
		goto fail;
	}
	if ((v = json_object_get(line, "retain")) && !json_is_boolean(v)) {
		ts_invalid(ts, n, "\"retain\" must be true or false");
		goto fail;
	}
	msg_set_qos(msg, (int)json_integer_value(json_object_get(line, "qos")),
	            json_is_true(json_object_get(line, "retain")));
	if ((v = json_object_get(line, "time"))) {
		if (!json_is_number(v)) {
			ts_invalid(ts, n, "\"time\" must be a number: seconds "
			           "since the epoch");
			goto fail;
		}
		msg_set_time(msg, (int64_t)(json_number_value(v) * 1e6 + 0.5));
	}
	*time_us = msg->time_us;
	json_decref(line);
	return msg;
fail:
	msg_free(msg);
	msg = NULL;
out:
	json_decref(line);
	return NULL;
}

/* --- routes --------------------------------------------------------------------- */

static int ts_route_has(const struct route *r, const struct iotr_instance *t)
{
	size_t i;

	for (i = 0; i < r->ntransforms; i++)
		if (r->transforms[i] == t)
			return 1;
	return 0;
}

/*
 * Give msg its route, as the router would at ingest: the first route that
 * matches.  Returns 1 to go on, 0 when the message was printed (skipped,
 * or dead-lettered by its route) and freed.
 */
static int ts_route(struct ts *ts, unsigned long n, iotr_msg *msg)
{
	struct router_config *cfg = &ts->cfg;
	size_t spans[512];
	size_t i;

	if (!ts->have_cfg)
		return 1;
	for (i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];
		char why[512];
		int rc;

		if (2 * r->filter.ncaptures > sizeof(spans) / sizeof(spans[0]) ||
		    !filter_match(&r->filter, msg->topic, spans))
			continue;
		if (!ts_route_has(r, ts->inst)) {
			snprintf(why, sizeof(why), "%s matches it first and "
			         "does not run transform '%s'", r->name,
			         ts->inst->name);
			ts->skipped++;
			ts_print(ts, json_pack("{s:I,s:s,s:s}", "input",
			                       (json_int_t)n, "result",
			                       "not routed", "reason", why),
			         msg);
			msg_free(msg);
			return 0;
		}
		msg->output = r->output;
		rc = route_apply(r, msg, spans);
		if (rc == IOTR_OK)
			return 1;
		ts->dead++;
		ts_print(ts, json_pack("{s:I,s:s,s:s}", "input", (json_int_t)n,
		                       "result", "dead-lettered", "error",
		                       msg->error ? msg->error :
		                       "out of memory"), msg);
		msg_free(msg);
		return 0;
	}
	ts->skipped++;
	ts_print(ts, json_pack("{s:I,s:s,s:s}", "input", (json_int_t)n,
	                       "result", "not routed", "reason",
	                       "no route of the config matches its topic"),
	         msg);
	msg_free(msg);
	return 0;
}

/* --- driving the rule ----------------------------------------------------------- */

static void ts_tick(struct ts *ts, int64_t now_us)
{
	const struct iotr_plugin *d = ts->inst->plugin;

	ts->ticks++;
	d->tick(ts->state, now_us);
	ts_print_emitted(ts, "tick", ts_seconds(now_us), &ts->tick_emitted);
}

/* Run the ticks due up to the time of the next message. */
static void ts_ticks_until(struct ts *ts, int64_t *next_tick, int64_t t)
{
	const struct iotr_plugin *d = ts->inst->plugin;

	if (!ts->tick_us || d->size <= offsetof(struct iotr_plugin, tick) ||
	    !d->tick)
		return;
	if (!*next_tick)
		*next_tick = (t / ts->tick_us + 1) * ts->tick_us;
	if ((t - *next_tick) / ts->tick_us > TS_MAX_TICKS_PER_GAP) {
		fprintf(stderr, "iotrouter test-script: skipping %lld ticks "
		        "of a gap in the message times\n",
		        (long long)((t - *next_tick) / ts->tick_us));
		*next_tick = (t / ts->tick_us) * ts->tick_us;
	}
	while (*next_tick <= t) {
		ts_tick(ts, *next_tick);
		*next_tick += ts->tick_us;
	}
}

static void ts_message(struct ts *ts, unsigned long n, iotr_msg *msg)
{
	const struct iotr_plugin *d = ts->inst->plugin;
	int rc = d->process(ts->state, msg);
	json_t *head;

	ts->inputs++;
	if (rc == IOTR_OK) {
		ts->passed++;
		ts_print(ts, json_pack("{s:I,s:s}", "input", (json_int_t)n,
		                       "result", "produced"), msg);
	} else if (rc == IOTR_DROP) {
		ts->dropped++;
		ts_print(ts, json_pack("{s:I,s:s,s:s}", "input", (json_int_t)n,
		                       "result", "dropped", "source_topic",
		                       msg->topic), NULL);
	} else {
		ts->dead++;
		head = json_pack("{s:I,s:s,s:s}", "input", (json_int_t)n,
		                 "result", "dead-lettered", "error",
		                 msg->error ? msg->error : "no reason given");
		ts_print(ts, head, msg);
	}
	msg_free(msg);
	ts_print_emitted(ts, "input", json_integer((json_int_t)n), &ts->emitted);
}

static int64_t ts_clock_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/*
 * --bench N: the first message of the input through process() N times (the
 * same message each time, as a rule that only reads it sees no difference),
 * after a warm-up; prints the wall time per call.
 */
static int ts_bench(struct ts *ts)
{
	const struct iotr_plugin *d = ts->inst->plugin;
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	iotr_msg *msg = NULL;
	int64_t t = 0, start, ns;
	long long i, counts[3] = { 0 };
	unsigned long n = 0;

	while (!msg && (len = getline(&buf, &cap, stdin)) >= 0) {
		n++;
		if (len > 1 && buf[0] != '#')
			msg = ts_parse(ts, n, buf, (size_t)len, &t);
	}
	free(buf);
	if (!msg || !ts_route(ts, n, msg)) {
		fprintf(stderr, "iotrouter test-script: --bench needs one "
		        "message on stdin\n");
		return 2;
	}
	for (i = 0; i < 1000; i++)
		d->process(ts->state, msg);
	start = ts_clock_ns();
	for (i = 0; i < ts->bench; i++) {
		int rc = d->process(ts->state, msg);

		counts[rc == IOTR_OK ? 0 : rc == IOTR_DROP ? 1 : 2]++;
		if (ts->nout) {       /* what it emitted: count and free */
			for (size_t k = 0; k < ts->nout; k++)
				msg_free(ts->out[k]);
			ts->nout = 0;
		}
	}
	ns = ts_clock_ns() - start;
	msg_free(msg);
	printf("{\"bench\":{\"rule\":\"%s\",\"calls\":%lld,\"ns_per_call\":%.1f,"
	       "\"passed\":%lld,\"dropped\":%lld,\"failed\":%lld}}\n", ts->rule,
	       ts->bench, (double)ns / (double)ts->bench, counts[0], counts[1],
	       counts[2]);
	return counts[2] ? 1 : 0;
}

static int ts_run(struct ts *ts)
{
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	unsigned long n = 0;
	int64_t next_tick = 0;

	while ((len = getline(&buf, &cap, stdin)) >= 0) {
		iotr_msg *msg;
		int64_t t = 0;
		size_t i = 0;

		n++;
		while (i < (size_t)len && (buf[i] == ' ' || buf[i] == '\t' ||
		                           buf[i] == '\n' || buf[i] == '\r'))
			i++;
		if (i == (size_t)len || buf[i] == '#')
			continue;
		if (!(msg = ts_parse(ts, n, buf, (size_t)len, &t)))
			continue;
		ts_ticks_until(ts, &next_tick, t);
		if (!ts_route(ts, n, msg))
			continue;
		ts_message(ts, n, msg);
	}
	free(buf);
	if (ts->inst->plugin->stop) {
		ts->inst->plugin->stop(ts->state);
		ts_print_emitted(ts, "stop", json_true(), &ts->stop_emitted);
	}
	{
		const struct {
			const char *name;
			unsigned long value;
		} counts[] = {
			{ "inputs", ts->inputs + ts->invalid + ts->skipped },
			{ "produced", ts->passed + ts->emitted +
			  ts->tick_emitted + ts->stop_emitted },
			{ "passed", ts->passed }, { "dropped", ts->dropped },
			{ "dead_lettered", ts->dead },
			{ "invalid", ts->invalid }, { "not_routed", ts->skipped },
			{ "emitted", ts->emitted }, { "ticks", ts->ticks },
			{ "tick_emitted", ts->tick_emitted },
			{ "stop_emitted", ts->stop_emitted },
		};
		json_t *sum = json_object();
		char errors[600];

		for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++)
			json_object_set_new(sum, counts[k].name,
			                    json_integer((json_int_t)counts[k].value));
		snprintf(errors, sizeof(errors), "%s.errors", ts->inst->name);
		json_object_set_new(sum, "rule_errors",
		                    json_integer((json_int_t)metrics_get(errors)));
		ts_print(ts, json_pack("{s:o}", "summary", sum), NULL);
	}
	fflush(stdout);
	return ts->dead || ts->invalid ? 1 : 0;
}

/* --- set-up ----------------------------------------------------------------------- */

/* Without a config: an instance of lua.so with its defaults. */
static int ts_load_plain(struct ts *ts)
{
	struct plugin_so *so;
	const struct iotr_plugin *desc;
	struct iotr_instance *inst;
	char err[2048];
	size_t i, n = 0;

	for (i = 0; i < ts->ndirs; i++)
		loader_add_dir(&ts->loader, ts->dirs[i]);
	loader_add_dir(&ts->loader, PLUGINDIR);
	if (!(so = loader_load(&ts->loader, "lua", err, sizeof(err)))) {
		fprintf(stderr, "iotrouter test-script: %s\n", err);
		return -1;
	}
	if (!(desc = loader_kind(so, IOTR_PLUGIN_TRANSFORM, err,
	                         sizeof(err)))) {
		fprintf(stderr, "iotrouter test-script: %s: %s\n", so->path,
		        err);
		return -1;
	}
	while (desc->params && desc->params[n].key)
		n++;
	if (!(inst = calloc(1, sizeof(*inst))) ||
	    !(inst->name = strdup("rule")) ||
	    !(inst->params = calloc(n ? n : 1, sizeof(*inst->params)))) {
		instance_free(inst);
		fprintf(stderr, "iotrouter test-script: out of memory\n");
		return -1;
	}
	inst->file = "test-script";
	inst->kind = IOTR_PLUGIN_TRANSFORM;
	inst->plugin = desc;
	inst->path = so->path;
	inst->nparams = n;
	ts->inst = inst;
	ts->own_inst = 1;
	for (i = 0; i < n; i++)
		if (param_value_default(&inst->params[i], &desc->params[i])) {
			fprintf(stderr, "iotrouter test-script: out of memory\n");
			return -1;
		}
	return 0;
}

/* With a config: its lua transform (by name, by script, or the only one). */
static int ts_load_config(struct ts *ts)
{
	struct cfg_errors errs = { 0 };
	struct iotr_instance *found = NULL;
	size_t i, nlua = 0;
	int rc;

	rc = config_load(ts->config, ts->dirs, ts->ndirs, &ts->cfg, &errs);
	ts->have_cfg = 1;
	for (i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.lines[i]);
	cfg_errors_free(&errs);
	if (rc) {
		fprintf(stderr, "iotrouter test-script: %s is not a valid "
		        "configuration (see above; iotrouter --check -c %s)\n",
		        ts->config, ts->config);
		return -1;
	}
	for (i = 0; i < ts->cfg.ninstances; i++) {
		struct iotr_instance *t = ts->cfg.instances[i];
		int idx;

		if (t->kind != IOTR_PLUGIN_TRANSFORM ||
		    strcmp(t->plugin->name, "lua") != 0)
			continue;
		nlua++;
		if (ts->transform) {
			if (strcmp(t->name, ts->transform) == 0)
				found = t;
			continue;
		}
		idx = instance_param_index(t, "script");
		if (idx >= 0 && t->params[idx].str &&
		    strcmp(t->params[idx].str, ts->rule) == 0)
			found = t;
	}
	if (!found && !ts->transform && nlua == 1)
		for (i = 0; i < ts->cfg.ninstances; i++)
			if (ts->cfg.instances[i]->kind == IOTR_PLUGIN_TRANSFORM &&
			    strcmp(ts->cfg.instances[i]->plugin->name, "lua") == 0)
				found = ts->cfg.instances[i];
	if (!found) {
		if (ts->transform)
			fprintf(stderr, "iotrouter test-script: %s has no lua "
			        "transform named '%s'\n", ts->config,
			        ts->transform);
		else
			fprintf(stderr, "iotrouter test-script: %s has %s lua "
			        "transform%s; name one with --transform NAME\n",
			        ts->config, nlua ? "several" : "no",
			        nlua ? "s, none with this script" : "");
		return -1;
	}
	ts->inst = found;
	return 0;
}

/* Point the instance's `script` at the rule under test. */
static int ts_set_script(struct ts *ts)
{
	int idx = instance_param_index(ts->inst, "script");
	struct param_value *v;

	if (idx < 0) {
		fprintf(stderr, "iotrouter test-script: plugin %s has no "
		        "`script` parameter\n", ts->inst->path);
		return -1;
	}
	v = &ts->inst->params[idx];
	free(v->str);
	if (!(v->str = strdup(ts->rule)))
		return -1;
	v->set = 1;
	return 0;
}

static int ts_parse_args(struct ts *ts, int argc, char **argv, int *level)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "transform", required_argument, NULL, 'T' },
		{ "tick-every", required_argument, NULL, 't' },
		{ "plugin-dir", required_argument, NULL, 'P' },
		{ "bench", required_argument, NULL, 'b' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	ts->tick_us = -1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "c:T:t:P:b:qvh", longopts,
	                        NULL)) != -1) {
		switch (c) {
		case 'c':
			ts->config = optarg;
			break;
		case 'T':
			ts->transform = optarg;
			break;
		case 't': {
			char *end;
			long long ms = strtoll(optarg, &end, 10);

			if (*end || end == optarg || ms < 0 ||
			    ms > 86400000LL * 365) {
				fprintf(stderr, "iotrouter test-script: "
				        "--tick-every takes milliseconds (0 for "
				        "no ticks), not '%s'\n", optarg);
				return 2;
			}
			ts->tick_us = ms * 1000;
			break;
		}
		case 'b': {
			char *end;

			ts->bench = strtoll(optarg, &end, 10);
			if (*end || ts->bench < 1) {
				fprintf(stderr, "iotrouter test-script: --bench "
				        "takes a number of calls, not '%s'\n",
				        optarg);
				return 2;
			}
			break;
		}
		case 'P': {
			char **d = realloc(ts->dirs, (ts->ndirs + 1) *
			                   sizeof(*d));

			if (!d)
				return 2;
			ts->dirs = d;
			d[ts->ndirs++] = optarg;
			break;
		}
		case 'q':
			*level = IOTR_LOG_WARNING;
			break;
		case 'v':
			*level = IOTR_LOG_DEBUG;
			break;
		case 'h':
			ts_usage(stdout);
			return -1;
		default:
			fprintf(stderr, "Try 'iotrouter test-script --help'.\n");
			return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "iotrouter test-script: %s; usage: iotrouter "
		        "test-script RULE.lua [OPTION]... < messages.jsonl\n",
		        optind >= argc ? "which rule? name the Lua file" :
		        "give one rule file");
		return 2;
	}
	ts->rule = argv[optind];
	return 0;
}

int testscript_main(int argc, char **argv)
{
	struct ts ts = { 0 };
	int level = IOTR_LOG_INFO, rc;
	size_t i;

	rc = ts_parse_args(&ts, argc, argv, &level);
	if (rc) {
		free(ts.dirs);
		return rc < 0 ? 0 : rc;
	}
	log_set_level(level);
	ts_current = &ts;
	ts.host = *host_table();
	ts.host.emit = ts_emit;
	rc = 3;
	if ((ts.config ? ts_load_config(&ts) : ts_load_plain(&ts)) ||
	    ts_set_script(&ts))
		goto out;
	if (ts.tick_us < 0)
		ts.tick_us = ts.inst->tick_ms * 1000;
	if (ts.inst->plugin->create(ts.inst, &ts.host, &ts.state) != IOTR_OK) {
		fprintf(stderr, "iotrouter test-script: %s cannot be loaded "
		        "(see above)\n", ts.rule);
		goto out;
	}
	ts.created = 1;
	if (ts.inst->plugin->start && ts.inst->plugin->start(ts.state)) {
		fprintf(stderr, "iotrouter test-script: %s did not start (see "
		        "above)\n", ts.rule);
		goto out;
	}
	/* Messages on_start() emitted in the first worker state show up
	 * with the first input; that is where the router would send them. */
	rc = ts.bench ? ts_bench(&ts) : ts_run(&ts);
out:
	if (ts.created)
		ts.inst->plugin->destroy(ts.state);
	for (i = 0; i < ts.nout; i++)
		msg_free(ts.out[i]);
	free(ts.out);
	if (ts.own_inst)
		instance_free(ts.inst);
	if (ts.have_cfg)
		config_free(&ts.cfg);
	loader_free(&ts.loader);
	metrics_free();
	msg_pools_free();
	free(ts.dirs);
	return rc;
}
