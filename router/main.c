/*
 * main.c - the iotrouter daemon: command line, start-up, signal handling and
 * an orderly shutdown that drains the pipeline within a deadline.
 *
 * Signals are blocked in every thread and taken synchronously by the main
 * thread with sigtimedwait(), so no handler runs inside library code.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "pipeline.h"

#ifndef PLUGINDIR
#define PLUGINDIR "/usr/lib/iotrouter"
#endif

struct options {
	const char *config;
	int check;
	int verbosity;          /* -1 quiet, 0 default, 1 info, 2+ debug */
	char **plugin_dirs;
	size_t nplugin_dirs;
	int list_plugins;
	const char *help_plugin;
};

static void usage(FILE *out)
{
	fprintf(out,
"Usage: iotrouter -c FILE [-v] [--plugin-dir DIR]...\n"
"       iotrouter --check -c FILE\n"
"       iotrouter --list-plugins | --help-plugin NAME\n"
"       iotrouter test-script RULE.lua [--config FILE] < messages.jsonl\n"
"\n"
"Route MQTT messages to Kafka (and back) through transform plugins.\n"
"\n"
"  -c, --config FILE      the configuration file (see iotrouter.conf(5))\n"
"  -t, --check            check the configuration, print every problem as\n"
"                         FILE:LINE: message, and exit (0 when valid)\n"
"  -v, --verbose          log more: once for info, twice for debug\n"
"  -q, --quiet            log only warnings and errors\n"
"  -P, --plugin-dir DIR   look for plugins in DIR first (repeatable);\n"
"                         then router.plugin_dirs, then %s\n"
"      --list-plugins     list the plugins found and exit\n"
"      --help-plugin NAME print a plugin's parameters and exit\n"
"  -V, --version          print the version and exit\n"
"  -h, --help             print this help and exit\n"
"\n"
"Signals: SIGTERM and SIGINT stop intake, drain the pipeline and flush the\n"
"outputs within router.shutdown_timeout_ms; SIGHUP asks plugins to reload\n"
"their scripts; SIGUSR1 logs the counters.\n"
"\n"
"Exit status: 0 on a clean stop or a valid --check, 1 on a runtime error,\n"
"2 on a usage error, 3 on an invalid configuration.\n"
"\n"
"Documentation: iotrouter(8), iotrouter.conf(5).\n", PLUGINDIR);
}

