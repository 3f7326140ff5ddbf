/*
 * test_wal.c - the write-ahead log as the router relies on it: records
 * survive a reopen and a kill -9, released records are not replayed, damage
 * is cut or skipped and reported, released segments go, the cap holds.
 * Most tests are single-threaded; test_concurrent runs threads and the
 * crash tests fork a child that is killed with SIGKILL.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "wal.h"

/* --- helpers -------------------------------------------------------------- */

static char top[512];      /* a temporary directory per test */
static char dir[600];      /* the log's directory, inside it (not created) */
static char err[1024];

static void setup(void)
{
	const char *t = getenv("TMPDIR");

	snprintf(top, sizeof(top), "%s/test_wal.XXXXXX", t && *t ? t : "/tmp");
	ck_assert_msg(mkdtemp(top) != NULL, "mkdtemp: %s", strerror(errno));
	snprintf(dir, sizeof(dir), "%s/spool/wal", top);
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *f)
{
	(void)st; (void)flag; (void)f;
	return remove(path);
}

static void teardown(void)
{
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static struct wal *open_wal(uint64_t seg, uint64_t max, int sync,
                            struct wal_open_report *rep)
{
	struct wal_options o = { .dir = dir, .segment_bytes = seg,
	                         .max_bytes = max, .sync = sync,
	                         .sync_interval_ms = 20, .sync_every = 16 };
	struct wal *w = NULL;
	int rc = wal_open(&w, &o, rep, err, sizeof(err));

	ck_assert_msg(rc == IOTR_OK, "wal_open(%s) = %d: %s", dir, rc, err);
	ck_assert_ptr_nonnull(w);
	return w;
}

/* A payload that names its record: "<tag>-<n>-" then padding to len. */
static size_t make_payload(char *buf, size_t len, const char *tag, int n)
{
	int k = snprintf(buf, len + 1, "%s-%d-", tag, n);

	if ((size_t)k < len)
		memset(buf + k, 'x', len - (size_t)k);
	return len;
}

static uint64_t append_ok(struct wal *w, const void *data, size_t len)
{
	uint64_t id = 0;
	int rc = wal_append(w, data, len, &id);

	ck_assert_msg(rc == IOTR_OK, "wal_append(%zu bytes) = %d: %s", len, rc,
	              wal_error(w, err, sizeof(err)));
	return id;
}

static uint64_t append_tagged(struct wal *w, const char *tag, int n,
                              size_t len)
{
	char buf[4096];

	return append_ok(w, buf, make_payload(buf, len, tag, n));
}

struct got {
	size_t n, cap;
	uint64_t *ids;
	char **data;
	size_t *lens;
};

/* Everything a new reader returns now, from from_id. */
static void read_all(struct wal *w, uint64_t from_id, struct got *g)
{
	struct wal_reader *r = wal_reader_open(w, from_id);
	uint64_t id;
	void *data;
	size_t len;
	int rc;

	memset(g, 0, sizeof(*g));
	ck_assert_ptr_nonnull(r);
	while ((rc = wal_reader_next(r, &id, &data, &len)) == 1) {
		if (g->n == g->cap) {
			g->cap = g->cap ? g->cap * 2 : 64;
			g->ids = realloc(g->ids, g->cap * sizeof(*g->ids));
			g->data = realloc(g->data, g->cap * sizeof(*g->data));
			g->lens = realloc(g->lens, g->cap * sizeof(*g->lens));
		}
		g->ids[g->n] = id;
		g->data[g->n] = data;
		g->lens[g->n] = len;
		g->n++;
	}
	ck_assert_msg(rc == 0, "wal_reader_next = %d", rc);
	wal_reader_close(r);
}

static void got_free(struct got *g)
{
	size_t i;

	for (i = 0; i < g->n; i++)
		free(g->data[i]);
	free(g->ids);
	free(g->data);
	free(g->lens);
}

static int count_segments(void)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	size_t l;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		l = strlen(de->d_name);
		if (l > 4 && strcmp(de->d_name + l - 4, ".wal") == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* Path of the segment file with the highest name. */
static void newest_segment(char *path, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char best[256] = "";
	size_t l;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		l = strlen(de->d_name);
		if (l > 4 && strcmp(de->d_name + l - 4, ".wal") == 0 &&
		    strcmp(de->d_name, best) > 0)
			snprintf(best, sizeof(best), "%s", de->d_name);
	}
	closedir(d);
	ck_assert_msg(best[0], "no segment in %s", dir);
	snprintf(path, len, "%s/%s", dir, best);
}

static off_t file_size(const char *path)
{
	struct stat st;

	ck_assert_msg(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
	return st.st_size;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;

	ck_assert_ptr_nonnull(f);
	*len = (size_t)file_size(path);
	buf = malloc(*len + 1);
	ck_assert_uint_eq(fread(buf, 1, *len, f), *len);
	fclose(f);
	return buf;
}

static void write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* --- tests ---------------------------------------------------------------- */

/* What was appended comes back, byte for byte and in order, after a reopen;
 * in both sync modes, with sizes from empty to a few KiB. */
START_TEST(test_append_replay_across_reopen)
{
	static const int modes[] = { WAL_SYNC_WRITE, WAL_SYNC_FDATASYNC };
	struct wal_open_report rep;
	uint64_t ids[200], id;
	char buf[4096];
	struct got g;
	struct wal *w;
	size_t len;
	int m, i;

	for (m = 0; m < 2; m++) {
		w = open_wal(0, 0, modes[m], &rep);
		ck_assert_uint_eq(rep.records_live, 0);
		for (i = 0; i < 200; i++)
			ids[i] = append_tagged(w, "r", i, (size_t)(i * 17) % 3000);
		for (i = 1; i < 200; i++)
			ck_assert_uint_gt(ids[i], ids[i - 1]);
		ck_assert_uint_eq(wal_live_records(w), 200);
		wal_close(w);

		w = open_wal(0, 0, modes[m], &rep);
		ck_assert_uint_eq(rep.records_live, 200);
		ck_assert_uint_eq(rep.bytes_truncated, 0);
		ck_assert_uint_eq(rep.corrupt_regions, 0);
		ck_assert_uint_eq(rep.last_id, ids[199]);
		read_all(w, 0, &g);
		ck_assert_uint_eq(g.n, 200);
		for (i = 0; i < 200; i++) {
			len = make_payload(buf, (size_t)(i * 17) % 3000, "r", i);
			ck_assert_uint_eq(g.ids[i], ids[i]);
			ck_assert_uint_eq(g.lens[i], len);
			ck_assert(memcmp(g.data[i], buf, len) == 0);
		}
		got_free(&g);
		id = append_ok(w, "", 0);
		ck_assert_uint_gt(id, ids[199]);
		wal_close(w);

		/* the next mode starts from an empty directory */
		teardown();
		setup();
	}
}
END_TEST

/* Released records are not replayed after a clean close; releasing twice or
 * an unknown id does nothing. */
START_TEST(test_release_then_reopen_not_replayed)
{
	struct wal_open_report rep;
	uint64_t ids[10];
	struct got g;
	struct wal *w;
	int i;

	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	for (i = 0; i < 10; i++)
		ids[i] = append_tagged(w, "k", i, 40);
	for (i = 1; i < 10; i += 2)
		wal_release(w, ids[i]);
	wal_release(w, ids[3]);
	wal_release(w, ids[9] + 1000);
	ck_assert_uint_eq(wal_live_records(w), 5);
	wal_close(w);

	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 5);
	ck_assert_uint_eq(rep.records_released, 5);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 5);
	for (i = 0; i < 5; i++)
		ck_assert_uint_eq(g.ids[i], ids[2 * i]);
	got_free(&g);
	wal_close(w);
}
END_TEST

