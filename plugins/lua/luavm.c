/*
 * luavm.c - one Lua state of a rule: a capped allocator, an instruction
 * budget, the sandbox, the `router` table, and protected calls that turn
 * every failure into a sentence naming the script's file and line.
 *
 * A vm is used by one thread at a time (its slot's lock, see luarule.h).
 * Nothing runs outside lua_pcall: setting up, loading, calling the rule and
 * reading what it returned are all protected, so an error or a refused
 * allocation unwinds to here and never aborts the router.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "luarule.h"

/* The count hook fires every this many instructions (or the budget, if
 * smaller); the budget is checked to within this. */
#define VM_HOOK_STEP 1000

struct rule_vm *vm_of(lua_State *L)
{
	return *(struct rule_vm **)lua_getextraspace(L);
}

static int64_t vm_wallclock_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* FILE:LINE of the innermost Lua function running in L, or "" */
static void vm_where(lua_State *L, char *buf, size_t len)
{
	lua_Debug ar;
	int level;

	buf[0] = '\0';
	for (level = 0; level < 50 && lua_getstack(L, level, &ar); level++) {
		if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
			snprintf(buf, len, "%s:%d", ar.short_src, ar.currentline);
			return;
		}
	}
}

/* --- memory ------------------------------------------------------------------ */

/*
 * The allocator: refuses to grow the state past memory_limit.  Lua then
 * collects garbage and tries again, and raises "not enough memory" if that
 * does not help.  Shrinking never fails (Lua relies on it).
 */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct rule_vm *vm = ud;
	size_t old = ptr ? osize : 0;
	void *p;

	if (nsize == 0) {
		free(ptr);
		vm->mem_used -= old;
		return NULL;
	}
	if (nsize > old && vm->mem_used - old + nsize > vm->mem_limit) {
		if (!vm->mem_refused && vm->L && vm->in_call)
			vm_where(vm->L, vm->mem_where, sizeof(vm->mem_where));
		vm->mem_refused = 1;
		return NULL;
	}
	p = realloc(ptr, nsize);
	if (!p)
		return nsize <= old ? ptr : NULL;
	vm->mem_used = vm->mem_used - old + nsize;
	return p;
}

/* --- instruction budget ------------------------------------------------------- */

static void vm_hook(lua_State *L, lua_Debug *ar)
{
	struct rule_vm *vm = vm_of(L);

	vm->budget_used += vm->budget_step;
	if (!vm->budget_blown && vm->budget_used < vm->rule->budget)
		return;
	if (!vm->budget_blown) {
		vm->budget_blown = 1;
		if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
			snprintf(vm->budget_where, sizeof(vm->budget_where),
			         "%s:%d", ar->short_src, ar->currentline);
		/* From now on every instruction fails, so that a pcall in
		 * the rule cannot catch the error and carry on. */
		lua_sethook(L, vm_hook, LUA_MASKCOUNT, 1);
	}
	luaL_error(L, "instruction budget of %I exceeded",
	           (lua_Integer)vm->rule->budget);
}

/* --- protected calls ------------------------------------------------------------- */

/* The message handler: make sure the message starts with FILE:LINE. */
static int vm_msgh(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	const char *msg = lua_tostring(L, 1);
	char where[300];
	lua_Debug ar;
	int level;

	if (!msg)
		msg = lua_pushfstring(L, "error object is a %s value",
		                      luaL_typename(L, 1));
	where[0] = '\0';
	for (level = 1; level < 50 && lua_getstack(L, level, &ar); level++) {
		if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
			snprintf(where, sizeof(where), "%s:%d", ar.short_src,
			         ar.currentline);
			break;
		}
	}
	if (!where[0])   /* raised by C after the rule returned */
		snprintf(where, sizeof(where), "%s:%d", vm->rule->script,
		         vm->on_message_line);
	if (strncmp(msg, where, strcspn(where, ":") + 1) != 0)
		lua_pushfstring(L, "%s: %s", where, msg);
	else
		lua_pushstring(L, msg);
	return 1;
}

