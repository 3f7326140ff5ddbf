/*
 * conf.c - turn the libconfig file into a router_config, collecting every
 * problem with its file and line rather than stopping at the first, so that
 * `iotrouter --check` can show them all at once.
 */
#include "config.h"

#include "conf.h"

#include <errno.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "template.h"

#ifndef PLUGINDIR
#define PLUGINDIR "/usr/lib/iotrouter"
#endif

/* The router's own defaults; every one is a key of the `router` group. */
#define DEFAULT_WORKERS 2
#define DEFAULT_QUEUE_SIZE 10000
#define DEFAULT_SHUTDOWN_TIMEOUT_MS 15000
#define DEFAULT_MAX_MESSAGE_BYTES 1048576
#define DEFAULT_STATS_INTERVAL_S 60
#define DEFAULT_RETRY_BACKOFF_MS 500
#define DEFAULT_WORKER_LINGER_US 500
/* router.inline_max_us: a route's transforms that take less than this a
 * message (a filter, a field or two, a small JSON payload decoded) run on
 * the input's thread in "auto" mode; dearer ones are spread over the
 * workers, since the input's thread already spends about this much on
 * receiving each message. */
#define DEFAULT_INLINE_MAX_US 2
/* router.inline_drain_wait_us: enough for a worker to finish a backlog of
 * cheap messages, short enough not to hold up an input. */
#define DEFAULT_INLINE_DRAIN_WAIT_US 2000
#define DEFAULT_MESSAGE_POOL_BYTES (4 << 20)
#define DEFAULT_WAL_SEGMENT_BYTES (64LL << 20)
#define DEFAULT_WAL_MAX_BYTES (1LL << 30)
#define DEFAULT_WAL_SYNC_INTERVAL_MS 100
#define DEFAULT_WAL_SYNC_EVERY 1000

void cfg_error(struct cfg_errors *e, const char *file, int line,
               const char *fmt, ...)
{
	char msg[2048], *text;
	char **lines;
	va_list ap;
	int n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		n = asprintf(&text, "%s:%d: %s", file, line, msg);
	else
		n = asprintf(&text, "%s: %s", file, msg);
	if (n < 0)
		return;
	lines = realloc(e->lines, (e->n + 1) * sizeof(*lines));
	if (!lines) {
		free(text);
		return;
	}
	e->lines = lines;
	e->lines[e->n++] = text;
}

void cfg_errors_free(struct cfg_errors *e)
{
	size_t i;

	for (i = 0; i < e->n; i++)
		free(e->lines[i]);
	free(e->lines);
	e->lines = NULL;
	e->n = 0;
}

/* State while one file is read. */
struct reader {
	struct router_config *cfg;
	struct cfg_errors *errs;
	const char *file;
	size_t nerrs_at_start;
};

static int line_of(const config_setting_t *s)
{
	return s ? (int)config_setting_source_line(s) : 0;
}

#define ERR(rd, s, ...) cfg_error((rd)->errs, (rd)->file, line_of(s), __VA_ARGS__)

static const char *setting_type_name(const config_setting_t *s)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_GROUP: return "a group { ... }";
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64: return "an integer";
	case CONFIG_TYPE_FLOAT: return "a number";
	case CONFIG_TYPE_STRING: return "a string";
	case CONFIG_TYPE_BOOL: return "a boolean";
	case CONFIG_TYPE_ARRAY: return "an array [ ... ]";
	case CONFIG_TYPE_LIST: return "a list ( ... )";
	default: return "a value of unknown type";
	}
}

static int is_int(const config_setting_t *s)
{
	return config_setting_type(s) == CONFIG_TYPE_INT ||
	       config_setting_type(s) == CONFIG_TYPE_INT64;
}

static int is_seq(const config_setting_t *s)
{
	return config_setting_type(s) == CONFIG_TYPE_ARRAY ||
	       config_setting_type(s) == CONFIG_TYPE_LIST;
}

/* --- plain typed keys of the router's own groups ------------------------- */

static int get_string(struct reader *rd, const config_setting_t *s,
                      const char *what, char **out)
{
	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		ERR(rd, s, "%s must be a string, not %s", what,
		    setting_type_name(s));
		return -1;
	}
	free(*out);
	*out = strdup(config_setting_get_string(s));
	return *out ? 0 : -1;
}

static int get_int(struct reader *rd, const config_setting_t *s,
                   const char *what, int64_t min, int64_t max, int64_t *out)
{
	long long v;

	if (!is_int(s)) {
		ERR(rd, s, "%s must be an integer, not %s", what,
		    setting_type_name(s));
		return -1;
	}
	v = config_setting_get_int64(s);
	if (v < min || v > max) {
		ERR(rd, s, "%s is %lld; it must be between %lld and %lld",
		    what, v, (long long)min, (long long)max);
		return -1;
	}
	*out = v;
	return 0;
}

static int get_bool(struct reader *rd, const config_setting_t *s,
                    const char *what, int *out)
{
	if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
		ERR(rd, s, "%s must be true or false, not %s", what,
		    setting_type_name(s));
		return -1;
	}
	*out = config_setting_get_bool(s);
	return 0;
}

