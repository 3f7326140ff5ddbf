/*
 * mqtt.c - the input plugin "mqtt": subscribes to an MQTT broker with
 * libmosquitto and emits every message it receives into the router.
 *
 * Threading: create(), start(), stop() and destroy() run on the router's
 * thread.  The instance has `connections` MQTT connections (struct
 * mqtt_conn), each with its own client id, mosquitto handle and loop thread,
 * mqtt_loop(), which owns that handle from start() until stop() joins it: it
 * connects, runs mosquitto_loop(), backs off, fails over between brokers and
 * disconnects.  Every libmosquitto callback of a connection, and so every
 * host->emit() of its messages, runs on that connection's thread; the
 * threads share only the read-only configuration, the counters (atomic, in
 * the host), the fields under "guarded by lock" and two atomic flags.
 *
 * Delivery: the handles are in threaded mode, so the PUBACK/PUBREC of a
 * message is only queued while on_message runs and reaches the socket after
 * it has returned, i.e. after host->emit() has taken the message (and, with
 * the write-ahead log on, made it durable).
 */
#define _GNU_SOURCE /* strerror_r returning char *, strndup, explicit_bzero */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <iotrouter/plugin.h>

/* 2.0 for MOSQ_OPT_TLS_USE_OS_CERTS and for CONNECT properties that survive
 * into an asynchronous connect (see mqtt_config_connect_properties). */
#if !defined(LIBMOSQUITTO_MAJOR) || LIBMOSQUITTO_MAJOR < 2
#error "the mqtt plugin needs libmosquitto 2.0 or later"
#endif

/* How long one mosquitto_loop() call may sleep: bounds how late the loop
 * thread notices a stop request or an attempt that has taken too long. */
#define MQTT_LOOP_MS 200

/* Most packets one wake-up of a plain (non-TLS) connection reads before the
 * loop writes what is queued and keeps house (see mqtt_loop_plain). */
#define MQTT_READ_BATCH 1024

/* Most connections one instance may open (`connections`). */
#define MQTT_MAX_CONNECTIONS 64

