/*
 * iotrouter-sim - simulated MQTT devices publishing sensor readings as JSON,
 * a known and checkable load for iotrouter (or any MQTT broker).
 *
 * Threading: the main thread builds, paces and publishes every message.  Each
 * MQTT connection has one libmosquitto network thread (mosquitto_loop_start)
 * that runs our callbacks; they touch only their own struct sim_conn's
 * counters, under its lock.  Everything else belongs to the main thread.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define SIM_NAME "iotrouter-sim"

#define SIM_NS_PER_S		INT64_C(1000000000)
#define SIM_NS_PER_MS		INT64_C(1000000)

/* QoS 1/2 messages libmosquitto may have unacknowledged on the wire, per
 * connection.  20 is the default of both libmosquitto and the mosquitto
 * broker's max_inflight_messages: MQTT 3.1.1 cannot tell a client the
 * broker's limit, and mosquitto answers the 21st concurrent QoS 2 message
 * with an error and drops the connection (after which libmosquitto resends
 * them all and it happens again).  With MQTT 5 the broker's Receive Maximum
 * lowers it further. */
#define SIM_INFLIGHT		20
/* Messages handed to libmosquitto but not yet acknowledged (QoS 1/2) or
 * written to the socket (QoS 0), per connection.  libmosquitto queues
 * without limit, so this window is what keeps a fast run from filling memory;
 * it is larger than the in-flight limit so that libmosquitto has the next
 * message at hand when an acknowledgement frees a slot. */
#define SIM_WINDOW_QOS		200
#define SIM_WINDOW_QOS0		1000
/* ...and never more than this many payload bytes per connection. */
#define SIM_WINDOW_BYTES	(64u * 1024 * 1024)

#define SIM_CONNACK_TIMEOUT_S	10	/* wait for the broker's CONNACK */
#define SIM_STALL_TIMEOUT_S	30	/* no acknowledgement at all: give up */
#define SIM_SIGNAL_DRAIN_S	10	/* after SIGINT/SIGTERM, wait this long */
#define SIM_SLICE_MS		100	/* longest sleep before re-checking signals */
#define SIM_PACE_AHEAD_NS	(1 * SIM_NS_PER_MS) /* --rate: a message due within
						     * this long goes now */
#define SIM_LOSS_LOG_S		10	/* report a flapping connection this often */

#define SIM_KEEPALIVE_S		60
/* MQTT 5 session expiry for QoS 2 runs: long enough to ride out a broker
 * restart, short enough that a killed simulator's session goes away. */
#define SIM_SESSION_EXPIRY_S	300
#define SIM_MAX_DEVICES		1000000UL
#define SIM_MAX_CONNECTIONS	1000UL
#define SIM_MAX_RATE		10000000.0
#define SIM_MAX_DURATION_S	(10.0 * 365 * 24 * 3600)
#define SIM_MAX_SIZE		(100UL * 1024 * 1024)
#define SIM_NAME_MAX		64	/* device name, with its NUL */
#define SIM_ID_PREFIX_MAX	64	/* leaves room for -PID-K in 128 bytes */
#define SIM_NAME_JSON_MAX	(6 * SIM_NAME_MAX) /* worst case: all \u00XX */
#define SIM_TOPIC_MAX		65535	/* MQTT's limit on a topic's length */
#define SIM_PAYLOAD_BASE_MAX	(1024 + SIM_NAME_JSON_MAX)

/* Exit statuses: 0 all sent and acknowledged, 1 failed at run time, 2 usage. */
#define SIM_EXIT_OK		0
#define SIM_EXIT_FAIL		1
#define SIM_EXIT_USAGE		2

/* The sensors a device takes turns at; the walk stays near a per-device base
 * (mean +- spread) with steps of up to step, clamped to [min, max]. */
static const struct sim_sensor {
	const char *name;
	const char *unit;
	double mean, spread, step, min, max;
} sim_sensors[] = {
	{ "temperature", "C",    21.0,     4.0,  0.15, -40.0,  85.0 },
	{ "humidity",    "%",    45.0,    15.0,  0.5,    0.0, 100.0 },
	{ "pressure",    "hPa", 1013.25,  10.0,  0.3,  870.0, 1085.0 },
};
#define SIM_SENSORS (sizeof(sim_sensors) / sizeof(sim_sensors[0]))

struct sim_opts {
	const char *host;
	int port;
	const char *id_prefix;
	unsigned long devices;
	double rate;			/* 0: as fast as possible */
	int qos;
	uint64_t count;			/* 0: unlimited */
	bool count_set;
	double duration;		/* seconds, 0: none */
	const char *topic;
	unsigned long sites;
	const char *device_format;
	unsigned long size;		/* 0: no padding */
	bool compact;			/* one-letter keys, no site/sensor/unit */
	unsigned long connections;
	int protocol;			/* MQTT_PROTOCOL_V311 or _V5 */
	const char *username;
	const char *password;
	bool retain;
	uint64_t start_seq;
	bool verbose;
	bool quiet;
};

struct sim_device {
	char name[SIM_NAME_MAX];	/* as it goes into the topic */
	char name_json[SIM_NAME_JSON_MAX]; /* escaped for a JSON string */
	unsigned long number;		/* 1..devices, {n} in the topic */
	unsigned long site;		/* 1..sites */
	uint64_t seq;			/* next sequence number */
	uint64_t turns;			/* messages so far; picks the sensor */
	double base[SIM_SENSORS];
	double value[SIM_SENSORS];
};

struct sim;

struct sim_conn {
	struct sim *sim;		/* borrowed, for the callbacks */
	struct mosquitto *mosq;
	char id[128];
	bool loop_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* signalled on CONNACK, ack, disconnect */

	/* Guarded by lock, written by the network thread. */
	int connack;			/* -1 until the first CONNACK */
	bool connected;
	bool was_connected;		/* accepted by the broker once */
	unsigned long disconnects;
	uint64_t completed;		/* acks (QoS 1/2) or writes (QoS 0) */
	uint64_t acked;			/* completed with success */
	uint64_t rejected;		/* MQTT 5 reason code >= 0x80 */
	int first_reject;
	unsigned long sessions_lost;	/* reconnects without our session */
	/* Monotonic time of the last acknowledgement.  A CONNACK does not
	 * count: a broker that drops us for every message would otherwise
	 * keep the run going forever. */
	int64_t progress_ns;
	int64_t loss_logged_ns;		/* when a lost connection was last told */

	/* Main thread only (read under lock with the above). */
	uint64_t published;		/* accepted by mosquitto_publish() */
	uint64_t lost;			/* QoS 0 dropped with a connection */
	unsigned long seen_disconnects;
};

struct sim {
	struct sim_opts opt;
	struct sim_device *devices;
	struct sim_conn *conns;
	unsigned long nconns;		/* created, for cleanup */
	uint64_t window;
	bool persistent;		/* keep the broker session: QoS 2 */
	char *topic;			/* SIM_TOPIC_MAX + 1 */
	char *payload;			/* payload_max */
	size_t payload_max;
	uint64_t rng;
};

static volatile sig_atomic_t sim_signals;

static void sim_on_signal(int signo)
{
	(void)signo;
	/* A second signal cuts the wait for acknowledgements short. */
	if (sim_signals < 2)
		sim_signals++;
}

static void sim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sim_log(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	/* One fprintf per line so that lines from several threads don't mix. */
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, SIM_NAME ": %s\n", line);
}

static int64_t sim_now_ns(clockid_t clock)
{
	struct timespec ts;

	/* Cannot fail for the clocks used here; if it ever does, every
	 * timestamp and the pacing would be garbage, so stop. */
	if (clock_gettime(clock, &ts) != 0) {
		sim_log("clock_gettime(%d) failed: %s", (int)clock, strerror(errno));
		abort();
	}
	return (int64_t)ts.tv_sec * SIM_NS_PER_S + ts.tv_nsec;
}

