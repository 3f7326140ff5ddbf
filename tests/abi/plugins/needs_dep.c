/*
 * needs_dep.c - a sound transform that needs libiotr_abi_dep.so at load
 * time.  Loaded where that library cannot be found, dlopen fails, and the
 * router must pass dlopen's reason (the missing library's name) on.
 */
#include <string.h>

#include "noop.h"

const char *iotr_abi_dep_tag(void); /* in libiotr_abi_dep.so */

static int needs_dep_process(void *state, iotr_msg *msg)
{
	const struct iotr_host *host = state;
	const char *tag = iotr_abi_dep_tag();

	return host->msg_add_header(msg, "x-dep", tag, strlen(tag));
}

static int needs_dep_create(iotr_instance *inst, const struct iotr_host *host,
                            void **state)
{
	(void)inst;
	*state = (void *)host;
	return IOTR_OK;
}

static const struct iotr_plugin needs_dep = {
	IOTR_PLUGIN_HEADER,
	.name = "needs_dep",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.description = "test transform linked against libiotr_abi_dep.so",
	.create = needs_dep_create,
	.process = needs_dep_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &needs_dep;
}