static const struct iotr_param mqtt_params[] = {
	{ .key = "host", .type = IOTR_PARAM_STRING, .default_value = "127.0.0.1",
	  .doc = "Broker host name or address; ignored when brokers is set." },
	{ .key = "port", .type = IOTR_PARAM_INT, .default_value = "1883",
	  .doc = "Broker TCP port; ignored when brokers is set.",
	  .min = 1, .max = 65535 },
	{ .key = "brokers", .type = IOTR_PARAM_STRING_LIST,
	  .doc = "Broker URIs mqtt://host:port or mqtts://host:port, tried in "
	         "turn, moving on after each failed attempt; overrides host and "
	         "port (mqtts implies tls = true)." },
	{ .key = "client_id", .type = IOTR_PARAM_STRING, .required = 1,
	  .doc = "MQTT client identifier; keep it stable so the broker can "
	         "resume the session." },
	{ .key = "protocol", .type = IOTR_PARAM_STRING, .default_value = "5",
	  .doc = "MQTT protocol version: \"5\" or \"3.1.1\" (also \"311\")." },
	{ .key = "topics", .type = IOTR_PARAM_STRING_LIST, .required = 1,
	  .doc = "Subscription filters; wildcards and $share/group/filter are "
	         "allowed." },
	{ .key = "qos", .type = IOTR_PARAM_INT_LIST, .default_value = "1",
	  .doc = "Subscription QoS: one value for every topic, or one per topic.",
	  .min = 0, .max = 2 },
	{ .key = "connections", .type = IOTR_PARAM_INT, .default_value = "1",
	  .doc = "MQTT connections to open, each subscribing to every topic; "
	         "client ids are client_id, client_id-1, client_id-2, ...  With "
	         "more than one, subscribe with $share/GROUP/filter so that the "
	         "broker hands each message to one connection only.",
	  .min = 1, .max = MQTT_MAX_CONNECTIONS },
	{ .key = "clean_session", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Start a new session on every connect instead of resuming the "
	         "one the broker kept (messages queued while offline are lost)." },
	{ .key = "session_expiry", .type = IOTR_PARAM_INT, .default_value = "86400",
	  .doc = "MQTT 5, clean_session = false: seconds the broker keeps the "
	         "session after a disconnect; 4294967295 means forever.",
	  .min = 0, .max = 4294967295LL },
	{ .key = "keepalive", .type = IOTR_PARAM_INT, .default_value = "60",
	  .doc = "Keep-alive interval in seconds.", .min = 5, .max = 65535 },
	{ .key = "username", .type = IOTR_PARAM_STRING,
	  .doc = "User name sent to the broker." },
	{ .key = "password", .type = IOTR_PARAM_STRING,
	  .doc = "Password sent to the broker; prefer password_file." },
	{ .key = "password_file", .type = IOTR_PARAM_STRING,
	  .doc = "File whose first line is the password (read once, at start-up)." },
	{ .key = "tls", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Connect with TLS." },
	{ .key = "tls_ca_file", .type = IOTR_PARAM_STRING,
	  .doc = "PEM file of the CA certificates that sign the broker's "
	         "certificate; without it and tls_ca_path the system's CAs are "
	         "used." },
	{ .key = "tls_ca_path", .type = IOTR_PARAM_STRING,
	  .doc = "Directory of hashed CA certificates (see openssl rehash)." },
	{ .key = "tls_cert_file", .type = IOTR_PARAM_STRING,
	  .doc = "PEM client certificate, for brokers that require one." },
	{ .key = "tls_key_file", .type = IOTR_PARAM_STRING,
	  .doc = "PEM private key of tls_cert_file (not encrypted)." },
	{ .key = "tls_verify", .type = IOTR_PARAM_BOOL, .default_value = "true",
	  .doc = "Verify the broker's certificate and host name; false is for "
	         "tests only." },
	{ .key = "tls_version", .type = IOTR_PARAM_STRING,
	  .doc = "Oldest TLS version accepted: \"tlsv1.1\", \"tlsv1.2\" or "
	         "\"tlsv1.3\"; default tlsv1.2." },
	{ .key = "reconnect_min_ms", .type = IOTR_PARAM_INT, .default_value = "500",
	  .doc = "First delay before a reconnect; doubles after each failed "
	         "attempt.", .min = 10, .max = 3600000 },
	{ .key = "reconnect_max_ms", .type = IOTR_PARAM_INT, .default_value = "30000",
	  .doc = "Longest delay between reconnect attempts.",
	  .min = 10, .max = 3600000 },
	{ .key = "skip_retained", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Drop messages that carry the retain flag (counted as "
	         "retained_skipped)." },
	{ .key = "receive_maximum", .type = IOTR_PARAM_INT, .default_value = "100",
	  .doc = "MQTT 5: most QoS 1/2 messages the broker may have in flight to "
	         "this client.", .min = 1, .max = 65535 },
	{ .key = "connect_timeout_ms", .type = IOTR_PARAM_INT, .default_value = "10000",
	  .doc = "How long start() waits for the first connection, and how long "
	         "one connection attempt may take.", .min = 100, .max = 3600000 },
	{ .key = NULL }
};

struct mqtt_broker {
	char *host;
	int port;
	char *name;             /* "host:port" for messages */
};

struct mqtt_in;

/* One connection to the broker: its own client id, handle and loop thread. */
struct mqtt_conn {
	struct mqtt_in *m;      /* the instance it belongs to; borrowed */
	char *client_id;        /* client_id for the first, "<client_id>-<i>" */
	const char *tag;        /* "" with one connection, else " as \"client_id\"",
	                           to tell the connections apart in the log */
	char *tag_buf;
	struct mosquitto *mosq;
	int *sub_mid;           /* message id of each topic's SUBSCRIBE */

	/* Guarded by m->lock. */
	bool first_connack;     /* a CONNACK arrived, accepted or refused */

	/* Router's thread only. */
	pthread_t thread;
	bool thread_running;

	/* Loop thread only (and the callbacks, which run on it). */
	size_t cur;             /* the broker being tried */
	int64_t up_since;       /* when the current connection got its CONNACK,
	                           0 if it has not */
	bool session_up;        /* connected and not yet disconnected */
	bool had_session;       /* a persistent session was set up before */
	int fail_level;         /* log level for the current attempt's failure */
	char fail_reason[512];  /* why the current attempt failed, "" if unknown */
	char lib_error[256];    /* libmosquitto's last error log line */
};

struct mqtt_in {
	iotr_instance *inst;
	const struct iotr_host *host;

	/* Configuration, read in create().  Strings from host->param_* are
	 * borrowed: the host keeps them until destroy(). */
	struct mqtt_broker *brokers;
	size_t n_brokers;
	const char **topics;
	int *qos;               /* one per topic */
	size_t n_topics;
	int protocol;           /* MQTT_PROTOCOL_V311 or MQTT_PROTOCOL_V5 */
	const char *client_id;  /* as configured: the first connection's */
	const char *username;
	int keepalive;
	bool clean_session;
	bool tls;
	bool skip_retained;
	int64_t reconnect_min_ms;
	int64_t reconnect_max_ms;
	int64_t connect_timeout_ms;

	struct mqtt_conn *conns;
	size_t n_conns;

	iotr_counter *received;
	iotr_counter *retained_skipped;
	iotr_counter *connects;
	iotr_counter *disconnects;

	/* Guarded by lock; cond signals a change of any of them (and of the
	 * connections' first_connack). */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop_requested;

	/* Set once by whichever loop thread logs first. */
	atomic_bool shutdown_logged;
	atomic_bool emit_error_logged;
};

static pthread_once_t mqtt_lib_once = PTHREAD_ONCE_INIT;
static int mqtt_lib_rc;

static void mqtt_lib_init(void)
{
	mqtt_lib_rc = mosquitto_lib_init();
}

static int64_t mqtt_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *mqtt_protocol_name(int protocol)
{
	return protocol == MQTT_PROTOCOL_V5 ? "MQTT 5" : "MQTT 3.1.1";
}

/* Copy a libmosquitto text without its final period, to use mid-sentence. */
static void mqtt_copy_text(char *buf, size_t size, const char *text)
{
	size_t len;

	snprintf(buf, size, "%s", text);
	len = strlen(buf);
	if (len > 0 && buf[len - 1] == '.')
		buf[len - 1] = '\0';
}

/* Reason text of a libmosquitto return code; err is errno as it was right
 * after the failing call. */
static void mqtt_describe_rc(struct mqtt_conn *c, char *buf, size_t size,
                             int rc, int err)
{
	char text[128];

	if (rc == MOSQ_ERR_ERRNO) {
		snprintf(buf, size, "%s", strerror_r(err, text, sizeof(text)));
	} else {
		mqtt_copy_text(text, sizeof(text), mosquitto_strerror(rc));
		if (c->lib_error[0])
			snprintf(buf, size, "%s (%s)", text, c->lib_error);
		else
			snprintf(buf, size, "%s", text);
	}
}

static void mqtt_fail(struct mqtt_conn *c, int level, const char *fmt, ...)
	IOTR_PRINTF(3, 4);

/* Record why the current connection attempt failed; the first reason wins
 * because later ones are consequences (a refused CONNACK closes the socket). */
static void mqtt_fail(struct mqtt_conn *c, int level, const char *fmt, ...)
{
	va_list ap;

	if (c->fail_reason[0])
		return;
	c->fail_level = level;
	va_start(ap, fmt);
	vsnprintf(c->fail_reason, sizeof(c->fail_reason), fmt, ap);
	va_end(ap);
}

/* -- libmosquitto callbacks (loop thread) ----------------------------------- */

static void mqtt_on_log(struct mosquitto *mosq, void *obj, int level,
                        const char *str)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;

	(void)mosq;
	/* libmosquitto reports TLS failures only through its log; keep the
	 * last error line to explain the next failed attempt. */
	if (level & MOSQ_LOG_ERR)
		snprintf(c->lib_error, sizeof(c->lib_error), "%s", str);
	if (m->host->log_enabled(m->inst, IOTR_LOG_DEBUG))
		m->host->log(m->inst, IOTR_LOG_DEBUG, "libmosquitto%s: %s",
		             c->tag, str);
}

static void mqtt_subscribe_all(struct mqtt_conn *c)
{
	struct mqtt_in *m = c->m;
	const struct mqtt_broker *b = &m->brokers[c->cur];

	for (size_t i = 0; i < m->n_topics; i++) {
		int rc = mosquitto_subscribe_v5(c->mosq, &c->sub_mid[i],
		                                m->topics[i], m->qos[i], 0, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			char text[128];

			c->sub_mid[i] = -1;
			mqtt_copy_text(text, sizeof(text), mosquitto_strerror(rc));
			m->host->log(m->inst, IOTR_LOG_ERROR,
			             "cannot subscribe to \"%s\" on %s%s: %s; "
			             "it is retried on the next reconnect",
			             m->topics[i], b->name, c->tag, text);
		}
	}
}

static void mqtt_on_connect(struct mosquitto *mosq, void *obj, int rc,
                            int flags, const mosquitto_property *props)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;
	const struct mqtt_broker *b = &m->brokers[c->cur];

	(void)mosq;
	(void)props;
	if (rc == 0) {
		c->up_since = mqtt_now_ms();
		c->session_up = true;
		m->host->counter_add(m->connects, 1);
		m->host->log(m->inst, IOTR_LOG_NOTICE,
		             "connected to %s as \"%s\" (%s, %s)", b->name,
		             c->client_id, mqtt_protocol_name(m->protocol),
		             (flags & 1) ? "session resumed" : "new session");
		if (!m->clean_session && c->had_session && !(flags & 1))
			m->host->log(m->inst, IOTR_LOG_WARNING, "%s did not keep the "
			             "session of \"%s\", so messages published while "
			             "this client was away are lost; give the broker "
			             "persistence or raise session_expiry", b->name,
			             c->client_id);
		c->had_session = !m->clean_session;
		/* Subscribe even when the session was resumed: the broker may have
		 * lost it, and subscribing again to the same filter is harmless. */
		mqtt_subscribe_all(c);
	} else {
		bool v5 = m->protocol == MQTT_PROTOCOL_V5;
		char reason[128];

		mqtt_copy_text(reason, sizeof(reason), v5 ? mosquitto_reason_string(rc)
		                                          : mosquitto_connack_string(rc));

		if ((v5 && (rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD ||
		            rc == MQTT_RC_NOT_AUTHORIZED ||
		            rc == MQTT_RC_BAD_AUTHENTICATION_METHOD)) ||
		    (!v5 && (rc == CONNACK_REFUSED_BAD_USERNAME_PASSWORD ||
		             rc == CONNACK_REFUSED_NOT_AUTHORIZED))) {
			if (m->username)
				mqtt_fail(c, IOTR_LOG_ERROR,
				          "the broker refused user \"%s\": %s; check "
				          "username and password (or password_file) "
				          "against the broker's password file",
				          m->username, reason);
			else
				mqtt_fail(c, IOTR_LOG_ERROR,
				          "the broker refused an anonymous login: %s; "
				          "set username and password (or password_file)",
				          reason);
		} else if ((v5 && rc == MQTT_RC_CLIENTID_NOT_VALID) ||
		           (!v5 && rc == CONNACK_REFUSED_IDENTIFIER_REJECTED)) {
			mqtt_fail(c, IOTR_LOG_ERROR,
			          "the broker rejected client_id \"%s\": %s; choose "
			          "another client_id", c->client_id, reason);
		} else if ((v5 && rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION) ||
		           (!v5 && rc == CONNACK_REFUSED_PROTOCOL_VERSION)) {
			mqtt_fail(c, IOTR_LOG_ERROR,
			          "the broker does not speak %s: %s; set protocol = "
			          "\"%s\"", mqtt_protocol_name(m->protocol), reason,
			          v5 ? "3.1.1" : "5");
		} else {
			mqtt_fail(c, IOTR_LOG_WARNING, "the broker refused the "
			          "connection: %s", reason);
		}
	}

	pthread_mutex_lock(&m->lock);
	c->first_connack = true;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
}