/*
 * Call the function below nargs arguments on the stack, protected, within
 * the budget; classify a failure and describe it in err.
 */
static int vm_pcall(struct rule_vm *vm, int nargs, int nresults, char *err,
                    size_t errlen)
{
	lua_State *L = vm->L;
	int base = lua_gettop(L) - nargs;
	const char *text;
	int status, rc;

	lua_pushcfunction(L, vm_msgh);
	lua_insert(L, base);
	vm->budget_used = 0;
	vm->budget_blown = 0;
	vm->mem_refused = 0;
	vm->mem_where[0] = '\0';
	vm->in_call = 1;
	lua_sethook(L, vm_hook, LUA_MASKCOUNT, vm->budget_step);
	status = lua_pcall(L, nargs, nresults, base);
	vm->in_call = 0;
	lua_remove(L, base);
	if (vm->tmp_json) {
		json_decref(vm->tmp_json);
		vm->tmp_json = NULL;
	}
	if (vm->tmp_msg) {
		vm->rule->host->msg_free(vm->tmp_msg);
		vm->tmp_msg = NULL;
	}
	if (status == LUA_OK)
		return VM_OK;
	text = lua_tostring(L, -1);
	if (vm->budget_blown) {
		snprintf(err, errlen, "%s: instruction budget of %lld "
		         "exceeded in %s (an endless loop?); fix the loop, or "
		         "raise instruction_budget if the rule needs more",
		         vm->budget_where[0] ? vm->budget_where :
		         vm->rule->script, (long long)vm->rule->budget,
		         vm->call_name);
		rc = VM_BUDGET;
	} else if (status == LUA_ERRMEM ||
	           (vm->mem_refused && text &&
	            strstr(text, "not enough memory"))) {
		char where[300];

		if (vm->mem_where[0])
			snprintf(where, sizeof(where), "%s", vm->mem_where);
		else
			snprintf(where, sizeof(where), "%s:%d",
			         vm->rule->script, vm->on_message_line);
		snprintf(err, errlen, "%s: memory limit of %lld bytes "
		         "exceeded in %s; the rule's Lua state is started "
		         "afresh (router.state is emptied); keep less state "
		         "(router.forget), or raise memory_limit", where,
		         (long long)vm->rule->memory_limit, vm->call_name);
		rc = VM_MEMORY;
	} else {
		snprintf(err, errlen, "%s", text ? text : "unknown error");
		rc = VM_ERROR;
	}
	lua_pop(L, 1);
	return rc;
}

/* --- the router table ---------------------------------------------------------------- */

void vm_pending_add(lua_State *L, iotr_msg *m)
{
	struct rule_vm *vm = vm_of(L);
	struct rule_slot *s = vm->slot;

	if (!s || !vm->in_call)
		luaL_error(L, "router.emit works in on_message, on_tick, "
		           "on_start and on_stop, not at the top level of the "
		           "script");
	if ((int64_t)s->npending >= vm->rule->max_emits)
		luaL_error(L, "one call may produce at most %I messages "
		           "(max_emits); emit fewer, or raise max_emits",
		           (lua_Integer)vm->rule->max_emits);
	if (s->npending == s->pending_cap) {
		size_t cap = s->pending_cap ? s->pending_cap * 2 : 16;
		iotr_msg **p = realloc(s->pending, cap * sizeof(*p));

		if (!p)
			luaL_error(L, "out of memory queueing a message");
		s->pending = p;
		s->pending_cap = cap;
	}
	s->pending[s->npending++] = m;
	vm->tmp_msg = NULL;
}

