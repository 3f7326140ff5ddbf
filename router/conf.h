/*
 * conf.h - read and check the libconfig file: router settings, plugin
 * instances (with their parameters validated against each plugin's schema),
 * and routes.  Runs on the main thread before anything starts.
 */
#ifndef IOTR_CONF_H
#define IOTR_CONF_H

#include <stddef.h>
#include <stdint.h>

#include "instance.h"
#include "route.h"

/* The longest name of an input, transform or output: the write-ahead log
 * keeps it with each record (the source of a message). */
#define CONF_NAME_MAX 255

/* Problems found in a config, each as "FILE:LINE: message". */
struct cfg_errors {
	char **lines;
	size_t n;
};

void cfg_error(struct cfg_errors *e, const char *file, int line,
               const char *fmt, ...) IOTR_PRINTF(4, 5);
void cfg_errors_free(struct cfg_errors *e);

/* router.inline_transforms: where a route with transforms runs them. */
enum router_inline {
	ROUTER_INLINE_OFF = 0,  /* on the workers */
	ROUTER_INLINE_ON = 1,   /* on the input's thread */
	ROUTER_INLINE_AUTO = 2  /* on the input's thread while they are cheap
	                           (router.inline_max_us), once the lane's
	                           worker has finished the route's messages */
};

struct router_config {
	char *file;
	struct loader loader;
	int log_level;              /* -1: not set in the file */
	char *syslog_ident;         /* NULL: no syslog */
	int64_t workers;
	int64_t queue_size;         /* messages per worker queue */
	int64_t shutdown_timeout_ms;
	int64_t max_message_bytes;
	int64_t stats_interval_s;   /* 0: no periodic stats */
	int64_t retry_backoff_ms;
	int default_headers;
	int direct_output;          /* routes without transforms skip workers */
	int inline_transforms;      /* enum router_inline: and routes with
	                               transforms too (1.2) */
	int64_t inline_max_us;      /* ROUTER_INLINE_AUTO's cost threshold */
	int64_t inline_drain_wait_us; /* and its wait for a lane's worker */
	int64_t worker_linger_us;   /* a worker waits this long for a batch */
	int64_t message_pool_bytes; /* freed message memory kept per thread */
	char *dead_letter_topic;    /* NULL: failed messages are logged */
	struct iotr_instance *dead_letter_output;
	char *unmatched_topic;      /* NULL: unmatched messages are counted */
	struct iotr_instance *unmatched_output;
	/* The write-ahead log; wal_dir NULL: off. */
	char *wal_dir;
	int64_t wal_segment_bytes;
	int64_t wal_max_bytes;
	int wal_fdatasync;          /* 0: write(2) only; 1: also fdatasync */
	int64_t wal_sync_interval_ms;
	int64_t wal_sync_every;
	int wal_drop_oldest;        /* when full: 0 block intake, 1 drop oldest */
	struct iotr_instance **instances; /* inputs, transforms, outputs */
	size_t ninstances;
	struct route *routes;
	size_t nroutes;
};

/*
 * Read path.  Plugin directories are searched in this order: extra_dirs
 * (from the command line), router.plugin_dirs, then the built-in directory.
 * Returns 0 when the config is usable; otherwise -1 with every problem found
 * in errs.  cfg must be freed with config_free() either way.
 */
int config_load(const char *path, char *const *extra_dirs, size_t nextra,
                struct router_config *cfg, struct cfg_errors *errs);
void config_free(struct router_config *cfg);

struct iotr_instance *config_instance(const struct router_config *cfg,
                                      const char *name);

#endif