static void mqtt_on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                               const mosquitto_property *props)
{
	int err = errno;
	struct mqtt_conn *c = obj;
	char why[300];

	(void)mosq;
	(void)props;
	if (c->session_up) {
		c->session_up = false;
		c->m->host->counter_add(c->m->disconnects, 1);
	}
	/* rc is a MOSQ_ERR_* code, except after a DISCONNECT packet from an
	 * MQTT 5 broker, when it is that packet's reason code (0x80 and up). */
	if (rc == 0)
		mqtt_fail(c, IOTR_LOG_NOTICE, "disconnected on request");
	else if (rc >= 0x80)
		mqtt_fail(c, IOTR_LOG_WARNING, "the broker closed the connection: %s",
		          mosquitto_reason_string(rc));
	else {
		mqtt_describe_rc(c, why, sizeof(why), rc, err);
		mqtt_fail(c, IOTR_LOG_WARNING, "%s", why);
	}
}

static void mqtt_on_subscribe(struct mosquitto *mosq, void *obj, int mid,
                              int qos_count, const int *granted,
                              const mosquitto_property *props)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;
	const struct mqtt_broker *b = &m->brokers[c->cur];
	size_t i;

	(void)mosq;
	(void)props;
	for (i = 0; i < m->n_topics; i++)
		if (c->sub_mid[i] == mid)
			break;
	if (i == m->n_topics || qos_count < 1)
		return;

	if (granted[0] >= 0x80) {
		m->host->log(m->inst, IOTR_LOG_ERROR,
		             "%s refused the subscription to \"%s\"%s: %s; check "
		             "the filter and the broker's ACL for user \"%s\"",
		             b->name, m->topics[i], c->tag,
		             m->protocol == MQTT_PROTOCOL_V5
		             ? mosquitto_reason_string(granted[0]) : "Failure",
		             m->username ? m->username : "(anonymous)");
	} else if (granted[0] < m->qos[i]) {
		m->host->log(m->inst, IOTR_LOG_WARNING,
		             "%s granted QoS %d for \"%s\"%s (asked for %d); "
		             "messages on it arrive with at most QoS %d", b->name,
		             granted[0], m->topics[i], c->tag, m->qos[i], granted[0]);
	} else {
		m->host->log(m->inst, IOTR_LOG_NOTICE, "subscribed to \"%s\" "
		             "(QoS %d)%s", m->topics[i], granted[0], c->tag);
	}
}

/* Copy the MQTT 5 properties a route or a Kafka header may want. */
static int mqtt_add_headers(struct mqtt_in *m, iotr_msg *msg,
                            const mosquitto_property *props)
{
	const struct iotr_host *h = m->host;
	const mosquitto_property *p;
	int rc = IOTR_OK;

	for (p = props; p && rc == IOTR_OK; p = mosquitto_property_next(p)) {
		char *name = NULL, *value = NULL;
		void *bin = NULL;
		uint16_t len = 0;

		switch (mosquitto_property_identifier(p)) {
		case MQTT_PROP_USER_PROPERTY:
			if (!mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY,
			                                         &name, &value, false))
				return IOTR_ENOMEM;
			rc = h->msg_add_header(msg, name, value, strlen(value));
			break;
		case MQTT_PROP_CONTENT_TYPE:
			if (!mosquitto_property_read_string(p, MQTT_PROP_CONTENT_TYPE,
			                                    &value, false))
				return IOTR_ENOMEM;
			rc = h->msg_add_header(msg, "mqtt.content_type", value,
			                       strlen(value));
			break;
		case MQTT_PROP_RESPONSE_TOPIC:
			if (!mosquitto_property_read_string(p, MQTT_PROP_RESPONSE_TOPIC,
			                                    &value, false))
				return IOTR_ENOMEM;
			rc = h->msg_add_header(msg, "mqtt.response_topic", value,
			                       strlen(value));
			break;
		case MQTT_PROP_CORRELATION_DATA:
			if (!mosquitto_property_read_binary(p, MQTT_PROP_CORRELATION_DATA,
			                                    &bin, &len, false))
				return IOTR_ENOMEM;
			rc = h->msg_add_header(msg, "mqtt.correlation_data", bin, len);
			break;
		default:
			/* message expiry, payload format, subscription id, topic
			 * alias: not carried */
			break;
		}
		free(name);
		free(value);
		free(bin);
	}
	return rc;
}

