/*
 * short_descriptor.c - a descriptor whose size field is smaller than any
 * 1.x descriptor (as when a plugin fills the fields by hand and gets it
 * wrong); the loader must not read past it.
 */
#include "noop.h"

static const struct iotr_plugin short_descriptor = {
	.abi_major = IOTR_ABI_MAJOR,
	.abi_minor = IOTR_ABI_MINOR,
	.size = 16,
	.name = "short_descriptor",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &short_descriptor;
}
