/*
 * entries_misnamed.c - iotr_plugin_entries() lists a descriptor under
 * another name than iotr_plugin_entry()'s; the loader must refuse the .so,
 * since the config could not tell the two apart.
 */
#include "noop.h"

static const struct iotr_plugin misnamed_transform = {
	IOTR_PLUGIN_HEADER,
	.name = "entries_misnamed",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

static const struct iotr_plugin misnamed_output = {
	IOTR_PLUGIN_HEADER,
	.name = "something_else",
	.kind = IOTR_PLUGIN_OUTPUT,
	.create = noop_create,
	.deliver = noop_deliver,
	.flush = noop_flush,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &misnamed_transform;
}

IOTR_PLUGIN_EXPORT const struct iotr_plugin *const *iotr_plugin_entries(void)
{
	static const struct iotr_plugin *const kinds[] = {
		&misnamed_transform, &misnamed_output, NULL
	};

	return kinds;
}
