/*
 * luarule.h - the inside of the lua transform plugin, shared by its files:
 *
 *   lua.c      the plugin: instances, one slot per lane, reload
 *   luavm.c    one Lua state: allocator with a cap, instruction budget,
 *              sandbox, the `router` table, protected calls
 *   luamsg.c   the `msg` object handed to on_message, and fan-out
 *   luajson.c  JSON <-> Lua values (its own decoder; jansson encodes)
 *
 * Threading: a slot belongs to one of the router's lanes (or, outside
 * them, to one thread); whichever thread runs Lua in it holds slot->lock,
 * and the main thread takes the same lock to run on_stop() at shutdown.  A vm (lua_State) is only touched under its slot's lock (or,
 * for the scratch vm that checks a reload, by the main thread alone).  What
 * the slots share (the script's source and generation) is guarded by
 * lua_rule.lock.  Nothing here is exported from lua.so.
 */
#ifndef IOTR_LUARULE_H
#define IOTR_LUARULE_H

#include <jansson.h>
#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "iotrouter/plugin.h"

#if defined(__GNUC__)
#define LUARULE_HIDDEN __attribute__((visibility("hidden")))
#else
#define LUARULE_HIDDEN
#endif

/* What `allow` may grant beyond the sandbox. */
enum rule_allow {
	RULE_ALLOW_IO = 1 << 0,      /* the io library */
	RULE_ALLOW_OS = 1 << 1,      /* all of os (execute, remove, exit...) */
	RULE_ALLOW_REQUIRE = 1 << 2, /* require of Lua modules (package.path) */
	RULE_ALLOW_LOADLIB = 1 << 3, /* C modules: package.cpath, loadlib */
	RULE_ALLOW_LOAD = 1 << 4,    /* dofile, loadfile, binary chunks */
	RULE_ALLOW_DEBUG = 1 << 5    /* the debug library */
};

/* Lanes with a lock-free entry in lua_rule.lane_slot: router.workers' cap. */
#define RULE_LANES 256

/* One configured instance of the plugin. */
struct lua_rule {
	iotr_instance *inst;
	const struct iotr_host *host;
	const char *script;         /* the rule file, borrowed from params */
	unsigned allow;             /* enum rule_allow bits */
	int64_t budget;             /* instructions per call */
	int64_t memory_limit;       /* bytes per Lua state */
	int64_t max_state_keys;     /* router.state keys per Lua state */
	int64_t max_emits;          /* messages one call may produce */
	int64_t log_rate;           /* log lines per second, 0: no limit */

	pthread_key_t slot_key;     /* this thread's slot outside the lanes */
	int (*lane)(void);          /* host->lane, or a stand-in for -1 */
	pthread_mutex_t lock;       /* guards slots, source, source_len */
	struct rule_slot *slots;
	/* Each lane's slot once made, read without r->lock (an input running
	 * routes inline meets a different lane on about every message).
	 * Lanes are worker indexes, below router.workers' cap of RULE_LANES;
	 * a lane beyond it is looked up in `slots` under the lock. */
	_Atomic(struct rule_slot *) lane_slot[RULE_LANES];
	char *source;               /* the script text now in force */
	size_t source_len;
	atomic_uint generation;     /* bumped by each successful reload */
	atomic_int stopping;        /* stop() has run: late messages flush */

	iotr_counter *errors;          /* every failed call */
	iotr_counter *budget_exceeded; /* ... of them by the budget */
	iotr_counter *memory_exceeded; /* ... of them by the memory cap */
	iotr_counter *dropped;         /* on_message returned nil */
	iotr_counter *emitted;         /* router.emit and fan-out */
	iotr_counter *reloads;
	iotr_counter *reload_failures;
	iotr_counter *state_resets;    /* states dropped after memory errors */

	/* Log rate limit: lines in the current second, and those held back. */
	atomic_llong log_second;
	atomic_llong log_lines;
	atomic_llong log_suppressed;
};

/* One Lua state and what its allocator, hook and API functions need.  The
 * lua_State's extra space points back here. */
struct rule_vm {
	lua_State *L;
	struct lua_rule *rule;
	struct rule_slot *slot;     /* NULL for the scratch vm of a reload */
	unsigned generation;        /* of the source it was built from */

	size_t mem_used;
	size_t mem_limit;
	int mem_refused;            /* the allocator said no in this call */
	char mem_where[256];        /* FILE:LINE when it first said no */

	int64_t budget_used;
	int budget_step;            /* the count hook fires every this many */
	int budget_blown;
	char budget_where[256];

	int in_call;                /* a rule function runs: emit allowed */
	const char *call_name;      /* "on_message", ... for messages */
	size_t nkeys;               /* entries in router.state */
	int on_message_line;        /* where on_message is defined */

	/* References into the registry. */
	int ref_on_message, ref_on_tick, ref_on_start, ref_on_stop;
	int ref_msg_mt, ref_headers_mt, ref_captures_mt, ref_fields;
	int ref_state, ref_array_mt, ref_box;

	/* C objects a Lua error could strand; freed after each call. */
	json_t *tmp_json;
	iotr_msg *tmp_msg;
};

/* The state of one lane (or one thread outside the lanes) for one
 * instance. */
