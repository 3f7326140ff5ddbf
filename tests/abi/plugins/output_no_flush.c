/*
 * output_no_flush.c - an output that delivers but leaves flush() NULL, so
 * the router could not wait for it on shutdown; the loader must refuse it
 * and name flush().
 */
#include "noop.h"

static int no_flush_deliver(void *state, iotr_msg *msg)
{
	(void)state;
	(void)msg;
	return IOTR_FAIL;
}

static const struct iotr_plugin output_no_flush = {
	IOTR_PLUGIN_HEADER,
	.name = "output_no_flush",
	.kind = IOTR_PLUGIN_OUTPUT,
	.create = noop_create,
	.deliver = no_flush_deliver,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &output_no_flush;
}
