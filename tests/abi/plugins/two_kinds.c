/*
 * two_kinds.c - a plugin of two kinds under one name (a transform and an
 * output), listed by iotr_plugin_entries(); the loader must offer both.
 */
#include "noop.h"

static const struct iotr_plugin two_kinds_transform = {
	IOTR_PLUGIN_HEADER,
	.name = "two_kinds",
	.version = "1.0.0",
	.description = "test plugin: the transform kind",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

static const struct iotr_plugin two_kinds_output = {
	IOTR_PLUGIN_HEADER,
	.name = "two_kinds",
	.version = "1.0.0",
	.description = "test plugin: the output kind",
	.kind = IOTR_PLUGIN_OUTPUT,
	.create = noop_create,
	.deliver = noop_deliver,
	.flush = noop_flush,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &two_kinds_transform;
}

IOTR_PLUGIN_EXPORT const struct iotr_plugin *const *iotr_plugin_entries(void)
{
	static const struct iotr_plugin *const kinds[] = {
		&two_kinds_transform, &two_kinds_output, NULL
	};

	return kinds;
}
