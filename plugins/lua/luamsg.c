/*
 * luamsg.c - the `msg` object of on_message, its `headers` and `captures`
 * tables, messages made from Lua tables (router.emit, fan-out), and what
 * on_message's return value means.
 *
 * A msg object reaches its message only during the on_message call it was
 * made for; afterwards every use raises an error, so a rule that keeps one
 * cannot touch a message the router has passed on.  The first change to a
 * message takes a snapshot of it, so that a failed call leaves the message
 * as it came in (the dead letter shows what the rule was given).  Runs on
 * the thread that owns the Lua state.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luarule.h"

enum msg_field {
	F_TOPIC = 1, F_PAYLOAD, F_KEY, F_HEADERS, F_QOS, F_RETAIN, F_TIME,
	F_CAPTURES, F_KAFKA_TOPIC, F_JSON
};

static const struct {
	const char *name;
	int id;
} msg_fields[] = {
	{ "topic", F_TOPIC }, { "payload", F_PAYLOAD }, { "key", F_KEY },
	{ "headers", F_HEADERS }, { "qos", F_QOS }, { "retain", F_RETAIN },
	{ "time", F_TIME }, { "captures", F_CAPTURES },
	{ "kafka_topic", F_KAFKA_TOPIC }, { "dest", F_KAFKA_TOPIC },
	{ "json", F_JSON },
};

#define MSG_FIELD_LIST "topic, payload, key, headers, qos, retain, time, " \
	"captures, kafka_topic (or dest), and the method msg:json()"

/* User values of a msg object. */
enum { UV_JSON = 1, UV_HEADERS, UV_CAPTURES, UV_JSON_ERROR, UV_COUNT = 4 };

/* msg.headers and msg.captures: a view of the message behind a msg. */
struct msg_view {
	struct msg_box *box;
};

static const struct iotr_host *host_of(const struct msg_box *box)
{
	return box->vm->rule->host;
}

/* The message of a msg object, or a Lua error if its call is over. */
static iotr_msg *box_msg(lua_State *L, struct msg_box *box)
{
	if (!box->msg)
		luaL_error(L, "this msg belonged to an earlier on_message call "
		           "and can no longer be used; copy the fields you "
		           "need (e.g. into router.state()) instead of the "
		           "msg itself");
	return box->msg;
}

/* Before the first change: keep a copy to undo the changes if the call
 * fails. */
static iotr_msg *box_changing(lua_State *L, struct msg_box *box)
{
	iotr_msg *m = box_msg(L, box);

	if (!box->snapshot && !(box->snapshot = host_of(box)->msg_clone(m)))
		luaL_error(L, "out of memory changing the message");
	return m;
}

static void box_check_rc(lua_State *L, int rc)
{
	if (rc != IOTR_OK)
		luaL_error(L, "out of memory changing the message");
}

/* --- setting fields (shared by msg.x = v and message tables) ----------------- */

/* Text of a header value or key: strings, numbers, booleans.  Numbers are
 * printed in C, so no Lua string is made (nothing to collect). */
static const char *value_text(lua_State *L, int idx, char *buf, size_t bufsz,
                              size_t *len)
{
	switch (lua_type(L, idx)) {
	case LUA_TSTRING:
		return lua_tolstring(L, idx, len);
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			*len = (size_t)snprintf(buf, bufsz, "%lld",
			                        (long long)lua_tointeger(L, idx));
		else
			*len = (size_t)snprintf(buf, bufsz, "%.14g",
			                        (double)lua_tonumber(L, idx));
		return buf;
	case LUA_TBOOLEAN:
		*len = lua_toboolean(L, idx) ? 4 : 5;
		return lua_toboolean(L, idx) ? "true" : "false";
	default:
		return NULL;
	}
}

static void set_payload(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                        int idx, const char *what)
{
	char err[256], num[64];
	size_t len = 0;
	const char *text;
	char *json;
	int rc;

	if (lua_type(L, idx) == LUA_TTABLE) {
		if (!(json = luajson_encode(L, idx, &len, err, sizeof(err))))
			luaL_error(L, "%s: payload table cannot be written as "
			           "JSON: %s", what, err);
		rc = h->msg_set_payload(m, json, len);
		free(json);
		box_check_rc(L, rc);
		return;
	}
	if (lua_isnil(L, idx)) {
		box_check_rc(L, h->msg_set_payload(m, NULL, 0));
		return;
	}
	if (!(text = value_text(L, idx, num, sizeof(num), &len)))
		luaL_error(L, "%s: payload must be a string or a table (sent "
		           "as JSON), not a %s", what, luaL_typename(L, idx));
	box_check_rc(L, h->msg_set_payload(m, text, len));
}

