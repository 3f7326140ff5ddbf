/*
 * iotrouter/plugin.h - the plugin interface of iotrouter.
 *
 * This is the one public header of iotrouter and the whole contract between the
 * router (the "host") and a plugin: a shared object loaded with dlopen(3) that
 * feeds messages in (input), changes them on the way (transform) or sends them
 * out (output).  It is self-contained: a plugin includes only this file, and
 * needs nothing from the daemon at link time, because everything it may call
 * is handed to it in a table of host functions (struct iotr_host).
 *
 * A plugin exports one symbol:
 *
 *     IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void);
 *
 * returning a descriptor that lives as long as the .so is loaded.  A .so that
 * is a plugin of several kinds under one name (the kafka plugin is an output
 * and an input) also exports
 *
 *     IOTR_PLUGIN_EXPORT const struct iotr_plugin *const *
 *     iotr_plugin_entries(void);
 *
 * returning a NULL-terminated array of descriptors, one per kind, all with
 * iotr_plugin_entry()'s name; the config's section (inputs, transforms,
 * outputs) picks one.  This came with ABI 1.1, so a 1.0 router refuses
 * such a plugin as built for a newer minor.  The loader
 * accepts a plugin whose abi_major equals IOTR_ABI_MAJOR and whose abi_minor
 * is at most the router's, and refuses any other with a message naming the
 * file and both versions.
 *
 * Compatibility rules, kept from release to release:
 *   - a struct in this header only grows at its end, and carries its size as
 *     the compiling side saw it, so each side can tell which fields exist;
 *   - a minor version adds fields or functions; a major version breaks.
 *
 * Ownership, in one place:
 *   - Strings and buffers passed *to* a callback are borrowed for the call;
 *     keep a copy if you need it later.
 *   - A message (iotr_msg) belongs to the host.  An input creates one with
 *     host->msg_new() and gives it away with host->emit().  A transform gets a
 *     message for the length of process().  An output that accepted a message
 *     in deliver() may keep the pointer until it has called host->delivered()
 *     for it, exactly once; after that the message is gone.
 *   - Anything the plugin allocates in create() it frees in destroy().
 *
 * Threading: see each callback.  Host functions are thread-safe unless noted.
 */
#ifndef IOTROUTER_PLUGIN_H
#define IOTROUTER_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes.  Bump the minor for additions, the major for
 * anything that breaks a compiled plugin.
 *   1.0  the first
 *   1.1  iotr_plugin_entries(): one plugin of several kinds
 *   1.2  lanes: host->lane(); a transform may run on an input's thread */
#define IOTR_ABI_MAJOR 1
#define IOTR_ABI_MINOR 2

/* Name of the symbol every plugin exports; the loader looks it up with dlsym. */
#define IOTR_PLUGIN_ENTRY_SYMBOL "iotr_plugin_entry"
/* Name of the optional symbol of a plugin of several kinds (see above). */
#define IOTR_PLUGIN_ENTRIES_SYMBOL "iotr_plugin_entries"

#if defined(__GNUC__)
#define IOTR_PLUGIN_EXPORT __attribute__((visibility("default")))
#define IOTR_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define IOTR_PLUGIN_EXPORT
#define IOTR_PRINTF(fmt, args)
#endif

/* Status codes returned by callbacks and host functions.  Zero is success;
 * IOTR_DROP is a transform's "consumed, send nothing"; negatives are errors. */
enum iotr_status {
	IOTR_OK = 0,
	IOTR_DROP = 1,         /* transform: drop the message (not an error) */
	IOTR_FAIL = -1,        /* permanent failure: the message is dead-lettered */
	IOTR_ENOMEM = -2,      /* out of memory */
	IOTR_EINVAL = -3,      /* bad argument or configuration */
	IOTR_ETIMEDOUT = -4,   /* a deadline passed before the work was done */
	IOTR_ESHUTDOWN = -5,   /* the router is stopping and took no new work */
	IOTR_ERETRY = -6       /* transient failure: the host may deliver again */
};

