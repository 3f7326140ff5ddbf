/*
 * mqtt.c - the input plugin "mqtt": subscribes to an MQTT broker with
 * libmosquitto and emits every message it receives into the router.  The
 * same .so is the mqtt output (mqtt_out.c); both read their connection
 * settings with mqttconn.c.
 *
 * Threading: create(), start(), stop() and destroy() run on the router's
 * thread.  The instance has `connections` MQTT connections (struct
 * mqtt_conn), each with its own client id, mosquitto handle and loop thread,
 * mqttconn_run(), which owns that handle from start() until stop() joins it:
 * it connects, runs the network loop (mqtt_loop_once), backs off, fails over
 * between brokers and disconnects.  Every libmosquitto callback of a
 * connection, and so every host->emit() of its messages, runs on that
 * connection's thread; the threads share only the read-only configuration,
 * the counters (atomic, in the host), the fields under "guarded by lock"
 * and two atomic flags.
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

#include "mqttconn.h"

/* How long one mosquitto_loop() call may sleep: bounds how late the loop
 * thread notices a stop request or an attempt that has taken too long. */
#define MQTT_LOOP_MS 200

/* Most packets one wake-up of a plain (non-TLS) connection reads before the
 * loop writes what is queued and keeps house (see mqtt_loop_plain). */
#define MQTT_READ_BATCH 1024

/* Most connections one instance may open (`connections`). */
#define MQTT_MAX_CONNECTIONS 64

static const struct iotr_param mqtt_params[] = {
	MQTTCONN_PARAMS_SERVER,
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
	MQTTCONN_PARAMS_SESSION("Start a new session on every connect instead "
	                        "of resuming the one the broker kept (messages "
	                        "queued while offline are lost)."),
	{ .key = "skip_retained", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Drop messages that carry the retain flag (counted as "
	         "retained_skipped)." },
	{ .key = "receive_maximum", .type = IOTR_PARAM_INT, .default_value = "100",
	  .doc = "MQTT 5: most QoS 1/2 messages the broker may have in flight to "
	         "this client.", .min = 1, .max = 65535 },
	MQTTCONN_PARAM_CONNECT_TIMEOUT,
	{ .key = NULL }
};

struct mqtt_in;

/* One connection to the broker: its own client id, handle and loop thread. */
struct mqtt_conn {
	struct mqtt_in *m;      /* the instance it belongs to; borrowed */
	char *client_id;        /* client_id for the first, "<client_id>-<i>" */
	char *tag_buf;          /* s.tag with more than one connection:
	                           " as \"client_id\"", to tell them apart in
	                           the log */
	int *sub_mid;           /* message id of each topic's SUBSCRIBE */

	/* Guarded by m->lock. */
	bool first_connack;     /* a CONNACK arrived, accepted or refused */

	/* Router's thread only. */
	pthread_t thread;
	bool thread_running;

	/* The handle and the loop state (mqttconn.h). */
	struct mqttconn_session s;

	/* Loop thread only (and the callbacks, which run on it). */
	bool had_session;       /* a persistent session was set up before */
	unsigned long messages; /* on_message calls: mqtt_loop_plain() reads
	                           on without asking the socket after one */
};

struct mqtt_in {
	iotr_instance *inst;
	const struct iotr_host *host;

	/* Configuration, read in create().  Strings from host->param_* are
	 * borrowed: the host keeps them until destroy().  cc.client_id is the
	 * first connection's. */
	struct mqttconn cc;
	const char **topics;
	int *qos;               /* one per topic */
	size_t n_topics;
	int receive_maximum;
	bool skip_retained;

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
		snprintf(c->s.lib_error, sizeof(c->s.lib_error), "%s", str);
	if (m->host->log_enabled(m->inst, IOTR_LOG_DEBUG))
		m->host->log(m->inst, IOTR_LOG_DEBUG, "libmosquitto%s: %s",
		             c->s.tag, str);
}

static void mqtt_subscribe_all(struct mqtt_conn *c)
{
	struct mqtt_in *m = c->m;
	const struct mqttconn_broker *b = &m->cc.brokers[c->s.cur];

	for (size_t i = 0; i < m->n_topics; i++) {
		int rc = mosquitto_subscribe_v5(c->s.mosq, &c->sub_mid[i],
		                                m->topics[i], m->qos[i], 0, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			char text[128];

			c->sub_mid[i] = -1;
			mqttconn_copy_text(text, sizeof(text), mosquitto_strerror(rc));
			m->host->log(m->inst, IOTR_LOG_ERROR,
			             "cannot subscribe to \"%s\" on %s%s: %s; "
			             "it is retried on the next reconnect",
			             m->topics[i], b->name, c->s.tag, text);
		}
	}
}

static void mqtt_on_connect(struct mosquitto *mosq, void *obj, int rc,
                            int flags, const mosquitto_property *props)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;
	const struct mqttconn_broker *b = &m->cc.brokers[c->s.cur];

	(void)mosq;
	(void)props;
	if (rc == 0) {
		c->s.up_since = mqttconn_now_ms();
		c->s.session_up = true;
		m->host->counter_add(m->connects, 1);
		m->host->log(m->inst, IOTR_LOG_NOTICE,
		             "connected to %s as \"%s\" (%s, %s)", b->name,
		             c->client_id, mqttconn_protocol_name(m->cc.protocol),
		             (flags & 1) ? "session resumed" : "new session");
		if (!m->cc.clean_session && c->had_session && !(flags & 1))
			m->host->log(m->inst, IOTR_LOG_WARNING, "%s did not keep the "
			             "session of \"%s\", so messages published while "
			             "this client was away are lost; give the broker "
			             "persistence or raise session_expiry", b->name,
			             c->client_id);
		c->had_session = !m->cc.clean_session;
		/* Subscribe even when the session was resumed: the broker may have
		 * lost it, and subscribing again to the same filter is harmless. */
		mqtt_subscribe_all(c);
	} else {
		char why[512];
		int level = mqttconn_connack_failure(&m->cc, rc, c->client_id, why,
		                                     sizeof(why));

		mqttconn_fail(&c->s, level, "%s", why);
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

	(void)mosq;
	(void)props;
	if (mqttconn_session_ended(&c->s, rc, err))
		c->m->host->counter_add(c->m->disconnects, 1);
}

static void mqtt_on_subscribe(struct mosquitto *mosq, void *obj, int mid,
                              int qos_count, const int *granted,
                              const mosquitto_property *props)
{
	struct mqtt_conn *c = obj;
	struct mqtt_in *m = c->m;
	const struct mqttconn_broker *b = &m->cc.brokers[c->s.cur];
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
		             b->name, m->topics[i], c->s.tag,
		             m->cc.protocol == MQTT_PROTOCOL_V5
		             ? mosquitto_reason_string(granted[0]) : "Failure",
		             m->cc.username ? m->cc.username : "(anonymous)");
	} else if (granted[0] < m->qos[i]) {
		m->host->log(m->inst, IOTR_LOG_WARNING,
		             "%s granted QoS %d for \"%s\"%s (asked for %d); "
		             "messages on it arrive with at most QoS %d", b->name,
		             granted[0], m->topics[i], c->s.tag, m->qos[i],
		             granted[0]);
	} else {
		m->host->log(m->inst, IOTR_LOG_NOTICE, "subscribed to \"%s\" "
		             "(QoS %d)%s", m->topics[i], granted[0], c->s.tag);
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
	c->messages++;
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
			       mm->topic, m->cc.brokers[c->s.cur].name);
	} else if (rc != IOTR_OK && !atomic_exchange(&m->emit_error_logged, true)) {
		h->log(m->inst, IOTR_LOG_ERROR, "the router refused a message on "
		       "\"%s\" (status %d); later refusals are not logged",
		       mm->topic, rc);
	}
}