static void set_key(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                    int idx, const char *what)
{
	char num[64];
	size_t len;
	const char *text;

	if (lua_isnil(L, idx) || (lua_type(L, idx) == LUA_TBOOLEAN &&
	                          !lua_toboolean(L, idx))) {
		box_check_rc(L, h->msg_set_key(m, NULL, 0));
		return;
	}
	if (lua_type(L, idx) == LUA_TBOOLEAN ||
	    !(text = value_text(L, idx, num, sizeof(num), &len)))
		luaL_error(L, "%s: key must be a string (or nil for none), "
		           "not a %s", what, luaL_typename(L, idx));
	box_check_rc(L, h->msg_set_key(m, text, len));
}

static void set_dest(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                     int idx, const char *what)
{
	if (lua_isnil(L, idx)) {
		box_check_rc(L, h->msg_set_dest(m, NULL));
		return;
	}
	if (lua_type(L, idx) != LUA_TSTRING)
		luaL_error(L, "%s: kafka_topic must be a string, not a %s",
		           what, luaL_typename(L, idx));
	box_check_rc(L, h->msg_set_dest(m, lua_tostring(L, idx)));
}

static void set_qos(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                    int qos_idx, int retain_idx, const char *what)
{
	int qos = h->msg_qos(m), retain = h->msg_retain(m);

	if (qos_idx) {
		if (!lua_isinteger(L, qos_idx) || lua_tointeger(L, qos_idx) < 0 ||
		    lua_tointeger(L, qos_idx) > 2)
			luaL_error(L, "%s: qos must be 0, 1 or 2", what);
		qos = (int)lua_tointeger(L, qos_idx);
	}
	if (retain_idx) {
		if (lua_type(L, retain_idx) != LUA_TBOOLEAN)
			luaL_error(L, "%s: retain must be true or false", what);
		retain = lua_toboolean(L, retain_idx);
	}
	box_check_rc(L, h->msg_set_qos(m, qos, retain));
}

static void set_time(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                     int idx, const char *what)
{
	if (lua_type(L, idx) != LUA_TNUMBER)
		luaL_error(L, "%s: time must be a number (seconds since the "
		           "epoch), not a %s", what, luaL_typename(L, idx));
	box_check_rc(L, h->msg_set_time(m, (int64_t)(lua_tonumber(L, idx) *
	                                             1e6)));
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * Set the headers named in the table at idx (name -> value), in name order.
 * With replace_all, every other header goes too.
 */
static void set_headers(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                        int idx, int replace_all, const char *what)
{
	const char **names;
	size_t n = 0, i;

	idx = lua_absindex(L, idx);
	if (lua_type(L, idx) != LUA_TTABLE)
		luaL_error(L, "%s: headers must be a table of name = value, "
		           "not a %s", what, luaL_typename(L, idx));
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "%s: header names must be strings, not a "
			           "%s", what, luaL_typename(L, -1));
		n++;
	}
	/* A Lua userdata as scratch space, so an error leaks nothing. */
	names = lua_newuserdatauv(L, (n ? n : 1) * sizeof(*names), 0);
	i = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (i < n)      /* the key is kept alive by the table */
			names[i++] = lua_tostring(L, -1);
	}
	n = i;
	qsort(names, n, sizeof(*names), name_cmp);
	for (i = 0; i < n; i++) {
		char num[64];
		size_t len;
		const char *text;

		lua_getfield(L, idx, names[i]);
		text = value_text(L, -1, num, sizeof(num), &len);
		if (!text)
			luaL_error(L, "%s: header '%s' must be a string, number "
			           "or boolean, not a %s", what, names[i],
			           luaL_typename(L, -1));
		lua_pop(L, 1);
		if (!replace_all)
			h->msg_remove_header(m, names[i]);
	}
	while (replace_all && h->msg_header_count(m) > 0) {
		const char *name;
		char *copy;

		h->msg_header_at(m, 0, &name, NULL, NULL);
		if (!(copy = strdup(name)))
			luaL_error(L, "out of memory changing the message");
		h->msg_remove_header(m, copy);
		free(copy);
	}
	for (i = 0; i < n; i++) {
		char num[64];
		size_t len;
		const char *text;

		lua_getfield(L, idx, names[i]);
		text = value_text(L, -1, num, sizeof(num), &len);
		box_check_rc(L, h->msg_add_header(m, names[i], text, len));
		lua_pop(L, 1);
	}
	lua_pop(L, 1);  /* names */
}

