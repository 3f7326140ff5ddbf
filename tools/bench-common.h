/*
 * bench-common - what the measuring tools of scripts/bench share: clocks,
 * option parsing, signals, and the counting end that bench-mqtt-sub and
 * bench-kafka-latency both are (warm-up, age of each message from its
 * publish time, expected count, idle and overall time-outs, result line).
 *
 * Threading: nothing here locks.  A struct bench_tally belongs to the one
 * thread that feeds it; bench_stop is written by a signal handler.
 */
#ifndef IOTROUTER_BENCH_COMMON_H
#define IOTROUTER_BENCH_COMMON_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

/* The tool's name, the start of its messages ("bench-mqtt-sub: ...").
 * Each tool defines it. */
extern const char bench_name[];

/* Set to 1 by SIGINT and SIGTERM once bench_catch_signals() has run. */
extern volatile sig_atomic_t bench_stop;

/* ---- time, signals, resources ------------------------------------------ */

/* Nanoseconds on @clock: CLOCK_MONOTONIC for intervals, CLOCK_REALTIME
 * to compare with a publish time in a payload. */
int64_t bench_now_ns(clockid_t clock);

/* SIGINT and SIGTERM set bench_stop (without SA_RESTART, so they cut a
 * sleep short); with @ignore_sigpipe a vanished peer is an error return,
 * not the end of the process. */
void bench_catch_signals(bool ignore_sigpipe);

/* CPU seconds (user + system) used so far; the peak RSS in kB goes to
 * *maxrss_kb.  Both 0 if getrusage() fails. */
double bench_cpu_s(long *maxrss_kb);

/* Create (or truncate) the empty file @path, a signal to scripts/bench.
 * A failure is reported on stderr and otherwise ignored: the script then
 * times out waiting for the file and says so. */
void bench_touch(const char *path);

/* ---- command line ------------------------------------------------------- */

/* One command-line option, a row of a tool's table: its long name, its
 * short letter (or 0), and where its value goes, which is exactly one of
 * the pointers.  A number is checked against [min, max] and converted to
 * the target's type; anything else (a list, a choice) goes to take(ctx,
 * value), which exits through bench_die_usage() on a bad one.  A table
 * ends with a row without a name. */
struct bench_option {
	const char *name;
	int letter;
	bool *flag;			/* no value: set to true */
	const char **text;		/* the value itself, borrowed from argv */
	int *i;
	unsigned long *ul;
	uint64_t *u64;
	double *d;
	double min, max;
	void (*take)(void *ctx, const char *arg);
	void *ctx;
};

/* Parse the command line by @opts and, if not NULL, @more (a second table,
 * such as BENCH_TALLY_OPTIONS), plus --help, which prints @usage on stdout
 * and exits 0.  An unknown option, a missing or bad value or a word that
 * belongs to no option exits 2 with a message. */
void bench_parse_options(int argc, char **argv, const struct bench_option *opts,
			 const struct bench_option *more, void (*usage)(FILE *));

/* Print "NAME: <message>" and a pointer to --help on stderr, exit 2. */
void bench_die_usage(const char *fmt, ...)
	__attribute__((noreturn, format(printf, 1, 2)));

/* ---- the counting end ---------------------------------------------------- */

#define BENCH_SAMPLES_DEFAULT	10000000UL
#define BENCH_EXPECT_POLL_MS	100	/* how often --expect-file is re-read */

/* What the counting end is told on its command line. */
struct bench_tally_opts {
	uint64_t count;			/* stop after this many; 0: no count */
	const char *expect_file;	/* or after the count written here */
	const char *ready_file;		/* the tool creates it once receiving */
	const char *warm_marker;	/* payloads holding it are warm-up */
	const char *warm_file;		/* created at the warm_count'th of them */
	uint64_t warm_count;
	double idle_s;			/* stop this long after the last; 0: no */
	double timeout_s;		/* stop after this long in all */
	unsigned long max_samples;	/* latency samples kept */
	const char *samples_file;	/* every sample written here, or NULL */
};

/* The table of struct bench_tally_opts @o's options, for
 * bench_parse_options(): -n/--count, --expect-file, --idle, --timeout,
 * --ready-file, --warm-marker, --warm-file, --warm-count, --max-samples,
 * --samples-file. */
#define BENCH_TALLY_OPTIONS(o) (const struct bench_option[]){ \
	{ "count", 'n', .u64 = &(o)->count, .min = 1, .max = 1e15 }, \
	{ "expect-file", 0, .text = &(o)->expect_file }, \
	{ "idle", 0, .d = &(o)->idle_s, .min = 0, .max = 86400 }, \
	{ "timeout", 0, .d = &(o)->timeout_s, .min = 0.1, .max = 86400 }, \
	{ "ready-file", 0, .text = &(o)->ready_file }, \
	{ "warm-marker", 0, .text = &(o)->warm_marker }, \
	{ "warm-file", 0, .text = &(o)->warm_file }, \
	{ "warm-count", 0, .u64 = &(o)->warm_count, .min = 1, .max = 1e12 }, \
	{ "max-samples", 0, .ul = &(o)->max_samples, .min = 0, .max = 1e9 }, \
	{ "samples-file", 0, .text = &(o)->samples_file }, \
	{ .name = NULL } }