static struct timespec sim_ns_to_ts(int64_t ns)
{
	struct timespec ts = {
		.tv_sec = (time_t)(ns / SIM_NS_PER_S),
		.tv_nsec = (long)(ns % SIM_NS_PER_S),
	};

	return ts;
}

/* Sleep until the CLOCK_MONOTONIC time @deadline.  Sleeps in slices, so a
 * signal that arrives just before clock_nanosleep() is noticed soon. */
static void sim_sleep_until(int64_t deadline)
{
	for (;;) {
		int64_t now = sim_now_ns(CLOCK_MONOTONIC);
		int64_t until = deadline;
		struct timespec ts;
		int rc;

		if (now >= deadline || sim_signals)
			return;
		if (until - now > SIM_SLICE_MS * SIM_NS_PER_MS)
			until = now + SIM_SLICE_MS * SIM_NS_PER_MS;
		ts = sim_ns_to_ts(until);
		rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		if (rc != 0 && rc != EINTR) {
			sim_log("clock_nanosleep failed: %s", strerror(rc));
			abort();
		}
	}
}

/* Wait on @c's condition variable for at most @ms; c->lock is held. */
static void sim_conn_timedwait(struct sim_conn *c, int64_t ms)
{
	struct timespec ts = sim_ns_to_ts(sim_now_ns(CLOCK_MONOTONIC) +
					  ms * SIM_NS_PER_MS);
	int rc = pthread_cond_timedwait(&c->cond, &c->lock, &ts);

	if (rc != 0 && rc != ETIMEDOUT) {
		sim_log("pthread_cond_timedwait failed: %s", strerror(rc));
		abort();
	}
}

/* xorshift64*: the readings only need to look plausible, not be secret. */
static double sim_random(struct sim *s)
{
	uint64_t x = s->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	return (double)((x * UINT64_C(2685821657736338717)) >> 11) /
	       (double)(UINT64_C(1) << 53);
}

/* -1 .. 1 */
static double sim_random_signed(struct sim *s)
{
	return 2.0 * sim_random(s) - 1.0;
}

static void sim_walk(struct sim *s, struct sim_device *d, size_t k)
{
	const struct sim_sensor *sn = &sim_sensors[k];
	double v = d->value[k];

	/* A random step plus a pull back to the device's base, so a long run
	 * wanders but does not drift off to the clamps. */
	v += sn->step * sim_random_signed(s) + 0.05 * (d->base[k] - v);
	if (v < sn->min)
		v = sn->min;
	if (v > sn->max)
		v = sn->max;
	d->value[k] = v;
}

/* ---- option parsing -------------------------------------------------- */

static void sim_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void sim_usage_error(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, SIM_NAME ": %s\nTry '" SIM_NAME " --help' for the options.\n", line);
	exit(SIM_EXIT_USAGE);
}

static uint64_t sim_parse_u64(const char *opt, const char *arg,
			      uint64_t min, uint64_t max)
{
	unsigned long long v;
	char *end;

	/* strtoull() would take " -1" as a huge number; insist on digits. */
	errno = 0;
	v = strtoull(arg, &end, 10);
	if (!isdigit((unsigned char)arg[0]) || *end != '\0' ||
	    errno == ERANGE || v < min || v > max)
		sim_usage_error("%s: '%s' is not a whole number from %" PRIu64
				" to %" PRIu64, opt, arg, min, max);
	return v;
}

static double sim_parse_double(const char *opt, const char *arg,
			       double min, double max)
{
	double v;
	char *end;

	errno = 0;
	v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(v) ||
	    v < min || v > max)
		sim_usage_error("%s: '%s' is not a number from %g to %g",
				opt, arg, min, max);
	return v;
}

/* Accept exactly one integer conversion, so that the user's format can be
 * handed to snprintf() with one int and nothing else. */
static bool sim_device_format_ok(const char *fmt)
{
	int conversions = 0;
	const char *p;

	for (p = fmt; *p; p++) {
		if (*p != '%')
			continue;
		p++;
		if (*p == '%')
			continue;
		p += strspn(p, "-+ #0'");
		p += strspn(p, "0123456789");
		if (*p == '.') {
			p++;
			p += strspn(p, "0123456789");
		}
		if (*p == '\0' || !strchr("diuxXo", *p))
			return false;
		conversions++;
	}
	return conversions == 1;
}

enum sim_placeholder { SIM_PH_SITE, SIM_PH_DEVICE, SIM_PH_SENSOR, SIM_PH_N, SIM_PH_BAD };

/* @p points at '{'; sets *end past the closing '}'. */
static enum sim_placeholder sim_placeholder(const char *p, const char **end)
{
	static const char *const names[] = { "site", "device", "sensor", "n" };
	const char *close = strchr(p, '}');
	size_t len, i;

	if (!close)
		return SIM_PH_BAD;
	len = (size_t)(close - p - 1);
	*end = close + 1;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == len && memcmp(p + 1, names[i], len) == 0)
			return (enum sim_placeholder)i;
	return SIM_PH_BAD;
}

static void sim_check_topic_template(const char *tmpl)
{
	const char *p = tmpl, *end;

	if (strlen(tmpl) > SIM_TOPIC_MAX)
		sim_usage_error("--topic: the template is longer than MQTT's %d bytes",
				SIM_TOPIC_MAX);
	while ((p = strchr(p, '{')) != NULL) {
		if (sim_placeholder(p, &end) == SIM_PH_BAD)
			sim_usage_error("--topic: '%.*s' in '%s' is not a placeholder; "
					"use {site}, {device}, {sensor} or {n}",
					(int)strcspn(p, "/"), p, tmpl);
		p = end;
	}
}

static void sim_help(void)
{
	printf(
"Usage: " SIM_NAME " [OPTION]...\n"
"Simulate MQTT devices that publish temperature, humidity and pressure readings\n"
"as JSON, to load and check iotrouter or any MQTT broker.\n"
"\n"
"Broker:\n"
"  -h, --host HOST          broker host name or address (default 127.0.0.1)\n"
"  -p, --port PORT          broker TCP port (default 1883)\n"
"      --protocol 311|5     MQTT version 3.1.1 or 5 (default 311)\n"
"  -i, --id-prefix PREFIX   client id prefix; ids are PREFIX-PID-K\n"
"                           (default iotrouter-sim)\n"
"  -c, --connections N      MQTT connections, devices spread over them (default 1)\n"
"      --username NAME      user name to connect with\n"
"      --password SECRET    password to connect with (visible to ps(1))\n"
"\n"
"Devices and messages:\n"
"  -d, --devices N          simulated devices (default 10)\n"
"      --sites N            sites site-1..site-N the devices are spread over\n"
"                           (default 1)\n"
"      --device-format FMT  printf format of a device name from its number 1..N\n"
"                           (default dev-%%04d)\n"
"  -t, --topic TEMPLATE     topic template (default sensors/{site}/{device}/{sensor});\n"
"                           placeholders {site} {device} {sensor} {n}\n"
"  -q, --qos 0|1|2          QoS of every message (default 1)\n"
"      --retain             publish with the retain flag\n"
"      --size BYTES         pad each payload with a \"pad\" field to BYTES bytes\n"
"      --compact            payloads with one-letter keys d, q, v, t (device,\n"
"                           seq, value, ts) and no site, sensor or unit: about\n"
"                           55 bytes; --size pads them with a \"p\" field\n"
"      --start-seq N        first sequence number of each device (default 1)\n"
"\n"
"Amount and pace:\n"
"  -r, --rate MSGS_PER_SEC  messages per second over all devices,\n"
"                           0 = as fast as possible (default 100); paced\n"
"                           in steps of 1 ms: what is due within the next\n"
"                           millisecond is published together\n"
"  -n, --count N            messages in all, 0 = unlimited\n"
"                           (default 1000, or unlimited with --duration)\n"
"  -D, --duration SECONDS   stop publishing after SECONDS\n"
"\n"
"Output:\n"
"  -v, --verbose            report connections, and progress every second\n"
"      --quiet              print errors only, no summary\n"
"      --help               print this help and exit\n"
"      --version            print the version and exit\n"
"\n"
"Exit status: 0 if every message was sent (and, for QoS 1 and 2, acknowledged),\n"
"1 if not or on a run-time error, 2 on a usage error.\n");
}

