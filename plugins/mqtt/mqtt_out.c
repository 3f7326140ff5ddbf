/*
 * mqtt_out.c - the mqtt plugin's output: publishes messages to an MQTT broker
 * (the reverse path: Kafka to MQTT, e.g. commands to vehicles).
 *
 * Threading: one connection, one libmosquitto handle in threaded mode, and
 * one loop thread (mqttconn_run) that connects, runs mosquitto_loop(),
 * backs off and fails over between brokers; every libmosquitto callback
 * runs on it, except the log callback, which publishing calls too.
 * deliver() runs on several router workers at once and calls
 * mosquitto_publish_v5() under `lock`, so messages go out in the order of
 * the calls (per key, the order the router hands them over), and the mid
 * the call returns is entered in `slots` before the loop thread can look
 * it up in on_publish.  Everything under "guarded by lock" is shared;
 * host->delivered() is never called with the lock held.
 *
 * Delivery: a message stays in `slots` from its publish until its outcome:
 * PUBACK (QoS 1) / PUBCOMP (QoS 2) / written (QoS 0) is IOTR_OK, an MQTT 5
 * reason code >= 0x80 is IOTR_FAIL.  libmosquitto keeps QoS 1 and 2
 * messages across a lost connection and sends them again after the
 * reconnect, so they are not reported until the broker answers; a QoS 0
 * message not yet written when the connection drops is reported
 * IOTR_ERETRY.  At the flush deadline whatever is left is reported
 * IOTR_ERETRY.
 */
#define _GNU_SOURCE /* strerror_r returning char * */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "mqttconn.h"

/* How long one mosquitto_loop() call may sleep: bounds how late the loop
 * thread notices a stop request or an attempt that has taken too long. */
#define MQTT_OUT_LOOP_MS 100

/* How often a deliver() waiting for the connection or for room in the
 * in-flight window checks host->stopping(). */
#define MQTT_OUT_WAIT_SLICE_MS 100

/* MQTT message ids are 16 bits: one slot per id. */
#define MQTT_OUT_SLOTS 65536

/* The largest max_inflight: below the number of message ids, so that an id
 * is never handed out again while its message waits in the table. */
#define MQTT_OUT_MAX_INFLIGHT 65000

static const struct iotr_param mqtt_out_params[] = {
	MQTTCONN_PARAMS_SERVER,
	{ .key = "qos", .type = IOTR_PARAM_INT, .default_value = "1",
	  .doc = "QoS of every message published: 0 (reported delivered once "
	         "written to the socket), 1 (once PUBACKed) or 2 (once "
	         "PUBCOMPed).", .min = 0, .max = 2 },
	{ .key = "retain", .type = IOTR_PARAM_BOOL, .default_value = "false",
	  .doc = "Publish with the retain flag, so that the broker keeps the "
	         "last message of each topic for new subscribers." },
	{ .key = "max_inflight", .type = IOTR_PARAM_INT, .default_value = "1000",
	  .doc = "Most messages published and not yet acknowledged (or, at QoS "
	         "0, written); deliver() waits while there are this many.",
	  .min = 1, .max = MQTT_OUT_MAX_INFLIGHT },
	{ .key = "headers_as_properties", .type = IOTR_PARAM_BOOL,
	  .default_value = "true",
	  .doc = "MQTT 5: send the message's headers as user properties "
	         "(mqtt.content_type, mqtt.response_topic and "
	         "mqtt.correlation_data as those properties); ignored with "
	         "3.1.1." },
	MQTTCONN_PARAMS_SESSION("Start a new session on every connect instead "
	                        "of resuming the one the broker kept (QoS 2 "
	                        "messages in flight at a reconnect may then be "
	                        "delivered twice)."),
	MQTTCONN_PARAM_CONNECT_TIMEOUT,
	{ .key = NULL }
};

struct mqtt_out {
	iotr_instance *inst;
	const struct iotr_host *host;

	/* Configuration, read in create(). */
	struct mqttconn cc;
	int qos;
	bool retain;
	bool headers_as_properties;   /* and MQTT 5 */
	size_t max_inflight;

