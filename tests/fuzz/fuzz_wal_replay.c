/*
 * fuzz_wal_replay.c - libFuzzer target: wal_open() and a reader over
 * segment files of arbitrary bytes.  Besides never crashing, leaking or
 * hanging, the log must keep what it promises about damaged input: the
 * reader returns exactly the records the open reported live, in id order;
 * after an append, a release and a close, a reopen has nothing left to
 * truncate, keeps every record it replayed before, and not the released one.
 *
 * Input: one byte n (1 + n % 8 segment files), then per file a 4-byte name
 * (little-endian; the file is <name>.wal) and a 4-byte length; the last
 * file takes whatever is left.  Build and run: tests/fuzz/run.sh wal SECONDS.
 *
 * Built with -DWAL_FUZZ_SEEDS instead, it is a program that writes seed
 * inputs (real logs made through the API, packed as above) into a directory.
 * Single-threaded, apart from the log's own sync thread.
 */
#include "config.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wal.h"

#define MAX_SEGS 8

static char fuzz_dir[512];

/* Remove every file in d (not d itself). */
static void empty_dir(const char *d)
{
	char path[1024];
	struct dirent *de;
	DIR *dd = opendir(d);

	if (!dd)
		return;
	while ((de = readdir(dd))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", d, de->d_name);
		unlink(path);
	}
	closedir(dd);
}

static void die(const char *what)
{
	fprintf(stderr, "fuzz_wal_replay: %s\n", what);
	abort();
}

#ifndef WAL_FUZZ_SEEDS

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* Every live record, by a reader from id 0: ids into *ids (malloc'd). */
static size_t replay(struct wal *w, uint64_t **ids)
{
	struct wal_reader *r = wal_reader_open(w, 0);
	size_t n = 0, cap = 0;
	uint64_t id, last = 0;
	void *data;
	size_t len;
	int rc;

	*ids = NULL;
	if (!r)
		die("wal_reader_open failed");
	while ((rc = wal_reader_next(r, &id, &data, &len)) == 1) {
		if (n && id <= last)
			die("reader went back in ids");
		last = id;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			*ids = realloc(*ids, cap * sizeof(**ids));
			if (!*ids)
				die("out of memory");
		}
		(*ids)[n++] = id;
		free(data);
	}
	if (rc != 0)
		die("wal_reader_next failed");
	wal_reader_close(r);
	return n;
}

static int has(const uint64_t *v, size_t n, uint64_t x)
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

static int write_segments(const uint8_t *data, size_t size)
{
	char path[1024];
	size_t nseg, i, len;
	uint32_t name;
	FILE *f;

	if (size < 1)
		return 0;
	nseg = 1 + data[0] % MAX_SEGS;
	data++;
	size--;
	for (i = 0; i < nseg; i++) {
		if (size < 8)
			break;
		name = rd32(data);
		len = rd32(data + 4);
		data += 8;
		size -= 8;
		if (i == nseg - 1 || len > size)
			len = size;
		snprintf(path, sizeof(path), "%s/%020u.wal", fuzz_dir, name);
		f = fopen(path, "wb");
		if (!f)
			die("cannot write a segment file");
		if (len && fwrite(data, 1, len, f) != len)
			die("short write");
		fclose(f);
		data += len;
		size -= len;
	}
	return 1;
}

static struct wal *open_or_die(struct wal_open_report *rep)
{
	struct wal_options o = { .dir = fuzz_dir, .segment_bytes = 4096 };
	char err[1024];
	struct wal *w;