/* router.inline_transforms: true, false or "auto". */
static int get_inline(struct reader *rd, const config_setting_t *s, int *out)
{
	const char *str = config_setting_get_string(s);   /* NULL if none */

	if (config_setting_type(s) == CONFIG_TYPE_BOOL) {
		*out = config_setting_get_bool(s) ? ROUTER_INLINE_ON :
		                                    ROUTER_INLINE_OFF;
		return 0;
	}
	if (str && strcmp(str, "auto") == 0) {
		*out = ROUTER_INLINE_AUTO;
		return 0;
	}
	if (str)
		ERR(rd, s, "router.inline_transforms must be true, false or "
		    "\"auto\", not \"%s\"", str);
	else
		ERR(rd, s, "router.inline_transforms must be true, false or "
		    "\"auto\", not %s", setting_type_name(s));
	return -1;
}

/* --- plugin parameters, checked against the plugin's schema -------------- */

static int param_range(struct reader *rd, const config_setting_t *s,
                       const struct iotr_instance *inst,
                       const struct iotr_param *p, int64_t v)
{
	if (p->min < p->max && (v < p->min || v > p->max)) {
		ERR(rd, s, "%s '%s': parameter '%s' is %lld; it must be "
		    "between %lld and %lld", plugin_kind_name(inst->kind),
		    inst->name, p->key, (long long)v, (long long)p->min,
		    (long long)p->max);
		return -1;
	}
	return 0;
}

static int param_read(struct reader *rd, const config_setting_t *s,
                      struct iotr_instance *inst, const struct iotr_param *p,
                      struct param_value *v)
{
	int type = config_setting_type(s);
	int ok;
	size_t i, n;

	switch (p->type) {
	case IOTR_PARAM_STRING:
		ok = type == CONFIG_TYPE_STRING;
		break;
	case IOTR_PARAM_INT:
		ok = is_int(s);
		break;
	case IOTR_PARAM_BOOL:
		ok = type == CONFIG_TYPE_BOOL;
		break;
	case IOTR_PARAM_DOUBLE:
		ok = is_int(s) || type == CONFIG_TYPE_FLOAT;
		break;
	case IOTR_PARAM_STRING_LIST:
		ok = type == CONFIG_TYPE_STRING || is_seq(s);
		for (i = 0; ok && is_seq(s) &&
		     i < (size_t)config_setting_length(s); i++)
			ok = config_setting_type(config_setting_get_elem(s,
			        (unsigned)i)) == CONFIG_TYPE_STRING;
		break;
	case IOTR_PARAM_INT_LIST:
		ok = is_int(s) || is_seq(s);
		for (i = 0; ok && is_seq(s) &&
		     i < (size_t)config_setting_length(s); i++)
			ok = is_int(config_setting_get_elem(s, (unsigned)i));
		break;
	default:
		ok = 0;
	}
	if (!ok) {
		ERR(rd, s, "%s '%s': parameter '%s' must be %s, not %s",
		    plugin_kind_name(inst->kind), inst->name, p->key,
		    param_type_name(p->type), setting_type_name(s));
		return -1;
	}
	v->set = 1;
	v->line = line_of(s);
	switch (p->type) {
	case IOTR_PARAM_STRING:
		free(v->str);
		return (v->str = strdup(config_setting_get_string(s))) ? 0 : -1;
	case IOTR_PARAM_INT:
		v->i = config_setting_get_int64(s);
		return param_range(rd, s, inst, p, v->i);
	case IOTR_PARAM_BOOL:
		v->i = config_setting_get_bool(s);
		return 0;
	case IOTR_PARAM_DOUBLE:
		v->d = is_int(s) ? (double)config_setting_get_int64(s) :
			config_setting_get_float(s);
		return 0;
	case IOTR_PARAM_STRING_LIST:
		for (i = 0; i < v->count; i++)
			free(v->strs[i]);
		free(v->strs);
		n = is_seq(s) ? (size_t)config_setting_length(s) : 1;
		v->count = 0;
		if (!(v->strs = calloc(n ? n : 1, sizeof(char *))))
			return -1;
		for (i = 0; i < n; i++) {
			const config_setting_t *e = is_seq(s) ?
				config_setting_get_elem(s, (unsigned)i) : s;

			if (!(v->strs[i] = strdup(config_setting_get_string(e))))
				return -1;
			v->count++;
		}
		return 0;
	case IOTR_PARAM_INT_LIST:
		free(v->ints);
		n = is_seq(s) ? (size_t)config_setting_length(s) : 1;
		v->count = 0;
		if (!(v->ints = calloc(n ? n : 1, sizeof(int64_t))))
			return -1;
		for (i = 0; i < n; i++) {
			const config_setting_t *e = is_seq(s) ?
				config_setting_get_elem(s, (unsigned)i) : s;

			v->ints[i] = config_setting_get_int64(e);
			if (param_range(rd, e, inst, p, v->ints[i]))
				return -1;
			v->count++;
		}
		return 0;
	}
	return -1;
}