	/* Router's thread only. */
	pthread_t thread;
	bool thread_running;

	/* Guarded by lock; cond signals a change of stop_requested, connected,
	 * first_connack or outstanding. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop_requested;
	bool connected;         /* CONNACK accepted and the resends queued */
	bool first_connack;     /* a CONNACK arrived, accepted or refused */
	iotr_msg **slots;       /* by mid: published, outcome not yet known */
	size_t in_slots;
	size_t outstanding;     /* accepted; delivered() not yet returned */
	uint32_t max_packet;    /* the broker's Maximum Packet Size, 0: none */

	/* The handle and the loop state (mqttconn.h); deliver() publishes with
	 * s.mosq under lock and reads s.cur to name the broker. */
	struct mqttconn_session s;

	iotr_counter *published, *delivered, *failed, *retried;
	iotr_counter *connects, *disconnects, *waits, *headers_skipped;
	atomic_bool header_logged;
	atomic_bool retain_logged;
};

static const char *mqtt_out_broker(struct mqtt_out *o)
{
	return o->cc.brokers[atomic_load(&o->s.cur)].name;
}

/* Report a message; counts it.  Never with the lock held. */
static void mqtt_out_report(struct mqtt_out *o, iotr_msg *msg, int status,
                            const char *reason)
{
	const struct iotr_host *h = o->host;

	h->counter_add(status == IOTR_OK ? o->delivered :
	               status == IOTR_ERETRY ? o->retried : o->failed, 1);
	h->delivered(o->inst, msg, status, reason);
	/* last: once flush() sees zero, every delivered() has returned */
	pthread_mutex_lock(&o->lock);
	o->outstanding--;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
}

/* Report every message still in the table as IOTR_ERETRY, one at a time
 * (taken under the lock, reported without it); how many. */
static size_t mqtt_out_retry_all(struct mqtt_out *o, const char *reason)
{
	size_t n = 0, i = 0;

	for (;;) {
		iotr_msg *msg = NULL;

		pthread_mutex_lock(&o->lock);
		for (; i < MQTT_OUT_SLOTS && o->in_slots > 0 && !msg; i++) {
			if ((msg = o->slots[i])) {
				o->slots[i] = NULL;
				o->in_slots--;
			}
		}
		pthread_mutex_unlock(&o->lock);
		if (!msg)
			return n;
		mqtt_out_report(o, msg, IOTR_ERETRY, reason);
		n++;
	}
}

/* -- libmosquitto callbacks (loop thread, but on_log: also deliver()) ------- */

/* Also called from mosquitto_publish_v5() in deliver(), with `lock` held;
 * it takes no lock.  lib_error is written only for MOSQ_LOG_ERR lines,
 * which only the loop thread's connection code logs. */
static void mqtt_out_on_log(struct mosquitto *mosq, void *obj, int level,
                            const char *str)
{
	struct mqtt_out *o = obj;

	(void)mosq;
	if (level & MOSQ_LOG_ERR)
		snprintf(o->s.lib_error, sizeof(o->s.lib_error), "%s", str);
	if (o->host->log_enabled(o->inst, IOTR_LOG_DEBUG))
		o->host->log(o->inst, IOTR_LOG_DEBUG, "libmosquitto: %s", str);
}

