/*
 * test_luajson.c - JSON text to Lua values, as rules get them from
 * msg:json() and router.json.decode(): the values and their types, what
 * is refused and why, and, for a corpus of edge cases and thousands of
 * mutations of it, the same outcome as jansson's json_loadb(), which the
 * plugin used before it had its own decoder.  Single-threaded.
 */
#include "config.h"

#include <check.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luajson_oracle.h"

static lua_State *L;

static void setup(void)
{
	L = oracle_state();
	ck_assert_ptr_nonnull(L);
}

static void teardown(void)
{
	lua_close(L);
}

/* Run a chunk of Lua with the len bytes of text as the global `t`; the
 * chunk returns a string, which is returned (valid until teardown). */
static const char *run_n(const char *chunk, const char *text, size_t len)
{
	lua_pushlstring(L, text, len);
	lua_setglobal(L, "t");
	if (luaL_dostring(L, chunk) != LUA_OK)
		ck_abort_msg("chunk failed: %s", lua_tostring(L, -1));
	lua_pushvalue(L, -1);
	lua_setglobal(L, "last_result");        /* keeps it alive */
	return lua_tostring(L, -1);
}

static const char *run(const char *chunk, const char *text)
{
	return run_n(chunk, text, strlen(text));
}

/* What json.decode says of text: its reason, or "accepted". */
static const char *reason_n(const char *text, size_t len)
{
	return run_n("local v, why = json.decode(t)\n"
	             "if v == nil then return why end\n"
	             "return 'accepted'", text, len);
}

static const char *reason(const char *text)
{
	return reason_n(text, strlen(text));
}

static void assert_same_as_jansson(const char *text, size_t len)
{
	char why[512];

	if (oracle_check(L, text, len, why, sizeof(why)))
		ck_abort_msg("%.*s: %s", (int)(len > 200 ? 200 : len), text, why);
}

/* --- values ----------------------------------------------------------------- */

START_TEST(reading_keeps_its_types)
{
	ck_assert_str_eq(run(
		"local r = json.decode(t)\n"
		"local p = r.payload\n"
		"return table.concat({ r.topic, math.type(p.seq), tostring(p.seq),\n"
		"  math.type(p.value), tostring(p.value), p.unit, tostring(p.ok),\n"
		"  tostring(p.off), tostring(p.gone == json.null),\n"
		"  tostring(p.big), tostring(p.neg), tostring(p.zero),\n"
		"  math.type(p.zero) }, ' ')",
		"{\"topic\":\"sensors/a\",\"payload\":{\"seq\":1234,\"value\":21.5,"
		"\"unit\":\"C\",\"ok\":true,\"off\":false,\"gone\":null,"
		"\"big\":9223372036854775807,\"neg\":-9223372036854775808,"
		"\"zero\":-0}}"),
		"sensors/a integer 1234 float 21.5 C true false true "
		"9223372036854775807 -9223372036854775808 0 integer");
}
END_TEST

START_TEST(numbers_with_a_fraction_or_exponent_are_floats)
{
	ck_assert_str_eq(run(
		"local a = json.decode(t)\n"
		"local out = {}\n"
		"for i, v in ipairs(a) do out[i] = math.type(v) .. ':' .. string.format('%.17g', v) end\n"
		"return table.concat(out, ' ')",
		"[2.0, 3e2, -1.5E-3, 0.1, 1e-400, 2.5e+1]"),
		"float:2 float:300 float:-0.0015 float:0.10000000000000001 "
		"float:0 float:25");
}
END_TEST

START_TEST(arrays_are_marked_and_objects_not)
{
	ck_assert_str_eq(run(
		"local r = json.decode(t)\n"
		"return table.concat({ #r.xs, tostring(getmetatable(r.xs) ~= nil),\n"
		"  tostring(getmetatable(r.none) ~= nil), #r.none,\n"
		"  tostring(getmetatable(r) == nil), tostring(getmetatable(r.o) == nil),\n"
		"  tostring(next(r.o)), json.encode(r) }, ' ')",
		"{\"xs\":[1,[2],{}],\"none\":[],\"o\":{}}"),
		"3 true true 0 true true nil "
		"{\"none\":[],\"o\":{},\"xs\":[1,[2],{}]}");
}
END_TEST

START_TEST(strings_are_unescaped)
{
	/* \u00e9 is two bytes of UTF-8, the pair \ud83d\ude00 four; \u0000
	 * is allowed in a value */
	ck_assert_str_eq(run(
		"local s = json.decode(t)\n"
		"return #s .. ' ' .. s:gsub('%c', function(c) return '<' .. c:byte() .. '>' end)",
		"\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000z caf\xc3\xa9\""),
		"26 a\"b\\c/d<8><12><10><13><9>\xc3\xa9\xf0\x9f\x98\x80<0>z caf\xc3\xa9");
}
END_TEST