static const char *const table_fields[] = { "topic", "kafka_topic", "dest",
	"key", "payload", "headers", "qos", "retain", "time", NULL };

/* Set on m what the message table at idx says; unknown fields are errors. */
static void apply_table(lua_State *L, const struct iotr_host *h, iotr_msg *m,
                        int idx, int headers_replace, const char *what)
{
	int qos = 0, retain = 0;
	size_t i;

	idx = lua_absindex(L, idx);
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		for (i = 0; table_fields[i]; i++)
			if (lua_type(L, -1) == LUA_TSTRING &&
			    strcmp(lua_tostring(L, -1), table_fields[i]) == 0)
				break;
		if (!table_fields[i]) {
			if (lua_type(L, -1) == LUA_TSTRING)
				luaL_error(L, "%s: a message has no field '%s'; "
				           "use topic, key, payload, headers, "
				           "qos, retain, time", what,
				           lua_tostring(L, -1));
			luaL_error(L, "%s: a message table has fields topic, "
			           "key, payload, headers, qos, retain, time "
			           "(a list of messages goes in a table of "
			           "its own)", what);
		}
	}
	for (i = 0; i < 3; i++) {   /* topic, kafka_topic, dest */
		if (lua_getfield(L, idx, table_fields[i]) != LUA_TNIL)
			set_dest(L, h, m, -1, what);
		lua_pop(L, 1);
	}
	if (lua_getfield(L, idx, "key") != LUA_TNIL)
		set_key(L, h, m, -1, what);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "payload") != LUA_TNIL)
		set_payload(L, h, m, lua_gettop(L), what);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "headers") != LUA_TNIL)
		set_headers(L, h, m, -1, headers_replace, what);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "time") != LUA_TNIL)
		set_time(L, h, m, -1, what);
	lua_pop(L, 1);
	lua_getfield(L, idx, "qos");
	lua_getfield(L, idx, "retain");
	if (!lua_isnil(L, -2))
		qos = lua_gettop(L) - 1;
	if (!lua_isnil(L, -1))
		retain = lua_gettop(L);
	if (qos || retain)
		set_qos(L, h, m, qos, retain, what);
	lua_pop(L, 2);
}

iotr_msg *luamsg_from_table(lua_State *L, int idx, const iotr_msg *base,
                            const char *what)
{
	struct rule_vm *vm = vm_of(L);
	const struct iotr_host *h = vm->rule->host;
	iotr_msg *m;

	idx = lua_absindex(L, idx);
	if (lua_type(L, idx) != LUA_TTABLE)
		luaL_error(L, "%s: a message is a table {topic=, key=, "
		           "payload=, headers=}, not a %s", what,
		           luaL_typename(L, idx));
	if (base) {
		m = h->msg_clone(base);
	} else {
		const char *topic;

		lua_getfield(L, idx, "kafka_topic");
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			lua_getfield(L, idx, "topic");
		}
		if (lua_type(L, -1) != LUA_TSTRING)
			luaL_error(L, "%s: a new message needs topic = \"...\" "
			           "(the topic it is sent to)", what);
		topic = lua_tostring(L, -1);
		m = h->msg_new(topic, NULL, 0);
		lua_pop(L, 1);
		/* Made now, in the rule's time (test-script simulates it). */
		if (m && vm->slot && vm->slot->now_us)
			h->msg_set_time(m, vm->slot->now_us);
	}
	if (!m)
		luaL_error(L, "%s: out of memory making a message", what);
	/* Freed by the vm if an error below unwinds past us. */
	vm->tmp_msg = m;
	apply_table(L, h, m, idx, 0, what);
	return m;
}

/* --- msg.headers -------------------------------------------------------------- */

static struct msg_view *view_check(lua_State *L)
{
	return lua_touserdata(L, 1);
}