/* Log levels; the numbers are syslog(3)'s. */
enum iotr_log_level {
	IOTR_LOG_ERROR = 3,
	IOTR_LOG_WARNING = 4,
	IOTR_LOG_NOTICE = 5,
	IOTR_LOG_INFO = 6,
	IOTR_LOG_DEBUG = 7
};

enum iotr_plugin_kind {
	IOTR_PLUGIN_INPUT = 1,
	IOTR_PLUGIN_TRANSFORM = 2,
	IOTR_PLUGIN_OUTPUT = 3
};

/* Types of configuration parameters.  A *_LIST parameter also accepts a
 * single scalar in the config, read as a list of one. */
enum iotr_param_type {
	IOTR_PARAM_STRING = 1,
	IOTR_PARAM_INT = 2,         /* 64-bit signed */
	IOTR_PARAM_BOOL = 3,
	IOTR_PARAM_DOUBLE = 4,
	IOTR_PARAM_STRING_LIST = 5,
	IOTR_PARAM_INT_LIST = 6
};

/*
 * struct iotr_param - one entry of a plugin's parameter schema.
 *
 * The host validates a plugin instance's configuration against this table
 * before create() is called: unknown keys, wrong types and missing required
 * keys are reported with the config file and line, and create() only ever
 * sees a configuration that matches.  The table ends with an entry whose key
 * is NULL.
 *
 * key:           the name in the config file (libconfig name rules apply:
 *                letters, digits, '_' and '-').
 * type:          enum iotr_param_type.
 * default_value: the value used when the key is absent, written as it would
 *                be in the config ("1883", "true", "0.5", "text"); NULL for
 *                none (an absent optional list is empty).
 * required:      non-zero if the key must be present (default_value unused).
 * doc:           one sentence for --help-plugin and the reference docs.
 * min, max:      inclusive range checked for INT and INT_LIST values when
 *                min < max; ignored otherwise.
 */
struct iotr_param {
	const char *key;
	int type;
	const char *default_value;
	int required;
	const char *doc;
	int64_t min;
	int64_t max;
};

typedef struct iotr_msg iotr_msg;           /* a message, owned by the host */
typedef struct iotr_instance iotr_instance; /* one configured plugin instance */
typedef struct iotr_counter iotr_counter;   /* a metric counter */

/*
 * struct iotr_host - the functions the host offers a plugin.
 *
 * Passed to create(); valid until destroy() returns.  Fields after `size`
 * may be absent in an older host: test `offsetof(struct iotr_host, f) <
 * host->size` before using a field added in a later minor version.
 */
struct iotr_host {
	uint32_t abi_major;
	uint32_t abi_minor;
	size_t size;

	/* -- logging ---------------------------------------------------------- */

	/* Log a line for a person, prefixed with "[plugin:INSTANCE]".  Say what
	 * failed, on which object, and what to do. */
	void (*log)(iotr_instance *inst, int level, const char *fmt, ...)
		IOTR_PRINTF(3, 4);
	/* Non-zero if a message at `level` would be written (skip costly work). */
	int (*log_enabled)(iotr_instance *inst, int level);
	/* The instance's name from the config ("sensors", "kafka-main"). */
	const char *(*instance_name)(const iotr_instance *inst);

	/* -- configuration (valid from create() to destroy()) ----------------- */

	/* The value of a parameter, or its default.  Asking for a key that is
	 * not in the plugin's schema, or with the wrong type, returns NULL / 0. */
	const char *(*param_string)(const iotr_instance *inst, const char *key);
	int64_t (*param_int)(const iotr_instance *inst, const char *key);
	int (*param_bool)(const iotr_instance *inst, const char *key);
	double (*param_double)(const iotr_instance *inst, const char *key);
	/* Number of elements of a list parameter, and one element. */
	size_t (*param_count)(const iotr_instance *inst, const char *key);
	const char *(*param_string_at)(const iotr_instance *inst,
	                               const char *key, size_t i);
	int64_t (*param_int_at)(const iotr_instance *inst, const char *key,
	                        size_t i);
	/* Non-zero if the key was written in the config (not defaulted). */
	int (*param_is_set)(const iotr_instance *inst, const char *key);