enum {
	SIM_OPT_SITES = 256,
	SIM_OPT_DEVICE_FORMAT,
	SIM_OPT_SIZE,
	SIM_OPT_COMPACT,
	SIM_OPT_PROTOCOL,
	SIM_OPT_USERNAME,
	SIM_OPT_PASSWORD,
	SIM_OPT_RETAIN,
	SIM_OPT_START_SEQ,
	SIM_OPT_QUIET,
	SIM_OPT_VERSION,
	SIM_OPT_HELP,
};

static void sim_parse_args(struct sim_opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "host",          required_argument, NULL, 'h' },
		{ "port",          required_argument, NULL, 'p' },
		{ "id-prefix",     required_argument, NULL, 'i' },
		{ "devices",       required_argument, NULL, 'd' },
		{ "rate",          required_argument, NULL, 'r' },
		{ "qos",           required_argument, NULL, 'q' },
		{ "count",         required_argument, NULL, 'n' },
		{ "duration",      required_argument, NULL, 'D' },
		{ "topic",         required_argument, NULL, 't' },
		{ "connections",   required_argument, NULL, 'c' },
		{ "verbose",       no_argument,       NULL, 'v' },
		{ "sites",         required_argument, NULL, SIM_OPT_SITES },
		{ "device-format", required_argument, NULL, SIM_OPT_DEVICE_FORMAT },
		{ "size",          required_argument, NULL, SIM_OPT_SIZE },
		{ "compact",       no_argument,       NULL, SIM_OPT_COMPACT },
		{ "protocol",      required_argument, NULL, SIM_OPT_PROTOCOL },
		{ "username",      required_argument, NULL, SIM_OPT_USERNAME },
		{ "password",      required_argument, NULL, SIM_OPT_PASSWORD },
		{ "retain",        no_argument,       NULL, SIM_OPT_RETAIN },
		{ "start-seq",     required_argument, NULL, SIM_OPT_START_SEQ },
		{ "quiet",         no_argument,       NULL, SIM_OPT_QUIET },
		{ "version",       no_argument,       NULL, SIM_OPT_VERSION },
		{ "help",          no_argument,       NULL, SIM_OPT_HELP },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	*o = (struct sim_opts){
		.host = "127.0.0.1",
		.port = 1883,
		.id_prefix = SIM_NAME,
		.devices = 10,
		.rate = 100.0,
		.qos = 1,
		.count = 1000,
		.topic = "sensors/{site}/{device}/{sensor}",
		.sites = 1,
		.device_format = "dev-%04d",
		.connections = 1,
		.protocol = MQTT_PROTOCOL_V311,
		.start_seq = 1,
	};

	/* Leading ':' so that we, not getopt, word the messages. */
	while ((ch = getopt_long(argc, argv, ":h:p:i:d:r:q:n:D:t:c:v",
				 longopts, NULL)) != -1) {
		switch (ch) {
		case 'h':
			if (optarg[0] == '\0')
				sim_usage_error("--host: the host name is empty");
			o->host = optarg;
			break;
		case 'p':
			o->port = (int)sim_parse_u64("--port", optarg, 1, 65535);
			break;
		case 'i':
			if (strlen(optarg) > SIM_ID_PREFIX_MAX ||
			    mosquitto_validate_utf8(optarg, (int)strlen(optarg)) != MOSQ_ERR_SUCCESS)
				sim_usage_error("--id-prefix: '%s' is not valid UTF-8 of at most "
						"%d bytes", optarg, SIM_ID_PREFIX_MAX);
			o->id_prefix = optarg;
			break;
		case 'd':
			o->devices = sim_parse_u64("--devices", optarg, 1, SIM_MAX_DEVICES);
			break;
		case 'r':
			o->rate = sim_parse_double("--rate", optarg, 0.0, SIM_MAX_RATE);
			break;
		case 'q':
			o->qos = (int)sim_parse_u64("--qos", optarg, 0, 2);
			break;
		case 'n':
			o->count = sim_parse_u64("--count", optarg, 0, UINT64_MAX);
			o->count_set = true;
			break;
		case 'D':
			o->duration = sim_parse_double("--duration", optarg, 0.0,
						       SIM_MAX_DURATION_S);
			break;
		case 't':
			o->topic = optarg;
			break;
		case 'c':
			o->connections = sim_parse_u64("--connections", optarg, 1,
						       SIM_MAX_CONNECTIONS);
			break;
		case 'v':
			o->verbose = true;
			break;
		case SIM_OPT_SITES:
			o->sites = sim_parse_u64("--sites", optarg, 1, SIM_MAX_DEVICES);
			break;
		case SIM_OPT_DEVICE_FORMAT:
			o->device_format = optarg;
			break;
		case SIM_OPT_SIZE:
			o->size = sim_parse_u64("--size", optarg, 0, SIM_MAX_SIZE);
			break;
		case SIM_OPT_COMPACT:
			o->compact = true;
			break;
		case SIM_OPT_PROTOCOL:
			if (strcmp(optarg, "311") == 0)
				o->protocol = MQTT_PROTOCOL_V311;
			else if (strcmp(optarg, "5") == 0)
				o->protocol = MQTT_PROTOCOL_V5;
			else
				sim_usage_error("--protocol: '%s' is not 311 or 5", optarg);
			break;
		case SIM_OPT_USERNAME:
			o->username = optarg;
			break;
		case SIM_OPT_PASSWORD:
			o->password = optarg;
			break;
		case SIM_OPT_RETAIN:
			o->retain = true;
			break;
		case SIM_OPT_START_SEQ:
			o->start_seq = sim_parse_u64("--start-seq", optarg, 0, UINT64_MAX);
			break;
		case SIM_OPT_QUIET:
			o->quiet = true;
			break;
		case SIM_OPT_VERSION: {
			int major, minor, rev;

			mosquitto_lib_version(&major, &minor, &rev);
			printf(SIM_NAME " " PACKAGE_VERSION " (libmosquitto %d.%d.%d)\n",
			       major, minor, rev);
			exit(SIM_EXIT_OK);
		}
		case SIM_OPT_HELP:
			sim_help();
			exit(SIM_EXIT_OK);
		case ':':
			if (optopt == 'h')
				sim_usage_error("option '-h' is --host and needs a value; "
						"--help prints the options");
			sim_usage_error("option '%s' needs a value", argv[optind - 1]);
		case '?':
		default:
			if (optopt)
				sim_usage_error("unknown option '-%c'", optopt);
			sim_usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		sim_usage_error("unexpected argument '%s'; every value belongs to an option",
				argv[optind]);

	/* Without --count, --duration alone bounds the run. */
	if (!o->count_set && o->duration > 0)
		o->count = 0;
	if (o->count == 0 && o->duration == 0)
		sim_usage_error("--count 0 (unlimited) needs --duration SECONDS to end the run");
	if (o->connections > o->devices)
		sim_usage_error("--connections %lu is more than --devices %lu; "
				"each connection needs a device", o->connections, o->devices);
	if (o->sites > o->devices)
		sim_usage_error("--sites %lu is more than --devices %lu; "
				"each site needs a device", o->sites, o->devices);
	if (o->password && !o->username)
		sim_usage_error("--password needs --username");
	if (!sim_device_format_ok(o->device_format))
		sim_usage_error("--device-format: '%s' must hold exactly one integer "
				"conversion such as %%04d (and %%%% for a percent sign)",
				o->device_format);
	sim_check_topic_template(o->topic);
}

/* ---- devices, topics, payloads --------------------------------------- */

/* Escape @src for the inside of a JSON string.  Returns -1 if it won't fit. */
static int sim_json_escape(char *dst, size_t size, const char *src)
{
	size_t len = 0;

	for (; *src; src++) {
		unsigned char ch = (unsigned char)*src;
		char esc[8];
		int n;

		if (ch == '"' || ch == '\\')
			n = snprintf(esc, sizeof(esc), "\\%c", ch);
		else if (ch < 0x20)
			n = snprintf(esc, sizeof(esc), "\\u%04x", ch);
		else
			n = snprintf(esc, sizeof(esc), "%c", ch);
		if (len + (size_t)n + 1 > size)
			return -1;
		memcpy(dst + len, esc, (size_t)n);
		len += (size_t)n;
	}
	dst[len] = '\0';
	return 0;
}

static void sim_devices_init(struct sim *s)
{
	const struct sim_opts *o = &s->opt;
	unsigned long i;
	size_t k;

	for (i = 0; i < o->devices; i++) {
		struct sim_device *d = &s->devices[i];
		int n;

		d->number = i + 1;
		/* Contiguous blocks, so a site holds neighbouring devices. */
		d->site = (unsigned long)((uint64_t)i * o->sites / o->devices) + 1;
		d->seq = o->start_seq;
		/* The format was checked to hold exactly one integer conversion. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
		n = snprintf(d->name, sizeof(d->name), o->device_format, (int)d->number);
#pragma GCC diagnostic pop
		if (n < 0 || (size_t)n >= sizeof(d->name))
			sim_usage_error("--device-format: '%s' makes names longer than %d bytes",
					o->device_format, SIM_NAME_MAX - 1);
		if (n == 0)
			sim_usage_error("--device-format: '%s' makes an empty name",
					o->device_format);
		if (mosquitto_validate_utf8(d->name, n) != MOSQ_ERR_SUCCESS)
			sim_usage_error("--device-format: '%s' is not valid UTF-8",
					o->device_format);
		if (sim_json_escape(d->name_json, sizeof(d->name_json), d->name) != 0)
			sim_usage_error("--device-format: '%s' makes names too long to escape",
					o->device_format);
		for (k = 0; k < SIM_SENSORS; k++) {
			d->base[k] = sim_sensors[k].mean +
				     sim_sensors[k].spread * sim_random_signed(s);
			d->value[k] = d->base[k];
		}
	}
}

/* Expand the --topic template for device @d and @sensor into s->topic.
 * Returns the length, or -1 if the topic would exceed MQTT's limit. */
static int sim_topic_build(struct sim *s, const struct sim_device *d,
			   const char *sensor)
{
	const char *p = s->opt.topic;
	size_t len = 0;

	while (*p) {
		const char *piece = p, *next = p + 1;
		size_t plen = 1;
		char num[32];

		if (*p == '{') {
			switch (sim_placeholder(p, &next)) {
			case SIM_PH_SITE:
				snprintf(num, sizeof(num), "site-%lu", d->site);
				piece = num;
				break;
			case SIM_PH_DEVICE:
				piece = d->name;
				break;
			case SIM_PH_SENSOR:
				piece = sensor;
				break;
			case SIM_PH_N:
				snprintf(num, sizeof(num), "%lu", d->number);
				piece = num;
				break;
			case SIM_PH_BAD:
			default:
				abort();	/* the template was checked */
			}
			plen = strlen(piece);
		}
		if (len + plen > SIM_TOPIC_MAX)
			return -1;
		memcpy(s->topic + len, piece, plen);
		len += plen;
		p = next;
	}
	s->topic[len] = '\0';
	return (int)len;
}

/* End the JSON object of @len bytes in s->payload, making it --size bytes
 * when it is shorter: with a field @key holding 'x's, or, when that does
 * not fit, with spaces before the '}' (which JSON ignores).  Returns the
 * payload's length. */
static size_t sim_payload_close(struct sim *s, size_t len, const char *key)
{
	size_t want = s->opt.size;
	size_t klen = strlen(key);

	/* ,"KEY":"" and the closing brace */
	if (want >= len + klen + 7) {
		s->payload[len++] = ',';
		s->payload[len++] = '"';
		memcpy(s->payload + len, key, klen);
		len += klen;
		memcpy(s->payload + len, "\":\"", 3);
		len += 3;
		memset(s->payload + len, 'x', want - 2 - len);
		len = want - 2;
		s->payload[len++] = '"';
	} else if (want > len + 1) {
		memset(s->payload + len, ' ', want - 1 - len);
		len = want - 1;
	}
	s->payload[len++] = '}';
	return len;
}

/* Write the JSON reading of sensor @k of @d into s->payload. */
static size_t sim_payload_build(struct sim *s, const struct sim_device *d, size_t k)
{
	const struct sim_sensor *sn = &sim_sensors[k];
	int64_t ts_us = sim_now_ns(CLOCK_REALTIME) / 1000;
	int n;

	/* We never call setlocale(), so %f writes a '.' as JSON needs. */
	if (s->opt.compact)
		/* The topic names the site and the sensor, and the sensor
		 * the unit; the rest, with one decimal, is about 55 bytes
		 * and leaves room to pad to 64. */
		n = snprintf(s->payload, s->payload_max,
			     "{\"d\":\"%s\",\"q\":%" PRIu64 ",\"v\":%.1f,\"t\":%" PRId64,
			     d->name_json, d->seq, d->value[k], ts_us);
	else
		n = snprintf(s->payload, s->payload_max,
			     "{\"device\":\"%s\",\"site\":\"site-%lu\",\"sensor\":\"%s\","
			     "\"value\":%.2f,\"unit\":\"%s\",\"seq\":%" PRIu64
			     ",\"ts\":%" PRId64,
			     d->name_json, d->site, sn->name, d->value[k], sn->unit,
			     d->seq, ts_us);
	if (n < 0 || (size_t)n >= SIM_PAYLOAD_BASE_MAX)
		abort();	/* the fields are bounded; see SIM_PAYLOAD_BASE_MAX */
	return sim_payload_close(s, (size_t)n, s->opt.compact ? "p" : "pad");
}

/* ---- connections ------------------------------------------------------ */

static int sim_signals_setup(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	/* No SA_RESTART: a signal should cut clock_nanosleep() short. */
	sa.sa_handler = sim_on_signal;
	if (sigemptyset(&sa.sa_mask) != 0 ||
	    sigaction(SIGINT, &sa, NULL) != 0 ||
	    sigaction(SIGTERM, &sa, NULL) != 0) {
		sim_log("cannot install the SIGINT/SIGTERM handlers: %s", strerror(errno));
		return -1;
	}
	/* A broker that goes away must show up as an error, not kill us. */
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) != 0) {
		sim_log("cannot ignore SIGPIPE: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Block or unblock SIGINT/SIGTERM in the calling thread. */
static int sim_signals_block(int how)
{
	sigset_t set;
	int rc;

	if (sigemptyset(&set) != 0 || sigaddset(&set, SIGINT) != 0 ||
	    sigaddset(&set, SIGTERM) != 0) {
		sim_log("cannot build a signal set: %s", strerror(errno));
		return -1;
	}
	rc = pthread_sigmask(how, &set, NULL);
	if (rc != 0) {
		sim_log("pthread_sigmask failed: %s", strerror(rc));
		return -1;
	}
	return 0;
}

static const char *sim_reason(int rc)
{
	/* MQTT 5 reason codes start at 0x80 for errors; below that the
	 * callbacks pass libmosquitto's own error numbers. */
	if (rc >= 0x80)
		return mosquitto_reason_string(rc);
	return mosquitto_strerror(rc);
}

static void sim_on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
			   const mosquitto_property *props)
{
	struct sim_conn *c = obj;
	struct sim *s = c->sim;
	bool reconnect, session_lost;

	(void)mosq;
	(void)props;
	pthread_mutex_lock(&c->lock);
	reconnect = c->connack >= 0;
	c->connack = rc;
	c->connected = rc == 0;
	if (rc == 0)
		c->was_connected = true;
	/* A QoS 2 message the broker has PUBREC'd lives only in our session
	 * there; a broker that comes back without it has lost them. */
	session_lost = reconnect && rc == 0 && s->persistent && !(flags & 1);
	if (session_lost)
		c->sessions_lost++;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);

	/* The first CONNACK is reported by the main thread. */
	if (!reconnect)
		return;
	if (session_lost)
		sim_log("%s reconnected to %s:%d, which no longer has its session: "
			"QoS 2 messages in flight at the disconnect may be lost "
			"(enable persistence on the broker)", c->id, s->opt.host,
			s->opt.port);
	else if (rc == 0 && s->opt.verbose)
		sim_log("%s reconnected to %s:%d", c->id, s->opt.host, s->opt.port);
	else if (rc != 0)
		sim_log("%s: %s:%d refused the reconnection: %s", c->id,
			s->opt.host, s->opt.port,
			s->opt.protocol == MQTT_PROTOCOL_V5 ?
			mosquitto_reason_string(rc) : mosquitto_connack_string(rc));
}

static void sim_on_disconnect(struct mosquitto *mosq, void *obj, int rc,
			      const mosquitto_property *props)
{
	struct sim_conn *c = obj;
	struct sim *s = c->sim;
	int64_t now = sim_now_ns(CLOCK_MONOTONIC);
	unsigned long losses;
	bool tell;

	(void)mosq;
	(void)props;
	pthread_mutex_lock(&c->lock);
	c->connected = false;
	losses = ++c->disconnects;
	/* rc 0 is our own mosquitto_disconnect(), and until the broker has
	 * accepted us the main thread reports the failure.  A connection that
	 * keeps dropping is told about once per SIM_LOSS_LOG_S. */
	tell = rc != 0 && !s->opt.quiet && c->was_connected &&
	       (s->opt.verbose || c->loss_logged_ns == 0 ||
		now - c->loss_logged_ns >= SIM_LOSS_LOG_S * SIM_NS_PER_S);
	if (tell)
		c->loss_logged_ns = now;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);

	if (tell)
		sim_log("%s lost its connection to %s:%d (%s, %lu time%s so far); "
			"reconnecting; the broker's log may say why", c->id, s->opt.host,
			s->opt.port, sim_reason(rc), losses, losses == 1 ? "" : "s");
}

/* For QoS 0 this runs when the message is written to the socket, for QoS 1/2
 * when the broker's PUBACK/PUBCOMP (or an MQTT 5 error PUBREC) arrives. */
static void sim_on_publish(struct mosquitto *mosq, void *obj, int mid, int rc,
			   const mosquitto_property *props)
{
	struct sim_conn *c = obj;

	(void)mosq;
	(void)mid;
	(void)props;
	pthread_mutex_lock(&c->lock);
	c->completed++;
	/* This includes "packet identifier not found" on a PUBCOMP: the
	 * broker forgot a QoS 2 message it had PUBREC'd, so it is lost. */
	if (rc >= 0x80) {
		if (c->rejected++ == 0)
			c->first_reject = rc;
	} else {
		c->acked++;
	}
	c->progress_ns = sim_now_ns(CLOCK_MONOTONIC);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

/* QoS 0 bookkeeping after a lost connection; c->lock held, main thread.
 * libmosquitto drops the QoS 0 packets it had queued when it reconnects,
 * without a callback, so everything published and not yet written when the
 * connection went is lost.  This runs before every publish, and a reconnect
 * takes at least the 1 s reconnect delay, so no message of the new
 * connection can be among them. */
static void sim_conn_settle(struct sim *s, struct sim_conn *c)
{
	if (s->opt.qos == 0 && c->seen_disconnects != c->disconnects) {
		c->seen_disconnects = c->disconnects;
		c->lost = c->published - c->completed;
	}
}

static uint64_t sim_conn_outstanding(struct sim_conn *c)
{
	return c->published - c->completed - c->lost;
}

/* How one connection attempt ended, for sim_conn_failed(). */
struct sim_attempt {
	int rc;				/* from mosquitto_connect*() or the loop */
	int err;			/* errno, for MOSQ_ERR_ERRNO */
	int connack;			/* the broker's answer, -1 none */
	bool closed;			/* the broker hung up before answering */
};

/* Tell why @c could not connect, naming the broker and what to check. */
static void sim_conn_failed(struct sim *s, struct sim_conn *c,
			    const struct sim_attempt *a)
{
	const struct sim_opts *o = &s->opt;

	if (sim_signals || (a->rc == MOSQ_ERR_ERRNO && a->err == EINTR)) {
		sim_log("interrupted while connecting to %s:%d", o->host, o->port);
	} else if (a->connack > 0) {
		int rc = a->connack;
		const char *hint = "the broker's log may say why";

		if (rc == CONNACK_REFUSED_BAD_USERNAME_PASSWORD ||
		    rc == CONNACK_REFUSED_NOT_AUTHORIZED ||
		    rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD ||
		    rc == MQTT_RC_NOT_AUTHORIZED)
			hint = "check --username/--password and the broker's ACL";
		else if (rc == CONNACK_REFUSED_IDENTIFIER_REJECTED ||
			 rc == MQTT_RC_CLIENTID_NOT_VALID)
			hint = "try a shorter or plainer --id-prefix";
		else if (rc == CONNACK_REFUSED_PROTOCOL_VERSION ||
			 rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION)
			hint = "try the other --protocol";
		sim_log("%s:%d refused connection %s: %s; %s", o->host, o->port,
			c->id, o->protocol == MQTT_PROTOCOL_V5 ?
			mosquitto_reason_string(rc) : mosquitto_connack_string(rc),
			hint);
	} else if (a->rc == MOSQ_ERR_ERRNO) {
		sim_log("cannot connect to %s:%d (%s): %s; %s", o->host, o->port,
			c->id, strerror(a->err), a->err == ECONNREFUSED ?
			"is the broker running? use --host/--port" :
			"is the broker reachable from here? use --host/--port");
	} else if (a->rc == MOSQ_ERR_EAI) {
		sim_log("cannot connect to %s:%d (%s): cannot resolve host name "
			"'%s'; check --host", o->host, o->port, c->id, o->host);
	} else if (a->closed) {
		sim_log("%s:%d closed connection %s before accepting it; is it an "
			"MQTT broker that speaks --protocol %s?", o->host, o->port,
			c->id, o->protocol == MQTT_PROTOCOL_V5 ? "5" : "311");
	} else if (a->rc != MOSQ_ERR_SUCCESS) {
		sim_log("cannot connect to %s:%d (%s): %s; use --host/--port", o->host,
			o->port, c->id, mosquitto_strerror(a->rc));
	} else {
		sim_log("%s:%d did not answer connection %s within %d s; is it an "
			"MQTT broker? use --host/--port", o->host, o->port, c->id,
			SIM_CONNACK_TIMEOUT_S);
	}
}

/* A client for @id with our options and no callbacks; NULL after telling
 * why.  @userdata is handed to the callbacks. */
static struct mosquitto *sim_client_new(struct sim *s, const char *id,
					bool clean, void *userdata)
{
	const struct sim_opts *o = &s->opt;
	struct mosquitto *mosq;
	int rc;

	mosq = mosquitto_new(id, clean, userdata);
	if (!mosq) {
		sim_log("%s: cannot create an MQTT client: %s", id, strerror(errno));
		return NULL;
	}
	rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, o->protocol);
	/* SEND_MAXIMUM also governs MQTT 3.1.1 in libmosquitto 2.0
	 * (mosquitto_max_inflight_messages_set() is a wrapper for it). */
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, SIM_INFLIGHT);
	/* A device sends each reading when it has it; without this, Nagle
	 * holds small packets back and "ts" no longer says when it left. */
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
	if (rc == MOSQ_ERR_SUCCESS && o->username)
		rc = mosquitto_username_pw_set(mosq, o->username, o->password);
	if (rc == MOSQ_ERR_SUCCESS)
		rc = mosquitto_reconnect_delay_set(mosq, 1, 8, true);
	if (rc != MOSQ_ERR_SUCCESS) {
		sim_log("%s: cannot set up the MQTT client: %s", id,
			mosquitto_strerror(rc));
		mosquitto_destroy(mosq);
		return NULL;
	}
	return mosq;
}