static int headers_index(lua_State *L)
{
	struct msg_view *v = view_check(L);
	iotr_msg *m = box_msg(L, v->box);
	const char *name = luaL_checkstring(L, 2);
	size_t len;
	const void *value = host_of(v->box)->msg_header(m, name, &len);

	if (value)
		lua_pushlstring(L, value, len);
	else
		lua_pushnil(L);
	return 1;
}

static int headers_newindex(lua_State *L)
{
	struct msg_view *v = view_check(L);
	const struct iotr_host *h = host_of(v->box);
	iotr_msg *m = box_changing(L, v->box);
	const char *name = luaL_checkstring(L, 2);
	char num[64];
	size_t len;
	const char *text;

	if (lua_isnil(L, 3)) {
		h->msg_remove_header(m, name);
		return 0;
	}
	if (!(text = value_text(L, 3, num, sizeof(num), &len)))
		return luaL_error(L, "msg.headers.%s: a header value must be a "
		                  "string, number or boolean, not a %s", name,
		                  luaL_typename(L, 3));
	h->msg_remove_header(m, name);
	box_check_rc(L, h->msg_add_header(m, name, text, len));
	return 0;
}

/* The iterator of pairs(msg.headers): header i (upvalue) in order. */
static int headers_next(lua_State *L)
{
	struct msg_view *v = lua_touserdata(L, lua_upvalueindex(1));
	lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
	iotr_msg *m = box_msg(L, v->box);
	const char *name;
	const void *value;
	size_t len;

	if (host_of(v->box)->msg_header_at(m, (size_t)i, &name, &value,
	                                   &len) != IOTR_OK)
		return 0;
	lua_pushinteger(L, i + 1);
	lua_replace(L, lua_upvalueindex(2));
	lua_pushstring(L, name);
	lua_pushlstring(L, value, len);
	return 2;
}

static int headers_pairs(lua_State *L)
{
	lua_settop(L, 1);
	lua_pushinteger(L, 0);
	lua_pushcclosure(L, headers_next, 2);
	return 1;
}

static int headers_len(lua_State *L)
{
	struct msg_view *v = view_check(L);

	lua_pushinteger(L, (lua_Integer)host_of(v->box)->msg_header_count(
		box_msg(L, v->box)));
	return 1;
}

/* --- msg.captures --------------------------------------------------------------- */

static int captures_index(lua_State *L)
{
	struct msg_view *v = view_check(L);
	iotr_msg *m = box_msg(L, v->box);
	const char *value = host_of(v->box)->msg_capture(m,
	                                                 luaL_checkstring(L, 2));

	if (value)
		lua_pushstring(L, value);
	else
		lua_pushnil(L);
	return 1;
}

static int captures_newindex(lua_State *L)
{
	return luaL_error(L, "msg.captures are the route's named captures of "
	                  "the topic and cannot be changed; put what you "
	                  "derive in msg.headers or msg.payload");
}

/* --- msg --------------------------------------------------------------------------- */

static int msg_field_id(lua_State *L, int key_idx)
{
	int id;

	lua_pushvalue(L, key_idx);
	lua_rawget(L, lua_upvalueindex(1));
	id = (int)lua_tointeger(L, -1);
	lua_pop(L, 1);
	return id;
}

/* msg.headers / msg.captures: one view per msg, made on first use. */
static void push_view(lua_State *L, struct msg_box *box, int uv, int mt_ref)
{
	struct msg_view *v;

	if (lua_getiuservalue(L, 1, uv) != LUA_TNIL)
		return;
	lua_pop(L, 1);
	v = lua_newuserdatauv(L, sizeof(*v), 1);
	v->box = box;
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);     /* the view keeps the msg alive */
	lua_rawgeti(L, LUA_REGISTRYINDEX, mt_ref);
	lua_setmetatable(L, -2);
	lua_pushvalue(L, -1);
	lua_setiuservalue(L, 1, uv);
}