static void known_params(const struct iotr_plugin *d, char *buf, size_t len)
{
	const struct iotr_param *p;

	buf[0] = '\0';
	for (p = d->params; p && p->key; p++) {
		if (buf[0])
			strncat(buf, ", ", len - strlen(buf) - 1);
		strncat(buf, p->key, len - strlen(buf) - 1);
	}
	if (!buf[0])
		snprintf(buf, len, "(none)");
}

static const char *const instance_keys[] = { "name", "plugin", "tick_ms",
                                             NULL };

static int is_instance_key(const char *key)
{
	size_t i;

	for (i = 0; instance_keys[i]; i++)
		if (strcmp(key, instance_keys[i]) == 0)
			return 1;
	return 0;
}

static void read_params(struct reader *rd, const config_setting_t *group,
                        struct iotr_instance *inst)
{
	const struct iotr_plugin *d = inst->plugin;
	size_t i, n = 0;

	while (d->params && d->params[n].key)
		n++;
	inst->nparams = n;
	inst->params = calloc(n ? n : 1, sizeof(*inst->params));
	if (!inst->params) {
		ERR(rd, group, "out of memory");
		return;
	}
	for (i = 0; i < n; i++)
		if (param_value_default(&inst->params[i], &d->params[i]))
			ERR(rd, group, "out of memory");
	for (i = 0; i < (size_t)config_setting_length(group); i++) {
		const config_setting_t *s = config_setting_get_elem(group,
		                                                     (unsigned)i);
		const char *key = config_setting_name(s);
		int idx;

		if (is_instance_key(key))
			continue;
		idx = instance_param_index(inst, key);
		if (idx < 0) {
			char known[1024];

			known_params(d, known, sizeof(known));
			ERR(rd, s, "%s '%s': plugin '%s' has no parameter '%s'; "
			    "its parameters are: %s (see iotrouter "
			    "--help-plugin %s)", plugin_kind_name(inst->kind),
			    inst->name, d->name, key, known, d->name);
			continue;
		}
		param_read(rd, s, inst, &d->params[idx], &inst->params[idx]);
	}
	for (i = 0; i < n; i++) {
		int list = d->params[i].type == IOTR_PARAM_STRING_LIST ||
			d->params[i].type == IOTR_PARAM_INT_LIST;

		if (d->params[i].required && inst->params[i].set && list &&
		    inst->params[i].count == 0)
			cfg_error(rd->errs, rd->file, inst->params[i].line,
			          "%s '%s': parameter '%s' is empty; it needs at "
			          "least one value: %s",
			          plugin_kind_name(inst->kind), inst->name,
			          d->params[i].key, d->params[i].doc ?
			          d->params[i].doc : "");
		if (d->params[i].required && !inst->params[i].set)
			ERR(rd, group, "%s '%s': plugin '%s' needs parameter '%s' "
			    "(%s): %s", plugin_kind_name(inst->kind),
			    inst->name, d->name, d->params[i].key,
			    param_type_name(d->params[i].type),
			    d->params[i].doc ? d->params[i].doc : "");
	}
}

/* --- instances ------------------------------------------------------------ */

struct iotr_instance *config_instance(const struct router_config *cfg,
                                      const char *name)
{
	size_t i;

	for (i = 0; i < cfg->ninstances; i++)
		if (strcmp(cfg->instances[i]->name, name) == 0)
			return cfg->instances[i];
	return NULL;
}

static void read_instance(struct reader *rd, const config_setting_t *g,
                          int kind)
{
	struct router_config *cfg = rd->cfg;
	const char *name = NULL, *plugin = NULL;
	struct iotr_instance *inst, **all;
	const config_setting_t *s;
	struct plugin_so *so;
	const struct iotr_plugin *desc;
	char err[2048];
	long long tick = 0;

	if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
		ERR(rd, g, "each %s must be a group { name = ...; plugin = ...; "
		    "}, not %s", plugin_kind_name(kind), setting_type_name(g));
		return;
	}
	if (!config_setting_lookup_string(g, "name", &name)) {
		ERR(rd, g, "%s has no name; add name = \"...\";",
		    plugin_kind_name(kind));
		return;
	}
	if (strlen(name) > CONF_NAME_MAX) {
		ERR(rd, g, "the name '%.40s...' is %zu bytes long; a name may "
		    "have at most %d", name, strlen(name), CONF_NAME_MAX);
		return;
	}
	if (config_instance(cfg, name)) {
		ERR(rd, g, "the name '%s' is used twice; each input, transform "
		    "and output needs its own name", name);
		return;
	}
	if (!config_setting_lookup_string(g, "plugin", &plugin)) {
		ERR(rd, g, "%s '%s' has no plugin; add plugin = \"...\";",
		    plugin_kind_name(kind), name);
		return;
	}
	if (!(so = loader_load(&cfg->loader, plugin, err, sizeof(err)))) {
		ERR(rd, config_setting_get_member(g, "plugin"), "%s '%s': %s",
		    plugin_kind_name(kind), name, err);
		return;
	}
	if (!(desc = loader_kind(so, kind, err, sizeof(err)))) {
		ERR(rd, config_setting_get_member(g, "plugin"), "%s '%s': %s",
		    plugin_kind_name(kind), name, err);
		return;
	}
	if ((s = config_setting_get_member(g, "tick_ms"))) {
		if (kind != IOTR_PLUGIN_TRANSFORM || !is_int(s) ||
		    (tick = config_setting_get_int64(s)) < 0) {
			ERR(rd, s, "%s '%s': tick_ms is for transforms, and "
			    "must be an integer of 0 or more (milliseconds)",
			    plugin_kind_name(kind), name);
			return;
		}
	}
	inst = calloc(1, sizeof(*inst));
	all = realloc(cfg->instances, (cfg->ninstances + 1) * sizeof(*all));
	if (!inst || !all || !(inst->name = strdup(name))) {
		free(inst);
		if (all)
			cfg->instances = all;
		ERR(rd, g, "out of memory");
		return;
	}
	cfg->instances = all;
	all[cfg->ninstances++] = inst;
	inst->file = cfg->file;
	inst->line = line_of(g);
	inst->kind = kind;
	inst->plugin = desc;
	inst->path = so->path;
	inst->tick_ms = tick;
	read_params(rd, g, inst);
}

