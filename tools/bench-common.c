/*
 * bench-common - the pieces scripts/bench's measuring tools share; see
 * bench-common.h.  One thread per tool calls in; bench_stop is the only
 * state a signal handler touches.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench-common.h"

volatile sig_atomic_t bench_stop;

/* ---- time, signals, resources ------------------------------------------ */

int64_t bench_now_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void bench_on_signal(int signo)
{
	(void)signo;
	bench_stop = 1;
}

void bench_catch_signals(bool ignore_sigpipe)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = bench_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (ignore_sigpipe) {
		sa.sa_handler = SIG_IGN;
		sigaction(SIGPIPE, &sa, NULL);
	}
}

double bench_cpu_s(long *maxrss_kb)
{
	struct rusage ru;

	*maxrss_kb = 0;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	*maxrss_kb = ru.ru_maxrss;
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

void bench_touch(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f || fclose(f) != 0)
		fprintf(stderr, "%s: cannot create %s: %s\n", bench_name, path,
			strerror(errno));
}

/* ---- command line ------------------------------------------------------- */

void bench_die_usage(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", bench_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help'.\n", bench_name);
	exit(2);
}

static void bench_parse_value(const struct bench_option *opt, const char *arg)
{
	char name[64];
	char *end;
	double v;

	if (opt->flag) {
		*opt->flag = true;
		return;
	}
	if (opt->text) {
		*opt->text = arg;
		return;
	}
	if (opt->take) {
		opt->take(opt->ctx, arg);
		return;
	}
	errno = 0;
	v = strtod(arg, &end);
	if (arg[0] == '\0' || *end != '\0' || errno || v < opt->min || v > opt->max) {
		snprintf(name, sizeof(name), "--%s", opt->name);
		bench_die_usage("bad value for %s", name);
	}
	if (opt->i)
		*opt->i = (int)v;
	else if (opt->ul)
		*opt->ul = (unsigned long)v;
	else if (opt->u64)
		*opt->u64 = (uint64_t)v;
	else
		*opt->d = v;
}

static size_t bench_count_options(const struct bench_option *opts)
{
	size_t n = 0;

	while (opts && opts[n].name)
		n++;
	return n;
}

/* Row @k of @opts (@nopts rows) followed by @more. */
static const struct bench_option *bench_row(const struct bench_option *opts,
					    size_t nopts,
					    const struct bench_option *more,
					    size_t k)
{
	return k < nopts ? &opts[k] : &more[k - nopts];
}

