/*
 * luajson_oracle.h - holds the lua plugin's JSON decoder to jansson's
 * json_loadb(): the same texts accepted, and the same values.  Shared by
 * tests/unit/test_luajson.c and the fuzz target tests/fuzz/fuzz_luajson.c.
 * A state is used by one thread at a time.
 */
#ifndef IOTR_LUAJSON_ORACLE_H
#define IOTR_LUAJSON_ORACLE_H

#include <lua.h>
#include <stddef.h>

/* A Lua state with what luajson.c needs (the `json` global is
 * router.json), or NULL without memory.  Close it with lua_close(). */
lua_State *oracle_state(void);

/*
 * oracle_check - decode text with the plugin's decoder (msg:json(),
 * router.json.decode) and with json_loadb(JSON_DECODE_ANY |
 * JSON_ALLOW_NUL), and compare.
 *
 * Returns 0 when both refused it (the decoder with a reason that starts
 * "not JSON: ") or both gave the same value: the same types, integers as
 * integers, reals bit for bit, strings byte for byte, arrays marked as
 * arrays and objects not.  Otherwise -1, with what differed in why.
 */
int oracle_check(lua_State *L, const void *text, size_t len, char *why,
                 size_t why_size);

#endif