static void read_instances(struct reader *rd, const config_setting_t *list,
                           int kind)
{
	size_t i;

	if (!is_seq(list) && config_setting_type(list) != CONFIG_TYPE_GROUP) {
		ERR(rd, list, "'%s' must be a list ( { ... }, { ... } ), not %s",
		    config_setting_name(list), setting_type_name(list));
		return;
	}
	if (config_setting_type(list) == CONFIG_TYPE_GROUP) {
		/* One instance written without the list parentheses. */
		read_instance(rd, list, kind);
		return;
	}
	for (i = 0; i < (size_t)config_setting_length(list); i++)
		read_instance(rd, config_setting_get_elem(list, (unsigned)i),
		              kind);
}

/* --- the router group ---------------------------------------------------- */

static struct iotr_instance *find_kind(struct reader *rd,
                                       const config_setting_t *s,
                                       const char *name, int kind,
                                       const char *what)
{
	struct iotr_instance *inst = config_instance(rd->cfg, name);

	if (!inst || inst->kind != kind) {
		ERR(rd, s, "%s names %s '%s', and there is no %s of that name",
		    what, plugin_kind_name(kind), name, plugin_kind_name(kind));
		return NULL;
	}
	return inst;
}

/* The one output, when there is exactly one; else NULL. */
static struct iotr_instance *sole_output(const struct router_config *cfg)
{
	struct iotr_instance *found = NULL;
	size_t i;

	for (i = 0; i < cfg->ninstances; i++) {
		if (cfg->instances[i]->kind != IOTR_PLUGIN_OUTPUT)
			continue;
		if (found)
			return NULL;
		found = cfg->instances[i];
	}
	return found;
}

static void read_plugin_dirs(struct reader *rd, const config_setting_t *s)
{
	size_t i;

	if (config_setting_type(s) == CONFIG_TYPE_STRING) {
		loader_add_dir(&rd->cfg->loader, config_setting_get_string(s));
		return;
	}
	if (!is_seq(s)) {
		ERR(rd, s, "router.plugin_dirs must be a list of directories, "
		    "not %s", setting_type_name(s));
		return;
	}
	for (i = 0; i < (size_t)config_setting_length(s); i++) {
		const config_setting_t *e = config_setting_get_elem(s,
		                                                     (unsigned)i);

		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			ERR(rd, e, "router.plugin_dirs: each entry must be a "
			    "string");
		else
			loader_add_dir(&rd->cfg->loader,
			               config_setting_get_string(e));
	}
}

struct pending_outputs {
	const config_setting_t *dead_letter, *unmatched;
	int dead_letter_line, unmatched_line;   /* of the *_topic keys */
};

static void read_router(struct reader *rd, const config_setting_t *g,
                        struct pending_outputs *po)
{
	struct router_config *cfg = rd->cfg;
	size_t i;

