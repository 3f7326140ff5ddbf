/*
 * bad_abi.c - a plugin built for a future major ABI; the loader must refuse
 * it and name both versions.
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

static int noop_process(void *state, iotr_msg *msg)
{
	(void)state;
	(void)msg;
	return IOTR_OK;
}

static void noop_destroy(void *state)
{
	(void)state;
}

static const struct iotr_plugin bad_abi = {
	.abi_major = IOTR_ABI_MAJOR + 1,
	.abi_minor = 0,
	.size = sizeof(struct iotr_plugin),
	.name = "bad_abi",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &bad_abi;
}
