/*
 * mqttconn.h - what the mqtt plugin's input (mqtt.c) and output (mqtt_out.c)
 * share: the connection parameters of both schemas, reading and checking
 * them, credentials, TLS and session setup of a libmosquitto handle, and the
 * texts that explain a failed connection, and the loop that connects, backs
 * off and fails over between brokers (mqttconn_run).
 *
 * Threading: everything here runs in create() on the router's thread, except
 * mqttconn_run() and what it calls, which run on a connection's loop thread,
 * and mqttconn_describe_rc(), mqttconn_connack_failure() and the small
 * helpers, which only read the configuration and may run on any thread.
 */
#ifndef IOTR_MQTTCONN_H
#define IOTR_MQTTCONN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <mosquitto.h>

#include <iotrouter/plugin.h>

/* 2.0 for MOSQ_OPT_TLS_USE_OS_CERTS and for CONNECT properties that survive
 * into an asynchronous connect (see mqttconn_setup_handle). */
#if !defined(LIBMOSQUITTO_MAJOR) || LIBMOSQUITTO_MAJOR < 2
#error "the mqtt plugin needs libmosquitto 2.0 or later"
#endif

/* The output kind of the mqtt plugin (mqtt_out.c). */
extern const struct iotr_plugin mqtt_out_plugin;

/*
 * Parameter schema entries both kinds have, in three groups so that each
 * kind's table keeps its own order: the broker and identity, the session,
 * credentials, TLS and reconnects (clean_session's text differs by kind),
 * and the connect timeout.
 */
#define MQTTCONN_PARAMS_SERVER \
	{ .key = "host", .type = IOTR_PARAM_STRING, .default_value = "127.0.0.1", \
	  .doc = "Broker host name or address; ignored when brokers is set." }, \
	{ .key = "port", .type = IOTR_PARAM_INT, .default_value = "1883", \
	  .doc = "Broker TCP port; ignored when brokers is set.", \
	  .min = 1, .max = 65535 }, \
	{ .key = "brokers", .type = IOTR_PARAM_STRING_LIST, \
	  .doc = "Broker URIs mqtt://host:port or mqtts://host:port, tried in " \
	         "turn, moving on after each failed attempt; overrides host and " \
	         "port (mqtts implies tls = true)." }, \
	{ .key = "client_id", .type = IOTR_PARAM_STRING, .required = 1, \
	  .doc = "MQTT client identifier; keep it stable so the broker can " \
	         "resume the session." }, \
	{ .key = "protocol", .type = IOTR_PARAM_STRING, .default_value = "5", \
	  .doc = "MQTT protocol version: \"5\" or \"3.1.1\" (also \"311\")." }

#define MQTTCONN_PARAMS_SESSION(clean_session_doc) \
	{ .key = "clean_session", .type = IOTR_PARAM_BOOL, .default_value = "false", \
	  .doc = clean_session_doc }, \
	{ .key = "session_expiry", .type = IOTR_PARAM_INT, .default_value = "86400", \
	  .doc = "MQTT 5, clean_session = false: seconds the broker keeps the " \
	         "session after a disconnect; 4294967295 means forever.", \
	  .min = 0, .max = 4294967295LL }, \
	{ .key = "keepalive", .type = IOTR_PARAM_INT, .default_value = "60", \
	  .doc = "Keep-alive interval in seconds.", .min = 5, .max = 65535 }, \
	{ .key = "username", .type = IOTR_PARAM_STRING, \
	  .doc = "User name sent to the broker." }, \
	{ .key = "password", .type = IOTR_PARAM_STRING, \
	  .doc = "Password sent to the broker; prefer password_file." }, \
	{ .key = "password_file", .type = IOTR_PARAM_STRING, \
	  .doc = "File whose first line is the password (read once, at start-up)." }, \
	{ .key = "tls", .type = IOTR_PARAM_BOOL, .default_value = "false", \
	  .doc = "Connect with TLS." }, \
	{ .key = "tls_ca_file", .type = IOTR_PARAM_STRING, \
	  .doc = "PEM file of the CA certificates that sign the broker's " \
	         "certificate; without it and tls_ca_path the system's CAs are " \
	         "used." }, \
	{ .key = "tls_ca_path", .type = IOTR_PARAM_STRING, \
	  .doc = "Directory of hashed CA certificates (see openssl rehash)." }, \
	{ .key = "tls_cert_file", .type = IOTR_PARAM_STRING, \
	  .doc = "PEM client certificate, for brokers that require one." }, \
	{ .key = "tls_key_file", .type = IOTR_PARAM_STRING, \
	  .doc = "PEM private key of tls_cert_file (not encrypted)." }, \
	{ .key = "tls_verify", .type = IOTR_PARAM_BOOL, .default_value = "true", \
	  .doc = "Verify the broker's certificate and host name; false is for " \
	         "tests only." }, \
	{ .key = "tls_version", .type = IOTR_PARAM_STRING, \
	  .doc = "Oldest TLS version accepted: \"tlsv1.1\", \"tlsv1.2\" or " \
	         "\"tlsv1.3\"; default tlsv1.2." }, \
	{ .key = "reconnect_min_ms", .type = IOTR_PARAM_INT, .default_value = "500", \
	  .doc = "First delay before a reconnect; doubles after each failed " \
	         "attempt.", .min = 10, .max = 3600000 }, \
	{ .key = "reconnect_max_ms", .type = IOTR_PARAM_INT, .default_value = "30000", \
	  .doc = "Longest delay between reconnect attempts.", \
	  .min = 10, .max = 3600000 }