/* msg:json() -> the payload decoded (once), or nil and a reason. */
static int msg_json(lua_State *L)
{
	struct msg_box *box;
	iotr_msg *m;
	const void *payload;
	size_t len;
	int n;

	if (lua_type(L, 1) != LUA_TUSERDATA)
		return luaL_error(L, "call it as msg:json(), with a colon");
	box = lua_touserdata(L, 1);
	m = box_msg(L, box);
	if (box->json_cached) {
		lua_getiuservalue(L, 1, UV_JSON);
		if (box->json_cached > 0)
			return 1;
		lua_getiuservalue(L, 1, UV_JSON_ERROR);
		return 2;
	}
	payload = host_of(box)->msg_payload(m, &len);
	/* Decoded from a Lua copy: the decoder allocates, a garbage
	 * collection step may run a finalizer, and a finalizer holding msg
	 * may set msg.payload, which frees the buffer being read. */
	lua_pushlstring(L, payload ? payload : "", len);
	payload = lua_tostring(L, -1);
	n = luajson_push_decoded(L, payload, len);
	lua_remove(L, -1 - n);
	if (n == 1) {
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, 1, UV_JSON);
		box->json_cached = 1;
		return 1;
	}
	lua_pushvalue(L, -1);
	lua_setiuservalue(L, 1, UV_JSON_ERROR);
	box->json_cached = -1;
	return 2;
}

static int msg_index(lua_State *L)
{
	struct msg_box *box = lua_touserdata(L, 1);
	struct rule_vm *vm = box->vm;
	const struct iotr_host *h = vm->rule->host;
	int id = msg_field_id(L, 2);
	iotr_msg *m;
	const char *s;
	size_t len;

	if (id == F_JSON) {
		lua_pushcfunction(L, msg_json);
		return 1;
	}
	m = box_msg(L, box);
	switch (id) {
	case F_TOPIC:
		lua_pushstring(L, h->msg_topic(m));
		return 1;
	case F_PAYLOAD:
		s = h->msg_payload(m, &len);
		lua_pushlstring(L, s ? s : "", len);
		return 1;
	case F_KEY:
		if ((s = h->msg_key(m, &len)))
			lua_pushlstring(L, s, len);
		else
			lua_pushnil(L);
		return 1;
	case F_KAFKA_TOPIC:
		if ((s = h->msg_dest(m)))
			lua_pushstring(L, s);
		else
			lua_pushnil(L);
		return 1;
	case F_QOS:
		lua_pushinteger(L, h->msg_qos(m));
		return 1;
	case F_RETAIN:
		lua_pushboolean(L, h->msg_retain(m));
		return 1;
	case F_TIME:
		lua_pushnumber(L, (lua_Number)h->msg_time(m) / 1e6);
		return 1;
	case F_HEADERS:
		push_view(L, box, UV_HEADERS, vm->ref_headers_mt);
		return 1;
	case F_CAPTURES:
		push_view(L, box, UV_CAPTURES, vm->ref_captures_mt);
		return 1;
	}
	return luaL_error(L, "msg has no field '%s'; it has " MSG_FIELD_LIST,
	                  lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) :
	                  luaL_typename(L, 2));
}

static int msg_newindex(lua_State *L)
{
	struct msg_box *box = lua_touserdata(L, 1);
	const struct iotr_host *h = host_of(box);
	int id = msg_field_id(L, 2);
	iotr_msg *m;

	switch (id) {
	case F_TOPIC:
		return luaL_error(L, "msg.topic is the topic the message came "
		                  "in on and cannot be changed; set "
		                  "msg.kafka_topic to change where it goes");
	case F_CAPTURES:
		return captures_newindex(L);
	case F_JSON:
		return luaL_error(L, "msg.json is a method; to change the "
		                  "payload, set msg.payload = table (sent as "
		                  "JSON)");
	case 0:
		return luaL_error(L, "msg has no field '%s' to set; it has "
		                  MSG_FIELD_LIST, lua_type(L, 2) ==
		                  LUA_TSTRING ? lua_tostring(L, 2) :
		                  luaL_typename(L, 2));
	}
	m = box_changing(L, box);
	switch (id) {
	case F_PAYLOAD:
		set_payload(L, h, m, 3, "msg.payload");
		box->json_cached = 0;
		lua_pushnil(L);
		lua_setiuservalue(L, 1, UV_JSON);
		break;
	case F_KEY:
		set_key(L, h, m, 3, "msg.key");
		break;
	case F_KAFKA_TOPIC:
		set_dest(L, h, m, 3, "msg.kafka_topic");
		break;
	case F_QOS:
		set_qos(L, h, m, 3, 0, "msg.qos");
		break;
	case F_RETAIN:
		set_qos(L, h, m, 0, 3, "msg.retain");
		break;
	case F_TIME:
		set_time(L, h, m, 3, "msg.time");
		break;
	case F_HEADERS:
		set_headers(L, h, m, 3, 1, "msg.headers");
		break;
	}
	return 0;
}

