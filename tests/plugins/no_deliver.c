/*
 * no_deliver.c - an output plugin that leaves deliver() NULL; the loader
 * must refuse it and name the missing callback.
 */
#include <iotrouter/plugin.h>

static int noop_create(iotr_instance *inst, const struct iotr_host *host,
                       void **state)
{
	(void)inst;
	(void)host;
	*state = NULL;
	return IOTR_OK;
}

static void noop_destroy(void *state)
{
	(void)state;
}

static const struct iotr_plugin no_deliver = {
	IOTR_PLUGIN_HEADER,
	.name = "no_deliver",
	.kind = IOTR_PLUGIN_OUTPUT,
	.create = noop_create,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &no_deliver;
}