#define MQTTCONN_PARAM_CONNECT_TIMEOUT \
	{ .key = "connect_timeout_ms", .type = IOTR_PARAM_INT, .default_value = "10000", \
	  .doc = "How long start() waits for the first connection, and how long " \
	         "one connection attempt may take.", .min = 100, .max = 3600000 }

struct mqttconn_broker {
	char *host;
	int port;
	char *name;             /* "host:port" for messages */
};

/*
 * The connection settings of one instance, read in create().  Strings from
 * host->param_* are borrowed: the host keeps them until destroy().
 */
struct mqttconn {
	iotr_instance *inst;
	const struct iotr_host *host;

	struct mqttconn_broker *brokers;
	size_t n_brokers;
	bool uri_tls;           /* the brokers are mqtts:// URIs */
	int protocol;           /* MQTT_PROTOCOL_V311 or MQTT_PROTOCOL_V5 */
	const char *client_id;  /* as configured */
	const char *username;
	char *password;         /* a copy, or NULL; see mqttconn_wipe_password */
	int keepalive;
	bool clean_session;
	int64_t session_expiry;
	bool tls;               /* set by mqttconn_setup_handle */
	int64_t reconnect_min_ms;
	int64_t reconnect_max_ms;
	int64_t connect_timeout_ms;
};

struct mqttconn_session;

/* What the input and the output do differently in mqttconn_run().  Every
 * hook runs on the loop thread; NULL hooks are skipped. */
struct mqttconn_session_ops {
	/* How long one network loop call may sleep: bounds how late the loop
	 * thread notices a stop request or an attempt that has taken too long. */
	int loop_ms;
	/* One round of the network loop, a MOSQ_ERR_* code; NULL:
	 * mosquitto_loop(s->mosq, loop_ms, 1). */
	int (*loop_once)(struct mqttconn_session *s);
	/* After each round of the network loop that leaves the session up. */
	void (*on_up)(struct mqttconn_session *s);
	/* After each attempt, whether it connected or not. */
	void (*on_lost)(struct mqttconn_session *s);
	/* Appended to the "disconnected from ...; reconnecting in N ms" line. */
	void (*reconnect_note)(struct mqttconn_session *s, char *buf,
	                       size_t size);
	/* Appended to the "cannot connect to ...; next attempt in N ms" line. */
	const char *retry_note;
};

/*
 * One connection's loop state, embedded in its owner (struct mqtt_conn,
 * struct mqtt_out), which fills in the first group of fields (with
 * mqttconn_session_init, then mosq and tag) before the loop thread starts
 * mqttconn_run(); the loop thread then owns the handle.
 */
struct mqttconn_session {
	const struct mqttconn *cc;      /* borrowed */
	const struct mqttconn_session_ops *ops;
	void *owner;                    /* for the hooks */
	const char *tag;                /* after the broker's name in log lines */
	struct mosquitto *mosq;
	/* The owner's: *stop_requested is guarded by *lock, and *cond is
	 * signalled when it is set. */
	pthread_mutex_t *lock;
	pthread_cond_t *cond;
	const bool *stop_requested;

