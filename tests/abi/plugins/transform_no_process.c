/*
 * transform_no_process.c - a transform that leaves process() NULL; the
 * loader must refuse it and name process().
 */
#include "noop.h"

static const struct iotr_plugin transform_no_process = {
	IOTR_PLUGIN_HEADER,
	.name = "transform_no_process",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &transform_no_process;
}
