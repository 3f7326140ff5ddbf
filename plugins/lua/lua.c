/*
 * lua.c - transform plugin "lua": rules written by operators in Lua 5.4
 * (see iotrouter-lua(7) for the rule API).
 *
 * Threads: process() runs in the router's lanes (host->lane(): a message's
 * key picks its lane), on a worker's thread or on an input's thread, and
 * tick() on each lane's worker.  Each lane gets a slot with its own Lua
 * state, made on its first message, so one key's messages (always in one
 * lane) always meet the same state and its router.state, whichever thread
 * brings them.  Outside a lane (iotrouter test-script) a thread has a slot
 * of its own.  A slot's lock is held while its state runs; the main thread
 * takes it too, to run on_stop() from stop().  reload()
 * runs on the main thread: it checks the new script in a scratch state and
 * bumps a generation number; each lane switches to the new script between
 * two messages (never during one).  The source and the generation are
 * guarded by lua_rule.lock.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "luarule.h"

/* A lane whose state could not be built tries again after this long. */
#define RULE_RETRY_US 1000000

static const struct iotr_param lua_params[] = {
	{ .key = "script", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "The rule file: Lua 5.4 source defining on_message(msg) and "
	         "optionally on_tick(now), on_start(), on_stop() (see "
	         "iotrouter-lua(7)).  Read again on SIGHUP." },
	{ .key = "allow", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "What the rule may use beyond the sandbox: io, os (all of "
	         "it: execute, remove, getenv...), require (Lua modules from "
	         "package.path), loadlib (C modules), load (dofile, loadfile, "
	         "binary chunks), debug.  Default: none." },
	{ .key = "instruction_budget", .type = IOTR_PARAM_INT,
	  .default_value = "1000000",
	  .doc = "Lua instructions one call (on_message, on_tick, on_start, "
	         "on_stop) may run; past it the call fails (an endless loop "
	         "dead-letters its message instead of stalling the worker).",
	  .min = 1000, .max = INT64_C(1000000000000) },
	{ .key = "memory_limit", .type = IOTR_PARAM_INT,
	  .default_value = "67108864",
	  .doc = "Bytes one Lua state (one per worker) may hold; a call that "
	         "needs more fails and the state is started afresh.",
	  .min = 1048576, .max = INT64_C(1099511627776) },
	{ .key = "max_state_keys", .type = IOTR_PARAM_INT,
	  .default_value = "100000",
	  .doc = "Keys router.state may hold per Lua state; making one more "
	         "fails the call (drop keys with router.forget).",
	  .min = 1, .max = INT64_C(1000000000) },
	{ .key = "max_emits", .type = IOTR_PARAM_INT, .default_value = "10000",
	  .doc = "Messages one call may produce with router.emit and a "
	         "returned list, together.",
	  .min = 1, .max = INT64_C(100000000) },
	{ .key = "log_rate_limit", .type = IOTR_PARAM_INT,
	  .default_value = "100",
	  .doc = "Log lines per second from this rule (its errors and "
	         "router.log); more are counted and summarised.  0: no "
	         "limit.",
	  .min = 0, .max = INT64_C(1000000000) },
	{ .key = "vars", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "NAME=VALUE settings the script reads as router.vars.NAME "
	         "(strings), so one script serves several routes." },
	{ .key = NULL }
};

/* --- logging ------------------------------------------------------------------- */

static int rule_log_allowed(struct lua_rule *r)
{
	long long now, held;

	if (r->log_rate <= 0)
		return 1;
	now = (long long)time(NULL);
	if (atomic_load(&r->log_second) != now) {
		atomic_store(&r->log_second, now);
		atomic_store(&r->log_lines, 0);
		held = atomic_exchange(&r->log_suppressed, 0);
		if (held)
			r->host->log(r->inst, IOTR_LOG_WARNING, "%s: %lld more "
			             "log lines were held back (log_rate_limit "
			             "is %lld per second)", r->script, held,
			             (long long)r->log_rate);
	}
	if (atomic_fetch_add(&r->log_lines, 1) < r->log_rate)
		return 1;
	atomic_fetch_add(&r->log_suppressed, 1);
	return 0;
}