static void sim_on_wipe_connect(struct mosquitto *mosq, void *obj, int rc)
{
	(void)mosq;
	*(int *)obj = rc;
}

/* End @c's session on the broker, if it has one: connecting with a clean
 * session discards the old session, and a clean session ends when it
 * disconnects.  Waiting for the CONNACK makes sure the broker is done with
 * it before the next connection with this id.  Returns 0, or -1 with the
 * reason in *a. */
static int sim_session_wipe(struct sim *s, struct sim_conn *c, struct sim_attempt *a)
{
	const struct sim_opts *o = &s->opt;
	int64_t deadline = sim_now_ns(CLOCK_MONOTONIC) +
			   SIM_CONNACK_TIMEOUT_S * SIM_NS_PER_S;
	struct mosquitto *mosq;

	*a = (struct sim_attempt){ .rc = MOSQ_ERR_SUCCESS, .connack = -1 };
	mosq = sim_client_new(s, c->id, true, &a->connack);
	if (!mosq) {
		a->rc = MOSQ_ERR_NOMEM;
		return -1;
	}
	mosquitto_connect_callback_set(mosq, sim_on_wipe_connect);
	a->rc = mosquitto_connect(mosq, o->host, o->port, SIM_KEEPALIVE_S);
	a->err = errno;
	while (a->rc == MOSQ_ERR_SUCCESS && a->connack < 0 && sim_signals < 2 &&
	       sim_now_ns(CLOCK_MONOTONIC) < deadline)
		a->rc = mosquitto_loop(mosq, SIM_SLICE_MS, 1);
	a->closed = a->rc == MOSQ_ERR_CONN_LOST || a->rc == MOSQ_ERR_NO_CONN;
	if (a->rc == MOSQ_ERR_SUCCESS && a->connack == 0)
		a->rc = mosquitto_disconnect(mosq);
	mosquitto_destroy(mosq);
	return a->rc == MOSQ_ERR_SUCCESS && a->connack == 0 ? 0 : -1;
}