/* The log rolls to new files, and a file goes once it and every older one
 * hold nothing live: not before. */
START_TEST(test_segment_roll_and_deletion)
{
	struct wal_open_report rep;
	uint64_t ids[40], before;
	struct got g;
	struct wal *w;
	int i, segs;

	w = open_wal(1024, 1 << 20, WAL_SYNC_WRITE, NULL);
	for (i = 0; i < 40; i++)
		ids[i] = append_tagged(w, "s", i, 100);
	segs = count_segments();
	ck_assert_int_ge(segs, 4);

	for (i = 1; i < 40; i++)
		wal_release(w, ids[i]);
	ck_assert_int_eq(count_segments(), segs);   /* the oldest holds ids[0] */
	before = wal_bytes(w);

	wal_release(w, ids[0]);
	ck_assert_int_eq(count_segments(), 1);
	ck_assert_uint_lt(wal_bytes(w), before);
	ck_assert_uint_eq(wal_live_records(w), 0);
	wal_close(w);

	w = open_wal(1024, 1 << 20, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 0);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 0);
	got_free(&g);
	ck_assert_uint_gt(append_tagged(w, "s", 41, 10), ids[39]);
	wal_close(w);
}
END_TEST

/* The disk cap: WAL_EFULL, nothing written; room again once released. */
START_TEST(test_disk_cap_full)
{
	struct wal_open_report rep;
	uint64_t ids[100], id, bytes;
	char buf[200];
	struct wal *w;
	int n = 0, rc;

	w = open_wal(1024, 4096, WAL_SYNC_WRITE, NULL);
	make_payload(buf, 100, "f", 0);
	for (;;) {
		ck_assert_int_lt(n, 100);
		rc = wal_append(w, buf, 100, &id);
		if (rc == WAL_EFULL)
			break;
		ck_assert_int_eq(rc, IOTR_OK);
		ids[n++] = id;
	}
	ck_assert_int_gt(n, 20);
	ck_assert_uint_le(wal_bytes(w), 4096);
	bytes = wal_bytes(w);
	ck_assert_int_eq(wal_append(w, buf, 100, &id), WAL_EFULL);
	ck_assert_uint_eq(wal_bytes(w), bytes);
	ck_assert_uint_eq(wal_live_records(w), (uint64_t)n);

	/* a record that could never fit is refused as such */
	{
		char *big = calloc(1, 5000);

		ck_assert_int_eq(wal_append(w, big, 5000, &id), IOTR_EINVAL);
		free(big);
	}

	while (n > 0)
		wal_release(w, ids[--n]);
	id = append_tagged(w, "f", 1, 100);
	ck_assert_uint_le(wal_bytes(w), 4096);
	wal_close(w);

	w = open_wal(1024, 4096, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 1);
	wal_close(w);
}
END_TEST

