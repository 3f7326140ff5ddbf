/*
 * input_no_stop.c - an input that leaves stop() NULL, so the router could
 * never close it on shutdown; the loader must refuse it and name stop().
 */
#include "noop.h"

static const struct iotr_plugin input_no_stop = {
	IOTR_PLUGIN_HEADER,
	.name = "input_no_stop",
	.kind = IOTR_PLUGIN_INPUT,
	.create = noop_create,
	.start = noop_start,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &input_no_stop;
}