static int sim_conn_open(struct sim *s, struct sim_conn *c, unsigned long index)
{
	const struct sim_opts *o = &s->opt;
	struct sim_attempt attempt;
	pthread_condattr_t attr;
	int rc;

	c->sim = s;
	c->connack = -1;
	c->first_reject = 0;
	/* The pid keeps two simulators with the same prefix from taking over
	 * each other's sessions. */
	snprintf(c->id, sizeof(c->id), "%s-%ld-%lu", o->id_prefix, (long)getpid(),
		 index + 1);

	if ((rc = pthread_mutex_init(&c->lock, NULL)) != 0 ||
	    (rc = pthread_condattr_init(&attr)) != 0) {
		sim_log("%s: cannot create a lock: %s", c->id, strerror(rc));
		return -1;
	}
	rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (rc == 0)
		rc = pthread_cond_init(&c->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0) {
		pthread_mutex_destroy(&c->lock);
		sim_log("%s: cannot create a condition variable: %s", c->id, strerror(rc));
		return -1;
	}
	s->nconns = index + 1;

	/* QoS 2 needs a session that survives a reconnect: a message the
	 * broker has PUBREC'd but not yet had PUBREL for is only in it, and a
	 * clean session would throw it away.  QoS 0 and 1 don't need one (QoS
	 * 1 is simply sent again), and then leave nothing behind.  A session
	 * of an earlier run with this id (same pid) must not be resumed, so
	 * end it first; that also tells whether the broker takes us at all. */
	if (s->persistent && sim_session_wipe(s, c, &attempt) != 0) {
		sim_conn_failed(s, c, &attempt);
		return -1;
	}
	c->mosq = sim_client_new(s, c->id, !s->persistent, c);
	if (!c->mosq)
		return -1;
	/* The v5 callbacks are called for every protocol version, and only
	 * they hear about an MQTT 5 PUBREC that refuses a QoS 2 message. */
	mosquitto_connect_v5_callback_set(c->mosq, sim_on_connect);
	mosquitto_disconnect_v5_callback_set(c->mosq, sim_on_disconnect);
	mosquitto_publish_v5_callback_set(c->mosq, sim_on_publish);

	if (s->persistent && o->protocol == MQTT_PROTOCOL_V5) {
		/* An MQTT 5 session ends with the connection unless it asks for
		 * an expiry; libmosquitto keeps the property for reconnects. */
		mosquitto_property *props = NULL;

		rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
						  SIM_SESSION_EXPIRY_S);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_connect_bind_v5(c->mosq, o->host, o->port,
						       SIM_KEEPALIVE_S, NULL, props);
		mosquitto_property_free_all(&props);
	} else {
		rc = mosquitto_connect(c->mosq, o->host, o->port, SIM_KEEPALIVE_S);
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		attempt = (struct sim_attempt){ .rc = rc, .err = errno, .connack = -1 };
		sim_conn_failed(s, c, &attempt);
		return -1;
	}
	/* Started with SIGINT/SIGTERM blocked, the network thread never takes
	 * them, so they always reach the main thread and cut its sleep short. */
	if (sim_signals_block(SIG_BLOCK) != 0)
		return -1;
	rc = mosquitto_loop_start(c->mosq);
	if (rc == MOSQ_ERR_SUCCESS)
		c->loop_started = true;
	else
		sim_log("%s: cannot start the network thread: %s", c->id,
			mosquitto_strerror(rc));
	if (sim_signals_block(SIG_UNBLOCK) != 0)
		return -1;
	return c->loop_started ? 0 : -1;
}