/* router.emit{topic=, key=, payload=, headers=, qos=, retain=} */
static int vm_l_emit(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);

	luaL_checktype(L, 1, LUA_TTABLE);
	if (!vm->slot || !vm->in_call)
		return luaL_error(L, "router.emit works in on_message, on_tick, "
		                  "on_start and on_stop, not at the top level "
		                  "of the script");
	vm_pending_add(L, luamsg_from_table(L, 1, NULL, "router.emit"));
	return 0;
}

static int vm_level(lua_State *L, const char *name)
{
	static const struct {
		const char *name;
		int level;
	} levels[] = {
		{ "error", IOTR_LOG_ERROR }, { "warning", IOTR_LOG_WARNING },
		{ "warn", IOTR_LOG_WARNING }, { "notice", IOTR_LOG_NOTICE },
		{ "info", IOTR_LOG_INFO }, { "debug", IOTR_LOG_DEBUG },
	};
	size_t i;

	for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(name, levels[i].name) == 0)
			return levels[i].level;
	return luaL_error(L, "router.log: level '%s' is not one of error, "
	                  "warning, notice, info, debug", name);
}

/* Log the values from index first on, separated by spaces, with the
 * caller's FILE:LINE. */
static int vm_log_values(lua_State *L, int level, int first)
{
	struct rule_vm *vm = vm_of(L);
	const struct iotr_host *h = vm->rule->host;
	int i, n = lua_gettop(L);
	luaL_Buffer b;
	char where[300];

	if (!h->log_enabled(vm->rule->inst, level))
		return 0;
	vm_where(L, where, sizeof(where));
	luaL_buffinit(L, &b);
	for (i = first; i <= n; i++) {
		if (i > first)
			luaL_addchar(&b, ' ');
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
	}
	luaL_pushresult(&b);
	rule_log(vm->rule, level, "%s: %s", where[0] ? where :
	         vm->rule->script, lua_tostring(L, -1));
	return 0;
}

/* router.log(level, ...) */
static int vm_l_log(lua_State *L)
{
	return vm_log_values(L, vm_level(L, luaL_checkstring(L, 1)), 2);
}

/* print(...): router.log("info", ...) */
static int vm_l_print(lua_State *L)
{
	return vm_log_values(L, IOTR_LOG_INFO, 1);
}

/* router.now(): seconds since the epoch (see vm_call_message/hook). */
static int vm_l_now(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	int64_t us = vm->slot && vm->in_call ? vm->slot->now_us :
		vm_wallclock_us();

	lua_pushnumber(L, (lua_Number)us / 1e6);
	return 1;
}

/* The key argument of router.state/forget: the one given, or the current
 * message's key (its source topic when it has none). */
static void vm_state_key(lua_State *L, const char *fn)
{
	struct rule_vm *vm = vm_of(L);
	const struct iotr_host *h = vm->rule->host;
	struct rule_slot *s = vm->slot;
	const char *key;
	size_t len;

	if (!lua_isnoneornil(L, 1)) {
		if (lua_type(L, 1) != LUA_TSTRING && lua_type(L, 1) != LUA_TNUMBER)
			luaL_error(L, "%s(key): key must be a string, not a %s",
			           fn, luaL_typename(L, 1));
		lua_settop(L, 1);
		lua_tostring(L, 1);     /* a number becomes its text */
		return;
	}
	if (!s || !s->msg)
		luaL_error(L, "%s() without a key works only in on_message; "
		           "pass the key, e.g. %s(\"dev-1\")", fn, fn);
	lua_settop(L, 0);
	if ((key = h->msg_key(s->msg, &len)))
		lua_pushlstring(L, key, len);
	else
		lua_pushstring(L, h->msg_topic(s->msg));
}

