/*
 * abi_minor99.c - a transform that claims ABI 1.99: same major, but a newer
 * minor than this router provides, so it may use host functions the router
 * does not have; the loader must refuse it and name both versions.
 */
#include "noop.h"

static const struct iotr_plugin abi_minor99 = {
	.abi_major = IOTR_ABI_MAJOR,
	.abi_minor = 99,
	.size = sizeof(struct iotr_plugin),
	.name = "abi_minor99",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &abi_minor99;
}