/* The defaults: no count, no idle stop, --timeout 600, --warm-count 1,
 * BENCH_SAMPLES_DEFAULT samples. */
void bench_tally_opts_init(struct bench_tally_opts *o);

/* Ages in microseconds, grown up to --max-samples. */
struct bench_samples {
	uint32_t *us;
	size_t n, cap;
};

/* What has arrived, from bench_tally_start() on. */
struct bench_tally {
	const struct bench_tally_opts *opt;	/* borrowed */
	uint64_t received;		/* counted: not warm-up */
	uint64_t no_ts;			/* counted without a publish time */
	uint64_t warm;			/* warm-up messages seen */
	uint64_t bytes;			/* payload bytes of the counted */
	uint64_t expected;		/* 0 until known */
	int64_t start_ns;		/* CLOCK_MONOTONIC: --timeout from here */
	int64_t next_expect_poll_ns;
	int64_t first_ns, last_ns;	/* CLOCK_MONOTONIC of arrivals */
	int64_t first_ts_us;		/* earliest publish time seen */
	int64_t last_rt_us;		/* CLOCK_REALTIME of the latest arrival */
	struct bench_samples age;	/* publish -> arrival */
	/* Split at a time stamped on the way (bench_tally_add_split): publish
	 * -> stamp, and stamp -> arrival.  Empty without stamps. */
	struct bench_samples to_stamp, from_stamp;
};

/* Clear @t and start its clock; it borrows @o until bench_tally_free().
 * The expected count is --count, if given. */
void bench_tally_start(struct bench_tally *t, const struct bench_tally_opts *o);

/* Count one message that arrived just now.  @payload may be NULL (then
 * @len is 0).  A warm-up message is only counted as such, and creates
 * --warm-file when it is the --warm-count'th. */
void bench_tally_add(struct bench_tally *t, const void *payload, size_t len);

/* The same, for a message stamped on its way at @stamp_us (microseconds
 * since the epoch; a Kafka record's timestamp, which iotrouter sets to the
 * time its input received the message): its age is also split there.
 * A negative @stamp_us is no stamp. */
void bench_tally_add_split(struct bench_tally *t, const void *payload,
			   size_t len, int64_t stamp_us);

/* The same, for a message that arrived at @arrived_us (microseconds since
 * the epoch; a record's append time in the broker's log, read back later)
 * rather than just now; a negative @arrived_us is now.  The elapsed time
 * of the report ends at the latest arrival. */
void bench_tally_add_at(struct bench_tally *t, const void *payload,
			size_t len, int64_t stamp_us, int64_t arrived_us);

enum bench_tally_state {
	BENCH_RUNNING,		/* go on receiving */
	BENCH_COMPLETE,		/* the expected count arrived */
	BENCH_IDLE,		/* nothing for --idle seconds */
	BENCH_TIMED_OUT		/* --timeout passed; said on stderr */
};

/* Whether to stop at monotonic time @now; re-reads --expect-file every
 * BENCH_EXPECT_POLL_MS until it holds the count.  @what names the
 * messages in the time-out message ("messages", "records"). */
enum bench_tally_state bench_tally_check(struct bench_tally *t, int64_t now,
					 const char *what);

/* Print the result line on stdout:
 *   received=N elapsed_s=S rate=R p50_us=A p99_us=B max_us=C no_ts=K
 *   bytes_avg=P cpu_s=U maxrss_kb=M complete=0|1
 * and, when messages were stamped on the way, after complete:
 *   to_stamp_p50_us=A to_stamp_p99_us=B from_stamp_p50_us=C
 *   from_stamp_p99_us=D
 * Sorts the samples. */
void bench_tally_report(struct bench_tally *t, bool complete);

void bench_tally_free(struct bench_tally *t);

/* The publish time in a JSON payload, microseconds since the epoch: the
 * number after the first "ts" key (iotrouter-sim, bench-kafka-produce) or
 * "t" key (their --compact form); -1 without one.  A scan, not a JSON
 * parser: the payloads are the simulator's, and the cost must stay far
 * below the broker's. */
int64_t bench_payload_ts(const void *payload, size_t len);

/* The count in @path (a number and a newline), or 0 while the file is
 * missing or not completely written. */
uint64_t bench_read_expected(const char *path);

#endif
