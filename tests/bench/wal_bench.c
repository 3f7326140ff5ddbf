/*
 * wal_bench.c - append throughput of the write-ahead log, beside the bare
 * path in the same run (one pwrite(2) per record of the same size to a plain
 * file; in fdatasync mode also an fdatasync(2) every 1000 records), for
 * 64-byte and 1 KiB payloads, in both sync modes, with one and with two
 * appender threads, without and with a thread releasing every record as
 * delivery reports would.  Cases are interleaved and repeated, and the
 * median is reported, because a shared machine is noisy.  Not run by make
 * check:
 *
 *   cc -O2 -I. -Irouter tests/bench/wal_bench.c router/wal.c -pthread -o wal_bench
 *   ./wal_bench DIR [SECONDS_PER_CASE]     (default 1; 5 rounds each)
 *
 * DIR should be on the disk the router's log would use (not tmpfs).
 */
#include "config.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "wal.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct run {
	struct wal *w;
	size_t size;
	double until;
	int release;
	atomic_uint_fast64_t appended;
	atomic_uint_fast64_t last_released;
	atomic_int done;
	int failed;
};

static void *appender(void *arg)
{
	struct run *r = arg;
	char *buf = malloc(r->size);
	uint64_t id, n = 0;
	int rc;

	memset(buf, 'p', r->size);
	while (!(n & 255) ? now_s() < r->until : 1) {
		rc = wal_append(r->w, buf, r->size, &id);
		if (rc == WAL_EFULL) {
			usleep(100);
			continue;
		}
		if (rc != IOTR_OK) {
			r->failed = 1;
			break;
		}
		n++;
		atomic_fetch_add(&r->appended, 1);
	}
	free(buf);
	return NULL;
}

/* Releases ids in order as they appear, like delivery reports. */
static void *releaser(void *arg)
{
	struct run *r = arg;
	uint64_t next = wal_last_id(r->w) + 1, last;

	while (!atomic_load(&r->done)) {
		last = wal_last_id(r->w);
		for (; next <= last; next++)
			wal_release(r->w, next);
		usleep(50);
	}
	last = wal_last_id(r->w);
	for (; next <= last; next++)
		wal_release(r->w, next);
	return NULL;
}

static void rm_dir(const char *dir)
{
	char cmd[1200];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "wal_bench: could not remove %s\n", dir);
}

static double bench_wal(const char *base, int mode, size_t size, int threads,
                        int release, double seconds)
{
	struct wal_options o = { .sync = mode, .max_bytes = (uint64_t)4 << 30 };
	pthread_t t[8], rel;
	char dir[1024], err[512];
	struct run r;
	double t0, el;
	int i;

	snprintf(dir, sizeof(dir), "%s/wal-bench", base);
	rm_dir(dir);
	o.dir = dir;
	memset(&r, 0, sizeof(r));
	if (wal_open(&r.w, &o, NULL, err, sizeof(err)) != IOTR_OK) {
		fprintf(stderr, "wal_bench: %s\n", err);
		exit(1);
	}
	r.size = size;
	r.release = release;
	t0 = now_s();
	r.until = t0 + seconds;
	if (release)
		pthread_create(&rel, NULL, releaser, &r);
	for (i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, appender, &r);
	for (i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	el = now_s() - t0;
	atomic_store(&r.done, 1);
	if (release)
		pthread_join(rel, NULL);
	if (r.failed)
		fprintf(stderr, "wal_bench: an append failed: %s\n",
		        wal_error(r.w, err, sizeof(err)));
	wal_close(r.w);
	rm_dir(dir);
	return (double)atomic_load(&r.appended) / el;
}

/* The bare path: one pwrite(2) of the same bytes per record. */
static double bench_bare(const char *base, int mode, size_t size, double seconds)
{
	char path[1024], *buf = malloc(size + 28);
	double t0 = now_s(), until = t0 + seconds;
	uint64_t n = 0;
	off_t off = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/bare-bench", base);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	memset(buf, 'p', size + 28);
	while ((n & 255) || now_s() < until) {
		if (pwrite(fd, buf, size + 28, off) != (ssize_t)(size + 28)) {
			perror("pwrite");
			exit(1);
		}
		off += (off_t)(size + 28);
		n++;
		if (mode && n % 1000 == 0 && fdatasync(fd) < 0) {
			perror("fdatasync");
			exit(1);
		}
		if (off > ((off_t)1 << 30)) {
			off = 0;
			if (ftruncate(fd, 0) < 0)
				exit(1);
		}
	}
	close(fd);
	unlink(path);
	free(buf);
	return (double)n / (now_s() - t0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define ROUNDS 5
#define CASES 5     /* bare, then 1 and 2 threads, without and with releases */

int main(int argc, char **argv)
{
	static const size_t sizes[] = { 64, 1024 };
	static const int modes[] = { WAL_SYNC_WRITE, WAL_SYNC_FDATASYNC };
	static const char *names[CASES] = { "bare", "1", "1", "2", "2" };
	double secs = argc > 2 ? atof(argv[2]) : 1.0, v[CASES][ROUNDS], med[CASES];
	int m, s, c, k;

	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR [SECONDS_PER_CASE]\n", argv[0]);
		return 2;
	}
	printf("median of %d rounds of %.1fs, cases interleaved, sync(2) before each\n",
	       ROUNDS, secs);
	printf("%-10s %6s %8s %8s %12s %9s %9s\n", "sync", "bytes", "threads",
	       "release", "records/s", "MB/s", "vs bare");
	for (m = 0; m < 2; m++) {
		for (s = 0; s < 2; s++) {
			for (k = 0; k < ROUNDS; k++) {
				for (c = 0; c < CASES; c++) {
					sync();
					v[c][k] = c == 0 ?
						bench_bare(argv[1], m, sizes[s], secs) :
						bench_wal(argv[1], modes[m], sizes[s],
						          c < 3 ? 1 : 2, !(c & 1), secs);
				}
			}
			for (c = 0; c < CASES; c++) {
				qsort(v[c], ROUNDS, sizeof(double), cmp_double);
				med[c] = v[c][ROUNDS / 2];
				printf("%-10s %6zu %8s %8s %12.0f %9.1f %9.2f\n",
				       m ? "fdatasync" : "write", sizes[s], names[c],
				       c == 0 ? "-" : (c & 1) ? "no" : "yes", med[c],
				       med[c] * (double)sizes[s] / 1e6, med[c] / med[0]);
			}
			fflush(stdout);
		}
	}
	return 0;
}