void rule_log(struct lua_rule *r, int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	if (!r->host->log_enabled(r->inst, level) || !rule_log_allowed(r))
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	r->host->log(r->inst, level, "%s", line);
}

/* --- the script file ------------------------------------------------------------- */

/* Read the rule file; NULL with a sentence in err. */
static char *rule_read(struct lua_rule *r, size_t *len, char *err,
                       size_t errlen)
{
	FILE *f = fopen(r->script, "rb");
	struct stat sb;
	char *text = NULL;
	size_t n;

	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s; fix `script` (a "
		         "relative path is taken from the router's working "
		         "directory)", r->script, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
		snprintf(err, errlen, "%s is not a regular file; `script` "
		         "must name a Lua file", r->script);
		goto out;
	}
	if (sb.st_size > r->memory_limit) {
		snprintf(err, errlen, "%s is %lld bytes, more than memory_limit "
		         "(%lld); is it the right file?", r->script,
		         (long long)sb.st_size, (long long)r->memory_limit);
		goto out;
	}
	if (!(text = malloc((size_t)sb.st_size + 1))) {
		snprintf(err, errlen, "out of memory reading %s", r->script);
		goto out;
	}
	n = fread(text, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		snprintf(err, errlen, "cannot read %s: %s", r->script,
		         strerror(errno));
		free(text);
		text = NULL;
		goto out;
	}
	text[n] = '\0';
	*len = n;
out:
	fclose(f);
	return text;
}

/* --- slots: one per lane ----------------------------------------------------------- */

/* The slot of lane (>= 0) in the list, or NULL; r->lock held. */
static struct rule_slot *slot_of_lane(struct lua_rule *r, int lane)
{
	struct rule_slot *s;

	for (s = r->slots; s && s->lane != lane; s = s->next)
		;
	return s;
}

/* A host older than plugin ABI 1.2 has no lanes. */
static int rule_no_lane(void)
{
	return -1;
}

/* lane's slot if it has one yet (outside the lanes, the calling thread's),
 * or NULL; takes r->lock only for a lane without an entry in
 * r->lane_slot. */
static struct rule_slot *slot_find(struct lua_rule *r, int lane)
{
	struct rule_slot *s;

	if (lane < 0)
		return pthread_getspecific(r->slot_key);
	if (lane < RULE_LANES)
		return atomic_load_explicit(&r->lane_slot[lane],
		                            memory_order_acquire);
	pthread_mutex_lock(&r->lock);
	s = slot_of_lane(r, lane);
	pthread_mutex_unlock(&r->lock);
	return s;
}

/*
 * The slot of the calling lane, made on first use.  Outside a lane, the
 * thread's own slot.  A lane's slot is published in r->lane_slot after it
 * is complete, so readers that find it there need no lock.
 */
static struct rule_slot *slot_get(struct lua_rule *r)
{
	int lane = r->lane();
	struct rule_slot *s = slot_find(r, lane);

	if (s)
		return s;
	pthread_mutex_lock(&r->lock);
	s = lane >= 0 ? slot_of_lane(r, lane) : NULL;
	if (!s && (s = calloc(1, sizeof(*s)))) {
		if (pthread_mutex_init(&s->lock, NULL) != 0) {
			free(s);
			s = NULL;
		} else {
			s->rule = r;
			s->lane = lane;
			s->next = r->slots;
			r->slots = s;
		}
	}
	if (s && lane >= 0 && lane < RULE_LANES)
		atomic_store_explicit(&r->lane_slot[lane], s,
		                      memory_order_release);
	pthread_mutex_unlock(&r->lock);
	if (s && lane < 0)
		pthread_setspecific(r->slot_key, s);
	return s;
}

