/*
 * instance.c - load plugin shared objects with dlopen and check that the
 * router can use them; free configured instances.
 */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "instance.h"

const char *plugin_kind_name(int kind)
{
	switch (kind) {
	case IOTR_PLUGIN_INPUT: return "input";
	case IOTR_PLUGIN_TRANSFORM: return "transform";
	case IOTR_PLUGIN_OUTPUT: return "output";
	default: return "unknown";
	}
}

const char *param_type_name(int type)
{
	switch (type) {
	case IOTR_PARAM_STRING: return "string";
	case IOTR_PARAM_INT: return "integer";
	case IOTR_PARAM_BOOL: return "boolean";
	case IOTR_PARAM_DOUBLE: return "number";
	case IOTR_PARAM_STRING_LIST: return "list of strings";
	case IOTR_PARAM_INT_LIST: return "list of integers";
	default: return "unknown";
	}
}

int loader_add_dir(struct loader *l, const char *dir)
{
	char **dirs = realloc(l->dirs, (l->ndirs + 1) * sizeof(*dirs));

	if (!dirs)
		return -1;
	l->dirs = dirs;
	if (!(dirs[l->ndirs] = strdup(dir)))
		return -1;
	l->ndirs++;
	return 0;
}

static int plugin_name_valid(const char *name)
{
	const char *p;

	if (!*name)
		return 0;
	for (p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
			return 0;
	return 1;
}

int loader_check(const struct iotr_plugin *d, const char *path, char *err,
                 size_t errlen)
{
	const char *name = d->name ? d->name : "?";
	const char *missing = NULL;

	if (d->abi_major != IOTR_ABI_MAJOR || d->abi_minor > IOTR_ABI_MINOR) {
		snprintf(err, errlen, "plugin '%s' (%s): built for ABI %u.%u, "
		         "this router provides %d.%d; rebuild the plugin "
		         "against this router's <iotrouter/plugin.h>", name,
		         path, d->abi_major, d->abi_minor, IOTR_ABI_MAJOR,
		         IOTR_ABI_MINOR);
		return -1;
	}
	/* A descriptor from an older minor is shorter; the fields we read
	 * below exist in every 1.x descriptor. */
	if (d->size < offsetof(struct iotr_plugin, tick)) {
		snprintf(err, errlen, "plugin '%s' (%s): descriptor is %zu "
		         "bytes, too small for ABI %u.%u; rebuild the plugin",
		         name, path, d->size, d->abi_major, d->abi_minor);
		return -1;
	}
	if (!d->name || !plugin_name_valid(d->name)) {
		snprintf(err, errlen, "plugin (%s): descriptor has no valid "
		         "name", path);
		return -1;
	}
	if (!d->create || !d->destroy)
		missing = !d->create ? "create()" : "destroy()";
	switch (d->kind) {
	case IOTR_PLUGIN_INPUT:
		if (!missing && (!d->start || !d->stop))
			missing = !d->start ? "start()" : "stop()";
		break;
	case IOTR_PLUGIN_TRANSFORM:
		if (!missing && !d->process)
			missing = "process()";
		break;
	case IOTR_PLUGIN_OUTPUT:
		if (!missing && (!d->deliver || !d->flush))
			missing = !d->deliver ? "deliver()" : "flush()";
		break;
	default:
		snprintf(err, errlen, "plugin '%s' (%s): unknown kind %d "
		         "(expected input, transform or output)", name, path,
		         d->kind);
		return -1;
	}
	if (missing) {
		snprintf(err, errlen, "plugin '%s' (%s): %s %s plugin must "
		         "define %s, and this one leaves it NULL", name, path,
		         d->kind == IOTR_PLUGIN_TRANSFORM ? "a" : "an",
		         plugin_kind_name(d->kind), missing);
		return -1;
	}
	for (const struct iotr_param *p = d->params; p && p->key; p++) {
		if (p->type < IOTR_PARAM_STRING ||
		    p->type > IOTR_PARAM_INT_LIST) {
			snprintf(err, errlen, "plugin '%s' (%s): parameter "
			         "'%s' has unknown type %d", name, path, p->key,
			         p->type);
			return -1;
		}
	}
	return 0;
}

/* The descriptors of iotr_plugin_entries(), if the plugin exports it. */
static int loader_more_kinds(struct plugin_so *so, char *err, size_t errlen)
{
	iotr_plugin_entries_fn entries;
	const struct iotr_plugin *const *all;

	*(void **)&entries = dlsym(so->handle, IOTR_PLUGIN_ENTRIES_SYMBOL);
	if (!entries || !(all = entries()))
		return 0;
	for (; *all; all++) {
		const struct iotr_plugin *d = *all;

		if (loader_check(d, so->path, err, errlen))
			return -1;
		if (strcmp(d->name, so->desc->name) != 0) {
			snprintf(err, errlen, "plugin %s: %s() lists '%s', but "
			         "the plugin is named '%s'", so->path,
			         IOTR_PLUGIN_ENTRIES_SYMBOL, d->name,
			         so->desc->name);
			return -1;
		}
		if (so->kinds[d->kind] && so->kinds[d->kind] != d) {
			snprintf(err, errlen, "plugin '%s' (%s): %s() lists "
			         "two %s plugins", d->name, so->path,
			         IOTR_PLUGIN_ENTRIES_SYMBOL,
			         plugin_kind_name(d->kind));
			return -1;
		}
		so->kinds[d->kind] = d;
	}
	return 0;
}

const struct iotr_plugin *loader_kind(const struct plugin_so *so, int kind,
                                      char *err, size_t errlen)
{
	char is[64] = "", under[64] = "";
	int k, n = 0;

	if (kind >= IOTR_PLUGIN_INPUT && kind <= IOTR_PLUGIN_OUTPUT &&
	    so->kinds[kind])
		return so->kinds[kind];
	for (k = IOTR_PLUGIN_INPUT; k <= IOTR_PLUGIN_OUTPUT; k++) {
		if (!so->kinds[k])
			continue;
		snprintf(is + strlen(is), sizeof(is) - strlen(is), "%s%s",
		         n ? " and " : "", plugin_kind_name(k));
		snprintf(under + strlen(under), sizeof(under) - strlen(under),
		         "%s%ss", n ? " or " : "", plugin_kind_name(k));
		n++;
	}
	snprintf(err, errlen, "plugin '%s' is %s %s plugin; list it under %s",
	         so->desc->name, *is == 'i' || *is == 'o' ? "an" : "a", is,
	         under);
	return NULL;
}

static struct plugin_so *loader_open(struct loader *l, const char *path,
                                     char *err, size_t errlen)
{
	struct plugin_so *so;
	iotr_plugin_entry_fn entry;
	const struct iotr_plugin *d;
	void *handle;

	for (so = l->loaded; so; so = so->next)
		if (strcmp(so->path, path) == 0)
			return so;
	dlerror();
	if (!(handle = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
		snprintf(err, errlen, "cannot load plugin %s: %s; use ldd(1) "
		         "to find a missing library", path, dlerror());
		return NULL;
	}
	*(void **)&entry = dlsym(handle, IOTR_PLUGIN_ENTRY_SYMBOL);
	if (!entry) {
		snprintf(err, errlen, "%s is not an iotrouter plugin: it does "
		         "not export %s()", path, IOTR_PLUGIN_ENTRY_SYMBOL);
		dlclose(handle);
		return NULL;
	}
	if (!(d = entry())) {
		snprintf(err, errlen, "plugin %s: %s() returned NULL", path,
		         IOTR_PLUGIN_ENTRY_SYMBOL);
		dlclose(handle);
		return NULL;
	}
	if (loader_check(d, path, err, errlen)) {
		dlclose(handle);
		return NULL;
	}
	if (!(so = calloc(1, sizeof(*so))) || !(so->path = strdup(path))) {
		free(so);
		dlclose(handle);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	so->handle = handle;
	so->desc = d;
	so->kinds[d->kind] = d;
	if (loader_more_kinds(so, err, errlen)) {
		free(so->path);
		free(so);
		dlclose(handle);
		return NULL;
	}
	so->next = l->loaded;
	l->loaded = so;
	return so;
}

struct plugin_so *loader_load(struct loader *l, const char *name, char *err,
                              size_t errlen)
{
	char path[4096];
	char searched[2048] = "";
	size_t i;

	if (strchr(name, '/'))
		return loader_open(l, name, err, errlen);
	if (!plugin_name_valid(name)) {
		snprintf(err, errlen, "plugin name '%s' is not valid: use "
		         "letters, digits, '_' and '-', or a path to a .so",
		         name);
		return NULL;
	}
	for (i = 0; i < l->ndirs; i++) {
		snprintf(path, sizeof(path), "%s/%s.so", l->dirs[i], name);
		if (access(path, F_OK) == 0)
			return loader_open(l, path, err, errlen);
		if (i)
			strncat(searched, ", ",
			        sizeof(searched) - strlen(searched) - 1);
		strncat(searched, l->dirs[i],
		        sizeof(searched) - strlen(searched) - 1);
	}
	snprintf(err, errlen, "unknown plugin '%s': no %s.so in %s; install "
	         "it, or add its directory to router.plugin_dirs or "
	         "--plugin-dir", name, name, l->ndirs ? searched :
	         "(no plugin directories)");
	return NULL;
}

void loader_free(struct loader *l)
{
	struct plugin_so *so = l->loaded;
	size_t i;

	while (so) {
		struct plugin_so *next = so->next;

		/* The handle is not dlclose()d: the libraries a plugin brings
		 * (librdkafka, libmosquitto, OpenSSL) keep process-wide state
		 * and threads, unloading them at exit gains nothing, and a
		 * leak checker would take their globals for leaks. */
		free(so->path);
		free(so);
		so = next;
	}
	for (i = 0; i < l->ndirs; i++)
		free(l->dirs[i]);
	free(l->dirs);
	memset(l, 0, sizeof(*l));
}

int param_value_default(struct param_value *v, const struct iotr_param *p)
{
	const char *def = p->default_value;

	if (!def)
		return 0;
	switch (p->type) {
	case IOTR_PARAM_STRING:
		return (v->str = strdup(def)) ? 0 : -1;
	case IOTR_PARAM_INT:
		v->i = strtoll(def, NULL, 0);
		return 0;
	case IOTR_PARAM_BOOL:
		v->i = strcmp(def, "true") == 0 || strcmp(def, "1") == 0;
		return 0;
	case IOTR_PARAM_DOUBLE:
		v->d = strtod(def, NULL);
		return 0;
	case IOTR_PARAM_STRING_LIST:
		if (!(v->strs = calloc(1, sizeof(char *))) ||
		    !(v->strs[0] = strdup(def)))
			return -1;
		v->count = 1;
		return 0;
	case IOTR_PARAM_INT_LIST:
		if (!(v->ints = calloc(1, sizeof(int64_t))))
			return -1;
		v->ints[0] = strtoll(def, NULL, 0);
		v->count = 1;
		return 0;
	}
	return 0;
}

int instance_param_index(const struct iotr_instance *inst, const char *key)
{
	size_t i;

	for (i = 0; i < inst->nparams; i++)
		if (strcmp(inst->plugin->params[i].key, key) == 0)
			return (int)i;
	return -1;
}

void instance_free(struct iotr_instance *inst)
{
	size_t i, j;

	if (!inst)
		return;
	for (i = 0; i < inst->nparams; i++) {
		struct param_value *v = &inst->params[i];

		free(v->str);
		for (j = 0; v->strs && j < v->count; j++)
			free(v->strs[j]);
		free(v->strs);
		free(v->ints);
	}
	free(inst->params);
	free(inst->name);
	free(inst);
}