static void mqtt_out_on_connect(struct mosquitto *mosq, void *obj, int rc,
                                int flags, const mosquitto_property *props)
{
	struct mqtt_out *o = obj;
	uint32_t max_packet = 0;
	uint8_t retain_available = 1;

	(void)mosq;
	if (rc == 0) {
		o->s.up_since = mqttconn_now_ms();
		o->s.session_up = true;
		o->host->counter_add(o->connects, 1);
		mosquitto_property_read_int32(props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
		                              &max_packet, false);
		/* libmosquitto then clears the flag of each publish silently */
		mosquitto_property_read_byte(props, MQTT_PROP_RETAIN_AVAILABLE,
		                             &retain_available, false);
		if (o->retain && !retain_available &&
		    !atomic_exchange(&o->retain_logged, true))
			o->host->log(o->inst, IOTR_LOG_WARNING, "retain = true, "
			             "but %s does not keep retained messages "
			             "(MQTT 5 Retain Available is 0): messages are "
			             "published without the flag",
			             mqtt_out_broker(o));
		o->host->log(o->inst, IOTR_LOG_NOTICE,
		             "connected to %s as \"%s\" (%s, %s)", mqtt_out_broker(o),
		             o->cc.client_id, mqttconn_protocol_name(o->cc.protocol),
		             (flags & 1) ? "session resumed" : "new session");
	} else {
		char why[512];
		int level = mqttconn_connack_failure(&o->cc, rc, o->cc.client_id,
		                                     why, sizeof(why));

		mqttconn_fail(&o->s, level, "%s", why);
	}
	pthread_mutex_lock(&o->lock);
	o->first_connack = true;
	if (rc == 0)
		o->max_packet = max_packet;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
}

static void mqtt_out_on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                                   const mosquitto_property *props)
{
	int err = errno;
	struct mqtt_out *o = obj;

	(void)mosq;
	(void)props;
	if (mqttconn_session_ended(&o->s, rc, err))
		o->host->counter_add(o->disconnects, 1);
}

/* What to do about a PUBACK/PUBREC/PUBCOMP reason code of 0x80 and up. */
static int mqtt_out_refusal(struct mqtt_out *o, iotr_msg *msg, int code,
                            char *reason, size_t size)
{
	const char *topic = o->host->msg_dest(msg);
	const char *hint;
	int status = IOTR_FAIL;

	if (!topic)
		topic = o->host->msg_topic(msg);
	switch (code) {
	case MQTT_RC_NOT_AUTHORIZED:
		hint = "; allow this client to publish there in the broker's ACL";
		break;
	case MQTT_RC_TOPIC_NAME_INVALID:
		hint = "; fix the route's topic";
		break;
	case MQTT_RC_PACKET_TOO_LARGE:
		hint = "; lower router.max_message_bytes below the broker's limit";
		break;
	case MQTT_RC_QUOTA_EXCEEDED:
	case MQTT_RC_PACKET_ID_IN_USE:
		hint = "; it is tried again";
		status = IOTR_ERETRY;
		break;
	default:
		hint = "";
		break;
	}
	snprintf(reason, size, "MQTT broker %s refused the message to \"%s\": "
	         "%s (reason code 0x%02x)%s", mqtt_out_broker(o), topic,
	         mosquitto_reason_string(code), code, hint);
	return status;
}

/* PUBACK (QoS 1), PUBCOMP or a refusing PUBREC (QoS 2), or, at QoS 0, the
 * PUBLISH written to the socket. */
static void mqtt_out_on_publish(struct mosquitto *mosq, void *obj, int mid,
                                int code, const mosquitto_property *props)
{
	struct mqtt_out *o = obj;
	iotr_msg *msg = NULL;
	char reason[768];
	int status;

	(void)mosq;
	(void)props;
	pthread_mutex_lock(&o->lock);
	if (mid >= 0 && mid < MQTT_OUT_SLOTS && (msg = o->slots[mid])) {
		o->slots[mid] = NULL;
		o->in_slots--;
	}
	pthread_mutex_unlock(&o->lock);
	if (!msg)
		return;         /* reported at the flush deadline already */

	/* 0x92 "packet identifier not found" on a PUBCOMP: the broker lost the
	 * QoS 2 state after its PUBREC, i.e. after it had the message. */
	if (code < 0x80 || code == MQTT_RC_PACKET_ID_NOT_FOUND) {
		mqtt_out_report(o, msg, IOTR_OK, NULL);
		return;
	}
	status = mqtt_out_refusal(o, msg, code, reason, sizeof(reason));
	mqtt_out_report(o, msg, status, reason);
}

/* -- the loop thread ----------------------------------------------------------- */

