/*
 * abi_dep.c - libiotr_abi_dep.so, a library that the needs_dep test plugin
 * links against.  tests/abi/abi.sh loads that plugin without the library on
 * the search path, so dlopen fails and its reason must reach the user.
 */
const char *iotr_abi_dep_tag(void);

const char *iotr_abi_dep_tag(void)
{
	return "abi-dep";
}