/* drop_oldest discards the oldest file and says how many live records went;
 * the rest is replayed. */
START_TEST(test_drop_oldest_counts)
{
	struct wal_open_report rep;
	uint64_t ids[40], dropped, first, i;
	struct got g;
	struct wal *w;
	int k, segs;

	w = open_wal(1024, 1 << 20, WAL_SYNC_WRITE, NULL);
	for (k = 0; k < 40; k++)
		ids[k] = append_tagged(w, "d", k, 100);
	wal_release(w, ids[0]);
	wal_release(w, ids[1]);
	segs = count_segments();

	dropped = wal_drop_oldest(w);
	ck_assert_int_eq(count_segments(), segs - 1);
	read_all(w, 0, &g);
	ck_assert_uint_gt(g.n, 0);
	first = g.ids[0];
	/* ids are dense: the oldest file held ids[0] .. first-1, two released */
	ck_assert_uint_eq(dropped, first - ids[0] - 2);
	ck_assert_uint_eq(g.n, 40 - 2 - dropped);
	for (i = 0; i < g.n; i++)
		ck_assert_uint_eq(g.ids[i], first + i);
	ck_assert_uint_eq(wal_live_records(w), g.n);
	got_free(&g);
	wal_close(w);

	w = open_wal(1024, 1 << 20, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 40 - 2 - dropped);
	wal_close(w);

	/* with a single file: it is emptied, and ids go on */
	teardown();
	setup();
	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	for (k = 0; k < 5; k++)
		ids[k] = append_tagged(w, "e", k, 10);
	ck_assert_uint_eq(wal_drop_oldest(w), 5);
	ck_assert_uint_eq(wal_live_records(w), 0);
	ck_assert_uint_gt(append_tagged(w, "e", 5, 10), ids[4]);
	wal_close(w);
	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 1);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 1);
	ck_assert(memcmp(g.data[0], "e-5-", 4) == 0);
	got_free(&g);
	wal_close(w);
}
END_TEST

/* A torn tail (the last record cut short, then garbage) is truncated and
 * reported; every earlier record is intact; ids never go back. */