START_TEST(large_containers_keep_every_member_in_order)
{
	/* past the members that wait on the stack for the table's size */
	ck_assert_str_eq(run(
		"local parts, keys = {}, {}\n"
		"for i = 1, 100 do parts[i] = tostring(i * 3) end\n"
		"for i = 1, 40 do keys[i] = string.format('\"k%d\":%d', i, i) end\n"
		"local a = json.decode('[' .. table.concat(parts, ',') .. ']')\n"
		"local o = json.decode('{' .. table.concat(keys, ',') .. ',\"k7\":-7}')\n"
		"local ok = #a == 100 and getmetatable(a) ~= nil\n"
		"for i = 1, 100 do ok = ok and a[i] == i * 3 end\n"
		"local n = 0\n"
		"for k, v in pairs(o) do n = n + 1 end\n"
		"for i = 1, 40 do ok = ok and o['k' .. i] == (i == 7 and -7 or i) end\n"
		"return tostring(ok) .. ' ' .. n", ""),
		"true 40");
}
END_TEST

START_TEST(duplicate_keys_keep_the_last)
{
	ck_assert_str_eq(run("return tostring(json.decode(t).a)",
	                     "{\"a\":1,\"b\":2,\"a\":3}"), "3");
}
END_TEST

START_TEST(nesting_is_allowed_to_2048_levels)
{
	ck_assert_str_eq(run(
		"local function nest(n, inner)\n"
		"  return string.rep('[', n) .. inner .. string.rep(']', n)\n"
		"end\n"
		"local a = json.decode(nest(2048, ''))\n"
		"local b, why = json.decode(nest(2048, '1'))\n"
		"local depth = 0\n"
		"while type(a) == 'table' do depth = depth + 1; a = a[1] end\n"
		"return depth .. ' ' .. tostring(b) .. ' ' .. why", ""),
		"2048 nil not JSON: nested deeper than 2048 levels "
		"(line 1, column 2049)");
}
END_TEST

/* --- refusals ----------------------------------------------------------------- */