	if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
		ERR(rd, g, "'router' must be a group { ... }, not %s",
		    setting_type_name(g));
		return;
	}
	for (i = 0; i < (size_t)config_setting_length(g); i++) {
		const config_setting_t *s = config_setting_get_elem(g,
		                                                     (unsigned)i);
		const char *key = config_setting_name(s);
		char *str = NULL;
		int b;

		if (strcmp(key, "plugin_dirs") == 0) {
			/* Read before any plugin is loaded, see config_load. */
		} else if (strcmp(key, "log_level") == 0) {
			if (get_string(rd, s, "router.log_level", &str) == 0 &&
			    (cfg->log_level = log_level_parse(str)) < 0)
				ERR(rd, s, "router.log_level '%s' is not a level; "
				    "use error, warning, notice, info or debug",
				    str);
			free(str);
		} else if (strcmp(key, "syslog") == 0) {
			if (get_bool(rd, s, "router.syslog", &b) == 0 && b &&
			    !(cfg->syslog_ident = strdup("iotrouter")))
				ERR(rd, s, "out of memory");
		} else if (strcmp(key, "workers") == 0) {
			get_int(rd, s, "router.workers", 1, 256, &cfg->workers);
		} else if (strcmp(key, "queue_size") == 0) {
			get_int(rd, s, "router.queue_size", 1, 100000000,
			        &cfg->queue_size);
		} else if (strcmp(key, "shutdown_timeout_ms") == 0) {
			get_int(rd, s, "router.shutdown_timeout_ms", 0,
			        86400000, &cfg->shutdown_timeout_ms);
		} else if (strcmp(key, "max_message_bytes") == 0) {
			get_int(rd, s, "router.max_message_bytes", 1,
			        INT32_MAX, &cfg->max_message_bytes);
		} else if (strcmp(key, "stats_interval") == 0) {
			get_int(rd, s, "router.stats_interval", 0, 86400,
			        &cfg->stats_interval_s);
		} else if (strcmp(key, "retry_backoff_ms") == 0) {
			get_int(rd, s, "router.retry_backoff_ms", 1, 600000,
			        &cfg->retry_backoff_ms);
		} else if (strcmp(key, "worker_linger_us") == 0) {
			get_int(rd, s, "router.worker_linger_us", 0, 100000,
			        &cfg->worker_linger_us);
		} else if (strcmp(key, "message_pool_bytes") == 0) {
			get_int(rd, s, "router.message_pool_bytes", 0,
			        1 << 30, &cfg->message_pool_bytes);
		} else if (strcmp(key, "direct_output") == 0) {
			get_bool(rd, s, "router.direct_output",
			         &cfg->direct_output);
		} else if (strcmp(key, "inline_transforms") == 0) {
			get_inline(rd, s, &cfg->inline_transforms);
		} else if (strcmp(key, "inline_max_us") == 0) {
			get_int(rd, s, "router.inline_max_us", 0, 1000000,
			        &cfg->inline_max_us);
		} else if (strcmp(key, "inline_drain_wait_us") == 0) {
			get_int(rd, s, "router.inline_drain_wait_us", 0, 1000000,
			        &cfg->inline_drain_wait_us);
		} else if (strcmp(key, "default_headers") == 0) {
			get_bool(rd, s, "router.default_headers",
			         &cfg->default_headers);
		} else if (strcmp(key, "dead_letter_topic") == 0) {
			get_string(rd, s, "router.dead_letter_topic",
			           &cfg->dead_letter_topic);
			po->dead_letter_line = line_of(s);
		} else if (strcmp(key, "unmatched_topic") == 0) {
			get_string(rd, s, "router.unmatched_topic",
			           &cfg->unmatched_topic);
			po->unmatched_line = line_of(s);
		} else if (strcmp(key, "wal_dir") == 0) {
			get_string(rd, s, "router.wal_dir", &cfg->wal_dir);
		} else if (strcmp(key, "wal_segment_bytes") == 0) {
			get_int(rd, s, "router.wal_segment_bytes", 4096,
			        INT64_C(1) << 40, &cfg->wal_segment_bytes);
		} else if (strcmp(key, "wal_max_bytes") == 0) {
			get_int(rd, s, "router.wal_max_bytes", 65536,
			        INT64_C(1) << 50, &cfg->wal_max_bytes);
		} else if (strcmp(key, "wal_sync") == 0) {
			if (get_string(rd, s, "router.wal_sync", &str) == 0) {
				if (strcmp(str, "write") == 0)
					cfg->wal_fdatasync = 0;
				else if (strcmp(str, "fdatasync") == 0)
					cfg->wal_fdatasync = 1;
				else
					ERR(rd, s, "router.wal_sync '%s' is not a "
					    "mode; use \"write\" (survives a crash "
					    "of the router) or \"fdatasync\" "
					    "(also survives power loss)", str);
			}
			free(str);
		} else if (strcmp(key, "wal_sync_interval_ms") == 0) {
			get_int(rd, s, "router.wal_sync_interval_ms", 1, 60000,
			        &cfg->wal_sync_interval_ms);
		} else if (strcmp(key, "wal_sync_every") == 0) {
			get_int(rd, s, "router.wal_sync_every", 1, 100000000,
			        &cfg->wal_sync_every);
		} else if (strcmp(key, "wal_full_policy") == 0) {
			if (get_string(rd, s, "router.wal_full_policy",
			               &str) == 0) {
				if (strcmp(str, "block") == 0)
					cfg->wal_drop_oldest = 0;
				else if (strcmp(str, "drop_oldest") == 0)
					cfg->wal_drop_oldest = 1;
				else
					ERR(rd, s, "router.wal_full_policy '%s' "
					    "is not a policy; use \"block\" (stop "
					    "reading from the inputs) or "
					    "\"drop_oldest\" (discard the oldest "
					    "segment, counted)", str);
			}
			free(str);
		} else if (strcmp(key, "dead_letter_output") == 0) {
			po->dead_letter = s;
		} else if (strcmp(key, "unmatched_output") == 0) {
			po->unmatched = s;
		} else {
			ERR(rd, s, "router has no setting '%s'; see "
			    "iotrouter.conf(5)", key);
		}
	}
}