	if (wal_open(&w, &o, rep, err, sizeof(err)) != IOTR_OK) {
		fprintf(stderr, "fuzz_wal_replay: wal_open: %s\n", err);
		abort();
	}
	return w;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void remove_fuzz_dir(void)
{
	empty_dir(fuzz_dir);
	rmdir(fuzz_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	(void)argc; (void)argv;
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz_wal.XXXXXX", base);
	if (!mkdtemp(fuzz_dir))
		die("mkdtemp failed");
	atexit(remove_fuzz_dir);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wal_open_report rep, rep2;
	uint64_t *ids, *ids2, appended = 0, released = 0;
	size_t n, n2, i;
	struct wal *w;

	empty_dir(fuzz_dir);
	if (!write_segments(data, size))
		return 0;

	w = open_or_die(&rep);
	n = replay(w, &ids);
	if (n != rep.records_live || n != wal_live_records(w))
		die("the reader and the open report disagree on live records");
	if (rep.last_id < UINT64_MAX - 1 &&
	    wal_append(w, "fuzz", 4, &appended) != IOTR_OK)
		die("append after open failed");
	if (appended && appended <= rep.last_id)
		die("an appended id is not above the ids on disk");
	if (n) {
		released = ids[0];
		wal_release(w, released);
	}
	wal_close(w);

	w = open_or_die(&rep2);
	n2 = replay(w, &ids2);
	if (rep2.bytes_truncated != 0)
		die("a reopen truncated again");
	for (i = 0; i < n; i++)
		if (ids[i] != released && !has(ids2, n2, ids[i]))
			die("a record replayed before is gone after a reopen");
	if (released && has(ids2, n2, released))
		die("a released record came back");
	if (appended && !has(ids2, n2, appended))
		die("the appended record is gone after a reopen");
	wal_close(w);
	free(ids);
	free(ids2);
	empty_dir(fuzz_dir);
	return 0;
}

#else /* WAL_FUZZ_SEEDS: write seed inputs into argv[1] */

/* Pack the segment files of fuzz_dir into one input file. */
static void pack(const char *outdir, const char *name)
{
	unsigned long long names[MAX_SEGS];
	char path[1024], buf[65536];
	struct dirent *de;
	size_t n = 0, i, j, len;
	unsigned long long t;
	FILE *out, *f;
	uint8_t h[8];
	struct stat st;
	DIR *d = opendir(fuzz_dir);

	if (!d)
		die("opendir");
	while ((de = readdir(d)) && n < MAX_SEGS)
		if (strlen(de->d_name) == 24 && strstr(de->d_name, ".wal"))
			names[n++] = strtoull(de->d_name, NULL, 10);
	closedir(d);
	for (i = 0; i < n; i++)
		for (j = i + 1; j < n; j++)
			if (names[j] < names[i]) {
				t = names[i];
				names[i] = names[j];
				names[j] = t;
			}
	snprintf(path, sizeof(path), "%s/%s", outdir, name);
	out = fopen(path, "wb");
	if (!out || !n)
		die("cannot write a seed");
	fputc((int)(n - 1), out);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%020llu.wal", fuzz_dir, names[i]);
		if (stat(path, &st) < 0 || !(f = fopen(path, "rb")))
			die("cannot read a segment");
		for (j = 0; j < 4; j++) {
			h[j] = (uint8_t)(names[i] >> (8 * j));
			h[4 + j] = (uint8_t)((uint64_t)st.st_size >> (8 * j));
		}
		fwrite(h, 1, 8, out);
		while ((len = fread(buf, 1, sizeof(buf), f)) > 0)
			fwrite(buf, 1, len, out);
		fclose(f);
	}
	fclose(out);
	empty_dir(fuzz_dir);
}

static struct wal *seed_open(uint64_t segment_bytes)
{
	struct wal_options o = { .dir = fuzz_dir, .segment_bytes = segment_bytes };
	char err[1024];
	struct wal *w;

	if (wal_open(&w, &o, NULL, err, sizeof(err)) != IOTR_OK) {
		fprintf(stderr, "seeds: %s\n", err);
		exit(1);
	}
	return w;
}

int main(int argc, char **argv)
{
	static char big[3000];
	char buf[64];
	uint64_t id, ids[40];
	struct wal *w;
	int i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
		return 2;
	}
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/.seedwork", argv[1]);
	mkdir(fuzz_dir, 0750);
	empty_dir(fuzz_dir);

	w = seed_open(0);                       /* a few records */
	for (i = 0; i < 5; i++) {
		snprintf(buf, sizeof(buf), "{\"seq\":%d}", i);
		wal_append(w, buf, strlen(buf), &id);
	}
	wal_close(w);
	pack(argv[1], "seed-records");

	w = seed_open(0);                       /* releases: a marker */
	for (i = 0; i < 8; i++)
		wal_append(w, "abcdefgh", (size_t)i, &ids[i]);
	for (i = 0; i < 8; i += 3)
		wal_release(w, ids[i]);
	wal_close(w);
	pack(argv[1], "seed-released");

	w = seed_open(512);                     /* several segments */
	for (i = 0; i < 40; i++) {
		snprintf(buf, sizeof(buf), "sensor/%d reading %d", i % 4, i);
		wal_append(w, buf, strlen(buf), &ids[i]);
	}
	for (i = 0; i < 12; i++)
		wal_release(w, ids[i * 3]);
	wal_close(w);
	pack(argv[1], "seed-segments");

	w = seed_open(0);                       /* empty and large payloads */
	memset(big, 'B', sizeof(big));
	wal_append(w, "", 0, &id);
	wal_append(w, big, sizeof(big), &id);
	wal_append(w, "x", 1, &id);
	wal_close(w);
	pack(argv[1], "seed-sizes");

	rmdir(fuzz_dir);
	return 0;
}

#endif