static int msg_tostring(lua_State *L)
{
	struct msg_box *box = lua_touserdata(L, 1);

	if (box->msg)
		lua_pushfstring(L, "msg(%s)",
		                host_of(box)->msg_topic(box->msg));
	else
		lua_pushliteral(L, "msg(used up)");
	return 1;
}

/* A metatable in the registry, hidden from getmetatable(). */
static int new_metatable(lua_State *L, const char *name, const luaL_Reg *f,
                         int upvalue_ref)
{
	lua_newtable(L);
	for (; f->name; f++) {
		if (upvalue_ref) {
			lua_rawgeti(L, LUA_REGISTRYINDEX, upvalue_ref);
			lua_pushcclosure(L, f->func, 1);
		} else {
			lua_pushcfunction(L, f->func);
		}
		lua_setfield(L, -2, f->name);
	}
	lua_pushstring(L, name);
	lua_setfield(L, -2, "__name");
	lua_pushstring(L, name);
	lua_setfield(L, -2, "__metatable");
	return luaL_ref(L, LUA_REGISTRYINDEX);
}

void luamsg_open(lua_State *L, struct rule_vm *vm)
{
	static const luaL_Reg msg_mt[] = {
		{ "__index", msg_index },
		{ "__newindex", msg_newindex },
		{ "__tostring", msg_tostring },
		{ NULL, NULL }
	};
	static const luaL_Reg headers_mt[] = {
		{ "__index", headers_index },
		{ "__newindex", headers_newindex },
		{ "__pairs", headers_pairs },
		{ "__len", headers_len },
		{ NULL, NULL }
	};
	static const luaL_Reg captures_mt[] = {
		{ "__index", captures_index },
		{ "__newindex", captures_newindex },
		{ NULL, NULL }
	};
	size_t i;

	lua_createtable(L, 0, sizeof(msg_fields) / sizeof(msg_fields[0]));
	for (i = 0; i < sizeof(msg_fields) / sizeof(msg_fields[0]); i++) {
		lua_pushinteger(L, msg_fields[i].id);
		lua_setfield(L, -2, msg_fields[i].name);
	}
	vm->ref_fields = luaL_ref(L, LUA_REGISTRYINDEX);
	vm->ref_msg_mt = new_metatable(L, "iotrouter.msg", msg_mt,
	                               vm->ref_fields);
	vm->ref_headers_mt = new_metatable(L, "iotrouter.headers", headers_mt,
	                                   0);
	vm->ref_captures_mt = new_metatable(L, "iotrouter.captures",
	                                    captures_mt, 0);
	lua_pushboolean(L, 0);
	vm->ref_box = luaL_ref(L, LUA_REGISTRYINDEX);
}

struct msg_box *luamsg_push(lua_State *L, struct rule_vm *vm, iotr_msg *m)
{
	struct msg_box *box = lua_newuserdatauv(L, sizeof(*box), UV_COUNT);

	box->msg = m;
	box->vm = vm;
	box->snapshot = NULL;
	box->json_cached = 0;
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_msg_mt);
	lua_setmetatable(L, -2);
	/* Anchored, so the C side may still reach it after an error. */
	lua_pushvalue(L, -1);
	lua_rawseti(L, LUA_REGISTRYINDEX, vm->ref_box);
	return box;
}

/* Put back what the failed call changed. */
static void luamsg_restore(const struct iotr_host *h, iotr_msg *m,
                           const iotr_msg *snap)
{
	const void *payload;
	const char *key, *name;
	const void *value;
	size_t len, i, n;

	payload = h->msg_payload(snap, &len);
	h->msg_set_payload(m, payload, len);
	key = h->msg_key(snap, &len);
	h->msg_set_key(m, key, len);
	h->msg_set_dest(m, h->msg_dest(snap));
	h->msg_set_qos(m, h->msg_qos(snap), h->msg_retain(snap));
	h->msg_set_time(m, h->msg_time(snap));
	while (h->msg_header_count(m) > 0) {
		char *copy;

		h->msg_header_at(m, 0, &name, NULL, NULL);
		if (!(copy = strdup(name)))
			return;
		h->msg_remove_header(m, copy);
		free(copy);
	}
	n = h->msg_header_count(snap);
	for (i = 0; i < n; i++)
		if (h->msg_header_at(snap, i, &name, &value, &len) == IOTR_OK)
			h->msg_add_header(m, name, value, len);
}