/* router.state([key]) -> the table kept for key, made on first use. */
static int vm_l_state(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);

	vm_state_key(L, "router.state");
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_state);
	lua_pushvalue(L, 1);
	if (lua_rawget(L, 2) == LUA_TTABLE)
		return 1;
	lua_pop(L, 1);
	if ((int64_t)vm->nkeys >= vm->rule->max_state_keys)
		return luaL_error(L, "router.state: %I keys are in use "
		                  "(max_state_keys); drop keys you no longer "
		                  "need with router.forget(key), or raise "
		                  "max_state_keys",
		                  (lua_Integer)vm->rule->max_state_keys);
	lua_newtable(L);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, -2);
	lua_rawset(L, 2);
	vm->nkeys++;
	return 1;
}

/* router.forget([key]): drop the state kept for key. */
static int vm_l_forget(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);

	vm_state_key(L, "router.forget");
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_state);
	lua_pushvalue(L, 1);
	if (lua_rawget(L, 2) == LUA_TNIL)
		return 0;
	lua_pop(L, 1);
	lua_pushvalue(L, 1);
	lua_pushnil(L);
	lua_rawset(L, 2);
	vm->nkeys--;
	return 0;
}

/* The iterator of router.keys(): upvalue 1 is the sorted list of keys,
 * upvalue 2 the position.  Keys forgotten meanwhile are skipped. */
static int vm_keys_next(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));

	lua_settop(L, 0);
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_state);
	for (;;) {
		if (lua_rawgeti(L, lua_upvalueindex(1), ++i) == LUA_TNIL)
			return 0;
		lua_pushvalue(L, -1);
		if (lua_rawget(L, 1) == LUA_TTABLE)
			break;
		lua_pop(L, 2);
	}
	lua_pushinteger(L, i);
	lua_replace(L, lua_upvalueindex(2));
	return 2;
}

static int vm_key_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* for key, state in router.keys() do ... end: every key of router.state,
 * in sorted order, so that what a tick emits comes out in the same order
 * every run. */