/* Resolve router.dead_letter_output / unmatched_output once the outputs
 * exist: named, or the only output there is. */
static struct iotr_instance *side_output(struct reader *rd,
                                         const config_setting_t *s,
                                         const char *topic_key,
                                         const char *topic, int topic_line)
{
	char what[64];

	if (s) {
		if (config_setting_type(s) != CONFIG_TYPE_STRING) {
			ERR(rd, s, "router.%s must name an output",
			    config_setting_name(s));
			return NULL;
		}
		snprintf(what, sizeof(what), "router.%s",
		         config_setting_name(s));
		return find_kind(rd, s, config_setting_get_string(s),
		                 IOTR_PLUGIN_OUTPUT, what);
	}
	if (!topic)
		return NULL;
	if (!sole_output(rd->cfg))
		cfg_error(rd->errs, rd->file, topic_line, "router.%s is set and there "
		          "are several outputs; name the one to use with "
		          "router.%.*s_output", topic_key,
		          (int)(strlen(topic_key) - strlen("_topic")),
		          topic_key);
	return sole_output(rd->cfg);
}

/* --- routes ---------------------------------------------------------------- */

static struct template *read_template(struct reader *rd,
                                      const config_setting_t *s,
                                      const struct route *r, const char *what)
{
	struct template *t;
	char err[1024];

	if (config_setting_type(s) != CONFIG_TYPE_STRING) {
		ERR(rd, s, "%s: %s must be a string template, not %s", r->name,
		    what, setting_type_name(s));
		return NULL;
	}
	t = template_parse(config_setting_get_string(s), &r->filter, err,
	                   sizeof(err));
	if (!t)
		ERR(rd, s, "%s: %s: %s", r->name, what, err);
	return t;
}

static void add_route_header(struct reader *rd, struct route *r,
                             const config_setting_t *s, const char *name,
                             const char *value_text)
{
	struct route_header *h;
	char err[1024];

	h = realloc(r->headers, (r->nheaders + 1) * sizeof(*h));
	if (!h) {
		ERR(rd, s, "out of memory");
		return;
	}
	r->headers = h;
	h = &h[r->nheaders];
	h->value = template_parse(value_text, &r->filter, err, sizeof(err));
	if (!h->value) {
		ERR(rd, s, "%s: header '%s': %s", r->name, name, err);
		return;
	}
	if (!(h->name = strdup(name))) {
		template_free(h->value);
		ERR(rd, s, "out of memory");
		return;
	}
	r->nheaders++;
}

static void read_route_headers(struct reader *rd, struct route *r,
                               const config_setting_t *s)
{
	size_t i;

	for (i = 0; i < (size_t)config_setting_length(s); i++) {
		const config_setting_t *e = config_setting_get_elem(s,
		                                                     (unsigned)i);
		const char *text, *eq;
		char name[256];

		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			ERR(rd, e, "%s: each header must be a string", r->name);
			continue;
		}
		text = config_setting_get_string(e);
		if (config_setting_type(s) == CONFIG_TYPE_GROUP) {
			add_route_header(rd, r, e, config_setting_name(e), text);
			continue;
		}
		eq = strchr(text, '=');
		if (!eq || eq == text || (size_t)(eq - text) >= sizeof(name)) {
			ERR(rd, e, "%s: header '%s' must read \"name=template\"",
			    r->name, text);
			continue;
		}
		memcpy(name, text, (size_t)(eq - text));
		name[eq - text] = '\0';
		add_route_header(rd, r, e, name, eq + 1);
	}
}

static void read_route_transforms(struct reader *rd, struct route *r,
                                  const config_setting_t *s)
{
	size_t i, n = is_seq(s) ? (size_t)config_setting_length(s) : 1;

	if (!is_seq(s) && config_setting_type(s) != CONFIG_TYPE_STRING) {
		ERR(rd, s, "%s: transforms must be a list of transform names",
		    r->name);
		return;
	}
	r->transforms = calloc(n ? n : 1, sizeof(*r->transforms));
	if (!r->transforms) {
		ERR(rd, s, "out of memory");
		return;
	}
	for (i = 0; i < n; i++) {
		const config_setting_t *e = is_seq(s) ?
			config_setting_get_elem(s, (unsigned)i) : s;
		struct iotr_instance *t;
		char what[300];

		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			ERR(rd, e, "%s: transforms must be names (strings)",
			    r->name);
			continue;
		}
		snprintf(what, sizeof(what), "%s", r->name);
		t = find_kind(rd, e, config_setting_get_string(e),
		              IOTR_PLUGIN_TRANSFORM, what);
		if (t)
			r->transforms[r->ntransforms++] = t;
	}
}

static const char *const route_keys[] = { "name", "input", "match", "output",
	"topic", "key", "headers", "default_headers", "transforms", NULL };