/* After each round of the network loop while the session is up: open
 * deliver() only now, when the CONNACK handler has queued the resends of
 * the messages in flight, so that new ones go out after them. */
static void mqtt_out_connection_up(struct mqttconn_session *s)
{
	struct mqtt_out *o = s->owner;

	pthread_mutex_lock(&o->lock);
	if (!o->connected) {
		o->connected = true;
		pthread_cond_broadcast(&o->cond);
	}
	pthread_mutex_unlock(&o->lock);
}

/* The connection is gone: deliver() waits again, and QoS 0 messages that
 * were not written are reported for retry (libmosquitto drops them at the
 * reconnect; QoS 1 and 2 messages it keeps and sends again). */
static void mqtt_out_connection_lost(struct mqttconn_session *s)
{
	struct mqtt_out *o = s->owner;
	char reason[300];

	pthread_mutex_lock(&o->lock);
	o->connected = false;
	pthread_mutex_unlock(&o->lock);
	if (o->qos != 0)
		return;
	/* deliver() adds none while not connected */
	snprintf(reason, sizeof(reason), "the connection to MQTT broker %s was "
	         "lost before this QoS 0 message was sent", mqtt_out_broker(o));
	mqtt_out_retry_all(o, reason);
}

/* The end of the "disconnected from ...; reconnecting" line. */
static void mqtt_out_reconnect_note(struct mqttconn_session *s, char *buf,
                                    size_t size)
{
	struct mqtt_out *o = s->owner;
	size_t waiting;

	pthread_mutex_lock(&o->lock);
	waiting = o->in_slots;
	pthread_mutex_unlock(&o->lock);
	snprintf(buf, size, " (%zu messages wait for an acknowledgement and are "
	         "sent again)", waiting);
}

static const struct mqttconn_session_ops mqtt_out_session_ops = {
	.loop_ms = MQTT_OUT_LOOP_MS,
	.on_up = mqtt_out_connection_up,
	.on_lost = mqtt_out_connection_lost,
	.reconnect_note = mqtt_out_reconnect_note,
	.retry_note = "; messages wait until then",
};

/* -- deliver ------------------------------------------------------------------- */

/* A header value as a C string for a property (the host ends every value
 * with a NUL byte), or NULL if it cannot be one: NUL bytes in it, or
 * longer than MQTT allows. */
static const char *mqtt_out_header_text(const void *value, size_t len)
{
	if (len > 65535 || (len && memchr(value, '\0', len)))
		return NULL;
	return value;
}

static void mqtt_out_skip_header(struct mqtt_out *o, const char *name,
                                 const char *topic)
{
	o->host->counter_add(o->headers_skipped, 1);
	if (!atomic_exchange(&o->header_logged, true))
		o->host->log(o->inst, IOTR_LOG_WARNING, "header \"%s\" of a message "
		             "to \"%s\" is not UTF-8 text of at most 65535 bytes, so "
		             "it cannot be an MQTT 5 property; it is left out (later "
		             "ones are only counted as headers_skipped)", name, topic);
}