static int sim_conn_wait_connack(struct sim *s, struct sim_conn *c)
{
	int64_t deadline = sim_now_ns(CLOCK_MONOTONIC) +
			   SIM_CONNACK_TIMEOUT_S * SIM_NS_PER_S;
	const struct sim_opts *o = &s->opt;
	struct sim_attempt attempt = { .rc = MOSQ_ERR_SUCCESS };

	pthread_mutex_lock(&c->lock);
	while (c->connack < 0 && c->disconnects == 0 && !sim_signals &&
	       sim_now_ns(CLOCK_MONOTONIC) < deadline)
		sim_conn_timedwait(c, SIM_SLICE_MS);
	attempt.connack = c->connack;
	attempt.closed = c->disconnects > 0;
	pthread_mutex_unlock(&c->lock);

	if (attempt.connack == 0) {
		if (o->verbose)
			sim_log("%s connected to %s:%d (MQTT %s)", c->id, o->host,
				o->port, o->protocol == MQTT_PROTOCOL_V5 ? "5" : "3.1.1");
		return 0;
	}
	sim_conn_failed(s, c, &attempt);
	return -1;
}

/* Wait until @c may take one more message.  Returns -1 if the run has to
 * stop: a signal, or (with *failed set) a broker that stopped answering. */
static int sim_conn_wait_room(struct sim *s, struct sim_conn *c, bool *failed)
{
	int64_t start = sim_now_ns(CLOCK_MONOTONIC);
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		int64_t last;

		sim_conn_settle(s, c);
		if (sim_conn_outstanding(c) < s->window)
			break;
		if (sim_signals) {
			rc = -1;
			break;
		}
		last = c->progress_ns > start ? c->progress_ns : start;
		if (sim_now_ns(CLOCK_MONOTONIC) - last > SIM_STALL_TIMEOUT_S * SIM_NS_PER_S) {
			sim_log("%s:%d has not acknowledged anything on %s for %d s "
				"(%" PRIu64 " messages waiting); giving up; the broker's "
				"log may say why", s->opt.host,
				s->opt.port, c->id, SIM_STALL_TIMEOUT_S,
				sim_conn_outstanding(c));
			*failed = true;
			rc = -1;
			break;
		}
		sim_conn_timedwait(c, SIM_SLICE_MS);
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* Publish the current s->topic/s->payload on @c.  Returns 0 when
 * libmosquitto has the message, -1 if the run has to stop (*failed set on
 * an error, not on a signal). */
static int sim_publish(struct sim *s, struct sim_conn *c, size_t len, bool *failed)
{
	const struct sim_opts *o = &s->opt;
	int64_t start = sim_now_ns(CLOCK_MONOTONIC);

	for (;;) {
		int64_t last;
		int rc;

		pthread_mutex_lock(&c->lock);
		sim_conn_settle(s, c);
		pthread_mutex_unlock(&c->lock);

		rc = mosquitto_publish(c->mosq, NULL, s->topic, (int)len, s->payload,
				       o->qos, o->retain);
		if (rc == MOSQ_ERR_SUCCESS)
			break;
		/* For QoS 1/2, NO_CONN means the message is queued (libmosquitto
		 * 2.0 appends it before trying the socket) and will be sent
		 * after the reconnect: publishing again would duplicate it. */
		if (rc == MOSQ_ERR_NO_CONN && o->qos > 0)
			break;
		if (rc != MOSQ_ERR_NO_CONN) {
			if (rc == MOSQ_ERR_OVERSIZE_PACKET || rc == MOSQ_ERR_PAYLOAD_SIZE)
				sim_log("a %zu-byte message to '%s' is larger than %s:%d "
					"accepts; use a smaller --size", len, s->topic,
					o->host, o->port);
			else if (rc == MOSQ_ERR_QOS_NOT_SUPPORTED)
				sim_log("%s:%d does not support QoS %d; use a lower --qos",
					o->host, o->port, o->qos);
			else if (rc == MOSQ_ERR_INVAL || rc == MOSQ_ERR_MALFORMED_UTF8)
				sim_log("'%s' is not a topic one can publish to; "
					"check --topic and --device-format", s->topic);
			else
				sim_log("cannot publish to '%s' on %s:%d (%s): %s", s->topic,
					o->host, o->port, c->id, mosquitto_strerror(rc));
			*failed = true;
			return -1;
		}

		/* QoS 0 and not connected: nothing was queued, so wait for
		 * the network thread's reconnect and try the same message again. */
		pthread_mutex_lock(&c->lock);
		last = c->progress_ns > start ? c->progress_ns : start;
		if (!sim_signals && !c->connected)
			sim_conn_timedwait(c, SIM_SLICE_MS);
		pthread_mutex_unlock(&c->lock);
		if (sim_signals)
			return -1;
		if (sim_now_ns(CLOCK_MONOTONIC) - last > SIM_STALL_TIMEOUT_S * SIM_NS_PER_S) {
			sim_log("cannot reach %s:%d on %s for %d s; is the broker still "
				"running?", o->host, o->port, c->id, SIM_STALL_TIMEOUT_S);
			*failed = true;
			return -1;
		}
		/* Don't spin if the socket is gone but on_disconnect hasn't run. */
		sim_sleep_until(sim_now_ns(CLOCK_MONOTONIC) + 10 * SIM_NS_PER_MS);
	}
	pthread_mutex_lock(&c->lock);
	c->published++;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* Wait for every outstanding message: until the broker stops answering
 * (no acknowledgement for SIM_STALL_TIMEOUT_S), or, after a signal, for at
 * most SIM_SIGNAL_DRAIN_S; a second signal stops the wait at once. */
static void sim_drain(struct sim *s, int64_t signal_ns)
{
	int64_t start = sim_now_ns(CLOCK_MONOTONIC);
	unsigned long i;

	for (i = 0; i < s->nconns; i++) {
		struct sim_conn *c = &s->conns[i];

		pthread_mutex_lock(&c->lock);
		for (;;) {
			int64_t now = sim_now_ns(CLOCK_MONOTONIC);
			int64_t last = c->progress_ns > start ? c->progress_ns : start;

			sim_conn_settle(s, c);
			if (sim_conn_outstanding(c) == 0 || sim_signals >= 2)
				break;
			if (sim_signals && signal_ns == 0)
				signal_ns = now;
			if (signal_ns && now - signal_ns > SIM_SIGNAL_DRAIN_S * SIM_NS_PER_S) {
				sim_log("stopped waiting for %s:%d to acknowledge %" PRIu64
					" messages on %s after %d s", s->opt.host, s->opt.port,
					sim_conn_outstanding(c), c->id, SIM_SIGNAL_DRAIN_S);
				break;
			}
			if (now - last > SIM_STALL_TIMEOUT_S * SIM_NS_PER_S) {
				sim_log("%s:%d has not acknowledged anything on %s for %d s "
					"(%" PRIu64 " messages waiting); giving up; the "
					"broker's log may say why", s->opt.host, s->opt.port,
					c->id, SIM_STALL_TIMEOUT_S, sim_conn_outstanding(c));
				break;
			}
			sim_conn_timedwait(c, SIM_SLICE_MS);
		}
		pthread_mutex_unlock(&c->lock);
	}
}

static void sim_conns_close(struct sim *s)
{
	unsigned long i;

	for (i = 0; i < s->nconns; i++) {
		struct sim_conn *c = &s->conns[i];

		if (c->mosq && c->loop_started) {
			bool connected;
			int rc;

			pthread_mutex_lock(&c->lock);
			connected = c->connected;
			pthread_mutex_unlock(&c->lock);
			rc = mosquitto_disconnect(c->mosq);
			if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
				sim_log("%s: disconnect failed: %s", c->id,
					mosquitto_strerror(rc));
			/* If the network thread is stuck in a reconnect (say a
			 * blocking connect to a host that went away), don't wait
			 * for the TCP timeout: cancel it. */
			rc = mosquitto_loop_stop(c->mosq, !connected);
			if (rc != MOSQ_ERR_SUCCESS)
				sim_log("%s: cannot stop the network thread: %s", c->id,
					mosquitto_strerror(rc));
		}
		if (c->mosq)
			mosquitto_destroy(c->mosq);
		/* Leave no session behind; MQTT 3.1.1 ones never expire. */
		if (s->persistent && c->connack >= 0) {
			struct sim_attempt attempt;

			if (sim_session_wipe(s, c, &attempt) != 0 && !s->opt.quiet) {
				sim_log("%s: could not end its session on %s:%d; the "
					"broker keeps it until it expires, because:", c->id,
					s->opt.host, s->opt.port);
				sim_conn_failed(s, c, &attempt);
			}
		}
		pthread_cond_destroy(&c->cond);
		pthread_mutex_destroy(&c->lock);
	}
	s->nconns = 0;
}

/* ---- the run ---------------------------------------------------------- */

struct sim_totals {
	uint64_t published, acked, rejected, lost, outstanding;
	unsigned long sessions_lost;
	int first_reject;
};

static void sim_totals(struct sim *s, struct sim_totals *t)
{
	unsigned long i;

	memset(t, 0, sizeof(*t));
	for (i = 0; i < s->nconns; i++) {
		struct sim_conn *c = &s->conns[i];

		pthread_mutex_lock(&c->lock);
		t->published += c->published;
		t->acked += c->acked;
		t->rejected += c->rejected;
		t->lost += c->lost;
		t->outstanding += sim_conn_outstanding(c);
		t->sessions_lost += c->sessions_lost;
		if (!t->first_reject)
			t->first_reject = c->first_reject;
		pthread_mutex_unlock(&c->lock);
	}
}

enum sim_end { SIM_END_COUNT, SIM_END_DURATION, SIM_END_SIGNAL, SIM_END_FAILED };

static enum sim_end sim_run(struct sim *s, int64_t t0, int64_t *signal_ns)
{
	const struct sim_opts *o = &s->opt;
	int64_t end = o->duration > 0 ?
		t0 + (int64_t)(o->duration * (double)SIM_NS_PER_S) : INT64_MAX;
	int64_t next_report = t0 + SIM_NS_PER_S;
	bool failed = false;
	uint64_t i;

	for (i = 0; o->count == 0 || i < o->count; i++) {
		unsigned long dev = (unsigned long)(i % o->devices);
		struct sim_device *d = &s->devices[dev];
		struct sim_conn *c = &s->conns[dev % o->connections];
		size_t k = (size_t)(d->turns % SIM_SENSORS);
		int64_t now;
		size_t len;

		if (o->rate > 0) {
			/* Message i is due at t0 + i/rate: an absolute schedule,
			 * so a late message makes the next ones early rather
			 * than the whole run slow. */
			int64_t due = t0 + (int64_t)((long double)i *
						     (long double)SIM_NS_PER_S /
						     (long double)o->rate);

			if (due >= end)
				return SIM_END_DURATION;
			/* Messages due within SIM_PACE_AHEAD_NS go now: one
			 * wake-up a millisecond instead of one a message,
			 * which at tens of thousands a second would cost more
			 * CPU than publishing them. */
			if (due - sim_now_ns(CLOCK_MONOTONIC) > SIM_PACE_AHEAD_NS)
				sim_sleep_until(due);
		}
		if (sim_signals)
			goto interrupted;
		if (sim_conn_wait_room(s, c, &failed) != 0)
			goto stopped;
		now = sim_now_ns(CLOCK_MONOTONIC);
		if (now >= end)
			return SIM_END_DURATION;
		if (o->verbose && now >= next_report) {
			struct sim_totals t;

			sim_totals(s, &t);
			sim_log("%.1f s: sent=%" PRIu64 " acked=%" PRIu64 " (%.1f/s)",
				(double)(now - t0) / SIM_NS_PER_S, t.published, t.acked,
				(double)t.published * SIM_NS_PER_S / (double)(now - t0));
			next_report += SIM_NS_PER_S;
			if (next_report <= now)
				next_report = now + SIM_NS_PER_S;
		}

		sim_walk(s, d, k);
		if (sim_topic_build(s, d, sim_sensors[k].name) < 0) {
			sim_log("the topic for device %s is longer than MQTT's %d bytes; "
				"shorten --topic or --device-format", d->name, SIM_TOPIC_MAX);
			return SIM_END_FAILED;
		}
		len = sim_payload_build(s, d, k);
		if (sim_publish(s, c, len, &failed) != 0)
			goto stopped;
		d->seq++;
		d->turns++;
	}
	return SIM_END_COUNT;

stopped:
	if (failed)
		return SIM_END_FAILED;
interrupted:
	*signal_ns = sim_now_ns(CLOCK_MONOTONIC);
	return SIM_END_SIGNAL;
}

int main(int argc, char **argv)
{
	static struct sim sim;
	struct sim *s = &sim;
	const struct sim_opts *o = &s->opt;
	struct sim_totals t;
	enum sim_end end = SIM_END_FAILED;
	int64_t t0, t1, signal_ns = 0;
	double elapsed;
	int status = SIM_EXIT_FAIL;
	unsigned long i;
	bool ok;

	sim_parse_args(&s->opt, argc, argv);
	s->rng = (uint64_t)sim_now_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 32);
	if (s->rng == 0)
		s->rng = 1;

	s->persistent = o->qos == 2;
	s->window = o->qos ? SIM_WINDOW_QOS : SIM_WINDOW_QOS0;
	if (o->size > 0 && s->window > SIM_WINDOW_BYTES / o->size)
		s->window = SIM_WINDOW_BYTES / o->size > 0 ? SIM_WINDOW_BYTES / o->size : 1;
	s->payload_max = SIM_PAYLOAD_BASE_MAX + o->size + 16;
	s->devices = calloc(o->devices, sizeof(*s->devices));
	s->conns = calloc(o->connections, sizeof(*s->conns));
	s->topic = malloc(SIM_TOPIC_MAX + 1);
	s->payload = malloc(s->payload_max);
	if (!s->devices || !s->conns || !s->topic || !s->payload) {
		sim_log("out of memory for %lu devices and %lu-byte payloads; "
			"lower --devices or --size", o->devices, o->size);
		goto out_free;
	}
	sim_devices_init(s);

	/* Check the topic once up front, so a bad template is a usage error
	 * and not a failure halfway through the run. */
	for (i = 0; i < SIM_SENSORS; i++) {
		int len = sim_topic_build(s, &s->devices[0], sim_sensors[i].name);

		if (len < 0)
			sim_usage_error("--topic: '%s' expands to more than %d bytes",
					o->topic, SIM_TOPIC_MAX);
		if (mosquitto_validate_utf8(s->topic, len) != MOSQ_ERR_SUCCESS ||
		    mosquitto_pub_topic_check2(s->topic, (size_t)len) != MOSQ_ERR_SUCCESS)
			sim_usage_error("--topic: '%s' is not a topic one can publish to "
					"(it may not be empty or hold + or #)", s->topic);
	}

	if (mosquitto_lib_init() != MOSQ_ERR_SUCCESS) {
		sim_log("cannot initialise libmosquitto");
		goto out_free;
	}
	if (sim_signals_setup() != 0)
		goto out_lib;
	for (i = 0; i < o->connections; i++)
		if (sim_conn_open(s, &s->conns[i], i) != 0)
			goto out_conns;
	for (i = 0; i < o->connections; i++)
		if (sim_conn_wait_connack(s, &s->conns[i]) != 0)
			goto out_conns;

	t0 = sim_now_ns(CLOCK_MONOTONIC);
	end = sim_run(s, t0, &signal_ns);
	sim_drain(s, signal_ns);
	t1 = sim_now_ns(CLOCK_MONOTONIC);

	sim_totals(s, &t);
	elapsed = (double)(t1 - t0) / SIM_NS_PER_S;
	ok = end != SIM_END_FAILED && end != SIM_END_SIGNAL;
	if (o->count > 0 && t.published != o->count)
		ok = false;
	if (o->qos > 0 && t.acked != t.published)
		ok = false;
	/* Acknowledged or not, we can't vouch for those messages. */
	if (t.sessions_lost > 0)
		ok = false;

	if (t.rejected > 0)
		sim_log("%s:%d refused %" PRIu64 " messages (first: %s); "
			"check the broker's ACL for the --topic", o->host, o->port,
			t.rejected, mosquitto_reason_string(t.first_reject));
	if (t.outstanding > 0 && o->qos > 0)
		sim_log("%" PRIu64 " messages were never acknowledged by %s:%d",
			t.outstanding, o->host, o->port);
	if (t.lost > 0 && !o->quiet)
		sim_log("%" PRIu64 " QoS 0 messages were lost with a dropped connection",
			t.lost);
	if (end == SIM_END_DURATION && o->count > 0 && !o->quiet)
		sim_log("--duration ended the run before --count %" PRIu64 " was reached",
			o->count);
	if (!o->quiet)
		sim_log("sent=%" PRIu64 " acked=%" PRIu64 " devices=%lu elapsed=%.3f "
			"rate=%.1f/s", t.published, t.acked, o->devices, elapsed,
			elapsed > 0 ? (double)t.published / elapsed : 0.0);
	status = ok ? SIM_EXIT_OK : SIM_EXIT_FAIL;

out_conns:
	sim_conns_close(s);
out_lib:
	mosquitto_lib_cleanup();
out_free:
	free(s->payload);
	free(s->topic);
	free(s->conns);
	free(s->devices);
	return status;
}
