/*
 * no_entry.c - a shared object that is not an iotrouter plugin: it has no
 * iotr_plugin_entry symbol, and the loader must say so.
 */
int not_a_plugin(void);

int not_a_plugin(void)
{
	return 42;
}