START_TEST(test_torn_tail_truncated)
{
	static const unsigned char junk[37] = { 0xee, 0x01, 0x00, 0x7f, 0x13 };
	struct wal_open_report rep;
	char path[1024], buf[64];
	off_t s9, s10;
	uint64_t id10;
	struct got g;
	struct wal *w;
	FILE *f;
	int i;

	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	for (i = 0; i < 9; i++)
		append_tagged(w, "t", i, 50);
	wal_close(w);
	newest_segment(path, sizeof(path));
	s9 = file_size(path);

	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	id10 = append_tagged(w, "t", 9, 50);
	wal_close(w);
	s10 = file_size(path);

	ck_assert_int_eq(truncate(path, s10 - 5), 0);
	f = fopen(path, "ab");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
	fclose(f);

	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.bytes_truncated, (uint64_t)(s10 - 5 - s9) + sizeof(junk));
	ck_assert_uint_eq(rep.corrupt_regions, 0);
	ck_assert_uint_eq(rep.bytes_skipped, 0);
	ck_assert_uint_eq(rep.records_live, 9);
	ck_assert_int_eq(file_size(path), s9);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 9);
	for (i = 0; i < 9; i++) {
		make_payload(buf, 50, "t", i);
		ck_assert_uint_eq(g.lens[i], 50);
		ck_assert(memcmp(g.data[i], buf, 50) == 0);
	}
	got_free(&g);
	ck_assert_uint_gt(append_tagged(w, "t", 10, 50), id10);
	wal_close(w);

	/* and the file is whole again */
	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.bytes_truncated, 0);
	ck_assert_uint_eq(rep.records_live, 10);
	wal_close(w);
}
END_TEST

/* Damage in the middle (in a payload, or in a header) costs that record:
 * skipped, reported, and every later record is delivered. */
static void corrupt_middle(int in_header)
{
	struct wal_open_report rep;
	uint64_t off[11], ids[10];
	char path[1024], buf[128], *file, *p;
	struct got g;
	struct wal *w;
	size_t flen;
	int i, k;

	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	for (i = 0; i < 10; i++) {
		off[i] = wal_bytes(w);
		ids[i] = append_tagged(w, "m", i, 100);
	}
	off[10] = wal_bytes(w);
	wal_close(w);

	newest_segment(path, sizeof(path));
	file = read_file(path, &flen);
	ck_assert_uint_eq(flen, off[10]);
	if (in_header) {
		file[off[4]] ^= 0x5a;
	} else {
		make_payload(buf, 100, "m", 4);
		p = memmem(file + off[4], off[5] - off[4], buf, 100);
		ck_assert_ptr_nonnull(p);
		p[50] ^= 0x01;
	}
	write_file(path, file, flen);
	free(file);

	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.corrupt_regions, 1);
	ck_assert_uint_eq(rep.bytes_skipped, off[5] - off[4]);
	ck_assert_uint_eq(rep.bytes_truncated, 0);
	ck_assert_uint_eq(rep.records_live, 9);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 9);
	for (i = 0, k = 0; i < 10; i++) {
		if (i == 4)
			continue;
		make_payload(buf, 100, "m", i);
		ck_assert_uint_eq(g.ids[k], ids[i]);
		ck_assert(memcmp(g.data[k], buf, 100) == 0);
		k++;
	}
	got_free(&g);
	ck_assert_uint_gt(append_tagged(w, "m", 10, 100), ids[9]);
	wal_close(w);
}

START_TEST(test_corrupt_payload_skipped)
{
	corrupt_middle(0);
}
END_TEST

START_TEST(test_corrupt_header_skipped)
{
	corrupt_middle(1);
}
END_TEST

/* A reader follows appends made after it opened, across segment rolls;
 * it skips what was released before it got there; from_id is honoured. */
START_TEST(test_reader_follows_appends)
{
	struct wal_reader *r;
	uint64_t ids[40], id;
	size_t len;
	void *data;
	struct got g;
	struct wal *w;
	int i;

	w = open_wal(1024, 1 << 20, WAL_SYNC_WRITE, NULL);
	r = wal_reader_open(w, 0);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(wal_reader_next(r, &id, &data, &len), 0);

	for (i = 0; i < 3; i++)
		ids[i] = append_tagged(w, "f", i, 100);
	for (i = 0; i < 3; i++) {
		ck_assert_int_eq(wal_reader_next(r, &id, &data, &len), 1);
		ck_assert_uint_eq(id, ids[i]);
		free(data);
	}
	ck_assert_int_eq(wal_reader_next(r, &id, &data, &len), 0);

	for (i = 3; i < 40; i++)     /* several rolls */
		ids[i] = append_tagged(w, "f", i, 100);
	wal_release(w, ids[3]);
	wal_release(w, ids[20]);
	for (i = 4; i < 40; i++) {
		if (i == 20)
			continue;
		ck_assert_int_eq(wal_reader_next(r, &id, &data, &len), 1);
		ck_assert_uint_eq(id, ids[i]);
		ck_assert_uint_eq(len, 100);
		free(data);
	}
	ck_assert_int_eq(wal_reader_next(r, &id, &data, &len), 0);
	ck_assert_int_eq(count_segments() > 1, 1);
	wal_reader_close(r);

	read_all(w, ids[30], &g);
	ck_assert_uint_eq(g.n, 10);
	ck_assert_uint_eq(g.ids[0], ids[30]);
	got_free(&g);
	wal_close(w);
}
END_TEST