static void mqtt_on_message(struct mosquitto *mosq, void *obj,
                            const struct mosquitto_message *mm,
                            const mosquitto_property *props)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;
	const struct iotr_host *h = m->host;
	iotr_msg *msg;
	int rc;

	(void)mosq;
	h->counter_add(m->received, 1);
	if (m->skip_retained && mm->retain) {
		h->counter_add(m->retained_skipped, 1);
		return;
	}

	msg = h->msg_new(mm->topic, mm->payload, (size_t)mm->payloadlen);
	if (!msg || h->msg_set_qos(msg, mm->qos, mm->retain) != IOTR_OK ||
	    mqtt_add_headers(m, msg, props) != IOTR_OK) {
		/* The broker has been acked already: say loudly what is lost. */
		h->log(m->inst, IOTR_LOG_ERROR, "out of memory: message on \"%s\" "
		       "(%d bytes) lost", mm->topic, mm->payloadlen);
		if (msg)
			h->msg_free(msg);
		return;
	}

	rc = h->emit(m->inst, msg);
	if (rc == IOTR_ESHUTDOWN) {
		if (!atomic_exchange(&m->shutdown_logged, true))
			h->log(m->inst, IOTR_LOG_WARNING, "the router is shutting "
			       "down and refused a message on \"%s\" from %s (it "
			       "counts it as lost); later refusals are not logged",
			       mm->topic, m->brokers[c->cur].name);
	} else if (rc != IOTR_OK && !atomic_exchange(&m->emit_error_logged, true)) {
		h->log(m->inst, IOTR_LOG_ERROR, "the router refused a message on "
		       "\"%s\" (status %d); later refusals are not logged",
		       mm->topic, rc);
	}
}

/* -- the loop thread ----------------------------------------------------------- */

static bool mqtt_stop_requested(struct mqtt_in *m)
{
	bool stop;

	pthread_mutex_lock(&m->lock);
	stop = m->stop_requested;
	pthread_mutex_unlock(&m->lock);
	return stop;
}

/* Sleep for ms, or less if stop() is called; false if it was. */
static bool mqtt_sleep(struct mqtt_in *m, int64_t ms)
{
	struct timespec until;
	bool stop;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&m->lock);
	while (!m->stop_requested &&
	       pthread_cond_timedwait(&m->cond, &m->lock, &until) != ETIMEDOUT)
		;
	stop = m->stop_requested;
	pthread_mutex_unlock(&m->lock);
	return !stop;
}

/* Run the connection to the current broker until it fails, an attempt times
 * out, or stop() is called (then disconnect cleanly). */
/*
 * One round of a plain TCP connection's network loop, once its session is
 * up: wait for the socket, read every packet that is there, write what is
 * queued (PUBACKs: a batch of them costs the broker fewer wake-ups than one
 * at a time, measured), and keep house (keepalive, retries).
 * mosquitto_loop() does the same but reads one packet per select() call,
 * and that select() was a sixth of the input's cost per message at high
 * rates.  mosquitto_loop_read() reads one packet (it ignores max_packets
 * for a subscriber) and leaves errno at EAGAIN when the socket had no more,
 * but also when anything else in it met EAGAIN: queuing a PUBACK writes a
 * byte to libmosquitto's wake-up socket pair, which only mosquitto_loop()
 * drains, so once that pair is full every QoS 1 packet ends in EAGAIN.  So
 * EAGAIN only sends the loop to ask the socket itself (mqtt_readable).
 * TLS connections keep mosquitto_loop(), which also drives the handshake
 * and data buffered inside the TLS library.
 */
/* Whether bytes wait on the socket. */
static bool mqtt_readable(int fd)
{
	int n = 0;

	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static int mqtt_loop_plain(struct mqtt_conn *c)
{
	struct pollfd pfd = { .fd = mosquitto_socket(c->mosq), .events = POLLIN };
	int i, rc;

	if (pfd.fd < 0)
		return MOSQ_ERR_NO_CONN;
	if (mosquitto_want_write(c->mosq))
		pfd.events |= POLLOUT;
	if (poll(&pfd, 1, MQTT_LOOP_MS) < 0)
		return errno == EINTR ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ERRNO;
	if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
		for (i = 0; i < MQTT_READ_BATCH; i++) {
			errno = 0;
			rc = mosquitto_loop_read(c->mosq, 1);
			if (rc != MOSQ_ERR_SUCCESS)
				return rc;
			if (mosquitto_socket(c->mosq) < 0)
				break;
			if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
			    !mqtt_readable(pfd.fd))
				break;
		}
	}
	if (mosquitto_socket(c->mosq) >= 0 && mosquitto_want_write(c->mosq)) {
		rc = mosquitto_loop_write(c->mosq, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			return rc;
	}
	return mosquitto_loop_misc(c->mosq);
}

static void mqtt_run_connection(struct mqtt_conn *c)
{
	struct mqtt_in *m = c->m;
	int64_t started = mqtt_now_ms();
	int rc;

	for (;;) {
		if (mqtt_stop_requested(m)) {
			if (!c->session_up)
				return;
			/* Queued PUBACKs go out before the DISCONNECT; bound the wait
			 * in case the network is gone. */
			rc = mosquitto_disconnect_v5(c->mosq, MQTT_RC_NORMAL_DISCONNECTION,
			                             NULL);
			started = mqtt_now_ms();
			while (rc == MOSQ_ERR_SUCCESS && c->session_up &&
			       mqtt_now_ms() - started < m->connect_timeout_ms)
				rc = mosquitto_loop(c->mosq, MQTT_LOOP_MS, 1);
			return;
		}
		if (c->session_up && !c->m->tls)
			rc = mqtt_loop_plain(c);
		else
			rc = mosquitto_loop(c->mosq, MQTT_LOOP_MS, 1);
		if (rc != MOSQ_ERR_SUCCESS) {
			char why[300];

			mqtt_describe_rc(c, why, sizeof(why), rc, errno);
			mqtt_fail(c, IOTR_LOG_WARNING, "%s", why);
			return;
		}
		if (!c->up_since && mqtt_now_ms() - started >= m->connect_timeout_ms) {
			/* The next connect call closes this socket. */
			mqtt_fail(c, IOTR_LOG_WARNING, "no CONNACK within %" PRId64
			          " ms (connect_timeout_ms)", m->connect_timeout_ms);
			return;
		}
	}
}