/* -- the loop thread ----------------------------------------------------------- */

/* Whether bytes wait on the socket. */
static bool mqtt_readable(int fd)
{
	int n = 0;

	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/*
 * One round of a plain TCP connection's network loop, once its session is
 * up: wait for the socket, read every packet that is there, write what is
 * queued (PUBACKs: a batch of them costs the broker fewer wake-ups than one
 * at a time, measured), and keep house (keepalive, retries).
 * mosquitto_loop() does the same but reads one packet per select() call,
 * and that select() was a sixth of the input's cost per message at high
 * rates.  mosquitto_loop_read() reads one packet (it ignores max_packets
 * for a subscriber).  After a message the loop reads on at once: there is
 * likely more, and a read that finds nothing costs no more than asking.
 * Otherwise errno tells little: EAGAIN when the socket had no more, but
 * also when anything else in it met EAGAIN (queuing a PUBACK writes a byte
 * to libmosquitto's wake-up socket pair, which only mosquitto_loop()
 * drains, so once that pair is full every QoS 1 packet ends in EAGAIN).
 * So then the loop asks the socket itself (mqtt_readable).  TLS
 * connections keep mosquitto_loop(), which also drives the handshake and
 * data buffered inside the TLS library.
 */
static int mqtt_loop_plain(struct mqtt_conn *c)
{
	struct mosquitto *mosq = c->s.mosq;
	struct pollfd pfd = { .fd = mosquitto_socket(mosq), .events = POLLIN };
	unsigned long seen;
	int i, rc;

	if (pfd.fd < 0)
		return MOSQ_ERR_NO_CONN;
	if (mosquitto_want_write(mosq))
		pfd.events |= POLLOUT;
	if (poll(&pfd, 1, MQTT_LOOP_MS) < 0)
		return errno == EINTR ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ERRNO;
	if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
		for (i = 0; i < MQTT_READ_BATCH; i++) {
			seen = c->messages;
			errno = 0;
			rc = mosquitto_loop_read(mosq, 1);
			if (rc != MOSQ_ERR_SUCCESS)
				return rc;
			if (mosquitto_socket(mosq) < 0)
				break;
			if (c->messages == seen &&
			    (errno == EAGAIN || errno == EWOULDBLOCK) &&
			    !mqtt_readable(pfd.fd))
				break;
		}
	}
	if (mosquitto_socket(mosq) >= 0 && mosquitto_want_write(mosq)) {
		rc = mosquitto_loop_write(mosq, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			return rc;
	}
	return mosquitto_loop_misc(mosq);
}

/* One round of the network loop: mqtt_loop_plain() once a plain TCP
 * session is up. */
static int mqtt_loop_once(struct mqttconn_session *s)
{
	if (s->session_up && !s->cc->tls)
		return mqtt_loop_plain(s->owner);
	return mosquitto_loop(s->mosq, MQTT_LOOP_MS, 1);
}

/*
 * mosquitto before 2.0.13 (Debian 12 ships 2.0.11) sends an MQTT 5 client
 * more unacknowledged QoS 2 messages than its Receive Maximum once some are
 * queued for it; libmosquitto drops the connection over that as a protocol
 * error, and every reconnect ends the same way while the backlog lasts.
 */
static void mqtt_reconnect_note(struct mqttconn_session *s, char *buf,
                                size_t size)
{
	struct mqtt_conn *c = s->owner;
	struct mqtt_in *m = c->m;
	bool qos2 = false;

	for (size_t i = 0; i < m->n_topics; i++)
		qos2 = qos2 || m->qos[i] == 2;
	if (s->fail_rc != MOSQ_ERR_PROTOCOL || !qos2 ||
	    m->cc.protocol != MQTT_PROTOCOL_V5 || m->receive_maximum == 65535)
		return;
	snprintf(buf, size, "; a mosquitto broker older than 2.0.13 does this "
	         "at QoS 2 with messages queued: it sends more than "
	         "receive_maximum (%d) at once; set receive_maximum = 65535, "
	         "or qos = 1, or protocol = \"3.1.1\"", m->receive_maximum);
}

static const struct mqttconn_session_ops mqtt_session_ops = {
	.loop_ms = MQTT_LOOP_MS,
	.loop_once = mqtt_loop_once,
	.reconnect_note = mqtt_reconnect_note,
};

/* -- configuration ------------------------------------------------------------- */

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

/* -- lifecycle ----------------------------------------------------------------- */

static int mqtt_stop(void *state);
static void mqtt_destroy(void *state);

/* Make connection i's handle: its client id, the options, credentials, TLS
 * and session settings shared by all connections, and the callbacks. */
static int mqtt_conn_setup(struct mqtt_in *m, size_t i)
{
	const struct iotr_host *host = m->host;
	iotr_instance *inst = m->inst;
	struct mqtt_conn *c = &m->conns[i];
	int rc;

	c->m = m;
	mqttconn_session_init(&c->s, &m->cc, &mqtt_session_ops, c, &m->lock,
	                      &m->cond, &m->stop_requested);
	if (i == 0)
		c->client_id = strdup(m->cc.client_id);
	else if (asprintf(&c->client_id, "%s-%zu", m->cc.client_id, i) < 0)
		c->client_id = NULL;
	c->sub_mid = calloc(m->n_topics, sizeof(*c->sub_mid));
	if (!c->client_id || !c->sub_mid)
		return IOTR_ENOMEM;
	if (m->n_conns > 1) {
		if (asprintf(&c->tag_buf, " as \"%s\"", c->client_id) < 0) {
			c->tag_buf = NULL;
			return IOTR_ENOMEM;
		}
		c->s.tag = c->tag_buf;
	}
	for (size_t t = 0; t < m->n_topics; t++)
		c->sub_mid[t] = -1;

	c->s.mosq = mosquitto_new(c->client_id, m->cc.clean_session, c);
	if (!c->s.mosq) {
		int err = errno;	/* before log() can change it */

		host->log(inst, IOTR_LOG_ERROR, "mosquitto_new failed for client_id "
		          "\"%s\": %s", c->client_id,
		          err == EINVAL ? "invalid client_id" : "out of memory");
		return err == EINVAL ? IOTR_EINVAL : IOTR_ENOMEM;
	}
	/* Threaded mode: acks are queued, not written, inside on_message. */
	mosquitto_threaded_set(c->s.mosq, true);
	mosquitto_int_option(c->s.mosq, MOSQ_OPT_PROTOCOL_VERSION, m->cc.protocol);
	mosquitto_int_option(c->s.mosq, MOSQ_OPT_RECEIVE_MAXIMUM,
	                     m->receive_maximum);

	/* Credentials, TLS and the session expiry; the warnings that are the
	 * same for every connection are logged by the first one only. */
	if ((rc = mqttconn_setup_handle(&m->cc, c->s.mosq, i == 0)) != IOTR_OK)
		return rc;

	/* The log callback costs a formatted string per packet: only pay for it
	 * where it explains failures (TLS) or someone reads debug output. */
	if (m->cc.tls || host->log_enabled(inst, IOTR_LOG_DEBUG))
		mosquitto_log_callback_set(c->s.mosq, mqtt_on_log);
	mosquitto_connect_v5_callback_set(c->s.mosq, mqtt_on_connect);
	mosquitto_disconnect_v5_callback_set(c->s.mosq, mqtt_on_disconnect);
	mosquitto_subscribe_v5_callback_set(c->s.mosq, mqtt_on_subscribe);
	mosquitto_message_v5_callback_set(c->s.mosq, mqtt_on_message);
	return IOTR_OK;
}

static int mqtt_create(iotr_instance *inst, const struct iotr_host *host,
                       void **state)
{
	struct mqtt_in *m;
	pthread_condattr_t cattr;
	int rc;

	if ((rc = mqttconn_lib_init(inst, host)) != IOTR_OK)
		return rc;

	m = calloc(1, sizeof(*m));
	if (!m)
		return IOTR_ENOMEM;
	m->inst = inst;
	m->host = host;
	m->cc.inst = inst;
	m->cc.host = host;
	pthread_mutex_init(&m->lock, NULL);
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&m->cond, &cattr);
	pthread_condattr_destroy(&cattr);
	*state = m;

	if ((rc = mqttconn_config_read(&m->cc)) != IOTR_OK)
		goto fail;
	m->n_conns = (size_t)host->param_int(inst, "connections");
	m->skip_retained = host->param_bool(inst, "skip_retained");
	m->receive_maximum = (int)host->param_int(inst, "receive_maximum");

	if ((rc = mqttconn_config_brokers(&m->cc)) != IOTR_OK ||
	    (rc = mqtt_config_topics(m)) != IOTR_OK ||
	    (rc = mqttconn_config_credentials(&m->cc)) != IOTR_OK)
		goto fail;

	m->conns = calloc(m->n_conns, sizeof(*m->conns));
	if (!m->conns) {
		rc = IOTR_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < m->n_conns; i++)
		if ((rc = mqtt_conn_setup(m, i)) != IOTR_OK)
			goto fail;
	mqttconn_wipe_password(&m->cc);

	m->received = host->counter(inst, "received");
	m->retained_skipped = host->counter(inst, "retained_skipped");
	m->connects = host->counter(inst, "connects");
	m->disconnects = host->counter(inst, "disconnects");
	return IOTR_OK;

fail:
	if (rc == IOTR_ENOMEM)
		host->log(inst, IOTR_LOG_ERROR, "out of memory while reading the "
		          "configuration");
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
		rc = pthread_create(&c->thread, NULL, mqttconn_run, &c->s);
		if (rc != 0) {
			char ebuf[128];

			m->host->log(m->inst, IOTR_LOG_ERROR, "cannot start the MQTT "
			             "thread%s: %s", c->s.tag,
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
	mqttconn_deadline(&until, m->cc.connect_timeout_ms);
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
		             m->cc.brokers[0].name, m->cc.n_brokers > 1 ? " or the other "
		             "brokers" : "", m->cc.connect_timeout_ms);
	else if (answered < m->n_conns)
		m->host->log(m->inst, IOTR_LOG_WARNING, "%zu of %zu connections "
		             "have no answer from the broker after %" PRId64 " ms; "
		             "starting anyway and retrying in the background (see the "
		             "connection errors logged)", m->n_conns - answered,
		             m->n_conns, m->cc.connect_timeout_ms);
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

			if (c->s.mosq)
				mosquitto_destroy(c->s.mosq);
			free(c->client_id);
			free(c->tag_buf);
			free(c->sub_mid);
		}
		free(m->conns);
	}
	mqttconn_free(&m->cc);
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

/* The input and the output (mqtt_out.c), both named "mqtt". */
IOTR_PLUGIN_EXPORT const struct iotr_plugin *const *iotr_plugin_entries(void)
{
	static const struct iotr_plugin *const entries[] = {
		&mqtt_plugin, &mqtt_out_plugin, NULL
	};

	return entries;
}