/* MQTT 5 properties of a message from its headers; IOTR_OK or IOTR_ENOMEM. */
static int mqtt_out_properties(struct mqtt_out *o, iotr_msg *msg,
                               const char *topic, mosquitto_property **props)
{
	const struct iotr_host *h = o->host;
	size_t n = h->msg_header_count(msg);
	bool have_ct = false, have_rt = false, have_cd = false;

	*props = NULL;
	for (size_t i = 0; i < n; i++) {
		const char *name;
		const void *value;
		size_t len;
		const char *text;
		int rc;

		if (h->msg_header_at(msg, i, &name, &value, &len) != IOTR_OK)
			break;
		if (strcmp(name, "mqtt.correlation_data") == 0 && !have_cd) {
			have_cd = true;
			rc = len > 65535 ? MOSQ_ERR_INVAL
			     : mosquitto_property_add_binary(props,
			                                     MQTT_PROP_CORRELATION_DATA,
			                                     value, (uint16_t)len);
		} else if (strcmp(name, "mqtt.content_type") == 0 && !have_ct) {
			have_ct = true;
			text = mqtt_out_header_text(value, len);
			rc = !text ? MOSQ_ERR_INVAL
			     : mosquitto_property_add_string(props,
			                                     MQTT_PROP_CONTENT_TYPE, text);
		} else if (strcmp(name, "mqtt.response_topic") == 0 && !have_rt) {
			have_rt = true;
			text = mqtt_out_header_text(value, len);
			rc = !text || mosquitto_pub_topic_check(text) != MOSQ_ERR_SUCCESS
			     ? MOSQ_ERR_INVAL
			     : mosquitto_property_add_string(props,
			                                     MQTT_PROP_RESPONSE_TOPIC, text);
		} else {
			text = mqtt_out_header_text(value, len);
			rc = !text || strlen(name) > 65535 ? MOSQ_ERR_INVAL
			     : mosquitto_property_add_string_pair(props,
			                                          MQTT_PROP_USER_PROPERTY,
			                                          name, text);
		}
		if (rc == MOSQ_ERR_NOMEM) {
			mosquitto_property_free_all(props);
			return IOTR_ENOMEM;
		}
		if (rc != MOSQ_ERR_SUCCESS)
			mqtt_out_skip_header(o, name, topic);
	}
	return IOTR_OK;
}

/* Refuse a message for good: set its error, count it. */
static int mqtt_out_refuse(struct mqtt_out *o, iotr_msg *msg,
                           const char *fmt, ...) IOTR_PRINTF(3, 4);

