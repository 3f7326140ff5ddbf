/*
 * luajson.c - JSON for rules: router.json.encode/decode and msg:json(),
 * with jansson doing the parsing and printing.
 *
 * Mapping: objects <-> tables with string keys; arrays <-> sequences (decoded
 * arrays carry a marker metatable so that an empty one stays an array);
 * null <-> router.json.null; integers stay integers.  Encoding sorts object
 * keys (Lua's table order changes from run to run) and prints reals with 15
 * significant digits, so 0.1 stays 0.1.  Runs on the thread that owns the
 * Lua state; no state of its own.
 */
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luarule.h"

/* Deeper than this is refused: a table that contains itself would never
 * end, and the C stack is finite. */
#define LUAJSON_MAX_DEPTH 128

#define LUAJSON_DUMP_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | \
                            JSON_REAL_PRECISION(15))

/* --- decoding --------------------------------------------------------------- */

/* Push the Lua value of v.  May raise a Lua error (memory); the caller keeps
 * the root in vm->tmp_json so that it is freed then. */
static void luajson_push(lua_State *L, struct rule_vm *vm, json_t *v)
{
	luaL_checkstack(L, 4, "JSON nested too deeply");
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		json_t *item;

		lua_createtable(L, 0, (int)json_object_size(v));
		json_object_foreach(v, key, item) {
			luajson_push(L, vm, item);
			lua_setfield(L, -2, key);
		}
		break;
	}
	case JSON_ARRAY: {
		size_t i, n = json_array_size(v);

		lua_createtable(L, (int)n, 0);
		for (i = 0; i < n; i++) {
			luajson_push(L, vm, json_array_get(v, i));
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
		lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_array_mt);
		lua_setmetatable(L, -2);
		break;
	}
	case JSON_STRING:
		lua_pushlstring(L, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		lua_pushinteger(L, (lua_Integer)json_integer_value(v));
		break;
	case JSON_REAL:
		lua_pushnumber(L, json_real_value(v));
		break;
	case JSON_TRUE:
		lua_pushboolean(L, 1);
		break;
	case JSON_FALSE:
		lua_pushboolean(L, 0);
		break;
	default:
		lua_pushlightuserdata(L, NULL);   /* router.json.null */
		break;
	}
}

int luajson_push_decoded(lua_State *L, const char *text, size_t len)
{
	struct rule_vm *vm = vm_of(L);
	json_error_t error;
	json_t *root;

	root = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
	if (!root) {
		lua_pushnil(L);
		if (len == 0)
			lua_pushliteral(L, "not JSON: it is empty");
		else
			lua_pushfstring(L, "not JSON: %s (line %d, column %d)",
			                error.text, error.line, error.column);
		return 2;
	}
	vm->tmp_json = root;
	luajson_push(L, vm, root);
	vm->tmp_json = NULL;
	json_decref(root);
	return 1;
}

/* --- encoding --------------------------------------------------------------- */

static json_t *luajson_value(lua_State *L, struct rule_vm *vm, int idx,
                             int depth, char *err, size_t errlen);

/* Non-zero if the table at idx is a sequence 1..n with n > 0, or marked
 * as an array. */
static int luajson_is_array(lua_State *L, struct rule_vm *vm, int idx)
{
	lua_Unsigned n = lua_rawlen(L, idx), keys = 0;

	if (lua_getmetatable(L, idx)) {
		int marked;

		lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_array_mt);
		marked = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (marked)
			return 1;
	}
	if (n == 0)
		return 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
		    (lua_Unsigned)lua_tointeger(L, -1) > n) {
			lua_pop(L, 1);
			return 0;
		}
		keys++;
	}
	return keys == n;
}

static json_t *luajson_table(lua_State *L, struct rule_vm *vm, int idx,
                             int depth, char *err, size_t errlen)
{
	json_t *out, *item;

	if (luajson_is_array(L, vm, idx)) {
		lua_Unsigned i, n = lua_rawlen(L, idx);

		if (!(out = json_array()))
			goto nomem;
		for (i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, (lua_Integer)i);
			item = luajson_value(L, vm, lua_gettop(L), depth + 1,
			                     err, errlen);
			lua_pop(L, 1);
			if (!item || json_array_append_new(out, item)) {
				json_decref(out);
				return NULL;
			}
		}
		return out;
	}
	if (!(out = json_object()))
		goto nomem;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		char num[64];
		const char *name;

		if (lua_type(L, -2) == LUA_TSTRING) {
			name = lua_tostring(L, -2);
		} else if (lua_isinteger(L, -2)) {
			snprintf(num, sizeof(num), "%lld",
			         (long long)lua_tointeger(L, -2));
			name = num;
		} else if (lua_type(L, -2) == LUA_TNUMBER) {
			snprintf(num, sizeof(num), "%.14g",
			         (double)lua_tonumber(L, -2));
			name = num;
		} else {
			snprintf(err, errlen, "a table key of type %s cannot "
			         "be a JSON object member name",
			         lua_typename(L, lua_type(L, -2)));
			lua_pop(L, 2);
			json_decref(out);
			return NULL;
		}
		item = luajson_value(L, vm, lua_gettop(L), depth + 1, err,
		                     errlen);
		lua_pop(L, 1);
		if (!item || json_object_set_new(out, name, item)) {
			if (item)
				snprintf(err, errlen, "member name \"%s\" is not "
				         "UTF-8", name);
			lua_pop(L, 1);
			json_decref(out);
			return NULL;
		}
	}
	return out;