/* Several appender threads, a releaser and a reader at once: no id lost or
 * given twice, the reader sees each live record once and in order, and a
 * reopen finds exactly what was not released. */
#define CT_THREADS 4
#define CT_PER 1500
#define CT_TOTAL (CT_THREADS * CT_PER)

struct ct {
	struct wal *w;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t queue[CT_TOTAL];
	size_t qhead, qtail;
	int appenders_left;
	uint64_t appended[CT_TOTAL];
	size_t nappended;
	uint64_t released[CT_TOTAL];
	size_t nreleased;
	uint64_t seen[CT_TOTAL];
	size_t nseen;
	atomic_int failures;
	atomic_int stop_reader;
};

static void *ct_appender(void *arg)
{
	struct ct *c = arg;
	static atomic_int next_thread;
	int t = atomic_fetch_add(&next_thread, 1), i;
	char buf[256];
	uint64_t id;

	for (i = 0; i < CT_PER; i++) {
		make_payload(buf, 16 + (size_t)(i % 200), "c", t * CT_PER + i);
		if (wal_append(c->w, buf, 16 + (size_t)(i % 200), &id) != IOTR_OK) {
			atomic_fetch_add(&c->failures, 1);
			continue;
		}
		pthread_mutex_lock(&c->mu);
		c->appended[c->nappended++] = id;
		c->queue[c->qtail++] = id;
		pthread_cond_signal(&c->cv);
		pthread_mutex_unlock(&c->mu);
	}
	pthread_mutex_lock(&c->mu);
	c->appenders_left--;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

static void *ct_releaser(void *arg)
{
	struct ct *c = arg;
	uint64_t id;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (c->qhead == c->qtail && c->appenders_left)
			pthread_cond_wait(&c->cv, &c->mu);
		if (c->qhead == c->qtail)
			break;
		id = c->queue[c->qhead++];
		pthread_mutex_unlock(&c->mu);
		if (id % 3 != 0) {
			wal_release(c->w, id);
			c->released[c->nreleased++] = id;   /* only this thread */
		}
		pthread_mutex_lock(&c->mu);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

static void *ct_reader(void *arg)
{
	struct ct *c = arg;
	struct wal_reader *r = wal_reader_open(c->w, 0);
	uint64_t id, last = 0;
	void *data;
	size_t len;
	int rc, stop;

	if (!r) {
		atomic_fetch_add(&c->failures, 1);
		return NULL;
	}
	for (;;) {
		stop = atomic_load(&c->stop_reader);
		while ((rc = wal_reader_next(r, &id, &data, &len)) == 1) {
			if (id <= last || len < 16 || memcmp(data, "c-", 2) != 0)
				atomic_fetch_add(&c->failures, 1);
			last = id;
			c->seen[c->nseen++] = id;
			free(data);
		}
		if (rc < 0)
			atomic_fetch_add(&c->failures, 1);
		if (stop || rc < 0)
			break;
		usleep(200);
	}
	wal_reader_close(r);
	return NULL;
}

static int in_sorted(const uint64_t *v, size_t n, uint64_t x)
{
	size_t lo = 0, hi = n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (v[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && v[lo] == x;
}

static int cmp_id(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

START_TEST(test_concurrent_appenders_releaser_reader)
{
	struct wal_open_report rep;
	pthread_t app[CT_THREADS], rel, rd;
	struct ct *c = calloc(1, sizeof(*c));
	size_t i, live = 0, k;
	struct got g;

	ck_assert_ptr_nonnull(c);
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	c->appenders_left = CT_THREADS;
	c->w = open_wal(8192, 64 << 20, WAL_SYNC_FDATASYNC, NULL);

	pthread_create(&rd, NULL, ct_reader, c);
	pthread_create(&rel, NULL, ct_releaser, c);
	for (i = 0; i < CT_THREADS; i++)
		pthread_create(&app[i], NULL, ct_appender, c);
	for (i = 0; i < CT_THREADS; i++)
		pthread_join(app[i], NULL);
	pthread_join(rel, NULL);
	atomic_store(&c->stop_reader, 1);
	pthread_join(rd, NULL);

	ck_assert_int_eq(atomic_load(&c->failures), 0);
	ck_assert_uint_eq(c->nappended, CT_TOTAL);
	qsort(c->appended, CT_TOTAL, sizeof(uint64_t), cmp_id);
	for (i = 1; i < CT_TOTAL; i++)
		ck_assert_uint_gt(c->appended[i], c->appended[i - 1]);
	qsort(c->released, c->nreleased, sizeof(uint64_t), cmp_id);
	ck_assert_uint_eq(wal_live_records(c->w), CT_TOTAL - c->nreleased);

	/* the reader saw every record that was never released */
	for (i = 0; i < CT_TOTAL; i++) {
		if (in_sorted(c->released, c->nreleased, c->appended[i]))
			continue;
		live++;
		ck_assert_msg(in_sorted(c->seen, c->nseen, c->appended[i]),
		              "reader missed id %" PRIu64, c->appended[i]);
	}
	wal_close(c->w);

	c->w = open_wal(8192, 64 << 20, WAL_SYNC_FDATASYNC, &rep);
	ck_assert_uint_eq(rep.records_live, live);
	read_all(c->w, 0, &g);
	ck_assert_uint_eq(g.n, live);
	for (i = 0, k = 0; i < CT_TOTAL; i++) {
		if (in_sorted(c->released, c->nreleased, c->appended[i]))
			continue;
		ck_assert_uint_eq(g.ids[k], c->appended[i]);
		k++;
	}
	got_free(&g);
	wal_close(c->w);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
}
END_TEST

/* kill -9 in the middle of appending: every record whose wal_append()
 * returned is there after a reopen, with its payload. */
struct ack {
	uint64_t id;
	int64_t seq;      /* negative: -(seq+1), released by the child */
};

START_TEST(test_crash_keeps_acknowledged_records)
{
	struct wal_open_report rep;
	struct ack *acks = NULL, a;
	size_t nacks = 0, cap = 0, i, j;
	char buf[64];
	struct got g;
	struct wal *w;
	int p[2], status;
	pid_t pid;
	ssize_t r;

	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct wal_options o = { .dir = dir, .segment_bytes = 8192 };
		int64_t seq;

		close(p[0]);
		if (wal_open(&w, &o, NULL, err, sizeof(err)) != IOTR_OK)
			_exit(2);
		for (seq = 0; ; seq++) {
			snprintf(buf, sizeof(buf), "crash-%" PRId64, seq);
			if (wal_append(w, buf, strlen(buf), &a.id) != IOTR_OK)
				_exit(3);
			a.seq = seq;
			if (seq % 7 == 3) {
				wal_release(w, a.id);
				a.seq = -(seq + 1);
			}
			if (write(p[1], &a, sizeof(a)) != sizeof(a))
				_exit(4);
		}
	}
	close(p[1]);
	while ((r = read(p[0], &a, sizeof(a))) == sizeof(a)) {
		if (nacks == cap) {
			cap = cap ? cap * 2 : 1024;
			acks = realloc(acks, cap * sizeof(*acks));
		}
		acks[nacks++] = a;
		if (nacks == 3000)
			kill(pid, SIGKILL);
	}
	close(p[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	              "child ended with status %d before the kill", status);
	ck_assert_uint_ge(nacks, 3000);

	w = open_wal(8192, 0, WAL_SYNC_WRITE, &rep);
	read_all(w, 0, &g);
	for (i = 0, j = 0; i < nacks; i++) {
		if (acks[i].seq < 0)
			continue;       /* released: may come back, need not */
		while (j < g.n && g.ids[j] < acks[i].id)
			j++;
		ck_assert_msg(j < g.n && g.ids[j] == acks[i].id,
		              "acknowledged id %" PRIu64 " lost", acks[i].id);
		snprintf(buf, sizeof(buf), "crash-%" PRId64, acks[i].seq);
		ck_assert_uint_eq(g.lens[j], strlen(buf));
		ck_assert(memcmp(g.data[j], buf, strlen(buf)) == 0);
	}
	ck_assert_uint_eq(rep.corrupt_regions, 0);
	got_free(&g);
	free(acks);
	wal_close(w);
}
END_TEST

/* Release markers reach the disk within sync_interval_ms, without a close:
 * after a kill -9 that comes later, released records are not replayed. */
START_TEST(test_release_markers_flushed_before_crash)
{
	struct wal_open_report rep;
	struct got g;
	struct wal *w;
	int p[2], status, i;
	char c;
	pid_t pid;

	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct wal_options o = { .dir = dir, .sync_interval_ms = 50 };
		uint64_t id;

		close(p[0]);
		if (wal_open(&w, &o, NULL, err, sizeof(err)) != IOTR_OK)
			_exit(2);
		for (i = 0; i < 10; i++) {
			if (wal_append(w, "abc", 3, &id) != IOTR_OK)
				_exit(3);
			if (i < 5)
				wal_release(w, id);
		}
		usleep(500 * 1000);
		if (write(p[1], "k", 1) != 1)
			_exit(4);
		for (;;)
			pause();
	}
	close(p[1]);
	ck_assert_int_eq(read(p[0], &c, 1), 1);
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	close(p[0]);

	w = open_wal(0, 0, WAL_SYNC_WRITE, &rep);
	ck_assert_uint_eq(rep.records_live, 5);
	ck_assert_uint_eq(rep.records_released, 5);
	read_all(w, 0, &g);
	ck_assert_uint_eq(g.n, 5);
	ck_assert_uint_eq(g.ids[0], 6);
	got_free(&g);
	wal_close(w);
}
END_TEST

/* Open refuses, with a message naming the path: a directory it cannot
 * create, one already used by another log, options that contradict. */
START_TEST(test_open_errors_name_the_problem)
{
	struct wal_options o = { 0 };
	char bad[700];
	struct wal *w, *w2 = NULL;

	snprintf(bad, sizeof(bad), "%s/file", top);
	write_file(bad, "x", 1);
	snprintf(bad, sizeof(bad), "%s/file/wal", top);
	o.dir = bad;
	ck_assert_int_eq(wal_open(&w2, &o, NULL, err, sizeof(err)), WAL_EIO);
	ck_assert_ptr_null(w2);
	ck_assert_msg(strstr(err, top) != NULL, "message: %s", err);

	w = open_wal(0, 0, WAL_SYNC_WRITE, NULL);
	o.dir = dir;
	ck_assert_int_eq(wal_open(&w2, &o, NULL, err, sizeof(err)), WAL_EIO);
	ck_assert_msg(strstr(err, dir) && strstr(err, "in use"), "message: %s", err);
	wal_close(w);

	o.segment_bytes = 1 << 20;
	o.max_bytes = 1 << 10;
	ck_assert_int_eq(wal_open(&w2, &o, NULL, err, sizeof(err)), IOTR_EINVAL);
	ck_assert_msg(strstr(err, "max_bytes") != NULL, "message: %s", err);
}
END_TEST

static Suite *wal_suite(void)
{
	Suite *s = suite_create("wal");
	TCase *tc;

	tc = tcase_create("records");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_append_replay_across_reopen);
	tcase_add_test(tc, test_release_then_reopen_not_replayed);
	tcase_add_test(tc, test_reader_follows_appends);
	tcase_add_test(tc, test_open_errors_name_the_problem);
	suite_add_tcase(s, tc);

	tc = tcase_create("space");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_segment_roll_and_deletion);
	tcase_add_test(tc, test_disk_cap_full);
	tcase_add_test(tc, test_drop_oldest_counts);
	suite_add_tcase(s, tc);

	tc = tcase_create("damage");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_torn_tail_truncated);
	tcase_add_test(tc, test_corrupt_payload_skipped);
	tcase_add_test(tc, test_corrupt_header_skipped);
	suite_add_tcase(s, tc);

	tc = tcase_create("threads and crashes");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_concurrent_appenders_releaser_reader);
	tcase_add_test(tc, test_crash_keeps_acknowledged_records);
	tcase_add_test(tc, test_release_markers_flushed_before_crash);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(wal_suite());
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0;
}