START_TEST(refusals_name_the_fault_and_where)
{
	static const struct { const char *text, *why; } cases[] = {
		{ "", "not JSON: it is empty" },
		{ " \n\t ", "not JSON: it is empty" },
		{ "{\"a\":1,}", "not JSON: a string (a key) expected, found '}' (line 1, column 8)" },
		{ "[1,]", "not JSON: a value expected, found ']' (line 1, column 4)" },
		/* the example in iotrouter-lua(7) */
		{ "{\"a\": 1 2}", "not JSON: ',' or '}' expected, found '2' (line 1, column 9)" },
		{ "[1 2]", "not JSON: ',' or ']' expected, found '2' (line 1, column 4)" },
		{ "{\"a\" 1}", "not JSON: ':' expected, found '1' (line 1, column 6)" },
		{ "{a:1}", "not JSON: a string (a key) or '}' expected, found 'a' (line 1, column 2)" },
		{ "012", "not JSON: number with a leading zero (line 1, column 1)" },
		{ "1.", "not JSON: a digit after '.' expected, found the end (line 1, column 3)" },
		{ "-", "not JSON: a digit expected, found the end (line 1, column 2)" },
		{ "1e+", "not JSON: a digit in the exponent expected, found the end (line 1, column 4)" },
		{ "9223372036854775808", "not JSON: integer out of range (64 bits) (line 1, column 1)" },
		{ "-9223372036854775809", "not JSON: integer out of range (64 bits) (line 1, column 1)" },
		{ "[1e400]", "not JSON: number out of range (it overflows a double) (line 1, column 2)" },
		{ "\"abc", "not JSON: unterminated string (line 1, column 1)" },
		{ "\"a\\x\"", "not JSON: invalid escape \\'x' (line 1, column 3)" },
		{ "\"\\u12g4\"", "not JSON: invalid \\u escape: four hex digits expected (line 1, column 2)" },
		{ "\"\\ud800\"", "not JSON: invalid Unicode: \\uD800 without its low surrogate (line 1, column 2)" },
		{ "\"\\ud800\\u0041\"", "not JSON: invalid Unicode: \\uD800 without its low surrogate (line 1, column 2)" },
		{ "\"\\udc00\"", "not JSON: invalid Unicode: \\uDC00 is a low surrogate with no high one before it (line 1, column 2)" },
		{ "\"a\tb\"", "not JSON: control character 0x09 in a string (write it as \\u0009) (line 1, column 3)" },
		{ "\"\xc0\x80\"", "not JSON: invalid UTF-8 (byte 0xc0) (line 1, column 2)" },
		{ "\"\xed\xa0\x80\"", "not JSON: invalid UTF-8 (byte 0xed) (line 1, column 2)" },
		{ "\"\xf5\x80\x80\x80\"", "not JSON: invalid UTF-8 (byte 0xf5) (line 1, column 2)" },
		{ "\"\xe2\x82\"", "not JSON: invalid UTF-8 (byte 0xe2) (line 1, column 2)" },
		{ "{\"a\\u0000b\":1}", "not JSON: object key with a NUL character (\\u0000): not supported (line 1, column 3)" },
		{ "nul", "not JSON: invalid word 'nul' (line 1, column 1)" },
		{ "True", "not JSON: invalid word 'True' (line 1, column 1)" },
		{ "{\"t\":\"caf\xc3\xa9\",\n \"x\": tru }", "not JSON: invalid word 'tru' (line 2, column 7)" },
		{ "{} {}", "not JSON: unexpected '{' after the value (line 1, column 4)" },
		{ "[1]\x01", "not JSON: unexpected byte 0x01 after the value (line 1, column 4)" },
		{ ".5", "not JSON: a value expected, found '.' (line 1, column 1)" },
		{ "[", "not JSON: a value expected, found the end (line 1, column 2)" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_str_eq(reason(cases[i].text), cases[i].why);
	/* a NUL byte outside a string */
	ck_assert_str_eq(reason_n("[1,\0]", 5),
	                 "not JSON: a value expected, found byte 0x00 (line 1, column 4)");
}
END_TEST

/* --- the same as jansson ------------------------------------------------------- */

/* Edge cases of the grammar, each a whole text. */
static const char *const corpus[] = {
	"0", "-0", "1", "-1", "1.5", "-0.0", "1e5", "1E-5", "1e+5", "0.1e1",
	"123456789012345678", "9223372036854775807", "-9223372036854775808",
	"9223372036854775808", "-9223372036854775809", "99999999999999999999",
	"1e308", "1e309", "-1e309", "4.9e-324", "2.2250738585072014e-308",
	"1e-400", "0.30000000000000004", "123.456e-7", "01", "-01", "1.", ".1",
	"+1", "-", "1e", "1e+", "--1", "1.2.3", "0x10", "Infinity", "NaN",
	"true", "false", "null", "tru", "nulll", "TRUE", "truefalse",
	"\"\"", "\"a\"", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u0041\\u00e9\\u20ac\"",
	"\"\\ud83d\\ude00\"", "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"",
	"\"\\ud83d\\ud83d\"", "\"\\u0000\"", "\"\\u00\"", "\"\\x\"", "\"\\\"",
	"\"a\nb\"", "\"\x7f\"", "\"\xc3\xa9\"", "\"\xc3\"", "\"\xc1\xbf\"",
	"\"\xe0\x9f\xbf\"", "\"\xe0\xa0\x80\"", "\"\xed\x9f\xbf\"", "\"\xed\xa0\x80\"",
	"\"\xef\xbf\xbf\"", "\"\xf0\x8f\xbf\xbf\"", "\"\xf0\x90\x80\x80\"",
	"\"\xf4\x8f\xbf\xbf\"", "\"\xf4\x90\x80\x80\"", "\"\xf8\x88\x80\x80\x80\"",
	"\"\xff\"", "\xc3\xa9", "[]", "{}", "[ ]", "{ }", "[[]]", "[{}]",
	"[1,2,3]", "[1,]", "[,1]", "[1 2]", "[", "]", "{\"a\":1}", "{\"a\":1,}",
	"{\"a\"}", "{\"a\":}", "{a:1}", "{\"a\":1 \"b\":2}", "{1:2}",
	"{\"a\":1,\"a\":2}", "{\"\":0}", "{\"a\\u0000\":1}", "{\"\\u0000\":1}",
	"{\"a\":[1,{\"b\":null}],\"c\":{\"d\":[true,false]}}",
	" \t\r\n[1] \t\r\n", "[1]x", "[1]]", "{}{}", "\xef\xbb\xbf[]", "",
	"   ", "[\"a\" , \"b\"]", "[1\n,\n2]",
	"{\"device\":\"dev-0001\",\"site\":\"site-1\",\"sensor\":\"temperature\","
	"\"value\":21.53,\"unit\":\"C\",\"seq\":1234,\"ts\":1700000000000000}",
	"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]",
	/* a padded reading: long runs checked a word at a time */
	"{\"pad\":\"0123456789abcdefghijklmnopqrstuvwxyz0123\\t0123456789abcdef"
	"\xc3\xa9ghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\"}",
	"{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,"
	"\"k9\":9,\"k10\":10,\"k11\":11,\"k12\":12,\"k13\":13,\"k14\":14,"
	"\"k15\":15,\"k16\":16,\"k17\":17,\"k1\":-1}",
};

#define NCORPUS (sizeof(corpus) / sizeof(corpus[0]))

START_TEST(corpus_is_decoded_as_jansson_does)
{
	size_t i;

	for (i = 0; i < NCORPUS; i++)
		assert_same_as_jansson(corpus[i], strlen(corpus[i]));
	/* NUL bytes inside and outside strings */
	assert_same_as_jansson("[\"a\0b\"]", 7);
	assert_same_as_jansson("[1]\0", 4);
	assert_same_as_jansson("1\0", 2);
	assert_same_as_jansson("true\0", 5);
	assert_same_as_jansson("\0", 1);
}
END_TEST

/* Long strings are checked eight bytes at a time past their first 16:
 * each special byte, at each place of strings around that length. */
START_TEST(long_strings_are_checked_at_every_offset)
{
	static const char *const specials[] = {
		"\"", "\\", "\\n", "\\u00e9", "\x01", "\x1f", "\x7f",
		"\x80", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\xa0\x80",
		"\xc3", "\xff", " ", "~",
	};
	char buf[128];
	size_t len, at, k;

	for (len = 8; len <= 48; len++)
		for (at = 0; at < len; at++)
			for (k = 0; k < sizeof(specials) / sizeof(specials[0]); k++) {
				size_t n = strlen(specials[k]), i, o = 0;

				buf[o++] = '"';
				for (i = 0; i < len; i++) {
					if (i == at) {
						memcpy(buf + o, specials[k], n);
						o += n;
					} else {
						buf[o++] = (char)('a' + i % 26);
					}
				}
				buf[o++] = '"';
				assert_same_as_jansson(buf, o);
				/* and cut short: no closing quote */
				assert_same_as_jansson(buf, o - 1);
			}
}
END_TEST

/* Bytes that make the mutations likely to reach the grammar's corners. */
static const char interesting[] = "{}[]:,\"\\u0123456789-+.eE \n\ttfnrl\x80\xc3\xed\xf0\xff";

START_TEST(mutations_are_decoded_as_jansson_does)
{
	uint64_t state = 0x9e3779b97f4a7c15u;   /* fixed: failures repeat */
	char buf[512];
	int round;

	for (round = 0; round < 20000; round++) {
		const char *seed = corpus[round % NCORPUS];
		size_t len = strlen(seed), edits, e;

		memcpy(buf, seed, len);
		state = state * 6364136223846793005u + 1442695040888963407u;
		edits = 1 + (state >> 60) % 4;
		for (e = 0; e < edits; e++) {
			size_t at;
			char c;

			state = state * 6364136223846793005u + 1442695040888963407u;
			at = len ? (size_t)(state >> 33) % (len + 1) : 0;
			c = (state >> 20) & 1 ?
			    interesting[(state >> 8) % (sizeof(interesting) - 1)] :
			    (char)(state >> 24);
			switch ((state >> 40) % 3) {
			case 0:         /* replace */
				if (at < len) {
					buf[at] = c;
					break;
				}
				/* fall through */
			case 1:         /* insert */
				if (len < sizeof(buf)) {
					memmove(buf + at + 1, buf + at, len - at);
					buf[at] = c;
					len++;
				}
				break;
			default:        /* delete */
				if (at < len) {
					memmove(buf + at, buf + at + 1, len - at - 1);
					len--;
				}
			}
		}
		assert_same_as_jansson(buf, len);
	}
}
END_TEST

static Suite *luajson_suite(void)
{
	Suite *s = suite_create("luajson");
	TCase *tc = tcase_create("decode");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, reading_keeps_its_types);
	tcase_add_test(tc, numbers_with_a_fraction_or_exponent_are_floats);
	tcase_add_test(tc, arrays_are_marked_and_objects_not);
	tcase_add_test(tc, strings_are_unescaped);
	tcase_add_test(tc, large_containers_keep_every_member_in_order);
	tcase_add_test(tc, duplicate_keys_keep_the_last);
	tcase_add_test(tc, nesting_is_allowed_to_2048_levels);
	tcase_add_test(tc, refusals_name_the_fault_and_where);
	tcase_add_test(tc, corpus_is_decoded_as_jansson_does);
	tcase_add_test(tc, long_strings_are_checked_at_every_offset);
	tcase_add_test(tc, mutations_are_decoded_as_jansson_does);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(luajson_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