	/* -- messages ----------------------------------------------------------- */

	/* A new message with a copy of topic and payload (payload may be NULL
	 * with len 0).  Receive time is now; QoS 0.  NULL when out of memory. */
	iotr_msg *(*msg_new)(const char *topic, const void *payload, size_t len);
	/* A deep copy, for fan-out from a transform.  NULL when out of memory. */
	iotr_msg *(*msg_clone)(const iotr_msg *msg);
	/* Free a message the plugin created and did not give away. */
	void (*msg_free)(iotr_msg *msg);

	/* The source topic (MQTT topic on ingress).  Never NULL. */
	const char *(*msg_topic)(const iotr_msg *msg);
	/* The payload; *len receives its length.  May be NULL when len is 0. */
	const void *(*msg_payload)(const iotr_msg *msg, size_t *len);
	/* The key, or NULL when the message has none. */
	const char *(*msg_key)(const iotr_msg *msg, size_t *len);
	/* The destination topic chosen by the route (Kafka topic on egress, MQTT
	 * topic on the reverse path), or NULL if none was set. */
	const char *(*msg_dest)(const iotr_msg *msg);
	int (*msg_qos)(const iotr_msg *msg);
	int (*msg_retain)(const iotr_msg *msg);
	/* Receive time, microseconds since the Unix epoch. */
	int64_t (*msg_time)(const iotr_msg *msg);
	/* Headers, in insertion order.  Names are NUL-terminated; values are
	 * bytes, followed by a NUL byte that len does not count (every 1.x
	 * host), so a value without NUL bytes in it is also a C string.
	 * header_at returns IOTR_EINVAL past the end. */
	size_t (*msg_header_count)(const iotr_msg *msg);
	int (*msg_header_at)(const iotr_msg *msg, size_t i, const char **name,
	                     const void **value, size_t *len);
	/* The first header with this name, or NULL. */
	const void *(*msg_header)(const iotr_msg *msg, const char *name,
	                          size_t *len);
	/* A named capture of the route that matched ("site" for +site), or NULL. */
	const char *(*msg_capture)(const iotr_msg *msg, const char *name);

	/* The pointers the getters above return point into the message: they
	 * stay valid until the same field is set again (a removed header: until
	 * the removal), or the message is freed or given away.  Copy what you
	 * keep longer. */

	/* Setters copy their arguments, which may point into the same message
	 * (msg_set_key(msg, part of msg's payload, n) is fine).  They return
	 * IOTR_OK or IOTR_ENOMEM. */
	int (*msg_set_payload)(iotr_msg *msg, const void *payload, size_t len);
	int (*msg_set_key)(iotr_msg *msg, const char *key, size_t len);
	int (*msg_set_dest)(iotr_msg *msg, const char *topic);
	int (*msg_set_qos)(iotr_msg *msg, int qos, int retain);
	int (*msg_set_time)(iotr_msg *msg, int64_t time_us);
	/* Append a header; several with one name are allowed. */
	int (*msg_add_header)(iotr_msg *msg, const char *name, const void *value,
	                      size_t len);
	/* Remove every header with this name. */
	void (*msg_remove_header)(iotr_msg *msg, const char *name);
	/* Say why a message failed; shown in the dead-letter headers and logs. */
	void (*msg_set_error)(iotr_msg *msg, const char *reason);

	/* -- moving messages ---------------------------------------------------- */