static int parse_args(int argc, char **argv, struct options *o)
{
	enum { OPT_LIST = 256, OPT_HELP_PLUGIN };
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 't' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "plugin-dir", required_argument, NULL, 'P' },
		{ "list-plugins", no_argument, NULL, OPT_LIST },
		{ "help-plugin", required_argument, NULL, OPT_HELP_PLUGIN },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	int c;

	while ((c = getopt_long(argc, argv, "c:tvqP:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o->config = optarg;
			break;
		case 't':
			o->check = 1;
			break;
		case 'v':
			o->verbosity++;
			break;
		case 'q':
			o->verbosity = -1;
			break;
		case 'P': {
			char **d = realloc(o->plugin_dirs, (o->nplugin_dirs + 1) *
			                   sizeof(*d));

			if (!d)
				return 1;
			o->plugin_dirs = d;
			d[o->nplugin_dirs++] = optarg;
			break;
		}
		case OPT_LIST:
			o->list_plugins = 1;
			break;
		case OPT_HELP_PLUGIN:
			o->help_plugin = optarg;
			break;
		case 'V':
			printf("iotrouter %s (plugin ABI %d.%d)\n",
			       PACKAGE_VERSION, IOTR_ABI_MAJOR, IOTR_ABI_MINOR);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			fprintf(stderr, "Try 'iotrouter --help'.\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "iotrouter: unexpected argument '%s'; try "
		        "'iotrouter --help'\n", argv[optind]);
		return 2;
	}
	if (!o->config && !o->list_plugins && !o->help_plugin) {
		fprintf(stderr, "iotrouter: no configuration; run iotrouter -c "
		        "FILE (see 'iotrouter --help')\n");
		return 2;
	}
	return 0;
}

/* --- plugin listings ----------------------------------------------------- */

static void loader_from_options(struct loader *l, const struct options *o)
{
	size_t i;

	for (i = 0; i < o->nplugin_dirs; i++)
		loader_add_dir(l, o->plugin_dirs[i]);
	loader_add_dir(l, PLUGINDIR);
}

static int list_plugins(const struct options *o)
{
	struct loader l = { 0 };
	char err[2048], path[4096];
	size_t i;
	int k, found = 0;

	loader_from_options(&l, o);
	for (i = 0; i < l.ndirs; i++) {
		DIR *dir = opendir(l.dirs[i]);
		struct dirent *de;

		if (!dir)
			continue;
		while ((de = readdir(dir))) {
			size_t n = strlen(de->d_name);
			struct plugin_so *so;

			if (n < 4 || strcmp(de->d_name + n - 3, ".so") != 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", l.dirs[i],
			         de->d_name);
			if (!(so = loader_load(&l, path, err, sizeof(err)))) {
				printf("%-14s %-10s %s\n", de->d_name, "refused",
				       err);
				continue;
			}
			for (k = IOTR_PLUGIN_INPUT; k <= IOTR_PLUGIN_OUTPUT;
			     k++) {
				const struct iotr_plugin *d = so->kinds[k];

				if (!d)
					continue;
				printf("%-14s %-10s %-8s %s\n", d->name,
				       plugin_kind_name(d->kind),
				       d->version ? d->version : "-",
				       d->description ? d->description : "");
			}
			found++;
		}
		closedir(dir);
	}
	loader_free(&l);
	if (!found)
		fprintf(stderr, "iotrouter: no plugins found; use "
		        "--plugin-dir DIR\n");
	return found ? 0 : 1;
}

/* One kind of a plugin: what it is and its parameters. */
static void help_plugin_kind(const struct plugin_so *so,
                             const struct iotr_plugin *d)
{
	const struct iotr_param *p;

	printf("%s (%s plugin, version %s): %s\n", d->name,
	       plugin_kind_name(d->kind), d->version ? d->version : "-",
	       d->description ? d->description : "");
	printf("file: %s\n\nparameters:\n", so->path);
	for (p = d->params; p && p->key; p++) {
		printf("  %-22s %s, ", p->key, param_type_name(p->type));
		if (p->required)
			printf("required");
		else if (p->default_value)
			printf("default %s", p->default_value);
		else
			printf("optional");
		if (p->min < p->max)
			printf(", %lld..%lld", (long long)p->min,
			       (long long)p->max);
		printf("\n      %s\n", p->doc ? p->doc : "");
	}
}

static int help_plugin(const struct options *o)
{
	struct loader l = { 0 };
	struct plugin_so *so;
	char err[2048];
	int k, shown = 0;

	loader_from_options(&l, o);
	if (!(so = loader_load(&l, o->help_plugin, err, sizeof(err)))) {
		fprintf(stderr, "iotrouter: %s\n", err);
		loader_free(&l);
		return 1;
	}
	for (k = IOTR_PLUGIN_INPUT; k <= IOTR_PLUGIN_OUTPUT; k++) {
		if (!so->kinds[k])
			continue;
		if (shown++)
			printf("\n");
		help_plugin_kind(so, so->kinds[k]);
	}
	loader_free(&l);
	return 0;
}

/* --- running -------------------------------------------------------------- */

static int create_instances(struct router_config *cfg)
{
	const struct iotr_host *host = host_table();
	size_t i;

	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];
		int rc = inst->plugin->create(inst, host, &inst->state);

		if (rc) {
			log_error("%s:%d: %s '%s' (plugin %s) could not be "
			          "created (status %d); see the messages above",
			          inst->file, inst->line,
			          plugin_kind_name(inst->kind), inst->name,
			          inst->plugin->name, rc);
			return -1;
		}
		inst->created = 1;
	}
	return 0;
}

