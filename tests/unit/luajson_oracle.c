/*
 * luajson_oracle.c - see luajson_oracle.h.  Stands in for luavm.c's
 * vm_of(), the one thing luajson.c needs from the rest of the plugin.
 */
#include "config.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luajson_oracle.h"
#include "luarule.h"

struct rule_vm *vm_of(lua_State *L)
{
	return *(struct rule_vm **)lua_getextraspace(L);
}

lua_State *oracle_state(void)
{
	static struct rule_vm vm;       /* only its ref_array_mt is used */
	lua_State *L = luaL_newstate();

	if (!L)
		return NULL;
	*(struct rule_vm **)lua_getextraspace(L) = &vm;
	luaL_openlibs(L);
	luajson_open(L, &vm);
	lua_setglobal(L, "json");
	return L;
}

/* Decode the text (a light userdata) of len bytes (an integer): from a
 * copy of exactly that size, so that AddressSanitizer sees a read past
 * its end, which a Lua string (NUL-terminated) would hide. */
static int decode(lua_State *L)
{
	const char *text = lua_touserdata(L, 1);
	size_t len = (size_t)lua_tointeger(L, 2);

	return luajson_push_decoded(L, text, len);
}

/* Is the Lua value at idx the same as v?  path names where, for why. */
static int same(lua_State *L, int idx, json_t *v, const char *path,
                char *why, size_t why_size)
{
	const char *kind = NULL;
	char sub[256];

	idx = lua_absindex(L, idx);
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		json_t *item;
		size_t n = 0;

		if (lua_type(L, idx) != LUA_TTABLE || lua_getmetatable(L, idx)) {
			kind = "an object (a table with no metatable)";
			break;
		}
		lua_pushnil(L);
		while (lua_next(L, idx)) {
			lua_pop(L, 1);
			n++;
		}
		if (n != json_object_size(v)) {
			snprintf(why, why_size, "%s: %zu keys, jansson %zu", path,
			         n, json_object_size(v));
			return -1;
		}
		json_object_foreach(v, key, item) {
			snprintf(sub, sizeof(sub), "%s.%s", path, key);
			lua_getfield(L, idx, key);
			if (same(L, -1, item, sub, why, why_size))
				return -1;
			lua_pop(L, 1);
		}
		return 0;
	}
	case JSON_ARRAY: {
		size_t i, n = 0;
		int marked;

		if (lua_type(L, idx) != LUA_TTABLE) {
			kind = "an array";
			break;
		}
		marked = lua_getmetatable(L, idx);
		if (marked) {
			lua_rawgeti(L, LUA_REGISTRYINDEX,
			            vm_of(L)->ref_array_mt);
			marked = lua_rawequal(L, -1, -2);
			lua_pop(L, 2);
		}
		lua_pushnil(L);
		while (lua_next(L, idx)) {
			lua_pop(L, 1);
			n++;
		}
		if (!marked || n != json_array_size(v) ||
		    lua_rawlen(L, idx) != n) {
			snprintf(why, why_size, "%s: an array of %zu (marked: %d), "
			         "jansson %zu", path, n, marked,
			         json_array_size(v));
			return -1;
		}
		for (i = 0; i < n; i++) {
			snprintf(sub, sizeof(sub), "%s[%zu]", path, i + 1);
			lua_rawgeti(L, idx, (lua_Integer)i + 1);
			if (same(L, -1, json_array_get(v, i), sub, why, why_size))
				return -1;
			lua_pop(L, 1);
		}
		return 0;
	}
	case JSON_STRING: {
		size_t len;
		const char *s = lua_type(L, idx) == LUA_TSTRING ?
		                lua_tolstring(L, idx, &len) : NULL;

		if (s && len == json_string_length(v) &&
		    memcmp(s, json_string_value(v), len) == 0)
			return 0;
		kind = "a string with these bytes";
		break;
	}
	case JSON_INTEGER:
		if (lua_isinteger(L, idx) &&
		    lua_tointeger(L, idx) == json_integer_value(v))
			return 0;
		snprintf(why, why_size, "%s: not the integer %lld", path,
		         (long long)json_integer_value(v));
		return -1;
	case JSON_REAL: {
		double a = lua_tonumber(L, idx), b = json_real_value(v);

		if (lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx) &&
		    memcmp(&a, &b, sizeof(a)) == 0)
			return 0;
		snprintf(why, why_size, "%s: not the real %.17g (it is %.17g)",
		         path, b, a);
		return -1;
	}
	case JSON_TRUE:
	case JSON_FALSE:
		if (lua_type(L, idx) == LUA_TBOOLEAN &&
		    lua_toboolean(L, idx) == json_is_true(v))
			return 0;
		kind = "a boolean of the same value";
		break;
	case JSON_NULL:
		if (lua_type(L, idx) == LUA_TLIGHTUSERDATA &&
		    lua_touserdata(L, idx) == NULL)
			return 0;
		kind = "router.json.null";
		break;
	}
	snprintf(why, why_size, "%s: a %s where jansson has %s", path,
	         luaL_typename(L, idx), kind ? kind : "?");
	return -1;
}

int oracle_check(lua_State *L, const void *text, size_t len, char *why,
                 size_t why_size)
{
	json_error_t error;
	json_t *root;
	int top = lua_gettop(L), rc = 0, status;
	char *copy = malloc(len ? len : 1);

	if (!copy) {
		snprintf(why, why_size, "out of memory");
		return -1;
	}
	memcpy(copy, text, len);
	lua_pushcfunction(L, decode);
	lua_pushlightuserdata(L, copy);
	lua_pushinteger(L, (lua_Integer)len);
	status = lua_pcall(L, 2, 2, 0);
	free(copy);
	if (status != LUA_OK) {
		snprintf(why, why_size, "the decoder raised: %s",
		         lua_tostring(L, -1));
		lua_settop(L, top);
		return -1;
	}
	/* A NUL byte is never valid JSON (a control character in a string,
	 * not a token outside one), but json_loadb() skips one that ends a
	 * number or a word: "1\0" is 1 to it.  Such texts must be refused. */
	if (memchr(text, '\0', len)) {
		root = NULL;
		snprintf(error.text, sizeof(error.text), "a NUL byte");
	} else {
		root = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
		                  &error);
	}
	if (!root) {
		const char *reason = lua_tostring(L, -1);

		if (!lua_isnil(L, -2) || !reason ||
		    strncmp(reason, "not JSON: ", 10) != 0) {
			snprintf(why, why_size, "jansson refused it (%s) and the "
			         "decoder did not", error.text);
			rc = -1;
		}
	} else if (lua_isnil(L, -2)) {
		snprintf(why, why_size, "jansson took it and the decoder said: "
		         "%s", lua_tostring(L, -1));
		rc = -1;
	} else {
		rc = same(L, -2, root, "$", why, why_size);
	}
	json_decref(root);
	lua_settop(L, top);
	return rc;
}