static int mqtt_out_refuse(struct mqtt_out *o, iotr_msg *msg,
                           const char *fmt, ...)
{
	char reason[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	o->host->msg_set_error(msg, reason);
	o->host->counter_add(o->failed, 1);
	return IOTR_FAIL;
}

/*
 * Wait until the connection is up and the in-flight window has room; the
 * lock is held.  IOTR_OK, or IOTR_ESHUTDOWN once the shutdown deadline has
 * passed.
 */
static int mqtt_out_wait_room(struct mqtt_out *o)
{
	bool counted = false;

	while (!o->connected || o->outstanding >= o->max_inflight) {
		struct timespec until;

		if (o->host->stopping(o->inst) == 2)
			return IOTR_ESHUTDOWN;
		if (!counted) {
			o->host->counter_add(o->waits, 1);
			counted = true;
		}
		mqttconn_deadline(&until, MQTT_OUT_WAIT_SLICE_MS);
		pthread_cond_timedwait(&o->cond, &o->lock, &until);
	}
	return IOTR_OK;
}

static int mqtt_out_deliver(void *state, iotr_msg *msg)
{
	struct mqtt_out *o = state;
	const struct iotr_host *h = o->host;
	const char *topic = h->msg_dest(msg);
	const void *payload;
	size_t len, tlen;
	mosquitto_property *props = NULL;
	iotr_msg *old = NULL;
	uint32_t max_packet;
	int mid = 0, rc;

	if (!topic)
		topic = h->msg_topic(msg);
	payload = h->msg_payload(msg, &len);
	tlen = strlen(topic);

	/* What can never be published fails at once, connected or not. */
	if (tlen == 0)
		return mqtt_out_refuse(o, msg, "the MQTT topic is empty; give the "
		                       "route a topic");
	if (tlen > 65535 || mosquitto_validate_utf8(topic, (int)tlen) != 0 ||
	    mosquitto_pub_topic_check(topic) != MOSQ_ERR_SUCCESS)
		return mqtt_out_refuse(o, msg, "\"%s\" is not a topic one can "
		                       "publish to (no '+' or '#', UTF-8, at most "
		                       "65535 bytes); fix the route's topic", topic);
	if (len > MQTT_MAX_PAYLOAD)
		return mqtt_out_refuse(o, msg, "a payload of %zu bytes is larger "
		                       "than MQTT allows (%d)", len, MQTT_MAX_PAYLOAD);
	if (o->headers_as_properties &&
	    mqtt_out_properties(o, msg, topic, &props) != IOTR_OK)
		return IOTR_ERETRY;

	pthread_mutex_lock(&o->lock);
	if ((rc = mqtt_out_wait_room(o)) != IOTR_OK) {
		pthread_mutex_unlock(&o->lock);
		mosquitto_property_free_all(&props);
		return rc;
	}
	rc = mosquitto_publish_v5(o->s.mosq, &mid, topic, (int)len, payload, o->qos,
	                          o->retain, props);
	max_packet = o->max_packet;
	/* A QoS 1 or 2 message is queued even when the socket is gone
	 * (MOSQ_ERR_NO_CONN) and sent after the reconnect. */
	if (rc == MOSQ_ERR_SUCCESS || (rc == MOSQ_ERR_NO_CONN && o->qos > 0)) {
		old = o->slots[mid & 0xffff];
		o->slots[mid & 0xffff] = msg;
		if (!old)
			o->in_slots++;
		o->outstanding++;
		rc = MOSQ_ERR_SUCCESS;
	}
	pthread_mutex_unlock(&o->lock);
	mosquitto_property_free_all(&props);

	if (old) {
		/* Cannot happen while max_inflight < 65536; if it does, the old
		 * message may go again rather than never be reported. */
		h->log(o->inst, IOTR_LOG_ERROR, "message id %d was still waiting "
		       "for its acknowledgement when it was handed out again; "
		       "reporting the old message for retry", mid);
		mqtt_out_report(o, old, IOTR_ERETRY, "its MQTT message id was "
		                "reused before the broker acknowledged it");
	}
	switch (rc) {
	case MOSQ_ERR_SUCCESS:
		h->counter_add(o->published, 1);
		return IOTR_OK;
	case MOSQ_ERR_OVERSIZE_PACKET:
		return mqtt_out_refuse(o, msg, "a message of %zu bytes to \"%s\" "
		                       "(payload; with its topic and properties) "
		                       "exceeds the maximum packet size of %" PRIu32
		                       " bytes of "
		                       "MQTT broker %s; lower router.max_message_bytes "
		                       "or raise the broker's max_packet_size", len,
		                       topic, max_packet, mqtt_out_broker(o));
	case MOSQ_ERR_QOS_NOT_SUPPORTED:
		return mqtt_out_refuse(o, msg, "MQTT broker %s does not accept QoS "
		                       "%d; lower qos", mqtt_out_broker(o), o->qos);
	case MOSQ_ERR_PAYLOAD_SIZE:
	case MOSQ_ERR_MALFORMED_UTF8:
	case MOSQ_ERR_INVAL:
	case MOSQ_ERR_DUPLICATE_PROPERTY:
	case MOSQ_ERR_PROTOCOL:
		return mqtt_out_refuse(o, msg, "libmosquitto refused the message "
		                       "to \"%s\": %s", topic, mosquitto_strerror(rc));
	default:
		/* MOSQ_ERR_NO_CONN at QoS 0 (the connection dropped just now),
		 * MOSQ_ERR_NOMEM: not taken, the router tries again.  (At QoS
		 * 1 and 2 libmosquitto can fail with NOMEM after it queued the
		 * message, which it then sends too: out of memory, a duplicate
		 * is possible.) */
		return IOTR_ERETRY;
	}
}

/* -- lifecycle ----------------------------------------------------------------- */

static void mqtt_out_destroy(void *state);

static int mqtt_out_create(iotr_instance *inst, const struct iotr_host *host,
                           void **state)
{
	struct mqtt_out *o;
	pthread_condattr_t cattr;
	int rc;

	if ((rc = mqttconn_lib_init(inst, host)) != IOTR_OK)
		return rc;
	o = calloc(1, sizeof(*o));
	if (!o)
		return IOTR_ENOMEM;
	o->inst = inst;
	o->host = host;
	o->cc.inst = inst;
	o->cc.host = host;
	mqttconn_session_init(&o->s, &o->cc, &mqtt_out_session_ops, o, &o->lock,
	                      &o->cond, &o->stop_requested);
	pthread_mutex_init(&o->lock, NULL);
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&o->cond, &cattr);
	pthread_condattr_destroy(&cattr);
	*state = o;

	if ((rc = mqttconn_config_read(&o->cc)) != IOTR_OK)
		goto fail;
	o->qos = (int)host->param_int(inst, "qos");
	o->retain = host->param_bool(inst, "retain");
	o->max_inflight = (size_t)host->param_int(inst, "max_inflight");
	o->headers_as_properties = host->param_bool(inst, "headers_as_properties")
	                           && o->cc.protocol == MQTT_PROTOCOL_V5;
	if ((rc = mqttconn_config_brokers(&o->cc)) != IOTR_OK ||
	    (rc = mqttconn_config_credentials(&o->cc)) != IOTR_OK)
		goto fail;

	o->slots = calloc(MQTT_OUT_SLOTS, sizeof(*o->slots));
	if (!o->slots) {
		rc = IOTR_ENOMEM;
		goto fail;
	}
	o->s.mosq = mosquitto_new(o->cc.client_id, o->cc.clean_session, o);
	if (!o->s.mosq) {
		int err = errno;	/* before log() can change it */

		host->log(inst, IOTR_LOG_ERROR, "mosquitto_new failed for client_id "
		          "\"%s\": %s", o->cc.client_id,
		          err == EINVAL ? "invalid client_id" : "out of memory");
		rc = err == EINVAL ? IOTR_EINVAL : IOTR_ENOMEM;
		goto fail;
	}
	/* Threaded mode: deliver() publishes from the router's workers while
	 * the loop thread owns the socket. */
	mosquitto_threaded_set(o->s.mosq, true);
	mosquitto_int_option(o->s.mosq, MOSQ_OPT_PROTOCOL_VERSION, o->cc.protocol);
	/* libmosquitto's own window (MQTT 3.1.1; with MQTT 5 the broker's
	 * Receive Maximum replaces it): messages past it wait, in order, in
	 * libmosquitto's queue; max_inflight bounds the two together. */
	mosquitto_int_option(o->s.mosq, MOSQ_OPT_SEND_MAXIMUM,
	                     o->max_inflight < 65535 ? (int)o->max_inflight
	                                             : 65535);
	if ((rc = mqttconn_setup_handle(&o->cc, o->s.mosq, true)) != IOTR_OK)
		goto fail;
	mqttconn_wipe_password(&o->cc);

	if (o->cc.tls || host->log_enabled(inst, IOTR_LOG_DEBUG))
		mosquitto_log_callback_set(o->s.mosq, mqtt_out_on_log);
	mosquitto_connect_v5_callback_set(o->s.mosq, mqtt_out_on_connect);
	mosquitto_disconnect_v5_callback_set(o->s.mosq, mqtt_out_on_disconnect);
	mosquitto_publish_v5_callback_set(o->s.mosq, mqtt_out_on_publish);

	o->published = host->counter(inst, "published");
	o->delivered = host->counter(inst, "delivered");
	o->failed = host->counter(inst, "failed");
	o->retried = host->counter(inst, "retried");
	o->connects = host->counter(inst, "connects");
	o->disconnects = host->counter(inst, "disconnects");
	o->waits = host->counter(inst, "waits");
	o->headers_skipped = host->counter(inst, "headers_skipped");
	return IOTR_OK;

fail:
	if (rc == IOTR_ENOMEM)
		host->log(inst, IOTR_LOG_ERROR, "out of memory while reading the "
		          "configuration");
	mqtt_out_destroy(o);
	*state = NULL;
	return rc;
}

