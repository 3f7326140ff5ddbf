/*
 * luajson.c - JSON for rules: router.json.encode/decode and msg:json().
 * Decoding goes straight from the text to Lua values; jansson prints.
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
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luarule.h"
#include "utf8.h"

/* Deeper than this is refused: a table that contains itself would never
 * end, and the C stack is finite. */
#define LUAJSON_MAX_DEPTH 128

#define LUAJSON_DUMP_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | \
                            JSON_REAL_PRECISION(15))

/* --- decoding --------------------------------------------------------------- */

/*
 * The decoder goes from the text straight to Lua values.  jansson's
 * json_loadb() built a tree first, with an allocation per value, only for
 * it to be copied into tables and freed, and that was most of what
 * msg:json() cost.  It accepts what json_loadb(JSON_DECODE_ANY |
 * JSON_ALLOW_NUL) accepts: RFC 8259 with UTF-8 checked, \u0000 in strings
 * but not in object keys, integers that fit in 64 bits, reals that do not
 * overflow, and values at most JSON_DEPTH deep; the unit test and the
 * fuzz target "luajson" hold it to that.  (Except "1\0": json_loadb()
 * skips a NUL byte that ends a number or a word, and this refuses it, as
 * it does every raw NUL.)  Nothing is allocated outside Lua, so a memory
 * error raised by Lua strands nothing.  The text must not change while it
 * is decoded, though Lua code (a finalizer) may run: callers pass a Lua
 * string they hold.
 */

/* jansson's JSON_PARSER_MAX_DEPTH: a value inside this many containers is
 * refused, which bounds the C stack the recursion takes. */
#define JSON_DEPTH 2048

struct json_dec {
	lua_State *L;
	int array_mt;                   /* registry ref of the array marker */
	const unsigned char *text, *p, *end;
	const unsigned char *err_at;    /* set on failure */
	char err[96];
};

static int dec_fail(struct json_dec *d, const unsigned char *at,
                    const char *fmt, ...) IOTR_PRINTF(3, 4);

static int dec_fail(struct json_dec *d, const unsigned char *at,
                    const char *fmt, ...)
{
	va_list ap;

	d->err_at = at;
	va_start(ap, fmt);
	vsnprintf(d->err, sizeof(d->err), fmt, ap);
	va_end(ap);
	return -1;
}

/* "'x'" for a printable byte, else its value: for messages. */
static const char *dec_show(const unsigned char *at, const unsigned char *end,
                            char *buf, size_t size)
{
	if (at >= end)
		snprintf(buf, size, "the end");
	else if (*at >= 0x20 && *at < 0x7f)
		snprintf(buf, size, "'%c'", *at);
	else
		snprintf(buf, size, "byte 0x%02x", *at);
	return buf;
}

static int dec_unexpected(struct json_dec *d, const unsigned char *at,
                          const char *wanted)
{
	char b[16];

	return dec_fail(d, at, "%s expected, found %s", wanted,
	                dec_show(at, d->end, b, sizeof(b)));
}

static void dec_skip_space(struct json_dec *d)
{
	while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' ||
	                         *d->p == '\r' || *d->p == '\t'))
		d->p++;
}