/* Send (or, when the call failed, discard) what the call produced. */
static void slot_flush(struct rule_slot *s, int send)
{
	struct lua_rule *r = s->rule;
	size_t i, sent = 0;

	for (i = 0; i < s->npending; i++) {
		if (!send) {
			r->host->msg_free(s->pending[i]);
			continue;
		}
		if (r->host->emit(r->inst, s->pending[i]) == IOTR_OK)
			sent++;
	}
	s->npending = 0;
	if (sent)
		r->host->counter_add(r->emitted, sent);
}

/* Count a failed call, log it, and drop a state that ran out of memory. */
static void slot_failed(struct rule_slot *s, int rc, const char *err,
                        const char *outcome)
{
	struct lua_rule *r = s->rule;

	r->host->counter_add(r->errors, 1);
	if (rc == VM_BUDGET)
		r->host->counter_add(r->budget_exceeded, 1);
	rule_log(r, IOTR_LOG_ERROR, "%s; %s", err, outcome);
	if (rc == VM_MEMORY) {
		r->host->counter_add(r->memory_exceeded, 1);
		r->host->counter_add(r->state_resets, 1);
		vm_free(s->vm);
		s->vm = NULL;
	}
}

static int64_t slot_clock_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* router.now() for on_start and on_stop: the latest time the slot saw (so
 * that test-script's simulated clock holds), else the clock. */
static int64_t slot_now(const struct rule_slot *s)
{
	return s->now_us ? s->now_us : slot_clock_us();
}

/* Run a hook (on_start, on_stop, on_tick) and send what it produced, even
 * if it failed later: those messages were meant to go. */
static void slot_hook(struct rule_slot *s, int which, int64_t now_us)
{
	struct rule_vm *vm = s->vm;
	const char *what = which == 0 ? "on_start" : which == 1 ? "on_stop" :
		"on_tick";
	int ref = which == 0 ? vm->ref_on_start : which == 1 ?
		vm->ref_on_stop : vm->ref_on_tick;
	char err[1024];
	int rc;

	rc = vm_call_hook(vm, ref, what, now_us, err, sizeof(err));
	slot_flush(s, 1);
	if (rc != VM_OK)
		slot_failed(s, rc, err, "what it emitted before the error "
		            "was sent");
}

/*
 * Make sure the slot runs the current script: build its state on first use,
 * after a reset, or after a reload (then the old version's on_stop() runs
 * first, so its open windows are flushed).  Returns 0, or -1 with err.
 */
static int slot_ready(struct rule_slot *s, char *err, size_t errlen)
{
	struct lua_rule *r = s->rule;
	unsigned gen = atomic_load(&r->generation);
	struct rule_vm *vm;
	char *source;
	size_t len;

	if (s->vm && s->vm->generation == gen)
		return 0;
	if (!s->vm && s->retry_after_us > slot_clock_us()) {
		snprintf(err, errlen, "%s: the rule could not be started in "
		         "this lane (see the log); it is tried again each "
		         "second", r->script);
		return -1;
	}
	pthread_mutex_lock(&r->lock);
	source = malloc(r->source_len + 1);
	if (source) {
		memcpy(source, r->source, r->source_len + 1);
		len = r->source_len;
		gen = atomic_load(&r->generation);
	}
	pthread_mutex_unlock(&r->lock);
	if (!source) {
		snprintf(err, errlen, "out of memory starting the rule %s",
		         r->script);
		return -1;
	}
	vm = vm_new(r, s, source, len, gen, err, errlen);
	free(source);
	if (!vm) {
		if (s->vm) {
			rule_log(r, IOTR_LOG_ERROR, "cannot switch a lane to "
			         "the reloaded %s: %s; it keeps the previous "
			         "version", r->script, err);
			s->vm->generation = gen;
			return 0;
		}
		rule_log(r, IOTR_LOG_ERROR, "cannot start %s in a lane: %s; "
		         "its messages fail until it can", r->script, err);
		s->retry_after_us = slot_clock_us() + RULE_RETRY_US;
		return -1;
	}
	if (s->vm) {
		slot_hook(s, 1, slot_now(s));
		vm_free(s->vm);
	}
	s->vm = vm;
	slot_hook(s, 0, slot_now(s));
	if (!s->vm) {
		snprintf(err, errlen, "%s: on_start() ran out of memory",
		         r->script);
		return -1;
	}
	return 0;
}

/* --- callbacks ------------------------------------------------------------------------ */

static int rule_process(void *state, iotr_msg *msg)
{
	struct lua_rule *r = state;
	const struct iotr_host *h = r->host;
	struct rule_slot *s = slot_get(r);
	char err[1024];
	int rc, verdict = IOTR_FAIL;

	if (!s) {
		h->msg_set_error(msg, "out of memory in the lua transform");
		return IOTR_FAIL;
	}
	pthread_mutex_lock(&s->lock);
	if (slot_ready(s, err, sizeof(err)) != 0) {
		h->counter_add(r->errors, 1);
		h->msg_set_error(msg, err);
		goto out;
	}
	rc = vm_call_message(s->vm, msg, &verdict, err, sizeof(err));
	if (rc == VM_OK) {
		slot_flush(s, 1);
		if (verdict == IOTR_DROP)
			h->counter_add(r->dropped, 1);
	} else {
		char outcome[600];

		slot_flush(s, 0);
		h->msg_set_error(msg, err);
		snprintf(outcome, sizeof(outcome), "the message from '%.500s' "
		         "goes to the dead-letter topic", h->msg_topic(msg));
		slot_failed(s, rc, err, outcome);
		verdict = IOTR_FAIL;
	}
	/* A message that was queued when the router began to stop: flush
	 * what it left in the windows too. */
	if ((s->stopped || atomic_load(&r->stopping)) && s->vm) {
		slot_hook(s, 1, slot_now(s));
		s->stopped = 1;
	}
out:
	pthread_mutex_unlock(&s->lock);
	return verdict;
}

static int rule_tick(void *state, int64_t now_us)
{
	struct lua_rule *r = state;
	struct rule_slot *s;
	char err[1024];
	int lane = r->lane();

	/* A lane that never ran the rule has nothing to tick. */
	if (!(s = slot_find(r, lane)))
		return IOTR_OK;
	pthread_mutex_lock(&s->lock);
	if (slot_ready(s, err, sizeof(err)) == 0 &&
	    s->vm->ref_on_tick != LUA_NOREF)
		slot_hook(s, 2, now_us);
	pthread_mutex_unlock(&s->lock);
	return IOTR_OK;
}

/*
 * Shutdown (main thread, inputs closed): each lane's state runs on_stop()
 * under its slot's lock, so it never overlaps that lane's messages.  The
 * list of slots only grows at its head, so it is walked without r->lock
 * (which slot_ready takes while holding a slot's lock).
 */
static int rule_stop(void *state)
{
	struct lua_rule *r = state;
	struct rule_slot *s;

	/* A lane that makes its first state after this runs on_stop()
	 * after each message instead. */
	atomic_store(&r->stopping, 1);
	pthread_mutex_lock(&r->lock);
	s = r->slots;
	pthread_mutex_unlock(&r->lock);
	for (; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		if (s->vm && !s->stopped)
			slot_hook(s, 1, slot_now(s));
		s->stopped = 1;
		pthread_mutex_unlock(&s->lock);
	}
	return IOTR_OK;
}

static int rule_reload(void *state)
{
	struct lua_rule *r = state;
	struct rule_vm *check;
	char err[1024], *source, *old;
	size_t len;
	unsigned gen;
	int same;

	if (!(source = rule_read(r, &len, err, sizeof(err)))) {
		r->host->counter_add(r->reload_failures, 1);
		r->host->log(r->inst, IOTR_LOG_ERROR, "reload: %s; the previous "
		             "version keeps running", err);
		return IOTR_FAIL;
	}
	pthread_mutex_lock(&r->lock);
	same = len == r->source_len && memcmp(source, r->source, len) == 0;
	pthread_mutex_unlock(&r->lock);
	if (same) {
		r->host->log(r->inst, IOTR_LOG_INFO, "reload: %s is unchanged",
		             r->script);
		free(source);
		return IOTR_OK;
	}
	if (!(check = vm_new(r, NULL, source, len, 0, err, sizeof(err)))) {
		r->host->counter_add(r->reload_failures, 1);
		r->host->log(r->inst, IOTR_LOG_ERROR, "reload of %s refused: %s; "
		             "the previous version keeps running; fix the "
		             "script (try it with iotrouter test-script) and "
		             "send SIGHUP again", r->script, err);
		free(source);
		return IOTR_FAIL;
	}
	vm_free(check);
	pthread_mutex_lock(&r->lock);
	old = r->source;
	r->source = source;
	r->source_len = len;
	gen = atomic_fetch_add(&r->generation, 1) + 1;
	pthread_mutex_unlock(&r->lock);
	free(old);
	r->host->counter_add(r->reloads, 1);
	r->host->log(r->inst, IOTR_LOG_NOTICE, "reloaded %s (version %u); "
	             "each lane runs the old version's on_stop() and "
	             "switches before its next message", r->script, gen + 1);
	return IOTR_OK;
}

static void rule_destroy(void *state)
{
	struct lua_rule *r = state;
	struct rule_slot *s = r->slots;

	while (s) {
		struct rule_slot *next = s->next;

		vm_free(s->vm);
		slot_flush(s, 0);
		free(s->pending);
		pthread_mutex_destroy(&s->lock);
		free(s);
		s = next;
	}
	pthread_key_delete(r->slot_key);
	pthread_mutex_destroy(&r->lock);
	free(r->source);
	free(r);
}

/* --- create ------------------------------------------------------------------------------ */

static int rule_parse_allow(struct lua_rule *r)
{
	static const struct {
		const char *name;
		unsigned bit;
	} grants[] = {
		{ "io", RULE_ALLOW_IO }, { "os", RULE_ALLOW_OS },
		{ "require", RULE_ALLOW_REQUIRE },
		{ "loadlib", RULE_ALLOW_LOADLIB }, { "load", RULE_ALLOW_LOAD },
		{ "debug", RULE_ALLOW_DEBUG },
	};
	size_t i, k, n = r->host->param_count(r->inst, "allow");

	for (i = 0; i < n; i++) {
		const char *name = r->host->param_string_at(r->inst, "allow", i);

		for (k = 0; k < sizeof(grants) / sizeof(grants[0]); k++)
			if (strcmp(name, grants[k].name) == 0)
				break;
		if (k == sizeof(grants) / sizeof(grants[0])) {
			r->host->log(r->inst, IOTR_LOG_ERROR, "allow: \"%s\" is "
			             "not something a rule can be allowed; use "
			             "io, os, require, loadlib, load or debug",
			             name);
			return -1;
		}
		r->allow |= grants[k].bit;
	}
	return 0;
}

static int rule_check_vars(struct lua_rule *r)
{
	size_t i, n = r->host->param_count(r->inst, "vars");

	for (i = 0; i < n; i++) {
		const char *v = r->host->param_string_at(r->inst, "vars", i);
		const char *eq = strchr(v, '=');

		if (!eq || eq == v) {
			r->host->log(r->inst, IOTR_LOG_ERROR, "vars: \"%s\" must "
			             "read NAME=VALUE", v);
			return -1;
		}
	}
	return 0;
}

static int rule_create(iotr_instance *inst, const struct iotr_host *host,
                       void **state)
{
	struct lua_rule *r = calloc(1, sizeof(*r));
	struct rule_vm *check;
	char err[1024];

	if (!r) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the lua "
		          "transform");
		return IOTR_ENOMEM;
	}
	r->inst = inst;
	r->host = host;
	r->lane = offsetof(struct iotr_host, lane) < host->size && host->lane ?
		host->lane : rule_no_lane;
	r->script = host->param_string(inst, "script");
	r->budget = host->param_int(inst, "instruction_budget");
	r->memory_limit = host->param_int(inst, "memory_limit");
	r->max_state_keys = host->param_int(inst, "max_state_keys");
	r->max_emits = host->param_int(inst, "max_emits");
	r->log_rate = host->param_int(inst, "log_rate_limit");
	if (!r->script || !r->script[0]) {
		host->log(inst, IOTR_LOG_ERROR, "`script` is empty; name the "
		          "rule's Lua file");
		free(r);
		return IOTR_EINVAL;
	}
	if (rule_parse_allow(r) || rule_check_vars(r)) {
		free(r);
		return IOTR_EINVAL;
	}
	if (!(r->source = rule_read(r, &r->source_len, err, sizeof(err)))) {
		host->log(inst, IOTR_LOG_ERROR, "%s", err);
		free(r);
		return IOTR_EINVAL;
	}
	/* jansson seeds its hashes on first use, unlocked; do it here,
	 * before workers decode JSON at once. */
	json_object_seed(0);
	if (!(check = vm_new(r, NULL, r->source, r->source_len, 0, err,
	                     sizeof(err)))) {
		host->log(inst, IOTR_LOG_ERROR, "%s; fix the script (iotrouter "
		          "test-script %s < sample.jsonl shows what it does)",
		          err, r->script);
		free(r->source);
		free(r);
		return IOTR_EINVAL;
	}
	vm_free(check);
	r->errors = host->counter(inst, "errors");
	r->budget_exceeded = host->counter(inst, "budget_exceeded");
	r->memory_exceeded = host->counter(inst, "memory_exceeded");
	r->dropped = host->counter(inst, "dropped");
	r->emitted = host->counter(inst, "emitted");
	r->reloads = host->counter(inst, "reloads");
	r->reload_failures = host->counter(inst, "reload_failures");
	r->state_resets = host->counter(inst, "state_resets");
	if (!r->errors || !r->budget_exceeded || !r->memory_exceeded ||
	    !r->dropped || !r->emitted || !r->reloads || !r->reload_failures ||
	    !r->state_resets || pthread_key_create(&r->slot_key, NULL) != 0) {
		host->log(inst, IOTR_LOG_ERROR, "out of memory creating the lua "
		          "transform");
		free(r->source);
		free(r);
		return IOTR_ENOMEM;
	}
	if (pthread_mutex_init(&r->lock, NULL) != 0) {
		pthread_key_delete(r->slot_key);
		free(r->source);
		free(r);
		return IOTR_ENOMEM;
	}
	host->log(inst, IOTR_LOG_INFO, "rule %s loaded (%s; budget %lld "
	          "instructions per call, %lld bytes per state)", r->script,
	          LUA_RELEASE, (long long)r->budget,
	          (long long)r->memory_limit);
	*state = r;
	return IOTR_OK;
}

static const struct iotr_plugin lua_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "lua",
	.version = "1.0",
	.description = "rules written in Lua 5.4: filter, change, fan out and "
	               "aggregate messages (iotrouter-lua(7))",
	.kind = IOTR_PLUGIN_TRANSFORM,
	.params = lua_params,
	.create = rule_create,
	.process = rule_process,
	.tick = rule_tick,
	.stop = rule_stop,
	.reload = rule_reload,
	.destroy = rule_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &lua_plugin;
}