static int mqtt_out_start(void *state)
{
	struct mqtt_out *o = state;
	struct timespec until;
	bool answered;
	int rc;

	rc = pthread_create(&o->thread, NULL, mqttconn_run, &o->s);
	if (rc != 0) {
		char ebuf[128];

		o->host->log(o->inst, IOTR_LOG_ERROR, "cannot start the MQTT "
		             "thread: %s", strerror_r(rc, ebuf, sizeof(ebuf)));
		return IOTR_FAIL;
	}
	o->thread_running = true;

	/* Wait for the first CONNACK, so that the first messages need not
	 * wait; a broker that is down is not a reason to fail: deliver()
	 * waits and the loop keeps trying. */
	mqttconn_deadline(&until, o->cc.connect_timeout_ms);
	pthread_mutex_lock(&o->lock);
	while (!o->first_connack &&
	       pthread_cond_timedwait(&o->cond, &o->lock, &until) != ETIMEDOUT)
		;
	answered = o->first_connack;
	pthread_mutex_unlock(&o->lock);
	if (!answered)
		o->host->log(o->inst, IOTR_LOG_WARNING, "not connected to %s%s "
		             "after %" PRId64 " ms; starting anyway: messages wait "
		             "for the connection (see the connection errors logged)",
		             o->cc.brokers[0].name, o->cc.n_brokers > 1 ? " or the "
		             "other brokers" : "", o->cc.connect_timeout_ms);
	return IOTR_OK;
}