static int dec_hex4(const unsigned char *p, const unsigned char *end)
{
	int v = 0, i;

	if (end - p < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		int c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static size_t dec_put_utf8(unsigned char *out, unsigned cp)
{
	if (cp < 0x80) {
		out[0] = (unsigned char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (unsigned char)(0xc0 | cp >> 6);
		out[1] = (unsigned char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (unsigned char)(0xe0 | cp >> 12);
		out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (unsigned char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (unsigned char)(0xf0 | cp >> 18);
	out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
	out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
	out[3] = (unsigned char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Bytes 0x01 in every lane of a 64-bit word, and 0x80. */
#define LANES_01 UINT64_C(0x0101010101010101)
#define LANES_80 UINT64_C(0x8080808080808080)

/* Whether any byte of v is below n (n at most 0x80), or equal to c. */
#define ANY_BELOW(v, n) (((v) - LANES_01 * (n)) & ~(v) & LANES_80)
#define ANY_EQUAL(v, c) ANY_BELOW((v) ^ (LANES_01 * (c)), 1)

/* Past the plain bytes at q, eight at a time: printable ASCII other than
 * '"' and '\\'.  What stops it is left to the caller, byte by byte.  A rule
 * decoding a 1 KiB reading (a 900-byte string in it) took 1.06 us a call
 * with this, 1.59 without. */
static const unsigned char *dec_plain_run(const unsigned char *q,
                                          const unsigned char *end)
{
	uint64_t v;

	while (end - q >= 8) {
		memcpy(&v, q, sizeof(v));
		if ((v & LANES_80) | ANY_BELOW(v, 0x20) | ANY_EQUAL(v, '"') |
		    ANY_EQUAL(v, '\\'))
			break;
		q += 8;
	}
	return q;
}

/*
 * Push the string whose opening quote is at d->p.  The first pass checks
 * it and finds its end; most strings have no escape and are pushed from
 * the text as they are.  The rest are written out in a second pass into a
 * Lua buffer, which is never longer than the source.
 */
static int dec_string(struct json_dec *d, int is_key)
{
	const unsigned char *s = d->p + 1, *q = s, *end = d->end;
	int escaped = 0;
	luaL_Buffer b;
	unsigned char *out, *o;

	for (;;) {
		size_t n;

		/* (Keys and short values end before a word's worth.) */
		if (q - s >= 16)
			q = dec_plain_run(q, end);
		if (q >= end)
			return dec_fail(d, d->p, "unterminated string");
		if (*q == '"')
			break;
		if (*q == '\\') {
			escaped = 1;
			if (q + 1 >= end)
				return dec_fail(d, q, "unterminated string");
			if (q[1] == 'u') {
				if (dec_hex4(q + 2, end) < 0)
					return dec_fail(d, q, "invalid \\u escape: "
					                "four hex digits expected");
				q += 6;
			} else if (q[1] && strchr("\"\\/bfnrt", q[1])) {
				q += 2;
			} else {
				char c[16];

				return dec_fail(d, q, "invalid escape \\%s",
				                dec_show(q + 1, end, c, sizeof(c)));
			}
		} else if (*q < 0x20) {
			return dec_fail(d, q, "control character 0x%02x in a "
			                "string (write it as \\u%04x)", *q, *q);
		} else if ((n = utf8_char_length(q, (size_t)(end - q))) != 0) {
			q += n;
		} else {
			return dec_fail(d, q, "invalid UTF-8 (byte 0x%02x)", *q);
		}
	}
	if (!escaped) {
		d->p = q + 1;
		lua_pushlstring(d->L, (const char *)s, (size_t)(q - s));
		return 0;
	}
	out = o = (unsigned char *)luaL_buffinitsize(d->L, &b, (size_t)(q - s));
	for (const unsigned char *r = s; r < q;) {
		unsigned cp, lo;

		if (*r != '\\') {
			*o++ = *r++;
			continue;
		}
		switch (r[1]) {
		case 'b': *o++ = '\b'; r += 2; continue;
		case 'f': *o++ = '\f'; r += 2; continue;
		case 'n': *o++ = '\n'; r += 2; continue;
		case 'r': *o++ = '\r'; r += 2; continue;
		case 't': *o++ = '\t'; r += 2; continue;
		case 'u': break;
		default: *o++ = r[1]; r += 2; continue;
		}
		cp = (unsigned)dec_hex4(r + 2, q);
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (q - r < 12 || r[6] != '\\' || r[7] != 'u' ||
			    (lo = (unsigned)dec_hex4(r + 8, q)) < 0xdc00 ||
			    lo > 0xdfff)
				return dec_fail(d, r, "invalid Unicode: \\u%04X "
				                "without its low surrogate", cp);
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			r += 6;
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			return dec_fail(d, r, "invalid Unicode: \\u%04X is a low "
			                "surrogate with no high one before it", cp);
		}
		r += 6;
		o += dec_put_utf8(o, cp);
	}
	if (is_key && memchr(out, '\0', (size_t)(o - out)))
		return dec_fail(d, s, "object key with a NUL character "
		                "(\\u0000): not supported");
	d->p = q + 1;
	luaL_pushresultsize(&b, (size_t)(o - out));
	return 0;
}

/* Push the number at d->p: an integer when it has no fraction or
 * exponent, else a float. */
static int dec_number(struct json_dec *d)
{
	const unsigned char *s = d->p, *q = s, *end = d->end;
	int neg = 0, real = 0;
	uint64_t v = 0, limit;

	if (*q == '-') {
		neg = 1;
		q++;
	}
	if (q >= end || *q < '0' || *q > '9')
		return dec_unexpected(d, q, "a digit");
	if (*q == '0') {
		q++;
		if (q < end && *q >= '0' && *q <= '9')
			return dec_fail(d, s, "number with a leading zero");
	} else {
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < end && *q == '.') {
		real = 1;
		if (++q >= end || *q < '0' || *q > '9')
			return dec_unexpected(d, q, "a digit after '.'");
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < end && (*q == 'e' || *q == 'E')) {
		real = 1;
		if (++q < end && (*q == '+' || *q == '-'))
			q++;
		if (q >= end || *q < '0' || *q > '9')
			return dec_unexpected(d, q, "a digit in the exponent");
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	}
	d->p = q;
	if (!real) {
		limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		for (const unsigned char *r = s + neg; r < q; r++) {
			unsigned digit = (unsigned)(*r - '0');

			if (v > (limit - digit) / 10)
				return dec_fail(d, s, "integer out of range "
				                "(64 bits)");
			v = v * 10 + digit;
		}
		lua_pushinteger(d->L, neg ? (lua_Integer)(0 - v)
		                          : (lua_Integer)v);
		return 0;
	}
	/* Lua reads the float (strtod, with the locale's decimal point taken
	 * care of); the text is NUL-terminated in a Lua string for it. */
	lua_pushlstring(d->L, (const char *)s, (size_t)(q - s));
	if (!lua_stringtonumber(d->L, lua_tostring(d->L, -1)) ||
	    isinf(lua_tonumber(d->L, -1)))
		return dec_fail(d, s, "number out of range (it overflows a "
		                "double)");
	lua_remove(d->L, -2);
	return 0;
}

static int dec_value(struct json_dec *d, int depth);

/*
 * Make the table for the `n` members (key and value pairs for an object,
 * values for an array) on the stack above `base`, sized for `size`, and
 * leave it alone in their place.
 */
static void dec_table(lua_State *L, int base, int is_object, int n, int size)
{
	int i;

	lua_createtable(L, is_object ? 0 : size, is_object ? size : 0);
	for (i = 0; i < n; i++) {
		if (is_object) {
			lua_pushvalue(L, base + 1 + 2 * i);
			lua_pushvalue(L, base + 2 + 2 * i);
			lua_rawset(L, -3);
		} else {
			lua_pushvalue(L, base + 1 + i);
			lua_rawseti(L, -2, i + 1);
		}
	}
	if (n) {
		lua_replace(L, base + 1);
		lua_settop(L, base + 1);
	}
}

/* A container's first members wait on the stack, so that its table is
 * made at its final size: growing one member at a time rehashes it at 1,
 * 2, 4 and 8 entries, which cost a quarter of decoding a typical reading.
 * Past this many the table is made and the rest go straight in. */
#define JSON_PENDING 16

/* The object or array at d->p, which is at depth `depth`. */
static int dec_container(struct json_dec *d, int depth)
{
	lua_State *L = d->L;
	int is_object = *d->p == '{', base = lua_gettop(L), n = 0;
	unsigned char close = is_object ? '}' : ']';

	d->p++;
	dec_skip_space(d);
	if (d->p < d->end && *d->p == close) {
		d->p++;
		goto done;
	}
	for (;;) {
		luaL_checkstack(L, 6, "JSON nested too deeply");
		if (is_object) {
			if (d->p >= d->end || *d->p != '"')
				return dec_unexpected(d, d->p, n ?
				                      "a string (a key)" :
				                      "a string (a key) or '}'");
			if (dec_string(d, 1))
				return -1;
			dec_skip_space(d);
			if (d->p >= d->end || *d->p != ':')
				return dec_unexpected(d, d->p, "':'");
			d->p++;
			dec_skip_space(d);
		}
		if (dec_value(d, depth + 1))
			return -1;
		if (++n == JSON_PENDING)
			dec_table(L, base, is_object, n, 2 * n);
		else if (n > JSON_PENDING && is_object)
			lua_rawset(L, -3);
		else if (n > JSON_PENDING)
			lua_rawseti(L, -2, n);
		dec_skip_space(d);
		if (d->p < d->end && *d->p == ',') {
			d->p++;
			dec_skip_space(d);
			continue;
		}
		if (d->p < d->end && *d->p == close) {
			d->p++;
			break;
		}
		return dec_unexpected(d, d->p, is_object ? "',' or '}'" :
		                                           "',' or ']'");
	}
done:
	if (n < JSON_PENDING)
		dec_table(L, base, is_object, n, n);
	if (!is_object) {
		lua_rawgeti(L, LUA_REGISTRYINDEX, d->array_mt);
		lua_setmetatable(L, -2);
	}
	return 0;
}

static int dec_literal(struct json_dec *d, const char *word)
{
	size_t n = strlen(word);
	const unsigned char *q = d->p;

	/* The whole word, for the message: "nul" and "nullx" are not null. */
	while (q < d->end && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')))
		q++;
	if ((size_t)(q - d->p) != n || memcmp(d->p, word, n) != 0)
		return dec_fail(d, d->p, "invalid word '%.*s'",
		                (int)(q - d->p > 20 ? 20 : q - d->p), d->p);
	d->p = q;
	return 0;
}

/* Push the value at d->p (after any space), at depth `depth` (1: the
 * top). */
static int dec_value(struct json_dec *d, int depth)
{
	if (depth > JSON_DEPTH)
		return dec_fail(d, d->p, "nested deeper than %d levels",
		                JSON_DEPTH);
	if (d->p >= d->end)
		return dec_unexpected(d, d->p, "a value");
	switch (*d->p) {
	case '{':
	case '[':
		return dec_container(d, depth);
	case '"':
		return dec_string(d, 0);
	case 't':
		if (dec_literal(d, "true"))
			return -1;
		lua_pushboolean(d->L, 1);
		return 0;
	case 'f':
		if (dec_literal(d, "false"))
			return -1;
		lua_pushboolean(d->L, 0);
		return 0;
	case 'n':
		if (dec_literal(d, "null"))
			return -1;
		lua_pushlightuserdata(d->L, NULL);   /* router.json.null */
		return 0;
	default:
		if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
			return dec_number(d);
		if ((*d->p >= 'a' && *d->p <= 'z') ||
		    (*d->p >= 'A' && *d->p <= 'Z'))
			return dec_literal(d, "");
		return dec_unexpected(d, d->p, "a value");
	}
}

int luajson_push_decoded(lua_State *L, const char *text, size_t len)
{
	struct json_dec d = {
		.L = L,
		.array_mt = vm_of(L)->ref_array_mt,
		.text = (const unsigned char *)text,
		.p = (const unsigned char *)text,
		.end = (const unsigned char *)text + len,
	};
	int top = lua_gettop(L), line = 1, column = 1;

	dec_skip_space(&d);
	if (d.p == d.end) {
		lua_pushnil(L);
		lua_pushliteral(L, "not JSON: it is empty");
		return 2;
	}
	if (dec_value(&d, 1) == 0) {
		dec_skip_space(&d);
		if (d.p == d.end)
			return 1;
		char b[16];

		dec_fail(&d, d.p, "unexpected %s after the value",
		         dec_show(d.p, d.end, b, sizeof(b)));
	}
	/* Line and column (in characters) of where it went wrong. */
	for (const unsigned char *c = d.text; c < d.err_at; c++) {
		if (*c == '\n') {
			line++;
			column = 1;
		} else if ((*c & 0xc0) != 0x80) {
			column++;
		}
	}
	lua_settop(L, top);
	lua_pushnil(L);
	lua_pushfstring(L, "not JSON: %s (line %d, column %d)", d.err, line,
	                column);
	return 2;
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