void bench_parse_options(int argc, char **argv, const struct bench_option *opts,
			 const struct bench_option *more, void (*usage)(FILE *))
{
	/* getopt_long() answers a long-only option with its row's number
	 * above any letter, --help with the number past the last row. */
	enum { FIRST_ROW = 256 };
	size_t nopts = bench_count_options(opts);
	size_t n = nopts + bench_count_options(more);
	struct option *longopts = calloc(n + 2, sizeof(*longopts));
	char *shortopts = malloc(2 * n + 2);
	size_t ns = 0;
	int ch;

	if (!longopts || !shortopts) {
		fprintf(stderr, "%s: out of memory\n", bench_name);
		exit(1);
	}
	shortopts[ns++] = ':';		/* we word the messages, not getopt */
	for (size_t k = 0; k < n; k++) {
		const struct bench_option *opt = bench_row(opts, nopts, more, k);

		longopts[k] = (struct option){
			opt->name, opt->flag ? no_argument : required_argument,
			NULL, opt->letter ? opt->letter : FIRST_ROW + (int)k };
		if (opt->letter) {
			shortopts[ns++] = (char)opt->letter;
			if (!opt->flag)
				shortopts[ns++] = ':';
		}
	}
	shortopts[ns] = '\0';
	longopts[n] = (struct option){ "help", no_argument, NULL, FIRST_ROW + (int)n };

	while ((ch = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		size_t k = 0;

		if (ch == FIRST_ROW + (int)n) {
			usage(stdout);
			exit(0);
		}
		if (ch >= FIRST_ROW) {
			k = (size_t)(ch - FIRST_ROW);
		} else {
			while (k < n && longopts[k].val != ch)
				k++;
		}
		if (k == n && ch == ':')
			bench_die_usage("%s needs a value", argv[optind - 1]);
		if (k == n)
			bench_die_usage("unknown option %s", argv[optind - 1]);
		bench_parse_value(bench_row(opts, nopts, more, k), optarg);
	}
	if (optind < argc)
		bench_die_usage("unexpected argument '%s'", argv[optind]);
	free(longopts);
	free(shortopts);
}

/* ---- the counting end ---------------------------------------------------- */

void bench_tally_opts_init(struct bench_tally_opts *o)
{
	*o = (struct bench_tally_opts){
		.warm_count = 1,
		.timeout_s = 600,
		.max_samples = BENCH_SAMPLES_DEFAULT,
	};
}

void bench_tally_start(struct bench_tally *t, const struct bench_tally_opts *o)
{
	*t = (struct bench_tally){
		.opt = o,
		.expected = o->count,
		.start_ns = bench_now_ns(CLOCK_MONOTONIC),
	};
}

static void bench_samples_add(struct bench_samples *s, size_t max,
			      int64_t age_us)
{
	if (s->n == s->cap && s->cap < max) {
		size_t cap = s->cap ? s->cap * 2 : 65536;
		uint32_t *p;

		if (cap > max)
			cap = max;
		p = realloc(s->us, cap * sizeof(*p));
		if (p) {
			s->us = p;
			s->cap = cap;
		}
	}
	/* Past the limit (or out of memory) the message is still counted,
	 * only its age is not kept. */
	if (s->n < s->cap) {
		if (age_us < 0)
			age_us = 0;
		if (age_us > UINT32_MAX)
			age_us = UINT32_MAX;
		s->us[s->n++] = (uint32_t)age_us;
	}
}

static void bench_samples_free(struct bench_samples *s)
{
	free(s->us);
	*s = (struct bench_samples){ 0 };
}

void bench_tally_add(struct bench_tally *t, const void *payload, size_t len)
{
	bench_tally_add_split(t, payload, len, -1);
}

void bench_tally_add_split(struct bench_tally *t, const void *payload,
			   size_t len, int64_t stamp_us)
{
	bench_tally_add_at(t, payload, len, stamp_us, -1);
}

void bench_tally_add_at(struct bench_tally *t, const void *payload,
			size_t len, int64_t stamp_us, int64_t arrived_us)
{
	const struct bench_tally_opts *o = t->opt;
	int64_t now = bench_now_ns(CLOCK_MONOTONIC);
	int64_t now_rt = arrived_us >= 0 ? arrived_us :
		bench_now_ns(CLOCK_REALTIME) / 1000;
	int64_t ts;

	if (o->warm_marker && payload &&
	    memmem(payload, len, o->warm_marker, strlen(o->warm_marker))) {
		if (++t->warm == o->warm_count && o->warm_file)
			bench_touch(o->warm_file);
		return;
	}
	ts = bench_payload_ts(payload, len);
	t->bytes += len;
	if (t->received++ == 0)
		t->first_ns = now;
	t->last_ns = now;
	if (now_rt > t->last_rt_us)
		t->last_rt_us = now_rt;
	if (ts < 0) {
		t->no_ts++;
		return;
	}
	if (t->first_ts_us == 0 || ts < t->first_ts_us)
		t->first_ts_us = ts;
	bench_samples_add(&t->age, o->max_samples, now_rt - ts);
	if (stamp_us >= 0) {
		bench_samples_add(&t->to_stamp, o->max_samples, stamp_us - ts);
		bench_samples_add(&t->from_stamp, o->max_samples,
				  now_rt - stamp_us);
	}
}

enum bench_tally_state bench_tally_check(struct bench_tally *t, int64_t now,
					 const char *what)
{
	const struct bench_tally_opts *o = t->opt;

	if (o->expect_file && !t->expected && now >= t->next_expect_poll_ns) {
		t->expected = bench_read_expected(o->expect_file);
		t->next_expect_poll_ns = now + BENCH_EXPECT_POLL_MS * 1000000LL;
	}
	if (t->expected && t->received >= t->expected)
		return BENCH_COMPLETE;
	if (o->idle_s > 0 && t->received > 0 &&
	    (double)(now - t->last_ns) / 1e9 >= o->idle_s)
		return BENCH_IDLE;
	if ((double)(now - t->start_ns) / 1e9 >= o->timeout_s) {
		fprintf(stderr, "%s: timed out after %.0f s with %" PRIu64 " %s%s\n",
			bench_name, o->timeout_s, t->received, what,
			t->expected ? "" : " (expected count unknown)");
		return BENCH_TIMED_OUT;
	}
	return BENCH_RUNNING;
}

static int bench_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static void bench_samples_sort(struct bench_samples *s)
{
	if (s->n)
		qsort(s->us, s->n, sizeof(*s->us), bench_cmp_u32);
}

/* The p-th percentile (nearest rank) of sorted v[0..n-1]. */
static uint32_t bench_percentile(const uint32_t *v, size_t n, double p)
{
	size_t rank;

	if (n == 0)
		return 0;
	rank = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return v[rank - 1];
}

void bench_tally_report(struct bench_tally *t, bool complete)
{
	double elapsed, cpu;
	long maxrss;

	cpu = bench_cpu_s(&maxrss);
	if (t->opt->samples_file) {
		/* in arrival order, before the sort: when the slow ones came */
		FILE *f = fopen(t->opt->samples_file, "w");
		size_t i;

		if (!f) {
			fprintf(stderr, "%s: %s: %s\n", bench_name,
				t->opt->samples_file, strerror(errno));
		} else {
			for (i = 0; i < t->age.n; i++)
				fprintf(f, "%" PRIu32 "\n", t->age.us[i]);
			if (fclose(f) != 0)
				fprintf(stderr, "%s: %s: %s\n", bench_name,
					t->opt->samples_file, strerror(errno));
		}
	}
	/* From the first publish to the last arrival: what the whole path
	 * sustained, a slow start included. */
	if (t->first_ts_us > 0 && t->last_rt_us > t->first_ts_us)
		elapsed = (double)(t->last_rt_us - t->first_ts_us) / 1e6;
	else
		elapsed = (double)(t->last_ns - t->first_ns) / 1e9;
	bench_samples_sort(&t->age);
	printf("received=%" PRIu64 " elapsed_s=%.3f rate=%.1f p50_us=%" PRIu32
	       " p99_us=%" PRIu32 " max_us=%" PRIu32 " no_ts=%" PRIu64
	       " bytes_avg=%.0f cpu_s=%.3f maxrss_kb=%ld complete=%d",
	       t->received, elapsed,
	       elapsed > 0 ? (double)t->received / elapsed : 0.0,
	       bench_percentile(t->age.us, t->age.n, 50),
	       bench_percentile(t->age.us, t->age.n, 99),
	       t->age.n ? t->age.us[t->age.n - 1] : 0, t->no_ts,
	       t->received ? (double)t->bytes / (double)t->received : 0.0, cpu,
	       maxrss, complete ? 1 : 0);
	if (t->to_stamp.n) {
		bench_samples_sort(&t->to_stamp);
		bench_samples_sort(&t->from_stamp);
		printf(" to_stamp_p50_us=%" PRIu32 " to_stamp_p99_us=%" PRIu32
		       " from_stamp_p50_us=%" PRIu32
		       " from_stamp_p99_us=%" PRIu32,
		       bench_percentile(t->to_stamp.us, t->to_stamp.n, 50),
		       bench_percentile(t->to_stamp.us, t->to_stamp.n, 99),
		       bench_percentile(t->from_stamp.us, t->from_stamp.n, 50),
		       bench_percentile(t->from_stamp.us, t->from_stamp.n, 99));
	}
	putchar('\n');
	fflush(stdout);
}

void bench_tally_free(struct bench_tally *t)
{
	bench_samples_free(&t->age);
	bench_samples_free(&t->to_stamp);
	bench_samples_free(&t->from_stamp);
}

int64_t bench_payload_ts(const void *payload, size_t len)
{
	const char *p = payload;
	const char *end = p + len;

	if (!payload)
		return -1;
	/* At each '"t': only a key "ts" or "t" goes on with '"' and ':'
	 * (a value such as "temperature" does not, and a quote inside a
	 * string is escaped). */
	while ((p = memmem(p, (size_t)(end - p), "\"t", 2)) != NULL) {
		int64_t v = 0;

		p += 2;
		if (p < end && *p == 's')
			p++;
		if (end - p < 2 || p[0] != '"' || p[1] != ':')
			continue;
		p += 2;
		if (p >= end || *p < '0' || *p > '9')
			return -1;
		while (p < end && *p >= '0' && *p <= '9')
			v = v * 10 + (*p++ - '0');
		return v;
	}
	return -1;
}

uint64_t bench_read_expected(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long long n = 0;
	char nl = 0;

	if (!f)
		return 0;
	/* The writer ends the line last; without the newline it is not done. */
	if (fscanf(f, "%llu%c", &n, &nl) != 2 || nl != '\n')
		n = 0;
	fclose(f);
	return n;
}