nomem:
	snprintf(err, errlen, "out of memory");
	return NULL;
}

static json_t *luajson_value(lua_State *L, struct rule_vm *vm, int idx,
                             int depth, char *err, size_t errlen)
{
	json_t *v = NULL;

	if (depth > LUAJSON_MAX_DEPTH || !lua_checkstack(L, 4)) {
		snprintf(err, errlen, "nested deeper than %d levels (does a "
		         "table contain itself?)", LUAJSON_MAX_DEPTH);
		return NULL;
	}
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		v = json_null();
		break;
	case LUA_TBOOLEAN:
		v = json_boolean(lua_toboolean(L, idx));
		break;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx)) {
			v = json_integer((json_int_t)lua_tointeger(L, idx));
		} else {
			double d = (double)lua_tonumber(L, idx);

			if (!isfinite(d)) {
				snprintf(err, errlen, "%g is not a JSON number",
				         d);
				return NULL;
			}
			v = json_real(d);
		}
		break;
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);

		if (!(v = json_stringn(s, len))) {
			snprintf(err, errlen, "a string is not valid UTF-8 "
			         "(JSON text must be)");
			return NULL;
		}
		break;
	}
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL) {
			v = json_null();
			break;
		}
		/* fall through */
	default:
		if (lua_type(L, idx) == LUA_TTABLE)
			return luajson_table(L, vm, idx, depth, err, errlen);
		snprintf(err, errlen, "a %s cannot be written as JSON",
		         lua_typename(L, lua_type(L, idx)));
		return NULL;
	}
	if (!v)
		snprintf(err, errlen, "out of memory");
	return v;
}

char *luajson_encode(lua_State *L, int idx, size_t *len, char *err,
                     size_t errlen)
{
	json_t *root;
	char *text;
	size_t n;

	idx = lua_absindex(L, idx);
	if (!(root = luajson_value(L, vm_of(L), idx, 0, err, errlen)))
		return NULL;
	n = json_dumpb(root, NULL, 0, LUAJSON_DUMP_FLAGS);
	if (n == 0 || !(text = malloc(n + 1))) {
		snprintf(err, errlen, "out of memory");
		json_decref(root);
		return NULL;
	}
	json_dumpb(root, text, n, LUAJSON_DUMP_FLAGS);
	text[n] = '\0';
	json_decref(root);
	*len = n;
	return text;
}

/* --- router.json ------------------------------------------------------------ */

/* router.json.encode(value) -> string; raises an error for what JSON cannot
 * hold. */
static int luajson_l_encode(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	luaL_Buffer b;
	char err[256];
	json_t *root;
	size_t n;
	char *p;

	luaL_checkany(L, 1);
	lua_settop(L, 1);
	if (!(root = luajson_value(L, vm, 1, 0, err, sizeof(err))))
		return luaL_error(L, "router.json.encode: %s", err);
	/* The buffer may raise a memory error: the vm frees tmp_json then. */
	vm->tmp_json = root;
	n = json_dumpb(root, NULL, 0, LUAJSON_DUMP_FLAGS);
	p = luaL_buffinitsize(L, &b, n);
	json_dumpb(root, p, n, LUAJSON_DUMP_FLAGS);
	vm->tmp_json = NULL;
	json_decref(root);
	luaL_pushresultsize(&b, n);
	return 1;
}

/* router.json.decode(text) -> value, or nil and a reason. */
static int luajson_l_decode(lua_State *L)
{
	size_t len;
	const char *text = luaL_checklstring(L, 1, &len);

	return luajson_push_decoded(L, text, len);
}

/* router.json.array(t) -> t, marked to be written as a JSON array even
 * when empty. */
static int luajson_l_array(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);

	if (lua_isnoneornil(L, 1)) {
		lua_settop(L, 0);
		lua_newtable(L);
	}
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_array_mt);
	lua_setmetatable(L, 1);
	return 1;
}

void luajson_open(lua_State *L, struct rule_vm *vm)
{
	static const luaL_Reg funcs[] = {
		{ "encode", luajson_l_encode },
		{ "decode", luajson_l_decode },
		{ "array", luajson_l_array },
		{ NULL, NULL }
	};

	lua_newtable(L);
	lua_pushliteral(L, "json array");
	lua_setfield(L, -2, "__name");
	vm->ref_array_mt = luaL_ref(L, LUA_REGISTRYINDEX);
	luaL_newlib(L, funcs);
	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, -2, "null");
}
