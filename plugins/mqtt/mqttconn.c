/*
 * mqttconn.c - connection settings shared by the mqtt input and output:
 * reading and checking them, credentials, TLS and session setup of a
 * libmosquitto handle, the texts that explain a failed connection, and the
 * connect / back-off / failover loop.  See mqttconn.h for the threading
 * rules.
 */
#define _GNU_SOURCE /* strerror_r returning char *, strndup, explicit_bzero */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "mqttconn.h"

static pthread_once_t mqttconn_lib_once = PTHREAD_ONCE_INIT;
static int mqttconn_lib_rc;

static void mqttconn_lib_init_once(void)
{
	mqttconn_lib_rc = mosquitto_lib_init();
}

int mqttconn_lib_init(iotr_instance *inst, const struct iotr_host *host)
{
	pthread_once(&mqttconn_lib_once, mqttconn_lib_init_once);
	if (mqttconn_lib_rc != MOSQ_ERR_SUCCESS) {
		host->log(inst, IOTR_LOG_ERROR, "mosquitto_lib_init failed: %s",
		          mosquitto_strerror(mqttconn_lib_rc));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

int64_t mqttconn_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mqttconn_deadline(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

const char *mqttconn_protocol_name(int protocol)
{
	return protocol == MQTT_PROTOCOL_V5 ? "MQTT 5" : "MQTT 3.1.1";
}

void mqttconn_copy_text(char *buf, size_t size, const char *text)
{
	size_t len;

	snprintf(buf, size, "%s", text);
	len = strlen(buf);
	if (len > 0 && buf[len - 1] == '.')
		buf[len - 1] = '\0';
}

void mqttconn_describe_rc(char *buf, size_t size, int rc, int err,
                          const char *lib_error)
{
	char text[128];

	if (rc == MOSQ_ERR_ERRNO) {
		snprintf(buf, size, "%s", strerror_r(err, text, sizeof(text)));
	} else {
		mqttconn_copy_text(text, sizeof(text), mosquitto_strerror(rc));
		if (lib_error && lib_error[0])
			snprintf(buf, size, "%s (%s)", text, lib_error);
		else
			snprintf(buf, size, "%s", text);
	}
}

int mqttconn_connack_failure(const struct mqttconn *cc, int rc,
                             const char *client_id, char *buf, size_t size)
{
	bool v5 = cc->protocol == MQTT_PROTOCOL_V5;
	char reason[128];

	mqttconn_copy_text(reason, sizeof(reason), v5 ? mosquitto_reason_string(rc)
	                                              : mosquitto_connack_string(rc));

	if ((v5 && (rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD ||
	            rc == MQTT_RC_NOT_AUTHORIZED ||
	            rc == MQTT_RC_BAD_AUTHENTICATION_METHOD)) ||
	    (!v5 && (rc == CONNACK_REFUSED_BAD_USERNAME_PASSWORD ||
	             rc == CONNACK_REFUSED_NOT_AUTHORIZED))) {
		if (cc->username)
			snprintf(buf, size, "the broker refused user \"%s\": %s; check "
			         "username and password (or password_file) against the "
			         "broker's password file", cc->username, reason);
		else
			snprintf(buf, size, "the broker refused an anonymous login: "
			         "%s; set username and password (or password_file)",
			         reason);
		return IOTR_LOG_ERROR;
	}
	if ((v5 && rc == MQTT_RC_CLIENTID_NOT_VALID) ||
	    (!v5 && rc == CONNACK_REFUSED_IDENTIFIER_REJECTED)) {
		snprintf(buf, size, "the broker rejected client_id \"%s\": %s; "
		         "choose another client_id", client_id, reason);
		return IOTR_LOG_ERROR;
	}
	if ((v5 && rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION) ||
	    (!v5 && rc == CONNACK_REFUSED_PROTOCOL_VERSION)) {
		snprintf(buf, size, "the broker does not speak %s: %s; set "
		         "protocol = \"%s\"", mqttconn_protocol_name(cc->protocol),
		         reason, v5 ? "3.1.1" : "5");
		return IOTR_LOG_ERROR;
	}
	snprintf(buf, size, "the broker refused the connection: %s", reason);
	return IOTR_LOG_WARNING;
}

/* -- the loop thread ----------------------------------------------------------- */

void mqttconn_session_init(struct mqttconn_session *s,
                           const struct mqttconn *cc,
                           const struct mqttconn_session_ops *ops,
                           void *owner, pthread_mutex_t *lock,
                           pthread_cond_t *cond, const bool *stop_requested)
{
	memset(s, 0, sizeof(*s));
	s->cc = cc;
	s->ops = ops;
	s->owner = owner;
	s->tag = "";
	s->lock = lock;
	s->cond = cond;
	s->stop_requested = stop_requested;
	atomic_init(&s->cur, 0);
}

void mqttconn_fail(struct mqttconn_session *s, int level, const char *fmt, ...)
{
	va_list ap;

	if (s->fail_reason[0])
		return;
	s->fail_level = level;
	va_start(ap, fmt);
	vsnprintf(s->fail_reason, sizeof(s->fail_reason), fmt, ap);
	va_end(ap);
}

/* Record a failed libmosquitto call; err is errno right after it. */
static void mqttconn_fail_rc(struct mqttconn_session *s, int rc, int err)
{
	char why[300];

	/* the first failure of an attempt is the one reported (mqttconn_fail) */
	if (!s->fail_reason[0])
		s->fail_rc = rc;
	mqttconn_describe_rc(why, sizeof(why), rc, err, s->lib_error);
	mqttconn_fail(s, IOTR_LOG_WARNING, "%s", why);
}

bool mqttconn_session_ended(struct mqttconn_session *s, int rc, int err)
{
	bool was_up = s->session_up;

	s->session_up = false;
	/* rc is a MOSQ_ERR_* code, except after a DISCONNECT packet from an
	 * MQTT 5 broker, when it is that packet's reason code (0x80 and up). */
	if (rc == 0)
		mqttconn_fail(s, IOTR_LOG_NOTICE, "disconnected on request");
	else if (rc >= 0x80)
		mqttconn_fail(s, IOTR_LOG_WARNING, "the broker closed the "
		              "connection: %s", mosquitto_reason_string(rc));
	else
		mqttconn_fail_rc(s, rc, err);
	return was_up;
}

static bool mqttconn_stop_requested(struct mqttconn_session *s)
{
	bool stop;

	pthread_mutex_lock(s->lock);
	stop = *s->stop_requested;
	pthread_mutex_unlock(s->lock);
	return stop;
}

/* Sleep for ms, or less if a stop is requested; false if it was. */
static bool mqttconn_sleep(struct mqttconn_session *s, int64_t ms)
{
	struct timespec until;
	bool stop;

	mqttconn_deadline(&until, ms);
	pthread_mutex_lock(s->lock);
	while (!*s->stop_requested &&
	       pthread_cond_timedwait(s->cond, s->lock, &until) != ETIMEDOUT)
		;
	stop = *s->stop_requested;
	pthread_mutex_unlock(s->lock);
	return !stop;
}

/* Run the connection to the current broker until it fails, an attempt times
 * out, or a stop is requested (then disconnect cleanly). */
static void mqttconn_run_connection(struct mqttconn_session *s)
{
	const struct mqttconn *cc = s->cc;
	int64_t started = mqttconn_now_ms();
	int rc;

	for (;;) {
		if (mqttconn_stop_requested(s)) {
			if (!s->session_up)
				return;
			/* Queued packets (the input's PUBACKs) go out before the
			 * DISCONNECT; bound the wait in case the network is gone. */
			rc = mosquitto_disconnect_v5(s->mosq, MQTT_RC_NORMAL_DISCONNECTION,
			                             NULL);
			started = mqttconn_now_ms();
			while (rc == MOSQ_ERR_SUCCESS && s->session_up &&
			       mqttconn_now_ms() - started < cc->connect_timeout_ms)
				rc = mosquitto_loop(s->mosq, s->ops->loop_ms, 1);
			return;
		}
		rc = s->ops->loop_once ? s->ops->loop_once(s)
		                       : mosquitto_loop(s->mosq, s->ops->loop_ms, 1);
		if (rc != MOSQ_ERR_SUCCESS) {
			mqttconn_fail_rc(s, rc, errno);
			return;
		}
		if (s->session_up) {
			if (s->ops->on_up)
				s->ops->on_up(s);
		} else if (s->up_since) {
			return;         /* the session ended inside the loop call */
		} else if (mqttconn_now_ms() - started >= cc->connect_timeout_ms) {
			/* The next connect call closes this socket. */
			mqttconn_fail(s, IOTR_LOG_WARNING, "no CONNACK within %" PRId64
			              " ms (connect_timeout_ms)", cc->connect_timeout_ms);
			return;
		}
	}
}

void *mqttconn_run(void *arg)
{
	struct mqttconn_session *s = arg;
	const struct mqttconn *cc = s->cc;
	int64_t delay = cc->reconnect_min_ms;

	while (!mqttconn_stop_requested(s)) {
		const struct mqttconn_broker *b = &cc->brokers[atomic_load(&s->cur)];
		const char *reason;
		int rc;

		s->up_since = 0;
		s->session_up = false;
		s->fail_level = IOTR_LOG_WARNING;
		s->fail_rc = 0;
		s->fail_reason[0] = '\0';
		s->lib_error[0] = '\0';

		rc = mosquitto_connect_bind_async(s->mosq, b->host, b->port,
		                                  cc->keepalive, NULL);
		if (rc == MOSQ_ERR_SUCCESS)
			mqttconn_run_connection(s);
		else
			mqttconn_fail_rc(s, rc, errno);
		if (s->ops->on_lost)
			s->ops->on_lost(s);

		reason = s->fail_reason[0] ? s->fail_reason : "unknown reason";
		if (s->up_since) {
			int64_t up = mqttconn_now_ms() - s->up_since;
			char note[384] = "";

			if (mqttconn_stop_requested(s)) {
				cc->host->log(cc->inst, IOTR_LOG_NOTICE,
				              "disconnected from %s%s (stopping)", b->name,
				              s->tag);
				break;
			}
			/* A connection that stayed up a while starts the back-off
			 * afresh; one that keeps dropping (say, another client with
			 * the same client_id) keeps backing off. */
			if (up >= cc->reconnect_max_ms)
				delay = cc->reconnect_min_ms;
			if (s->ops->reconnect_note)
				s->ops->reconnect_note(s, note, sizeof(note));
			cc->host->log(cc->inst, IOTR_LOG_NOTICE,
			              "disconnected from %s%s: %s; reconnecting in %"
			              PRId64 " ms%s", b->name, s->tag, reason, delay, note);
		} else {
			size_t next;

			if (mqttconn_stop_requested(s))
				break;
			next = (atomic_load(&s->cur) + 1) % cc->n_brokers;
			atomic_store(&s->cur, next);
			cc->host->log(cc->inst, s->fail_level,
			              "cannot connect to %s%s: %s; next attempt in %"
			              PRId64 " ms%s%s%s", b->name, s->tag, reason, delay,
			              cc->n_brokers > 1 ? " to " : "",
			              cc->n_brokers > 1 ? cc->brokers[next].name : "",
			              s->ops->retry_note ? s->ops->retry_note : "");
		}
		if (!mqttconn_sleep(s, delay))
			break;
		delay = delay * 2 > cc->reconnect_max_ms ? cc->reconnect_max_ms
		                                         : delay * 2;
	}
	return NULL;
}

/* -- configuration ------------------------------------------------------------- */

int mqttconn_config_read(struct mqttconn *cc)
{
	const struct iotr_host *host = cc->host;
	iotr_instance *inst = cc->inst;
	const char *protocol = host->param_string(inst, "protocol");

	if (strcmp(protocol, "5") == 0) {
		cc->protocol = MQTT_PROTOCOL_V5;
	} else if (strcmp(protocol, "3.1.1") == 0 || strcmp(protocol, "311") == 0) {
		cc->protocol = MQTT_PROTOCOL_V311;
	} else {
		host->log(inst, IOTR_LOG_ERROR, "protocol = \"%s\" is not supported; "
		          "use \"5\" or \"3.1.1\"", protocol);
		return IOTR_EINVAL;
	}

	cc->client_id = host->param_string(inst, "client_id");
	if (!cc->client_id || !cc->client_id[0]) {
		host->log(inst, IOTR_LOG_ERROR, "client_id is empty; give this "
		          "router a stable, unique client_id so that its session "
		          "survives restarts");
		return IOTR_EINVAL;
	}
	cc->clean_session = host->param_bool(inst, "clean_session");
	cc->session_expiry = host->param_int(inst, "session_expiry");
	cc->keepalive = (int)host->param_int(inst, "keepalive");
	cc->reconnect_min_ms = host->param_int(inst, "reconnect_min_ms");
	cc->reconnect_max_ms = host->param_int(inst, "reconnect_max_ms");
	cc->connect_timeout_ms = host->param_int(inst, "connect_timeout_ms");
	if (cc->reconnect_min_ms > cc->reconnect_max_ms) {
		host->log(inst, IOTR_LOG_ERROR, "reconnect_min_ms (%" PRId64 ") is "
		          "larger than reconnect_max_ms (%" PRId64 "); make min <= max",
		          cc->reconnect_min_ms, cc->reconnect_max_ms);
		return IOTR_EINVAL;
	}
	return IOTR_OK;
}

/* Parse "mqtt://host:port" or "mqtts://host:port" (host may be "[v6addr]",
 * port defaults to 1883 / 8883).  Returns 0, or -1 if malformed. */
static int mqttconn_parse_uri(const char *uri, struct mqttconn_broker *b,
                              bool *tls)
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

int mqttconn_config_brokers(struct mqttconn *cc)
{
	const struct iotr_host *h = cc->host;
	size_t n = h->param_count(cc->inst, "brokers");

	cc->uri_tls = false;
	if (n == 0) {
		const char *host = h->param_string(cc->inst, "host");
		int port = (int)h->param_int(cc->inst, "port");

		cc->brokers = calloc(1, sizeof(*cc->brokers));
		if (!cc->brokers)
			return IOTR_ENOMEM;
		cc->n_brokers = 1;
		cc->brokers[0].host = strdup(host);
		cc->brokers[0].port = port;
		if (!cc->brokers[0].host ||
		    asprintf(&cc->brokers[0].name, strchr(host, ':') ? "[%s]:%d"
		                                                      : "%s:%d",
		             host, port) < 0) {
			cc->brokers[0].name = NULL;
			return IOTR_ENOMEM;
		}
		return IOTR_OK;
	}

	if (h->param_is_set(cc->inst, "host") || h->param_is_set(cc->inst, "port"))
		h->log(cc->inst, IOTR_LOG_WARNING, "host and port are ignored because "
		       "brokers is set; remove them from the config");

	cc->brokers = calloc(n, sizeof(*cc->brokers));
	if (!cc->brokers)
		return IOTR_ENOMEM;
	cc->n_brokers = n;
	for (size_t i = 0; i < n; i++) {
		const char *uri = h->param_string_at(cc->inst, "brokers", i);
		bool uri_tls;

		if (mqttconn_parse_uri(uri, &cc->brokers[i], &uri_tls) != 0) {
			h->log(cc->inst, IOTR_LOG_ERROR, "brokers[%zu] = \"%s\" is not a "
			       "broker URI; write mqtt://host:port or mqtts://host:port",
			       i, uri);
			return IOTR_EINVAL;
		}
		if (!cc->brokers[i].host || !cc->brokers[i].name)
			return IOTR_ENOMEM;
		if (i > 0 && uri_tls != cc->uri_tls) {
			h->log(cc->inst, IOTR_LOG_ERROR, "brokers mixes mqtt:// and "
			       "mqtts:// URIs (\"%s\"); one connection setting serves "
			       "every broker, so use one scheme for all", uri);
			return IOTR_EINVAL;
		}
		cc->uri_tls = uri_tls;
	}
	return IOTR_OK;
}

/* The first line of path, without its line end; NULL and *err = errno (0 for
 * an empty file) on failure.  The caller wipes and frees it. */
static char *mqttconn_read_first_line(const char *path, int *err)
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

int mqttconn_config_credentials(struct mqttconn *cc)
{
	const struct iotr_host *h = cc->host;
	const char *value = h->param_string(cc->inst, "password");
	const char *file = h->param_string(cc->inst, "password_file");

	cc->password = NULL;
	cc->username = h->param_string(cc->inst, "username");
	if (value && file) {
		h->log(cc->inst, IOTR_LOG_ERROR, "both password and password_file "
		       "are set; keep one of them");
		return IOTR_EINVAL;
	}
	if (file) {
		int err;

		cc->password = mqttconn_read_first_line(file, &err);
		if (!cc->password) {
			char ebuf[128];

			h->log(cc->inst, IOTR_LOG_ERROR, "password_file \"%s\": %s; the "
			       "router reads the password from its first line",
			       file, err ? strerror_r(err, ebuf, sizeof(ebuf))
			                 : "the file is empty");
			return IOTR_EINVAL;
		}
	} else if (value && !(cc->password = strdup(value))) {
		return IOTR_ENOMEM;
	}
	if (cc->password && !cc->username && cc->protocol != MQTT_PROTOCOL_V5) {
		h->log(cc->inst, IOTR_LOG_ERROR, "a password is set without "
		       "username; MQTT 3.1.1 needs both, so set username");
		return IOTR_EINVAL;
	}
	return IOTR_OK;
}

void mqttconn_wipe_password(struct mqttconn *cc)
{
	if (cc->password) {
		explicit_bzero(cc->password, strlen(cc->password));
		free(cc->password);
		cc->password = NULL;
	}
}

void mqttconn_free(struct mqttconn *cc)
{
	mqttconn_wipe_password(cc);
	for (size_t i = 0; i < cc->n_brokers; i++) {
		free(cc->brokers[i].host);
		free(cc->brokers[i].name);
	}
	free(cc->brokers);
	cc->brokers = NULL;
	cc->n_brokers = 0;
}

/* -- handle setup -------------------------------------------------------------- */

/* An encrypted key would make OpenSSL prompt on the terminal; refuse it. */
static int mqttconn_no_key_password(char *buf, int size, int rwflag,
                                    void *userdata)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)userdata;
	return 0;
}

/* Set up TLS on a handle.  The checks give the same answer for every
 * handle, so only the one with log_warnings logs its warnings. */
static int mqttconn_setup_tls(struct mqttconn *cc, struct mosquitto *mosq,
                              bool log_warnings)
{
	static const char *const files[] = {
		"tls_ca_file", "tls_ca_path", "tls_cert_file", "tls_key_file",
		"tls_version"
	};
	const struct iotr_host *h = cc->host;
	iotr_instance *inst = cc->inst;
	const char *ca_file = h->param_string(inst, "tls_ca_file");
	const char *ca_path = h->param_string(inst, "tls_ca_path");
	const char *cert = h->param_string(inst, "tls_cert_file");
	const char *key = h->param_string(inst, "tls_key_file");
	const char *version = h->param_string(inst, "tls_version");
	bool verify = h->param_bool(inst, "tls_verify");
	int rc;

	if (!h->param_bool(inst, "tls") && !cc->uri_tls) {
		/* A CA or certificate without TLS would send credentials in clear
		 * text to a broker the operator meant to reach over TLS. */
		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			if (h->param_string(inst, files[i])) {
				h->log(inst, IOTR_LOG_ERROR, "%s is set but TLS is off; "
				       "set tls = true (or use mqtts:// brokers), or remove "
				       "%s", files[i], files[i]);
				return IOTR_EINVAL;
			}
		}
		return IOTR_OK;
	}

	if (!cert != !key) {
		h->log(inst, IOTR_LOG_ERROR, "%s is set without %s; a client "
		       "certificate needs both tls_cert_file and tls_key_file",
		       cert ? "tls_cert_file" : "tls_key_file",
		       cert ? "tls_key_file" : "tls_cert_file");
		return IOTR_EINVAL;
	}
	for (size_t i = 0; i < 4; i++) {
		const char *path = h->param_string(inst, files[i]);
		FILE *f;

		if (!path || i == 1)    /* tls_ca_path is a directory */
			continue;
		f = fopen(path, "re");
		if (!f) {
			char ebuf[128];

			h->log(inst, IOTR_LOG_ERROR, "%s \"%s\": %s; fix the path "
			       "or the file's permissions", files[i], path,
			       strerror_r(errno, ebuf, sizeof(ebuf)));
			return IOTR_EINVAL;
		}
		fclose(f);
	}

	if (ca_file || ca_path) {
		rc = mosquitto_tls_set(mosq, ca_file, ca_path, cert, key,
		                       mqttconn_no_key_password);
	} else if (cert) {
		h->log(inst, IOTR_LOG_ERROR, "tls_cert_file needs tls_ca_file or "
		       "tls_ca_path (libmosquitto cannot combine a client "
		       "certificate with the system's CAs); set one of them");
		return IOTR_EINVAL;
	} else {
		rc = mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		char text[128];

		mqttconn_copy_text(text, sizeof(text), mosquitto_strerror(rc));
		h->log(inst, IOTR_LOG_ERROR, "TLS setup failed: %s; check "
		       "tls_ca_file, tls_ca_path, tls_cert_file and tls_key_file",
		       text);
		return IOTR_EINVAL;
	}

	cc->tls = true;
	if (version || !verify)
		rc = mosquitto_tls_opts_set(mosq, verify ? 1 : 0, version, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		h->log(inst, IOTR_LOG_ERROR, "tls_version = \"%s\" is not "
		       "supported; use \"tlsv1.1\", \"tlsv1.2\" or \"tlsv1.3\", or "
		       "remove it", version ? version : "");
		return IOTR_EINVAL;
	}
	if (!verify) {
		mosquitto_tls_insecure_set(mosq, true);
		if (log_warnings)
			h->log(inst, IOTR_LOG_WARNING, "tls_verify = false: the "
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
static int mqttconn_setup_connect_properties(struct mqttconn *cc,
                                             struct mosquitto *mosq)
{
	mosquitto_property *props = NULL;
	int major, minor, revision, rc;

	/* The headers said 2.0, but 1.6 has the same soname and drops the
	 * properties silently. */
	mosquitto_lib_version(&major, &minor, &revision);
	if (major < 2) {
		cc->host->log(cc->inst, IOTR_LOG_ERROR, "libmosquitto %d.%d.%d "
		              "cannot keep an MQTT 5 session; install libmosquitto "
		              "2.0 or later, or set protocol = \"3.1.1\"", major,
		              minor, revision);
		return IOTR_FAIL;
	}
	if (mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
	                                 (uint32_t)cc->session_expiry)
	    != MOSQ_ERR_SUCCESS)
		return IOTR_ENOMEM;
	rc = mosquitto_connect_bind_v5(mosq, NULL, 0, cc->keepalive, NULL, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_INVAL) {
		cc->host->log(cc->inst, IOTR_LOG_ERROR, "cannot set the MQTT 5 "
		              "session expiry (%s); this libmosquitto is not "
		              "supported, use protocol = \"3.1.1\" or clean_session "
		              "= true", mosquitto_strerror(rc));
		return IOTR_FAIL;
	}
	return IOTR_OK;
}

int mqttconn_setup_handle(struct mqttconn *cc, struct mosquitto *mosq,
                          bool log_warnings)
{
	int rc;

	if ((cc->username || cc->password) &&
	    mosquitto_username_pw_set(mosq, cc->username, cc->password)
	    != MOSQ_ERR_SUCCESS)
		return IOTR_ENOMEM;
	if ((rc = mqttconn_setup_tls(cc, mosq, log_warnings)) != IOTR_OK)
		return rc;
	/* Without clean_session the session outlives the connection; an MQTT 5
	 * broker keeps it only as long as the session expiry says (default 0). */
	if (cc->protocol == MQTT_PROTOCOL_V5 && !cc->clean_session &&
	    cc->session_expiry > 0 &&
	    (rc = mqttconn_setup_connect_properties(cc, mosq)) != IOTR_OK)
		return rc;
	return IOTR_OK;
}