static void *mqtt_loop(void *arg)
{
	struct mqtt_conn *c = arg;
	struct mqtt_in *m = c->m;
	int64_t delay = m->reconnect_min_ms;

	while (!mqtt_stop_requested(m)) {
		const struct mqtt_broker *b = &m->brokers[c->cur];
		int rc;

		c->up_since = 0;
		c->session_up = false;
		c->fail_level = IOTR_LOG_WARNING;
		c->fail_reason[0] = '\0';
		c->lib_error[0] = '\0';

		rc = mosquitto_connect_bind_async(c->mosq, b->host, b->port,
		                                  m->keepalive, NULL);
		if (rc == MOSQ_ERR_SUCCESS) {
			mqtt_run_connection(c);
		} else {
			char why[300];

			mqtt_describe_rc(c, why, sizeof(why), rc, errno);
			mqtt_fail(c, IOTR_LOG_WARNING, "%s", why);
		}

		if (c->up_since) {
			int64_t up = mqtt_now_ms() - c->up_since;

			if (mqtt_stop_requested(m)) {
				m->host->log(m->inst, IOTR_LOG_NOTICE,
				             "disconnected from %s%s (stopping)", b->name,
				             c->tag);
				break;
			}
			/* A connection that stayed up a while starts the back-off
			 * afresh; one that keeps dropping (say, another client with
			 * the same client_id) keeps backing off. */
			if (up >= m->reconnect_max_ms)
				delay = m->reconnect_min_ms;
			m->host->log(m->inst, IOTR_LOG_NOTICE,
			             "disconnected from %s%s: %s; reconnecting in %"
			             PRId64 " ms", b->name, c->tag,
			             c->fail_reason[0] ? c->fail_reason : "unknown reason",
			             delay);
		} else {
			if (mqtt_stop_requested(m))
				break;
			c->cur = (c->cur + 1) % m->n_brokers;
			m->host->log(m->inst, c->fail_level,
			             "cannot connect to %s%s: %s; next attempt in %" PRId64
			             " ms%s%s", b->name, c->tag,
			             c->fail_reason[0] ? c->fail_reason : "unknown reason",
			             delay, m->n_brokers > 1 ? " to " : "",
			             m->n_brokers > 1 ? m->brokers[c->cur].name : "");
		}
		if (!mqtt_sleep(m, delay))
			break;
		delay = delay * 2 > m->reconnect_max_ms ? m->reconnect_max_ms
		                                        : delay * 2;
	}
	return NULL;
}

/* -- configuration ------------------------------------------------------------- */

/* Parse "mqtt://host:port" or "mqtts://host:port" (host may be "[v6addr]",
 * port defaults to 1883 / 8883).  Returns 0, or -1 if malformed. */
static int mqtt_parse_uri(const char *uri, struct mqtt_broker *b, bool *tls)
{
	const char *p, *host, *host_end;
	long port;

	if (strncmp(uri, "mqtt://", 7) == 0) {
		*tls = false;
		p = uri + 7;
		port = 1883;
	} else if (strncmp(uri, "mqtts://", 8) == 0) {
		*tls = true;
		p = uri + 8;
		port = 8883;
	} else {
		return -1;
	}

	if (*p == '[') {
		host = p + 1;
		host_end = strchr(host, ']');
		if (!host_end)
			return -1;
		p = host_end + 1;
	} else {
		host = p;
		host_end = p + strcspn(p, ":/");
		p = host_end;
	}
	if (host_end == host)
		return -1;

	if (*p == ':') {
		char *end;

		errno = 0;
		port = strtol(p + 1, &end, 10);
		if (end == p + 1 || errno || port < 1 || port > 65535)
			return -1;
		p = end;
	}
	if (*p == '/')
		p++;
	if (*p != '\0')
		return -1;

	b->host = strndup(host, (size_t)(host_end - host));
	b->port = (int)port;
	if (b->host && asprintf(&b->name, strchr(b->host, ':') ? "[%s]:%d"
	                                                         : "%s:%d",
	                        b->host, b->port) < 0)
		b->name = NULL;
	return 0;
}

static int mqtt_config_brokers(struct mqtt_in *m, bool *tls)
{
	const struct iotr_host *h = m->host;
	size_t n = h->param_count(m->inst, "brokers");

	if (n == 0) {
		const char *host = h->param_string(m->inst, "host");
		int port = (int)h->param_int(m->inst, "port");

		m->brokers = calloc(1, sizeof(*m->brokers));
		if (!m->brokers)
			return IOTR_ENOMEM;
		m->n_brokers = 1;
		m->brokers[0].host = strdup(host);
		m->brokers[0].port = port;
		if (!m->brokers[0].host ||
		    asprintf(&m->brokers[0].name, strchr(host, ':') ? "[%s]:%d"
		                                                     : "%s:%d",
		             host, port) < 0)
			return IOTR_ENOMEM;
		return IOTR_OK;
	}

	if (h->param_is_set(m->inst, "host") || h->param_is_set(m->inst, "port"))
		h->log(m->inst, IOTR_LOG_WARNING, "host and port are ignored because "
		       "brokers is set; remove them from the config");

	m->brokers = calloc(n, sizeof(*m->brokers));
	if (!m->brokers)
		return IOTR_ENOMEM;
	m->n_brokers = n;
	for (size_t i = 0; i < n; i++) {
		const char *uri = h->param_string_at(m->inst, "brokers", i);
		bool uri_tls;

		if (mqtt_parse_uri(uri, &m->brokers[i], &uri_tls) != 0) {
			h->log(m->inst, IOTR_LOG_ERROR, "brokers[%zu] = \"%s\" is not a "
			       "broker URI; write mqtt://host:port or mqtts://host:port",
			       i, uri);
			return IOTR_EINVAL;
		}
		if (!m->brokers[i].host || !m->brokers[i].name)
			return IOTR_ENOMEM;
		if (i > 0 && uri_tls != *tls) {
			h->log(m->inst, IOTR_LOG_ERROR, "brokers mixes mqtt:// and "
			       "mqtts:// URIs (\"%s\"); one connection setting serves "
			       "every broker, so use one scheme for all", uri);
			return IOTR_EINVAL;
		}
		*tls = uri_tls;
	}
	return IOTR_OK;
}

