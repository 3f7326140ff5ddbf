/*
 * instance.h - plugins loaded from disk, and configured instances of them.
 *
 * The loader and the parameter values are built on the main thread while the
 * config is read, and are read-only once the router runs.
 */
#ifndef IOTR_INSTANCE_H
#define IOTR_INSTANCE_H

#include <stddef.h>
#include <stdint.h>

#include "iotrouter/plugin.h"

struct pipeline;

/* One loaded .so. */
struct plugin_so {
	char *path;
	void *handle;
	const struct iotr_plugin *desc;     /* from iotr_plugin_entry() */
	/* by enum iotr_plugin_kind: desc, and those of iotr_plugin_entries() */
	const struct iotr_plugin *kinds[IOTR_PLUGIN_OUTPUT + 1];
	struct plugin_so *next;
};

struct loader {
	char **dirs;
	size_t ndirs;
	struct plugin_so *loaded;
};

/* The value of one parameter of an instance, parallel to the schema. */
struct param_value {
	int set;            /* written in the config */
	int line;           /* where, for messages */
	char *str;          /* STRING */
	int64_t i;          /* INT, BOOL */
	double d;           /* DOUBLE */
	char **strs;        /* STRING_LIST */
	int64_t *ints;      /* INT_LIST */
	size_t count;       /* list length */
};

struct iotr_instance {
	char *name;
	const char *file;
	int line;
	int kind;                        /* enum iotr_plugin_kind */
	const struct iotr_plugin *plugin;
	const char *path;                /* the .so, for messages */
	struct param_value *params;
	size_t nparams;
	int64_t tick_ms;                 /* transforms: 0 = no ticks */
	void *state;
	int created;
	int started;
	struct pipeline *pipeline;
};

int loader_add_dir(struct loader *l, const char *dir);
/*
 * Find and load the plugin `name` (a bare name looked up as NAME.so in the
 * plugin directories, or a path containing '/'), check its ABI version and
 * callbacks.  Returns NULL with a message for a person in err.
 */
struct plugin_so *loader_load(struct loader *l, const char *name, char *err,
                              size_t errlen);
/*
 * The plugin of `so` of this kind, or NULL with a message in err that says
 * what the plugin is and where it belongs in the config.
 */
const struct iotr_plugin *loader_kind(const struct plugin_so *so, int kind,
                                      char *err, size_t errlen);
/* Check a descriptor; 0 if usable, else -1 with a message in err. */
int loader_check(const struct iotr_plugin *d, const char *path, char *err,
                 size_t errlen);
void loader_free(struct loader *l);

const char *plugin_kind_name(int kind);
const char *param_type_name(int type);

/* Fill v with the schema's default for p (nothing when it has none);
 * -1 when out of memory. */
int param_value_default(struct param_value *v, const struct iotr_param *p);

/* Index of key in the instance's schema, or -1. */
int instance_param_index(const struct iotr_instance *inst, const char *key);
void instance_free(struct iotr_instance *inst);

#endif
