/*
 * no_entry_symbol.c - a complete plugin descriptor behind the wrong symbol
 * name (the mistake of a typo, or of a C++ entry point without extern "C"):
 * the loader must say that iotr_plugin_entry is missing.
 */
#include "noop.h"

const struct iotr_plugin *iotr_plugin_init(void);

static const struct iotr_plugin misnamed = {
	IOTR_PLUGIN_HEADER,
	.name = "no_entry_symbol",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.create = noop_create,
	.process = noop_process,
	.destroy = noop_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_init(void)
{
	return &misnamed;
}