static int mqtt_config_topics(struct mqtt_in *m)
{
	const struct iotr_host *h = m->host;
	size_t n = h->param_count(m->inst, "topics");
	size_t nq = h->param_count(m->inst, "qos");

	if (n == 0) {
		h->log(m->inst, IOTR_LOG_ERROR, "topics is empty; list at least one "
		       "subscription filter, e.g. topics = [\"sensors/#\"]");
		return IOTR_EINVAL;
	}
	if (nq != 1 && nq != n) {
		h->log(m->inst, IOTR_LOG_ERROR, "qos has %zu values but topics has "
		       "%zu; give one qos for all topics or one per topic", nq, n);
		return IOTR_EINVAL;
	}

	m->topics = calloc(n, sizeof(*m->topics));
	m->qos = calloc(n, sizeof(*m->qos));
	if (!m->topics || !m->qos)
		return IOTR_ENOMEM;
	m->n_topics = n;

	for (size_t i = 0; i < n; i++) {
		const char *t = h->param_string_at(m->inst, "topics", i);
		int64_t q = h->param_int_at(m->inst, "qos", nq == 1 ? 0 : i);

		if (!t || mosquitto_sub_topic_check(t) != MOSQ_ERR_SUCCESS) {
			h->log(m->inst, IOTR_LOG_ERROR, "topics[%zu] = \"%s\" is not a "
			       "valid subscription filter; '+' and '#' must fill a whole "
			       "level and '#' must come last", i, t ? t : "");
			return IOTR_EINVAL;
		}
		if (q < 0 || q > 2) {
			h->log(m->inst, IOTR_LOG_ERROR, "qos %" PRId64 " for \"%s\" is "
			       "out of range; use 0, 1 or 2", q, t);
			return IOTR_EINVAL;
		}
		m->topics[i] = t;
		m->qos[i] = (int)q;
		/* Every connection subscribes to every filter: a plain one hands
		 * each of them every message, a shared one hands each message to
		 * one member of the group. */
		if (m->n_conns > 1 && strncmp(t, "$share/", 7) != 0)
			h->log(m->inst, IOTR_LOG_WARNING, "connections = %zu but "
			       "topics[%zu] = \"%s\" is not a shared subscription, "
			       "so each of the %zu connections receives every message "
			       "on it and the router takes each one %zu times; write "
			       "\"$share/GROUP/%s\"", m->n_conns, i, t, m->n_conns,
			       m->n_conns, t);
	}
	return IOTR_OK;
}

/* The first line of path, without its line end; NULL and *err = errno (0 for
 * an empty file) on failure.  The caller wipes and frees it. */
static char *mqtt_read_first_line(const char *path, int *err)
{
	FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (!f) {
		*err = errno;
		return NULL;
	}
	errno = 0;
	n = getline(&line, &cap, f);
	*err = errno;
	fclose(f);
	if (n <= 0) {
		free(line);
		return NULL;
	}
	line[strcspn(line, "\r\n")] = '\0';
	return line;
}

/* Read username and the password (from password or password_file) and
 * check them; *password is a copy the caller wipes and frees, or NULL. */
static int mqtt_config_credentials(struct mqtt_in *m, char **password)
{
	const struct iotr_host *h = m->host;
	const char *value = h->param_string(m->inst, "password");
	const char *file = h->param_string(m->inst, "password_file");

	*password = NULL;
	m->username = h->param_string(m->inst, "username");
	if (value && file) {
		h->log(m->inst, IOTR_LOG_ERROR, "both password and password_file "
		       "are set; keep one of them");
		return IOTR_EINVAL;
	}
	if (file) {
		int err;

		*password = mqtt_read_first_line(file, &err);
		if (!*password) {
			char ebuf[128];

			h->log(m->inst, IOTR_LOG_ERROR, "password_file \"%s\": %s; the "
			       "router reads the password from its first line",
			       file, err ? strerror_r(err, ebuf, sizeof(ebuf))
			                 : "the file is empty");
			return IOTR_EINVAL;
		}
	} else if (value && !(*password = strdup(value))) {
		return IOTR_ENOMEM;
	}
	if (*password && !m->username && m->protocol != MQTT_PROTOCOL_V5) {
		h->log(m->inst, IOTR_LOG_ERROR, "a password is set without "
		       "username; MQTT 3.1.1 needs both, so set username");
		return IOTR_EINVAL;
	}
	return IOTR_OK;
}

/* An encrypted key would make OpenSSL prompt on the terminal; refuse it. */
static int mqtt_no_key_password(char *buf, int size, int rwflag, void *userdata)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)userdata;
	return 0;
}

/* Set up TLS on connection c's handle.  The checks give the same answer
 * for every connection, so only the first one logs its warnings. */
static int mqtt_config_tls(struct mqtt_conn *c, bool uri_tls)
{
	struct mqtt_in *m = c->m;
	static const char *const files[] = {
		"tls_ca_file", "tls_ca_path", "tls_cert_file", "tls_key_file",
		"tls_version"
	};
	const struct iotr_host *h = m->host;
	const char *ca_file = h->param_string(m->inst, "tls_ca_file");
	const char *ca_path = h->param_string(m->inst, "tls_ca_path");
	const char *cert = h->param_string(m->inst, "tls_cert_file");
	const char *key = h->param_string(m->inst, "tls_key_file");
	const char *version = h->param_string(m->inst, "tls_version");
	bool verify = h->param_bool(m->inst, "tls_verify");
	int rc;

	if (!h->param_bool(m->inst, "tls") && !uri_tls) {
		/* A CA or certificate without TLS would send credentials in clear
		 * text to a broker the operator meant to reach over TLS. */
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			if (h->param_string(m->inst, files[i])) {
				h->log(m->inst, IOTR_LOG_ERROR, "%s is set but TLS is off; "
				       "set tls = true (or use mqtts:// brokers), or remove "
				       "%s", files[i], files[i]);
				return IOTR_EINVAL;
			}
		}
		return IOTR_OK;
	}

	if (!cert != !key) {
		h->log(m->inst, IOTR_LOG_ERROR, "%s is set without %s; a client "
		       "certificate needs both tls_cert_file and tls_key_file",
		       cert ? "tls_cert_file" : "tls_key_file",
		       cert ? "tls_key_file" : "tls_cert_file");
		return IOTR_EINVAL;
	}
	for (size_t i = 0; i < 4; i++) {
		const char *path = h->param_string(m->inst, files[i]);
		FILE *f;

		if (!path || i == 1)    /* tls_ca_path is a directory */
			continue;
		f = fopen(path, "re");
		if (!f) {
			char ebuf[128];

			h->log(m->inst, IOTR_LOG_ERROR, "%s \"%s\": %s; fix the path "
			       "or the file's permissions", files[i], path,
			       strerror_r(errno, ebuf, sizeof(ebuf)));
			return IOTR_EINVAL;
		}
		fclose(f);
	}

	if (ca_file || ca_path) {
		rc = mosquitto_tls_set(c->mosq, ca_file, ca_path, cert, key,
		                       mqtt_no_key_password);
	} else if (cert) {
		h->log(m->inst, IOTR_LOG_ERROR, "tls_cert_file needs tls_ca_file or "
		       "tls_ca_path (libmosquitto cannot combine a client "
		       "certificate with the system's CAs); set one of them");
		return IOTR_EINVAL;
	} else {
		rc = mosquitto_int_option(c->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		char text[128];

		mqtt_copy_text(text, sizeof(text), mosquitto_strerror(rc));
		h->log(m->inst, IOTR_LOG_ERROR, "TLS setup failed: %s; check "
		       "tls_ca_file, tls_ca_path, tls_cert_file and tls_key_file",
		       text);
		return IOTR_EINVAL;
	}

	m->tls = true;
	if (version || !verify)
		rc = mosquitto_tls_opts_set(c->mosq, verify ? 1 : 0, version, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		h->log(m->inst, IOTR_LOG_ERROR, "tls_version = \"%s\" is not "
		       "supported; use \"tlsv1.1\", \"tlsv1.2\" or \"tlsv1.3\", or "
		       "remove it", version ? version : "");
		return IOTR_EINVAL;
	}
	if (!verify) {
		mosquitto_tls_insecure_set(c->mosq, true);
		if (c == &m->conns[0])
			h->log(m->inst, IOTR_LOG_WARNING, "tls_verify = false: the "
			       "broker's certificate and host name are not checked, "
			       "so anyone on the path can impersonate it; set "
			       "tls_ca_file and remove tls_verify outside tests");
	}
	return IOTR_OK;
}