void luamsg_close(struct msg_box *box, int failed)
{
	const struct iotr_host *h = host_of(box);

	if (box->snapshot) {
		if (failed && box->msg)
			luamsg_restore(h, box->msg, box->snapshot);
		h->msg_free(box->snapshot);
		box->snapshot = NULL;
	}
	box->msg = NULL;
}

static int is_box(lua_State *L, int idx, const struct msg_box *box)
{
	return lua_type(L, idx) == LUA_TUSERDATA &&
	       lua_touserdata(L, idx) == box;
}

/* Is the value at idx some msg object (of any call)? */
static int is_any_box(lua_State *L, int idx, struct rule_vm *vm)
{
	int same;

	if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx))
		return 0;
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_msg_mt);
	same = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return same;
}

static void bad_element(lua_State *L, int idx, struct rule_vm *vm,
                        lua_Integer i)
{
	if (is_any_box(L, idx, vm))
		luaL_error(L, "on_message returned, at position %d of its "
		           "list, a msg from an earlier call; return this "
		           "call's msg or message tables", (int)i);
	luaL_error(L, "on_message returned a list whose element %d is a %s; "
	           "each element is msg or a table {kafka_topic=, key=, "
	           "payload=, headers=}", (int)i, luaL_typename(L, idx));
}

void luamsg_result(lua_State *L, int idx, struct msg_box *box, int *verdict)
{
	struct rule_vm *vm = box->vm;
	const struct iotr_host *h = vm->rule->host;
	lua_Integer i, n;

	idx = lua_absindex(L, idx);
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		*verdict = IOTR_DROP;
		return;
	case LUA_TBOOLEAN:
		if (!lua_toboolean(L, idx)) {
			*verdict = IOTR_DROP;
			return;
		}
		break;
	case LUA_TUSERDATA:
		if (is_box(L, idx, box)) {
			*verdict = IOTR_OK;
			return;
		}
		if (is_any_box(L, idx, vm))
			luaL_error(L, "on_message returned a msg from an earlier "
			           "call; return the msg it was given, nil, or "
			           "a list");
		break;
	case LUA_TTABLE:
		if (lua_rawgeti(L, idx, 1) == LUA_TNIL) {
			lua_pop(L, 1);
			lua_pushnil(L);
			if (!lua_next(L, idx)) {       /* {}: nothing goes on */
				*verdict = IOTR_DROP;
				return;
			}
			lua_pop(L, 2);
			/* One message table: this message, changed. */
			box_changing(L, box);
			apply_table(L, h, box->msg, idx, 0,
			            "on_message's result");
			*verdict = IOTR_OK;
			return;
		}
		lua_pop(L, 1);
		n = (lua_Integer)lua_rawlen(L, idx);
		/* Check every element before anything is made. */
		for (i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			if (!is_box(L, -1, box) && lua_type(L, -1) != LUA_TTABLE)
				bad_element(L, lua_gettop(L), vm, i);
			lua_pop(L, 1);
		}
		for (i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			if (i == 1) {
				if (!is_box(L, -1, box)) {
					box_changing(L, box);
					apply_table(L, h, box->msg, -1, 0,
					            "on_message's result");
				}
			} else if (is_box(L, -1, box)) {
				iotr_msg *copy = h->msg_clone(box->msg);

				if (!copy)
					luaL_error(L, "out of memory copying "
					           "the message");
				vm->tmp_msg = copy;
				vm_pending_add(L, copy);
			} else {
				vm_pending_add(L, luamsg_from_table(L, -1,
				               box->msg, "on_message's result"));
			}
			lua_pop(L, 1);
		}
		*verdict = IOTR_OK;
		return;
	default:
		break;
	}
	luaL_error(L, "on_message returned a %s; return msg (maybe changed), "
	           "nil to drop it, or a list of messages",
	           luaL_typename(L, idx));
}