	/*
	 * Hand a message to the router.  The host always takes ownership, even on
	 * error.  From an input: the message is routed and queued; emit() blocks
	 * while the router's queues are full (this is how backpressure reaches
	 * the source).  When emit() returns IOTR_OK the router is responsible for
	 * the message: with the write-ahead log on it is on disk, so an input may
	 * acknowledge its source (an MQTT PUBACK) right after.  Messages emitted while the router stops are still taken
	 * and drained; only once the shutdown deadline has passed does emit()
	 * return IOTR_ESHUTDOWN (the message is then counted as lost).
	 * From a transform (during process() or tick()): the message continues
	 * along the rest of the chain after this transform.
	 */
	int (*emit)(iotr_instance *inst, iotr_msg *msg);

	/*
	 * An output reports the outcome of a message it accepted in deliver():
	 * IOTR_OK (the destination has it), IOTR_FAIL (rejected for good; reason
	 * says why), or IOTR_ERETRY (not delivered, may be tried again).  Call
	 * exactly once per accepted message, from any thread.  The message must
	 * not be touched afterwards.  `reason` is borrowed for the call.
	 */
	void (*delivered)(iotr_instance *inst, iotr_msg *msg, int status,
	                  const char *reason);

	/* 0 while running; 1 once the router has begun to stop (inputs are
	 * closed, queues drain); 2 once the shutdown deadline has passed, when
	 * any loop that blocks for backpressure must give up. */
	int (*stopping)(const iotr_instance *inst);

	/* -- metrics ------------------------------------------------------------ */

	/* A counter named "<instance>.<name>", shown in the stats log and at
	 * exit.  Registering the same name twice returns the same counter.
	 * Call from create() or start(); add from any thread. */
	iotr_counter *(*counter)(iotr_instance *inst, const char *name);
	void (*counter_add)(iotr_counter *counter, uint64_t delta);

	/* -- memory ------------------------------------------------------------- */

	/* The host's allocator, for buffers the host will free. */
	void *(*alloc)(size_t size);
	void (*free)(void *ptr);

	/* -- lanes (1.2) --------------------------------------------------------- */

	/*
	 * Transform: the lane of the process() or tick() call running on this
	 * thread, from 0 to router.workers - 1; -1 outside such a call (and in
	 * `iotrouter test-script`).  A message's key picks its lane.  A lane's
	 * calls never overlap, but they do not all come from one thread: the
	 * lane's worker runs its ticks and queued messages, and an input's
	 * thread may run a route inline (router.inline_transforms).  So a
	 * transform that keeps per-key state without a lock keeps it per lane,
	 * never per thread (thread-local storage).
	 */
	int (*lane)(void);
};

/*
 * struct iotr_plugin - what a plugin is, returned by iotr_plugin_entry().
 *
 * Set abi_major, abi_minor and size with IOTR_PLUGIN_HEADER, so the values
 * come from the header the plugin was compiled against.  IOTR_PLUGIN_HEADER
 * is a list of designated initialisers, so a plugin in C needs C99 or later
 * (this header alone also compiles as C89).  In C++ before C++20, which has
 * no designated initialisers, fill the descriptor in a function: set the
 * three fields to IOTR_ABI_MAJOR, IOTR_ABI_MINOR and
 * sizeof(struct iotr_plugin), and declare the entry point extern "C" so
 * that dlsym finds it under its C name.
 *
 * Lifecycle, in order, each called once per configured instance:
 *
 *   create(inst, host, &state)  parse parameters, check them, allocate; no
 *                               threads, no network yet (so `iotrouter
 *                               --check` and start-up errors stay cheap).  Return IOTR_OK, or an error
 *                               after logging why; the router then exits.
 *   start(state)                begin work: connect, start threads.
 *   ... process / deliver / tick ...
 *   stop(state)                 input: stop intake and return when emit() will
 *                               not be called again.  Others: may be NULL.
 *                               A transform's stop() runs in no lane but
 *                               while the host holds every lane (1.2), so
 *                               it never overlaps process() or tick().
 *   flush(state, deadline_ms)   output: return when every accepted message
 *                               has been reported with delivered(), or
 *                               IOTR_ETIMEDOUT at the deadline (CLOCK_MONOTONIC
 *                               milliseconds).  May be NULL for others.
 *   destroy(state)              free everything.  Always called after a
 *                               successful create(), even if start() failed.
 *
 * Which callbacks a kind needs:
 *   input:     create, start, stop, destroy.
 *   transform: create, process, destroy.
 *   output:    create, deliver, flush, destroy.
 * The loader refuses a plugin whose required callbacks are NULL.
 */