	/* Loop thread only (and the callbacks, which run on it), except cur,
	 * which any thread may read to name the broker. */
	atomic_size_t cur;      /* the broker being tried */
	int64_t up_since;       /* when the current connection got its CONNACK,
	                           0 if it has not */
	bool session_up;        /* connected and not yet disconnected */
	int fail_level;         /* log level for the current attempt's failure */
	int fail_rc;            /* its MOSQ_ERR_* code, 0 if none */
	char fail_reason[512];  /* why the current attempt failed, "" if unknown */
	char lib_error[256];    /* libmosquitto's last error log line */
};

/* Set what mqttconn_run() borrows from the owner; tag is "", mosq NULL. */
void mqttconn_session_init(struct mqttconn_session *s,
                           const struct mqttconn *cc,
                           const struct mqttconn_session_ops *ops,
                           void *owner, pthread_mutex_t *lock,
                           pthread_cond_t *cond, const bool *stop_requested);

/*
 * The loop thread of a session (a pthread start routine; arg is the
 * session): until a stop is requested, connect to the current broker, run
 * the connection until it fails, the CONNACK takes longer than
 * connect_timeout_ms, or a stop is requested (then disconnect cleanly),
 * log why it ended, and wait before the next attempt: reconnect_min_ms,
 * doubling up to reconnect_max_ms, afresh after a connection that stayed
 * up reconnect_max_ms.  A failed attempt moves on to the next broker.
 * Returns NULL.
 */
void *mqttconn_run(void *arg);

/* Record why the current attempt failed; the first reason wins because
 * later ones are consequences (a refused CONNACK closes the socket). */
void mqttconn_fail(struct mqttconn_session *s, int level, const char *fmt,
                   ...) IOTR_PRINTF(3, 4);

/* For on_disconnect: the session is down; records why (rc and err as
 * on_disconnect got them).  Whether the session had been up. */
bool mqttconn_session_ended(struct mqttconn_session *s, int rc, int err);

/* mosquitto_lib_init() once per process; IOTR_OK or an error after logging. */
int mqttconn_lib_init(iotr_instance *inst, const struct iotr_host *host);

int64_t mqttconn_now_ms(void);
/* The CLOCK_MONOTONIC time ms from now, for pthread_cond_timedwait. */
void mqttconn_deadline(struct timespec *ts, int64_t ms);
const char *mqttconn_protocol_name(int protocol);
/* Copy a libmosquitto text without its final period, to use mid-sentence. */
void mqttconn_copy_text(char *buf, size_t size, const char *text);

/*
 * Read protocol, client_id, clean_session, session_expiry, keepalive, the
 * reconnect delays and connect_timeout_ms into cc (whose inst and host are
 * set) and check them.  IOTR_OK, or an error after logging what to fix.
 */
int mqttconn_config_read(struct mqttconn *cc);
/* Read brokers (or host and port) into cc->brokers; sets cc->uri_tls. */
int mqttconn_config_brokers(struct mqttconn *cc);
/* Read username and the password (password or password_file) into cc. */
int mqttconn_config_credentials(struct mqttconn *cc);
/* Wipe and free cc->password once every handle has a copy. */
void mqttconn_wipe_password(struct mqttconn *cc);

/*
 * Give a new handle the credentials, TLS settings and (MQTT 5, persistent
 * session) the session expiry.  log_warnings: the first handle of an
 * instance logs the warnings that are the same for every handle.
 */
int mqttconn_setup_handle(struct mqttconn *cc, struct mosquitto *mosq,
                          bool log_warnings);

/* Free what the mqttconn_config_* functions allocated. */
void mqttconn_free(struct mqttconn *cc);

/* Reason text of a libmosquitto return code; err is errno as it was right
 * after the failing call, lib_error libmosquitto's last error log line or
 * "" (TLS failures are only explained there). */
void mqttconn_describe_rc(char *buf, size_t size, int rc, int err,
                          const char *lib_error);

/* Explain a refused CONNACK (rc as on_connect got it) with what to do;
 * returns the log level it deserves. */
int mqttconn_connack_failure(const struct mqttconn *cc, int rc,
                             const char *client_id, char *buf, size_t size);

#endif