static int mqtt_out_flush(void *state, int64_t deadline_ms)
{
	struct mqtt_out *o = state;
	size_t left, n;
	char reason[300];

	pthread_mutex_lock(&o->lock);
	while (o->outstanding > 0) {
		struct timespec until;
		int64_t wait = deadline_ms - mqttconn_now_ms();

		if (wait <= 0)
			break;
		mqttconn_deadline(&until, wait < MQTT_OUT_WAIT_SLICE_MS
		                          ? wait : MQTT_OUT_WAIT_SLICE_MS);
		pthread_cond_timedwait(&o->cond, &o->lock, &until);
	}
	left = o->outstanding;
	pthread_mutex_unlock(&o->lock);
	if (left == 0)
		return IOTR_OK;

	snprintf(reason, sizeof(reason), "MQTT broker %s had not acknowledged "
	         "it by the flush deadline", mqtt_out_broker(o));
	n = mqtt_out_retry_all(o, reason);
	if (n > 0)	/* else the last reports were being made */
		o->host->log(o->inst, IOTR_LOG_WARNING, "%zu messages were "
		             "not acknowledged by %s by the flush deadline; "
		             "they were reported for retry (the broker may "
		             "still get some of them, so they may arrive "
		             "twice)", n, mqtt_out_broker(o));
	return IOTR_ETIMEDOUT;
}

static void mqtt_out_destroy(void *state)
{
	struct mqtt_out *o = state;

	if (!o)
		return;
	if (o->thread_running) {
		pthread_mutex_lock(&o->lock);
		o->stop_requested = true;
		pthread_cond_broadcast(&o->cond);
		pthread_mutex_unlock(&o->lock);
		pthread_join(o->thread, NULL);
		o->thread_running = false;
	}
	/* Without a flush() first (or after a failed one): report what is left
	 * rather than forget it. */
	if (o->slots) {
		size_t n = mqtt_out_retry_all(o, "the MQTT output stopped before "
		                              "the broker acknowledged it");

		if (n)
			o->host->log(o->inst, IOTR_LOG_WARNING, "%zu messages had no "
			             "acknowledgement from the broker when the output "
			             "stopped; they were reported for retry", n);
	}
	if (o->s.mosq)
		mosquitto_destroy(o->s.mosq);
	free(o->slots);
	mqttconn_free(&o->cc);
	pthread_cond_destroy(&o->cond);
	pthread_mutex_destroy(&o->lock);
	free(o);
}

const struct iotr_plugin mqtt_out_plugin = {
	IOTR_PLUGIN_HEADER,
	.name = "mqtt",
	.version = "1.0.0",
	.description = "MQTT output: publishes to an MQTT 3.1.1/5 broker with "
	               "libmosquitto",
	.kind = IOTR_PLUGIN_OUTPUT,
	.params = mqtt_out_params,
	.create = mqtt_out_create,
	.start = mqtt_out_start,
	.deliver = mqtt_out_deliver,
	.flush = mqtt_out_flush,
	.destroy = mqtt_out_destroy,
};