/* MQTT 5 CONNECT properties.  libmosquitto 2.0 has no asynchronous connect
 * that takes properties, but mosquitto_connect_bind_v5() stores them on the
 * handle before it checks the host, and every later connect and reconnect
 * sends the stored ones.  With host NULL it stores them and returns
 * MOSQ_ERR_INVAL without touching the network.  (Checked against 2.0.11 and
 * the current 2.0 sources; the persistent-session test fails if it breaks.) */
static int mqtt_config_connect_properties(struct mqtt_conn *c, int64_t expiry)
{
	struct mqtt_in *m = c->m;
	mosquitto_property *props = NULL;
	int major, minor, revision, rc;

	/* The headers said 2.0, but 1.6 has the same soname and drops the
	 * properties silently. */
	mosquitto_lib_version(&major, &minor, &revision);
	if (major < 2) {
		m->host->log(m->inst, IOTR_LOG_ERROR, "libmosquitto %d.%d.%d cannot "
		             "keep an MQTT 5 session; install libmosquitto 2.0 or "
		             "later, or set protocol = \"3.1.1\"", major, minor,
		             revision);
		return IOTR_FAIL;
	}
	if (mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
	                                 (uint32_t)expiry) != MOSQ_ERR_SUCCESS)
		return IOTR_ENOMEM;
	rc = mosquitto_connect_bind_v5(c->mosq, NULL, 0, m->keepalive, NULL, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_INVAL) {
		m->host->log(m->inst, IOTR_LOG_ERROR, "cannot set the MQTT 5 session "
		             "expiry (%s); this libmosquitto is not supported, use "
		             "protocol = \"3.1.1\" or clean_session = true",
		             mosquitto_strerror(rc));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

/* -- lifecycle ----------------------------------------------------------------- */

static int mqtt_stop(void *state);
static void mqtt_destroy(void *state);

/* Make connection i's handle: its client id, the options, credentials, TLS
 * and session settings shared by all connections, and the callbacks. */
static int mqtt_conn_setup(struct mqtt_in *m, size_t i, const char *password,
                           bool uri_tls, int64_t expiry)
{
	const struct iotr_host *host = m->host;
	iotr_instance *inst = m->inst;
	struct mqtt_conn *c = &m->conns[i];
	int rc;

	c->m = m;
	c->tag = "";
	if (i == 0)
		c->client_id = strdup(m->client_id);
	else if (asprintf(&c->client_id, "%s-%zu", m->client_id, i) < 0)
		c->client_id = NULL;
	c->sub_mid = calloc(m->n_topics, sizeof(*c->sub_mid));
	if (!c->client_id || !c->sub_mid)
		return IOTR_ENOMEM;
	if (m->n_conns > 1) {
		if (asprintf(&c->tag_buf, " as \"%s\"", c->client_id) < 0) {
			c->tag_buf = NULL;
			return IOTR_ENOMEM;
		}
		c->tag = c->tag_buf;
	}
	for (size_t t = 0; t < m->n_topics; t++)
		c->sub_mid[t] = -1;

	c->mosq = mosquitto_new(c->client_id, m->clean_session, c);
	if (!c->mosq) {
		host->log(inst, IOTR_LOG_ERROR, "mosquitto_new failed for client_id "
		          "\"%s\": %s", c->client_id,
		          errno == EINVAL ? "invalid client_id" : "out of memory");
		return errno == EINVAL ? IOTR_EINVAL : IOTR_ENOMEM;
	}
	/* Threaded mode: acks are queued, not written, inside on_message. */
	mosquitto_threaded_set(c->mosq, true);
	mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, m->protocol);
	mosquitto_int_option(c->mosq, MOSQ_OPT_RECEIVE_MAXIMUM,
	                     (int)host->param_int(inst, "receive_maximum"));

	if ((m->username || password) &&
	    mosquitto_username_pw_set(c->mosq, m->username, password)
	    != MOSQ_ERR_SUCCESS)
		return IOTR_ENOMEM;
	if ((rc = mqtt_config_tls(c, uri_tls)) != IOTR_OK)
		return rc;
	/* Without clean_session the session outlives the connection; an MQTT 5
	 * broker keeps it only as long as the session expiry says (default 0). */
	if (m->protocol == MQTT_PROTOCOL_V5 && !m->clean_session && expiry > 0 &&
	    (rc = mqtt_config_connect_properties(c, expiry)) != IOTR_OK)
		return rc;

	/* The log callback costs a formatted string per packet: only pay for it
	 * where it explains failures (TLS) or someone reads debug output. */
	if (m->tls || host->log_enabled(inst, IOTR_LOG_DEBUG))
		mosquitto_log_callback_set(c->mosq, mqtt_on_log);
	mosquitto_connect_v5_callback_set(c->mosq, mqtt_on_connect);
	mosquitto_disconnect_v5_callback_set(c->mosq, mqtt_on_disconnect);
	mosquitto_subscribe_v5_callback_set(c->mosq, mqtt_on_subscribe);
	mosquitto_message_v5_callback_set(c->mosq, mqtt_on_message);
	return IOTR_OK;
}