struct iotr_plugin {
	uint32_t abi_major;
	uint32_t abi_minor;
	size_t size;            /* sizeof(struct iotr_plugin) as compiled */

	const char *name;       /* the name used in the config: plugin = "mqtt" */
	const char *version;    /* the plugin's own version, for --list-plugins */
	const char *description;/* one line */
	int kind;               /* enum iotr_plugin_kind */
	const struct iotr_param *params; /* schema; ends with key == NULL */

	int (*create)(iotr_instance *inst, const struct iotr_host *host,
	              void **state);
	int (*start)(void *state);

	/*
	 * Transform: called with one message, in its key's lane (host->lane()):
	 * on the lane's worker thread, or, for a plugin built against 1.2 or
	 * later on a route run inline (router.inline_transforms),
	 * on the thread of the input that received the message.  One lane's
	 * calls never overlap and keep arrival order per input connection, so
	 * per-key state kept per lane needs no lock; state shared across keys
	 * does.  A plugin built against 1.0 or 1.1 always runs on the workers,
	 * one thread per lane, as those versions promised.  Change the message with
	 * the host's setters, and return IOTR_OK to pass it on, IOTR_DROP to drop
	 * it, or IOTR_FAIL (after host->msg_set_error) to dead-letter it.
	 */
	int (*process)(void *state, iotr_msg *msg);

	/*
	 * Output: called on a worker thread, or on an input's thread for a
	 * route the input runs to its output (router.direct_output); like
	 * process(), one key's messages come in arrival order per input
	 * connection, so an output that keeps the order of its calls keeps
	 * per-key order.  Return IOTR_OK when the message was
	 * accepted (then report it with host->delivered() exactly once, now or
	 * later), or IOTR_FAIL / IOTR_ERETRY when it was not (no delivered()
	 * call then).  After IOTR_ERETRY the host waits router.retry_backoff_ms
	 * and calls deliver() again with the same message.  May block for backpressure while the destination's queue
	 * is full; must give up with IOTR_ESHUTDOWN once host->stopping() returns
	 * 2 (the shutdown deadline has passed).
	 */
	int (*deliver)(void *state, iotr_msg *msg);

	int (*flush)(void *state, int64_t deadline_ms);
	int (*stop)(void *state);
	void (*destroy)(void *state);

	/*
	 * Transform, optional: called every `tick_ms` (a per-instance setting of
	 * the host) on each worker's thread, in that worker's lane (never at
	 * the same time as a process() call in the lane), with the time in
	 * microseconds since the epoch; messages made with msg_new and passed
	 * to emit() go on along the chain.
	 */
	int (*tick)(void *state, int64_t now_us);

	/*
	 * Optional: the operator asked for a reload (SIGHUP).  Called on the main
	 * thread while messages flow; re-read what the plugin loads from files
	 * (scripts, tables) and switch to it between two messages, or keep the
	 * old version and log why.  Return IOTR_OK or an error after logging.
	 */
	int (*reload)(void *state);
};

/* Fills the version fields of a struct iotr_plugin initialiser. */
#define IOTR_PLUGIN_HEADER \
	.abi_major = IOTR_ABI_MAJOR, .abi_minor = IOTR_ABI_MINOR, \
	.size = sizeof(struct iotr_plugin)

/* The entry point every plugin defines. */
typedef const struct iotr_plugin *(*iotr_plugin_entry_fn)(void);
typedef const struct iotr_plugin *const *(*iotr_plugin_entries_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* IOTROUTER_PLUGIN_H */
