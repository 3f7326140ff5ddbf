/*
 * fuzz_luajson.c - libFuzzer target for the lua plugin's JSON decoder
 * (msg:json(), router.json.decode).  The input is the text.  The decoder
 * must accept what jansson's json_loadb() accepts and give the same value,
 * refuse the rest with a reason, and never crash or read out of bounds;
 * tests/unit/luajson_oracle.c does the comparing.
 */
#include "config.h"

#include <lua.h>
#include <stdio.h>
#include <stdlib.h>

#include "luajson_oracle.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	static lua_State *L;
	char why[512];

	/* One state for the run: a fresh one per input would be most of the
	 * time spent; each check leaves the stack as it found it. */
	if (!L && !(L = oracle_state()))
		abort();
	if (oracle_check(L, data, size, why, sizeof(why))) {
		fprintf(stderr, "fuzz_luajson: %s\n", why);
		abort();
	}
	return 0;
}