static int start_kind(struct router_config *cfg, int kind)
{
	size_t i;

	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];

		if (inst->kind != kind)
			continue;
		if (inst->plugin->start && inst->plugin->start(inst->state)) {
			log_error("%s '%s' (plugin %s) could not start; see the "
			          "messages above", plugin_kind_name(kind),
			          inst->name, inst->plugin->name);
			return -1;
		}
		inst->started = 1;
	}
	return 0;
}

static void destroy_kind(struct router_config *cfg, int kind)
{
	size_t i;

	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];

		if (inst->kind == kind && inst->created) {
			inst->plugin->destroy(inst->state);
			inst->created = 0;
		}
	}
}

/* SIGHUP: let every plugin that loads files (scripts, tables) reload them. */
static void reload_instances(struct router_config *cfg)
{
	size_t i, n = 0;

	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];
		const struct iotr_plugin *d = inst->plugin;

		if (d->size <= offsetof(struct iotr_plugin, reload) ||
		    !d->reload || !inst->started)
			continue;
		n++;
		if (d->reload(inst->state))
			log_error("%s '%s': reload failed; it keeps running with "
			          "what it had (see the messages above)",
			          plugin_kind_name(inst->kind), inst->name);
	}
	log_notice("SIGHUP: asked %zu plugin instance%s to reload", n,
	           n == 1 ? "" : "s");
}

static void shutdown_router(struct router_config *cfg, struct pipeline *p)
{
	int64_t deadline = monotonic_ms() + cfg->shutdown_timeout_ms;
	uint64_t left;
	size_t i;

	log_notice("stopping: closing inputs, draining (deadline %lld ms)",
	           (long long)cfg->shutdown_timeout_ms);
	pipeline_begin_stop(p, deadline);
	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];

		if (inst->kind == IOTR_PLUGIN_INPUT && inst->started)
			inst->plugin->stop(inst->state);
	}
	/* Drain what the inputs handed over, then let transforms flush what
	 * they hold (open windows) and drain that too. */
	pipeline_drain(p, deadline);
	for (i = 0; i < cfg->ninstances; i++)
		if (cfg->instances[i]->kind == IOTR_PLUGIN_TRANSFORM)
			pipeline_stop_transform(p, cfg->instances[i]);
	left = pipeline_drain(p, deadline);
	if (left && cfg->wal_dir) {
		log_warning("shutdown deadline of %lld ms passed with %llu "
		            "messages not yet delivered; those in the "
		            "write-ahead log stay there and are sent after the "
		            "next start (router.deferred), any it could not log "
		            "are counted as router.lost (raise "
		            "router.shutdown_timeout_ms to wait longer)",
		            (long long)cfg->shutdown_timeout_ms,
		            (unsigned long long)left);
	} else if (left) {
		log_error("shutdown deadline of %lld ms passed with %llu "
		          "messages not yet delivered; they are counted as "
		          "router.lost (raise router.shutdown_timeout_ms)",
		          (long long)cfg->shutdown_timeout_ms,
		          (unsigned long long)left);
	}
	pipeline_deadline_passed(p);
	pipeline_stop_workers(p);
	for (i = 0; i < cfg->ninstances; i++) {
		struct iotr_instance *inst = cfg->instances[i];

		if (inst->kind == IOTR_PLUGIN_OUTPUT && inst->created)
			inst->plugin->flush(inst->state, left ? monotonic_ms() :
			                    deadline);
	}
	pipeline_drain(p, monotonic_ms() + 1000);
}

