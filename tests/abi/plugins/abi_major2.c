/*
 * abi_major2.c - a transform built for ABI 2.0, a major version this router
 * does not speak; the loader must refuse it and name both versions.
 */
#include "noop.h"

static const struct iotr_plugin abi_major2 = {
	.abi_major = 2,
	.abi_minor = 0,
	.size = sizeof(struct iotr_plugin),
	.name = "abi_major2",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &abi_major2;
}