static void read_route(struct reader *rd, const config_setting_t *g,
                       size_t index)
{
	struct router_config *cfg = rd->cfg;
	struct route *r = &cfg->routes[cfg->nroutes];
	const config_setting_t *s;
	const char *text;
	char err[1024];
	size_t i;

	memset(r, 0, sizeof(*r));
	r->file = cfg->file;
	r->line = line_of(g);
	r->default_headers = cfg->default_headers;
	if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
		ERR(rd, g, "each route must be a group { match = ...; ... }, "
		    "not %s", setting_type_name(g));
		return;
	}
	if (config_setting_lookup_string(g, "name", &text)) {
		if (asprintf(&r->name, "route '%s'", text) < 0)
			r->name = NULL;
	} else if (asprintf(&r->name, "route #%zu", index + 1) < 0) {
		r->name = NULL;
	}
	if (!r->name) {
		ERR(rd, g, "out of memory");
		return;
	}
	cfg->nroutes++;   /* from here on, config_free releases it */
	for (i = 0; i < (size_t)config_setting_length(g); i++) {
		const char *key = config_setting_name(
			config_setting_get_elem(g, (unsigned)i));
		size_t k;

		for (k = 0; route_keys[k] && strcmp(route_keys[k], key); k++)
			;
		if (!route_keys[k])
			ERR(rd, config_setting_get_elem(g, (unsigned)i),
			    "%s: routes have no setting '%s'; see "
			    "iotrouter.conf(5)", r->name, key);
	}
	s = config_setting_get_member(g, "match");
	if (!s || config_setting_type(s) != CONFIG_TYPE_STRING) {
		ERR(rd, s ? s : g, "%s needs match = \"topic/filter/#\";",
		    r->name);
		return;
	}
	if (filter_parse(config_setting_get_string(s), &r->filter, err,
	                 sizeof(err))) {
		ERR(rd, s, "%s: %s", r->name, err);
		return;
	}
	if ((s = config_setting_get_member(g, "input"))) {
		if (config_setting_type(s) != CONFIG_TYPE_STRING)
			ERR(rd, s, "%s: input must name an input", r->name);
		else
			r->input = find_kind(rd, s, config_setting_get_string(s),
			                     IOTR_PLUGIN_INPUT, r->name);
	}
	if ((s = config_setting_get_member(g, "output"))) {
		if (config_setting_type(s) != CONFIG_TYPE_STRING)
			ERR(rd, s, "%s: output must name an output", r->name);
		else
			r->output = find_kind(rd, s,
			                      config_setting_get_string(s),
			                      IOTR_PLUGIN_OUTPUT, r->name);
	} else if (!(r->output = sole_output(cfg))) {
		ERR(rd, g, "%s has no output; add output = \"NAME\"; naming "
		    "one of the outputs", r->name);
	}
	if ((s = config_setting_get_member(g, "topic")))
		r->topic = read_template(rd, s, r, "topic");
	if ((s = config_setting_get_member(g, "key")))
		r->key = read_template(rd, s, r, "key");
	if ((s = config_setting_get_member(g, "headers"))) {
		if (config_setting_type(s) == CONFIG_TYPE_GROUP || is_seq(s))
			read_route_headers(rd, r, s);
		else
			ERR(rd, s, "%s: headers must be a group { name = "
			    "\"template\"; } or a list of \"name=template\"",
			    r->name);
	}
	if ((s = config_setting_get_member(g, "default_headers")))
		get_bool(rd, s, "default_headers", &r->default_headers);
	if ((s = config_setting_get_member(g, "transforms")))
		read_route_transforms(rd, r, s);
}

static void read_routes(struct reader *rd, const config_setting_t *list)
{
	size_t i, n;

	if (!is_seq(list)) {
		ERR(rd, list, "'routes' must be a list ( { ... }, { ... } ), "
		    "not %s", setting_type_name(list));
		return;
	}
	n = (size_t)config_setting_length(list);
	rd->cfg->routes = calloc(n ? n : 1, sizeof(struct route));
	if (!rd->cfg->routes) {
		ERR(rd, list, "out of memory");
		return;
	}
	for (i = 0; i < n; i++)
		read_route(rd, config_setting_get_elem(list, (unsigned)i), i);
}

/* --- the whole file ------------------------------------------------------ */

static const char *const sections[] = { "router", "inputs", "transforms",
                                        "outputs", "routes", NULL };

int config_load(const char *path, char *const *extra_dirs, size_t nextra,
                struct router_config *cfg, struct cfg_errors *errs)
{
	struct reader rd = { cfg, errs, path, errs->n };
	struct pending_outputs po = { NULL, NULL, 0, 0 };
	const config_setting_t *root, *s;
	config_t lc;
	size_t i;
	int count[4] = { 0 };