static int vm_l_keys(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	const char **keys;
	size_t n = 0, i;

	lua_settop(L, 0);
	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_state);
	keys = lua_newuserdatauv(L, (vm->nkeys ? vm->nkeys : 1) *
	                         sizeof(*keys), 0);
	lua_pushnil(L);
	while (lua_next(L, 1)) {
		lua_pop(L, 1);
		if (n < vm->nkeys)   /* kept alive by the state table */
			keys[n++] = lua_tostring(L, -1);
	}
	qsort(keys, n, sizeof(*keys), vm_key_cmp);
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_pushstring(L, keys[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_pushinteger(L, 0);
	lua_pushcclosure(L, vm_keys_next, 2);
	return 1;
}

/* --- the sandbox ---------------------------------------------------------------------- */

/* load() that takes source text only, unless `allow` has "load". */
static int vm_l_load(lua_State *L)
{
	int n = lua_gettop(L);

	if (n < 3)
		lua_settop(L, 3);
	if (lua_type(L, 3) == LUA_TSTRING && strchr(lua_tostring(L, 3), 'b') &&
	    !strchr(lua_tostring(L, 3), 't')) {
		lua_pushnil(L);
		lua_pushliteral(L, "load: binary chunks are not allowed in "
		                "rules; give Lua source, or add \"load\" to "
		                "allow");
		return 2;
	}
	lua_pushliteral(L, "t");
	lua_replace(L, 3);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* collectgarbage() limited to what cannot hurt other rules' latency. */
static int vm_l_collectgarbage(lua_State *L)
{
	const char *opt = luaL_optstring(L, 1, "collect");

	if (strcmp(opt, "collect") && strcmp(opt, "count") &&
	    strcmp(opt, "step") && strcmp(opt, "isrunning"))
		return luaL_error(L, "collectgarbage(\"%s\") is not available "
		                  "to rules; \"collect\", \"count\" and \"step\" "
		                  "are", opt);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* Set field name of the table at idx to nil. */
static void vm_unset(lua_State *L, int idx, const char *name)
{
	lua_pushnil(L);
	lua_setfield(L, idx, name);
}

static void vm_open_lib(lua_State *L, const char *name, lua_CFunction open)
{
	luaL_requiref(L, name, open, 1);
	lua_pop(L, 1);
}

static void vm_sandbox(lua_State *L, unsigned allow)
{
	static const char *const safe_os[] = { "clock", "date", "difftime",
	                                       "time", NULL };
	int g;
	size_t i;

	vm_open_lib(L, LUA_GNAME, luaopen_base);
	vm_open_lib(L, LUA_COLIBNAME, luaopen_coroutine);
	vm_open_lib(L, LUA_TABLIBNAME, luaopen_table);
	vm_open_lib(L, LUA_STRLIBNAME, luaopen_string);
	vm_open_lib(L, LUA_MATHLIBNAME, luaopen_math);
	vm_open_lib(L, LUA_UTF8LIBNAME, luaopen_utf8);
	vm_open_lib(L, LUA_OSLIBNAME, luaopen_os);
	if (allow & RULE_ALLOW_IO)
		vm_open_lib(L, LUA_IOLIBNAME, luaopen_io);
	if (allow & RULE_ALLOW_DEBUG)
		vm_open_lib(L, LUA_DBLIBNAME, luaopen_debug);
	if (allow & (RULE_ALLOW_REQUIRE | RULE_ALLOW_LOADLIB))
		vm_open_lib(L, LUA_LOADLIBNAME, luaopen_package);

	lua_pushglobaltable(L);
	g = lua_gettop(L);
	if (!(allow & RULE_ALLOW_OS)) {
		/* os keeps only the clock: no execute, exit, getenv,
		 * remove, rename, tmpname, setlocale. */
		lua_getfield(L, g, LUA_OSLIBNAME);
		lua_newtable(L);
		for (i = 0; safe_os[i]; i++) {
			lua_getfield(L, -2, safe_os[i]);
			lua_setfield(L, -2, safe_os[i]);
		}
		lua_setfield(L, g, LUA_OSLIBNAME);
		lua_pop(L, 1);
	}
	if ((allow & RULE_ALLOW_REQUIRE) && !(allow & RULE_ALLOW_LOADLIB)) {
		/* Lua modules only: no C searchers, no loadlib. */
		lua_getfield(L, g, LUA_LOADLIBNAME);
		vm_unset(L, -1, "loadlib");
		lua_pushliteral(L, "");
		lua_setfield(L, -2, "cpath");
		lua_getfield(L, -1, "searchers");
		lua_pushnil(L);
		lua_rawseti(L, -2, 4);
		lua_pushnil(L);
		lua_rawseti(L, -2, 3);
		lua_pop(L, 2);
	}
	if (!(allow & RULE_ALLOW_LOAD)) {
		vm_unset(L, g, "dofile");
		vm_unset(L, g, "loadfile");
		lua_getfield(L, g, "load");
		lua_pushcclosure(L, vm_l_load, 1);
		lua_setfield(L, g, "load");
	}
	lua_getfield(L, g, "collectgarbage");
	lua_pushcclosure(L, vm_l_collectgarbage, 1);
	lua_setfield(L, g, "collectgarbage");
	lua_pushcfunction(L, vm_l_print);
	lua_setfield(L, g, "print");
	lua_pop(L, 1);
}

static void vm_open_router(lua_State *L, struct rule_vm *vm)
{
	static const luaL_Reg funcs[] = {
		{ "emit", vm_l_emit },
		{ "log", vm_l_log },
		{ "now", vm_l_now },
		{ "state", vm_l_state },
		{ "forget", vm_l_forget },
		{ "keys", vm_l_keys },
		{ NULL, NULL }
	};
	const struct iotr_host *h = vm->rule->host;
	size_t i, n = h->param_count(vm->rule->inst, "vars");

	lua_newtable(L);
	vm->ref_state = luaL_ref(L, LUA_REGISTRYINDEX);
	luamsg_open(L, vm);

	luaL_newlib(L, funcs);
	luajson_open(L, vm);
	lua_setfield(L, -2, "json");
	lua_createtable(L, 0, (int)n);
	for (i = 0; i < n; i++) {
		const char *var = h->param_string_at(vm->rule->inst, "vars", i);
		const char *eq = strchr(var, '=');

		lua_pushlstring(L, var, (size_t)(eq - var));
		lua_pushstring(L, eq + 1);
		lua_rawset(L, -3);
	}
	lua_setfield(L, -2, "vars");
	lua_pushstring(L, vm->rule->script);
	lua_setfield(L, -2, "script");
	lua_pushstring(L, h->instance_name(vm->rule->inst));
	lua_setfield(L, -2, "instance");
	lua_setglobal(L, "router");
}

static int vm_setup(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);

	vm_sandbox(L, vm->rule->allow);
	vm_open_router(L, vm);
	return 0;
}

/* Find the rule's functions in the globals (raw: no metamethods). */
static int vm_find_functions(lua_State *L)
{
	static const char *const names[] = { "on_message", "on_tick",
	                                     "on_start", "on_stop" };
	struct rule_vm *vm = vm_of(L);
	int *refs[] = { &vm->ref_on_message, &vm->ref_on_tick,
	                &vm->ref_on_start, &vm->ref_on_stop };
	size_t i;

	lua_pushglobaltable(L);
	for (i = 0; i < 4; i++) {
		int t;

		lua_pushstring(L, names[i]);
		t = lua_rawget(L, 1);
		if (t == LUA_TNIL) {
			if (i == 0)
				return luaL_error(L, "%s defines no function "
				                  "on_message(msg); every rule needs "
				                  "one (return msg to pass a message "
				                  "on, nil to drop it)",
				                  vm->rule->script);
			lua_pop(L, 1);
			continue;
		}
		if (t != LUA_TFUNCTION)
			return luaL_error(L, "%s: %s is a %s; it must be a "
			                  "function", vm->rule->script, names[i],
			                  lua_typename(L, t));
		if (i == 0) {
			lua_Debug ar;

			lua_pushvalue(L, -1);
			lua_getinfo(L, ">S", &ar);
			vm->on_message_line = ar.linedefined;
		}
		*refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	return 0;
}

static int vm_panic(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	const char *msg = lua_tostring(L, -1);

	/* Unreachable by design: everything runs under lua_pcall. */
	vm->rule->host->log(vm->rule->inst, IOTR_LOG_ERROR, "%s: Lua panic: "
	                    "%s; please report this as a bug",
	                    vm->rule->script, msg ? msg : "?");
	return 0;
}

struct rule_vm *vm_new(struct lua_rule *r, struct rule_slot *slot,
                       const char *source, size_t len, unsigned generation,
                       char *err, size_t errlen)
{
	struct rule_vm *vm = calloc(1, sizeof(*vm));
	char chunkname[4096], msg[1024];
	lua_State *L;
	int status;

	if (!vm) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	vm->rule = r;
	vm->generation = generation;
	vm->mem_limit = (size_t)r->memory_limit;
	vm->budget_step = r->budget < VM_HOOK_STEP ? (int)r->budget :
		VM_HOOK_STEP;
	vm->ref_on_message = vm->ref_on_tick = LUA_NOREF;
	vm->ref_on_start = vm->ref_on_stop = LUA_NOREF;
	vm->on_message_line = 1;
	if (!(L = lua_newstate(vm_alloc, vm))) {
		snprintf(err, errlen, "cannot make a Lua state within "
		         "memory_limit (%lld bytes); raise memory_limit",
		         (long long)r->memory_limit);
		free(vm);
		return NULL;
	}
	vm->L = L;
	*(struct rule_vm **)lua_getextraspace(L) = vm;
	lua_atpanic(L, vm_panic);

	vm->call_name = "setting up the state";
	lua_pushcfunction(L, vm_setup);
	if (vm_pcall(vm, 0, 0, msg, sizeof(msg)) != VM_OK) {
		snprintf(err, errlen, "cannot set up a Lua state: %s", msg);
		goto fail;
	}
	snprintf(chunkname, sizeof(chunkname), "@%s", r->script);
	status = luaL_loadbufferx(L, source, len, chunkname,
	                          (r->allow & RULE_ALLOW_LOAD) ? "bt" : "t");
	if (status != LUA_OK) {
		const char *text = lua_tostring(L, -1);

		snprintf(err, errlen, "%s", status == LUA_ERRMEM ?
		         "not enough memory to compile the script; raise "
		         "memory_limit" : text ? text : "cannot compile it");
		goto fail;
	}
	vm->call_name = "the script's top level";
	if (vm_pcall(vm, 0, 0, err, errlen) != VM_OK)
		goto fail;
	vm->call_name = "looking up on_message";
	lua_pushcfunction(L, vm_find_functions);
	if (vm_pcall(vm, 0, 0, err, errlen) != VM_OK)
		goto fail;
	vm->slot = slot;
	return vm;
fail:
	vm_free(vm);
	return NULL;
}

void vm_free(struct rule_vm *vm)
{
	if (!vm)
		return;
	if (vm->L) {
		/* __gc metamethods run in lua_close, within a budget. */
		vm->slot = NULL;
		vm->budget_used = 0;
		vm->budget_blown = 0;
		lua_sethook(vm->L, vm_hook, LUA_MASKCOUNT, vm->budget_step);
		lua_close(vm->L);
	}
	if (vm->tmp_json)
		json_decref(vm->tmp_json);
	if (vm->tmp_msg)
		vm->rule->host->msg_free(vm->tmp_msg);
	free(vm);
}

/* --- calls into the rule ------------------------------------------------------------- */

int vm_call_hook(struct rule_vm *vm, int ref, const char *what,
                 int64_t now_us, char *err, size_t errlen)
{
	lua_State *L = vm->L;
	int nargs = 0;

	if (ref == LUA_NOREF)
		return VM_OK;
	vm->call_name = what;
	if (vm->slot) {
		vm->slot->msg = NULL;
		vm->slot->now_us = now_us;
	}
	lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
	if (ref == vm->ref_on_tick) {
		lua_pushnumber(L, (lua_Number)now_us / 1e6);
		nargs = 1;
	}
	return vm_pcall(vm, nargs, 0, err, errlen);
}

/* The protected part of on_message: make the msg object, call, read the
 * result.  Returns the verdict as an integer. */
static int vm_message_cf(lua_State *L)
{
	struct rule_vm *vm = vm_of(L);
	iotr_msg *m = lua_touserdata(L, 1);
	struct msg_box *box;
	int verdict = IOTR_OK;

	lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_on_message);
	box = luamsg_push(L, vm, m);
	vm->slot->box = box;
	lua_call(L, 1, 1);
	luamsg_result(L, -1, box, &verdict);
	lua_pushinteger(L, verdict);
	return 1;
}

int vm_call_message(struct rule_vm *vm, iotr_msg *msg, int *verdict,
                    char *err, size_t errlen)
{
	const struct iotr_host *h = vm->rule->host;
	struct rule_slot *s = vm->slot;
	lua_State *L = vm->L;
	int rc;

	vm->call_name = "on_message";
	s->msg = msg;
	s->box = NULL;
	s->now_us = h->msg_time(msg);
	lua_pushcfunction(L, vm_message_cf);
	lua_pushlightuserdata(L, msg);
	rc = vm_pcall(vm, 1, 1, err, errlen);
	if (rc == VM_OK) {
		*verdict = (int)lua_tointeger(L, -1);
		lua_pop(L, 1);
	}
	if (s->box)
		luamsg_close(s->box, rc != VM_OK);
	s->msg = NULL;
	s->box = NULL;
	return rc;
}