static int run(struct router_config *cfg)
{
	struct pipeline *p;
	sigset_t set;
	int64_t next_stats;
	int rc = 1, sig;

	msg_pools_set_keep((size_t)cfg->message_pool_bytes);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (!(p = pipeline_new(cfg))) {
		log_error("out of memory setting up the pipeline");
		return 1;
	}
	if (create_instances(cfg) ||
	    start_kind(cfg, IOTR_PLUGIN_OUTPUT) ||
	    start_kind(cfg, IOTR_PLUGIN_TRANSFORM) ||
	    pipeline_start(p) ||
	    start_kind(cfg, IOTR_PLUGIN_INPUT)) {
		shutdown_router(cfg, p);
		goto out;
	}
	log_notice("iotrouter %s running with %s: %zu routes, %lld workers",
	           PACKAGE_VERSION, cfg->file, cfg->nroutes,
	           (long long)cfg->workers);
	next_stats = cfg->stats_interval_s ?
		monotonic_ms() + cfg->stats_interval_s * 1000 : INT64_MAX;
	for (;;) {
		struct timespec ts = { 1, 0 };

		sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM) {
			log_notice("received %s", strsignal(sig));
			break;
		}
		if (sig == SIGUSR1)
			metrics_log(IOTR_LOG_NOTICE, "counters");
		if (sig == SIGHUP)
			reload_instances(cfg);
		if (monotonic_ms() >= next_stats) {
			metrics_log(IOTR_LOG_INFO, "counters");
			next_stats += cfg->stats_interval_s * 1000;
		}
	}
	shutdown_router(cfg, p);
	rc = 0;
out:
	metrics_log(IOTR_LOG_NOTICE, "final counters");
	if (metrics_get("router.lost"))
		log_error("%llu messages were lost; see the errors above",
		          (unsigned long long)metrics_get("router.lost"));
	if (metrics_get("router.deferred") || metrics_get("router.wal_spilled"))
		log_notice("undelivered messages wait in the write-ahead log "
		           "and are sent after the next start");
	destroy_kind(cfg, IOTR_PLUGIN_INPUT);
	destroy_kind(cfg, IOTR_PLUGIN_TRANSFORM);
	destroy_kind(cfg, IOTR_PLUGIN_OUTPUT);
	pipeline_free(p);
	return rc;
}

int testscript_main(int argc, char **argv);   /* testscript.c */

int main(int argc, char **argv)
{
	struct options o = { 0 };
	struct router_config cfg;
	struct cfg_errors errs = { 0 };
	size_t i;
	int rc;

	if (argc > 1 && strcmp(argv[1], "test-script") == 0)
		return testscript_main(argc - 1, argv + 1);

	if ((rc = parse_args(argc, argv, &o)))
		return rc;
	if (o.list_plugins || o.help_plugin) {
		rc = o.list_plugins ? list_plugins(&o) : help_plugin(&o);
		free(o.plugin_dirs);
		return rc;
	}
	rc = config_load(o.config, o.plugin_dirs, o.nplugin_dirs, &cfg, &errs);
	for (i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.lines[i]);
	if (rc) {
		fprintf(stderr, "iotrouter: %s: %zu problem%s found\n", o.config,
		        errs.n, errs.n == 1 ? "" : "s");
		rc = 3;
	} else if (o.check) {
		size_t n[4] = { 0 };

		for (i = 0; i < cfg.ninstances; i++)
			n[cfg.instances[i]->kind]++;
		printf("%s: configuration is valid: %zu inputs, %zu "
		       "transforms, %zu outputs, %zu routes\n", o.config,
		       n[IOTR_PLUGIN_INPUT], n[IOTR_PLUGIN_TRANSFORM],
		       n[IOTR_PLUGIN_OUTPUT], cfg.nroutes);
	} else {
		int level = cfg.log_level >= 0 ? cfg.log_level : IOTR_LOG_NOTICE;

		if (o.verbosity < 0)
			level = IOTR_LOG_WARNING;
		else if (o.verbosity > 0)
			level = o.verbosity == 1 ? IOTR_LOG_INFO : IOTR_LOG_DEBUG;
		log_set_level(level);
		if (cfg.syslog_ident)
			log_set_syslog(cfg.syslog_ident);
		rc = run(&cfg);
		log_set_syslog(NULL);
	}
	cfg_errors_free(&errs);
	config_free(&cfg);
	metrics_free();
	msg_pools_free();   /* last: every thread is gone */
	free(o.plugin_dirs);
	return rc;
}
