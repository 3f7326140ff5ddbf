/*
 * c99_plugin.c - <iotrouter/plugin.h> is self-contained and strict C99:
 * tests/abi/abi.sh compiles this with -std=c99 -pedantic -Werror.  The
 * header comes first, so it cannot lean on anything included before it.
 */
#include <iotrouter/plugin.h>

static int c99_create(iotr_instance *inst, const struct iotr_host *host,
                      void **state)
{
	host->log(inst, IOTR_LOG_INFO, "created %s", host->instance_name(inst));
	*state = (void *)0;
	return IOTR_OK;
}

static int c99_process(void *state, iotr_msg *msg)
{
	(void)state;
	(void)msg;
	return IOTR_OK;
}

static void c99_destroy(void *state)
{
	(void)state;
}

static const struct iotr_param c99_params[] = {
	{ .key = "n", .type = IOTR_PARAM_INT, .default_value = "1",
	  .doc = "an integer", .min = 0, .max = 9 },
	{ .key = NULL }
};

static const struct iotr_plugin c99_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "c99_plugin",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = c99_params,
	.create = c99_create,
	.process = c99_process,
	.destroy = c99_destroy,
};

const struct iotr_plugin *iotr_plugin_entry(void);

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &c99_plugin;
}
