/*
 * null_entry.c - an entry point that returns NULL instead of a descriptor;
 * the loader must refuse the file rather than crash on it.
 */
#include <iotrouter/plugin.h>

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return NULL;
}