	memset(cfg, 0, sizeof(*cfg));
	cfg->log_level = -1;
	cfg->workers = DEFAULT_WORKERS;
	cfg->queue_size = DEFAULT_QUEUE_SIZE;
	cfg->shutdown_timeout_ms = DEFAULT_SHUTDOWN_TIMEOUT_MS;
	cfg->max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES;
	cfg->stats_interval_s = DEFAULT_STATS_INTERVAL_S;
	cfg->retry_backoff_ms = DEFAULT_RETRY_BACKOFF_MS;
	cfg->default_headers = 1;
	cfg->direct_output = 1;
	cfg->inline_transforms = ROUTER_INLINE_AUTO;
	cfg->inline_max_us = DEFAULT_INLINE_MAX_US;
	cfg->inline_drain_wait_us = DEFAULT_INLINE_DRAIN_WAIT_US;
	cfg->worker_linger_us = DEFAULT_WORKER_LINGER_US;
	cfg->message_pool_bytes = DEFAULT_MESSAGE_POOL_BYTES;
	cfg->wal_segment_bytes = DEFAULT_WAL_SEGMENT_BYTES;
	cfg->wal_max_bytes = DEFAULT_WAL_MAX_BYTES;
	cfg->wal_sync_interval_ms = DEFAULT_WAL_SYNC_INTERVAL_MS;
	cfg->wal_sync_every = DEFAULT_WAL_SYNC_EVERY;
	if (!(cfg->file = strdup(path))) {
		cfg_error(errs, path, 0, "out of memory");
		return -1;
	}
	rd.file = cfg->file;
	for (i = 0; i < nextra; i++)
		loader_add_dir(&cfg->loader, extra_dirs[i]);

	config_init(&lc);
	if (!config_read_file(&lc, path)) {
		if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
			cfg_error(errs, path, 0, "cannot read the config: %s",
			          strerror(errno ? errno : ENOENT));
		else
			cfg_error(errs, config_error_file(&lc) ?
			          config_error_file(&lc) : path,
			          config_error_line(&lc), "syntax error: %s",
			          config_error_text(&lc));
		config_destroy(&lc);
		return -1;
	}
	root = config_root_setting(&lc);
	for (i = 0; i < (size_t)config_setting_length(root); i++) {
		const config_setting_t *e = config_setting_get_elem(root,
		                                                     (unsigned)i);
		size_t k;

		for (k = 0; sections[k]; k++)
			if (strcmp(config_setting_name(e), sections[k]) == 0)
				break;
		if (!sections[k])
			ERR(&rd, e, "unknown section '%s'; a config has "
			    "router, inputs, transforms, outputs and routes",
			    config_setting_name(e));
	}
	if ((s = config_lookup(&lc, "router"))) {
		const config_setting_t *dirs = NULL;

		if (config_setting_type(s) == CONFIG_TYPE_GROUP &&
		    (dirs = config_setting_get_member(s, "plugin_dirs")))
			read_plugin_dirs(&rd, dirs);
		read_router(&rd, s, &po);
	}
	loader_add_dir(&cfg->loader, PLUGINDIR);

	if ((s = config_lookup(&lc, "outputs")))
		read_instances(&rd, s, IOTR_PLUGIN_OUTPUT);
	if ((s = config_lookup(&lc, "transforms")))
		read_instances(&rd, s, IOTR_PLUGIN_TRANSFORM);
	if ((s = config_lookup(&lc, "inputs")))
		read_instances(&rd, s, IOTR_PLUGIN_INPUT);
	for (i = 0; i < cfg->ninstances; i++)
		count[cfg->instances[i]->kind]++;
	if (!count[IOTR_PLUGIN_INPUT] && errs->n == rd.nerrs_at_start)
		cfg_error(errs, path, 0, "no inputs: add an inputs = ( { name "
		          "= ...; plugin = \"mqtt\"; ... } ); section");
	if (!count[IOTR_PLUGIN_OUTPUT] && errs->n == rd.nerrs_at_start)
		cfg_error(errs, path, 0, "no outputs: add an outputs = ( { "
		          "name = ...; plugin = \"kafka\"; ... } ); section");

	cfg->dead_letter_output = side_output(&rd, po.dead_letter,
	                                      "dead_letter_topic",
	                                      cfg->dead_letter_topic,
	                                      po.dead_letter_line);
	cfg->unmatched_output = side_output(&rd, po.unmatched,
	                                    "unmatched_topic",
	                                    cfg->unmatched_topic,
	                                    po.unmatched_line);

	if ((s = config_lookup(&lc, "routes")))
		read_routes(&rd, s);
	if (!cfg->nroutes && errs->n == rd.nerrs_at_start)
		cfg_error(errs, path, 0, "no routes: add routes = ( { match = "
		          "\"sensors/#\"; topic = \"...\"; } ); to say where "
		          "messages go");
	config_destroy(&lc);
	return errs->n == rd.nerrs_at_start ? 0 : -1;
}

void config_free(struct router_config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->nroutes; i++)
		route_free(&cfg->routes[i]);
	free(cfg->routes);
	for (i = 0; i < cfg->ninstances; i++)
		instance_free(cfg->instances[i]);
	free(cfg->instances);
	loader_free(&cfg->loader);
	free(cfg->dead_letter_topic);
	free(cfg->unmatched_topic);
	free(cfg->syslog_ident);
	free(cfg->wal_dir);
	free(cfg->file);
	memset(cfg, 0, sizeof(*cfg));
}