struct rule_slot {
	struct lua_rule *rule;
	int lane;                   /* the router's lane; -1: one thread's */
	pthread_mutex_t lock;       /* held while Lua runs in vm */
	struct rule_vm *vm;         /* NULL until built, or after a reset */
	int stopped;                /* on_stop() has run (shutdown) */
	int64_t retry_after_us;     /* a failed build is retried after this */

	/* The call in progress. */
	iotr_msg *msg;              /* on_message's message, else NULL */
	struct msg_box *box;        /* its Lua object */
	int64_t now_us;             /* router.now() */
	iotr_msg **pending;         /* produced in this call, sent after it */
	size_t npending;
	size_t pending_cap;

	struct rule_slot *next;
};

/* The Lua object of a message (userdata "iotrouter.msg"). */
struct msg_box {
	iotr_msg *msg;              /* NULL once on_message has returned */
	struct rule_vm *vm;
	iotr_msg *snapshot;         /* the message before the first change,
	                             * to undo the changes if the call fails */
	int json_cached;            /* uservalue 1 holds msg:json()'s result */
};

/* --- luavm.c --------------------------------------------------------------- */

/*
 * vm_new - a Lua state running the script `source`: sandboxed, capped, the
 * top level run and the rule's functions found.  slot may be NULL (a
 * scratch state that only checks a script).  Returns NULL with a sentence
 * in err (naming FILE:LINE when the script is at fault).
 */
LUARULE_HIDDEN struct rule_vm *vm_new(struct lua_rule *r,
                                      struct rule_slot *slot,
                                      const char *source, size_t len,
                                      unsigned generation, char *err,
                                      size_t errlen);
LUARULE_HIDDEN void vm_free(struct rule_vm *vm);

/* Outcome of a call into the rule. */
enum vm_status {
	VM_OK = 0,
	VM_ERROR,       /* the rule raised an error or returned a bad value */
	VM_BUDGET,      /* instruction_budget ran out */
	VM_MEMORY       /* memory_limit was hit; the state must be dropped */
};

/*
 * vm_call_hook - call on_tick(now) / on_start() / on_stop() if the rule
 * defines it.  what is "on_tick", "on_start" or "on_stop".  Returns a
 * vm_status, with the reason in err.
 */
LUARULE_HIDDEN int vm_call_hook(struct rule_vm *vm, int ref,
                                const char *what, int64_t now_us,
                                char *err, size_t errlen);

/*
 * vm_call_message - run on_message on msg.  *verdict receives IOTR_OK (the
 * message goes on, maybe changed) or IOTR_DROP.  Messages to send are left
 * in the slot's pending list.  On failure the message is as it was.
 */
LUARULE_HIDDEN int vm_call_message(struct rule_vm *vm, iotr_msg *msg,
                                   int *verdict, char *err, size_t errlen);

/* The vm of the running Lua code. */
LUARULE_HIDDEN struct rule_vm *vm_of(lua_State *L);
/* Append to the slot's pending list; raises a Lua error past max_emits. */
LUARULE_HIDDEN void vm_pending_add(lua_State *L, iotr_msg *m);
/* Log a line for the rule, rate-limited by log_rate_limit. */
LUARULE_HIDDEN void rule_log(struct lua_rule *r, int level, const char *fmt,
                             ...) IOTR_PRINTF(3, 4);

/* --- luamsg.c -------------------------------------------------------------- */

/* Register the metatables of msg, msg.headers and msg.captures. */
LUARULE_HIDDEN void luamsg_open(lua_State *L, struct rule_vm *vm);
/* Push a new msg object for m (valid until luamsg_close). */
LUARULE_HIDDEN struct msg_box *luamsg_push(lua_State *L, struct rule_vm *vm,
                                           iotr_msg *m);
/* on_message has returned: the object no longer reaches the message. */
LUARULE_HIDDEN void luamsg_close(struct msg_box *box, int failed);
/*
 * Act on what on_message returned (at index idx): the message itself, nil,
 * a list, or a table describing the message.  Sets *verdict; clones for a
 * fan-out go to the pending list.  Raises a Lua error for a bad value.
 */
LUARULE_HIDDEN void luamsg_result(lua_State *L, int idx, struct msg_box *box,
                                  int *verdict);
/*
 * A message described by the table at idx ({topic=, key=, payload=,
 * headers=, qos=, retain=}): a change of base (a clone of it when base is
 * given), or a new message.  Raises a Lua error for a bad field.
 */
LUARULE_HIDDEN iotr_msg *luamsg_from_table(lua_State *L, int idx,
                                           const iotr_msg *base,
                                           const char *what);

/* --- luajson.c ------------------------------------------------------------- */

/* Push router.json (encode, decode, null) and register the array marker. */
LUARULE_HIDDEN void luajson_open(lua_State *L, struct rule_vm *vm);
/* Push the Lua value of JSON text, or nil and a reason. */
LUARULE_HIDDEN int luajson_push_decoded(lua_State *L, const char *text,
                                        size_t len);
/*
 * JSON text of the Lua value at idx, from malloc (caller frees), with keys
 * sorted; NULL with a reason in err.  Raises no Lua error.
 */
LUARULE_HIDDEN char *luajson_encode(lua_State *L, int idx, size_t *len,
                                    char *err, size_t errlen);

#endif