static int mqtt_create(iotr_instance *inst, const struct iotr_host *host,
                       void **state)
{
	struct mqtt_in *m;
	const char *protocol;
	char *password = NULL;
	bool uri_tls = false;
	int64_t expiry;
	pthread_condattr_t cattr;
	int rc;

	pthread_once(&mqtt_lib_once, mqtt_lib_init);
	if (mqtt_lib_rc != MOSQ_ERR_SUCCESS) {
		host->log(inst, IOTR_LOG_ERROR, "mosquitto_lib_init failed: %s",
		          mosquitto_strerror(mqtt_lib_rc));
		return IOTR_FAIL;
	}

	m = calloc(1, sizeof(*m));
	if (!m)
		return IOTR_ENOMEM;
	m->inst = inst;
	m->host = host;
	pthread_mutex_init(&m->lock, NULL);
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&m->cond, &cattr);
	pthread_condattr_destroy(&cattr);
	*state = m;

	protocol = host->param_string(inst, "protocol");
	if (strcmp(protocol, "5") == 0) {
		m->protocol = MQTT_PROTOCOL_V5;
	} else if (strcmp(protocol, "3.1.1") == 0 || strcmp(protocol, "311") == 0) {
		m->protocol = MQTT_PROTOCOL_V311;
	} else {
		host->log(inst, IOTR_LOG_ERROR, "protocol = \"%s\" is not supported; "
		          "use \"5\" or \"3.1.1\"", protocol);
		rc = IOTR_EINVAL;
		goto fail;
	}

	m->client_id = host->param_string(inst, "client_id");
	if (!m->client_id || !m->client_id[0]) {
		host->log(inst, IOTR_LOG_ERROR, "client_id is empty; give this "
		          "router a stable, unique client_id so that its session "
		          "survives restarts");
		rc = IOTR_EINVAL;
		goto fail;
	}
	m->clean_session = host->param_bool(inst, "clean_session");
	m->n_conns = (size_t)host->param_int(inst, "connections");
	expiry = host->param_int(inst, "session_expiry");
	m->keepalive = (int)host->param_int(inst, "keepalive");
	m->skip_retained = host->param_bool(inst, "skip_retained");
	m->reconnect_min_ms = host->param_int(inst, "reconnect_min_ms");
	m->reconnect_max_ms = host->param_int(inst, "reconnect_max_ms");
	m->connect_timeout_ms = host->param_int(inst, "connect_timeout_ms");
	if (m->reconnect_min_ms > m->reconnect_max_ms) {
		host->log(inst, IOTR_LOG_ERROR, "reconnect_min_ms (%" PRId64 ") is "
		          "larger than reconnect_max_ms (%" PRId64 "); make min <= max",
		          m->reconnect_min_ms, m->reconnect_max_ms);
		rc = IOTR_EINVAL;
		goto fail;
	}

	if ((rc = mqtt_config_brokers(m, &uri_tls)) != IOTR_OK ||
	    (rc = mqtt_config_topics(m)) != IOTR_OK ||
	    (rc = mqtt_config_credentials(m, &password)) != IOTR_OK)
		goto fail;

	m->conns = calloc(m->n_conns, sizeof(*m->conns));
	if (!m->conns) {
		rc = IOTR_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < m->n_conns; i++)
		if ((rc = mqtt_conn_setup(m, i, password, uri_tls, expiry)) != IOTR_OK)
			goto fail;
	if (password) {
		explicit_bzero(password, strlen(password));
		free(password);
		password = NULL;
	}

	m->received = host->counter(inst, "received");
	m->retained_skipped = host->counter(inst, "retained_skipped");
	m->connects = host->counter(inst, "connects");
	m->disconnects = host->counter(inst, "disconnects");
	return IOTR_OK;

fail:
	if (rc == IOTR_ENOMEM)
		host->log(inst, IOTR_LOG_ERROR, "out of memory while reading the "
		          "configuration");
	if (password) {
		explicit_bzero(password, strlen(password));
		free(password);
	}
	mqtt_destroy(m);
	*state = NULL;
	return rc;
}

static int mqtt_start(void *state)
{
	struct mqtt_in *m = state;
	struct timespec until;
	size_t i, answered;
	int rc;

	m->stop_requested = false;
	for (i = 0; i < m->n_conns; i++) {
		struct mqtt_conn *c = &m->conns[i];

		c->first_connack = false;
		rc = pthread_create(&c->thread, NULL, mqtt_loop, c);
		if (rc != 0) {
			char ebuf[128];

			m->host->log(m->inst, IOTR_LOG_ERROR, "cannot start the MQTT "
			             "thread%s: %s", c->tag,
			             strerror_r(rc, ebuf, sizeof(ebuf)));
			mqtt_stop(m);
			return IOTR_FAIL;
		}
		c->thread_running = true;
	}

	/* Wait for the first CONNACK of every connection so that the
	 * subscriptions are normally in place when the router reports it has
	 * started; a broker that is down is not a reason to fail, the loops
	 * keep trying. */
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += m->connect_timeout_ms / 1000;
	until.tv_nsec += (m->connect_timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&m->lock);
	for (;;) {
		for (answered = 0, i = 0; i < m->n_conns; i++)
			answered += m->conns[i].first_connack;
		if (answered == m->n_conns ||
		    pthread_cond_timedwait(&m->cond, &m->lock, &until) == ETIMEDOUT)
			break;
	}
	for (answered = 0, i = 0; i < m->n_conns; i++)
		answered += m->conns[i].first_connack;
	pthread_mutex_unlock(&m->lock);
	if (answered == 0)
		m->host->log(m->inst, IOTR_LOG_WARNING, "not connected to %s%s after "
		             "%" PRId64 " ms; starting anyway and retrying in the "
		             "background (see the connection errors logged)",
		             m->brokers[0].name, m->n_brokers > 1 ? " or the other "
		             "brokers" : "", m->connect_timeout_ms);
	else if (answered < m->n_conns)
		m->host->log(m->inst, IOTR_LOG_WARNING, "%zu of %zu connections "
		             "have no answer from the broker after %" PRId64 " ms; "
		             "starting anyway and retrying in the background (see the "
		             "connection errors logged)", m->n_conns - answered,
		             m->n_conns, m->connect_timeout_ms);
	return IOTR_OK;
}

static int mqtt_stop(void *state)
{
	struct mqtt_in *m = state;

	pthread_mutex_lock(&m->lock);
	m->stop_requested = true;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	/* May wait for an emit() blocked on backpressure: the host makes it
	 * return by the shutdown deadline.  The loops see the request at once
	 * and disconnect in parallel. */
	for (size_t i = 0; i < m->n_conns; i++) {
		struct mqtt_conn *c = &m->conns[i];

		if (!c->thread_running)
			continue;
		pthread_join(c->thread, NULL);
		c->thread_running = false;
	}
	return IOTR_OK;
}

static void mqtt_destroy(void *state)
{
	struct mqtt_in *m = state;

	if (!m)
		return;
	if (m->conns) {
		mqtt_stop(m);
		for (size_t i = 0; i < m->n_conns; i++) {
			struct mqtt_conn *c = &m->conns[i];

			if (c->mosq)
				mosquitto_destroy(c->mosq);
			free(c->client_id);
			free(c->tag_buf);
			free(c->sub_mid);
		}
		free(m->conns);
	}
	for (size_t i = 0; i < m->n_brokers; i++) {
		free(m->brokers[i].host);
		free(m->brokers[i].name);
	}
	free(m->brokers);
	free(m->topics);
	free(m->qos);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static const struct iotr_plugin mqtt_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "mqtt",
	.version = "1.0.0",
	.description = "MQTT input: subscribes to an MQTT 3.1.1/5 broker with "
	               "libmosquitto",
	.kind = IOTR_PLUGIN_INPUT,
	.params = mqtt_params,
	.create = mqtt_create,
	.start = mqtt_start,
	.stop = mqtt_stop,
	.destroy = mqtt_destroy,
};

IOTR_PLUGIN_EXPORT const struct iotr_plugin *iotr_plugin_entry(void)
{
	return &mqtt_plugin;
}
