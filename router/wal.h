/*
 * wal.h - the write-ahead log: opaque records made durable before the MQTT
 * broker is acknowledged, released once Kafka (or a rule, or the dead-letter
 * path) is done with them, and replayed after a restart.
 *
 * Threads: every function is thread-safe.  The router appends from its
 * ingest threads, releases from the output's delivery thread, and replays
 * with a reader on one more thread; a background thread of the log flushes
 * release markers and, in WAL_SYNC_FDATASYNC mode, syncs the data.  One
 * process owns a directory at a time (an flock(2) on DIR/wal.lock).
 *
 * The on-disk format is described at the top of wal.c and in
 * doc/wal-format.md.
 */
#ifndef IOTR_WAL_H
#define IOTR_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "iotrouter/plugin.h"

/* Return codes beyond enum iotr_status (which gives IOTR_OK, IOTR_EINVAL and
 * IOTR_ENOMEM here). */
enum wal_status {
	WAL_EFULL = -100,   /* the disk cap (or the disk itself) is full */
	WAL_EIO = -101      /* a read, write or sync failed: see wal_error() */
};

enum wal_sync {
	/* write(2) per append: durable against a process crash (kill -9, OOM,
	 * a plugin's segfault), not against power loss. */
	WAL_SYNC_WRITE = 0,
	/* also fdatasync(2) every sync_interval_ms or every sync_every
	 * records, whichever comes first: durable against power loss once
	 * the next sync has run.  wal_append() does not wait for it. */
	WAL_SYNC_FDATASYNC = 1
};

/* The largest payload a record can hold (an MQTT packet's limit). */
#define WAL_MAX_PAYLOAD ((size_t)256 << 20)

/* A zero field means its default. */
struct wal_options {
	const char *dir;            /* created if missing (mode 0750); borrowed */
	uint64_t segment_bytes;     /* roll to a new file after this (64 MiB) */
	uint64_t max_bytes;         /* cap over all segment files (1 GiB) */
	int sync;                   /* enum wal_sync (WAL_SYNC_WRITE) */
	int64_t sync_interval_ms;   /* fdatasync and release-marker period (100) */
	uint64_t sync_every;        /* fdatasync after this many appends (1000) */
};

/* What wal_open() found on disk. */
struct wal_open_report {
	uint64_t segments;          /* segment files found */
	uint64_t segments_deleted;  /* of those, deleted: nothing live left */
	uint64_t records_live;      /* records to replay (not released) */
	uint64_t records_released;  /* records found released by a marker */
	uint64_t bytes_truncated;   /* torn tail cut off the newest segment */
	uint64_t bytes_skipped;     /* corrupt bytes skipped (left on disk) */
	uint64_t corrupt_regions;   /* stretches of them (the tail not counted) */
	uint64_t last_id;           /* the next append gets an id above this */
};

struct wal;
struct wal_reader;

/*
 * Open (or create) the log in o->dir.  Every segment is scanned and every
 * record's checksums checked: a torn or corrupt tail of the newest segment is
 * truncated (bytes_truncated); a corrupt stretch anywhere else is skipped by
 * resynchronising on the next valid record (bytes_skipped, corrupt_regions)
 * and left on disk.  Segments that hold nothing live are deleted.  Damaged
 * data never makes this fail: only a real I/O problem, a bad option or a
 * directory locked by another process does.
 *
 * Returns IOTR_OK with *out set, or IOTR_EINVAL / IOTR_ENOMEM / WAL_EIO with
 * a message in err (naming the path, the error and what to do).  rep and err
 * may be NULL.
 */
int wal_open(struct wal **out, const struct wal_options *o,
             struct wal_open_report *rep, char *err, size_t errlen);

/*
 * Append one record of len bytes (copied; data is borrowed) and set *id to its
 * id: ids are strictly increasing, above every id ever on disk.  Once this
 * returns IOTR_OK the record survives the process being killed: header and
 * payload went to the file in one pwritev(2).
 *
 * Returns IOTR_OK; WAL_EFULL when the record would take the log over
 * max_bytes or the disk is full (nothing written: the caller blocks and
 * retries, or calls wal_drop_oldest()); IOTR_EINVAL when the record could
 * never fit (len > WAL_MAX_PAYLOAD, or beyond max_bytes on its own);
 * IOTR_ENOMEM; WAL_EIO (see wal_error()).
 */
int wal_append(struct wal *w, const void *data, size_t len, uint64_t *id);

/*
 * The same, past max_bytes: for the few records that were already on their
 * way in when a shutdown deadline passed with the log full (their input
 * has acknowledged them, so refusing them would lose them).  A full disk
 * still gives WAL_EFULL.
 */
int wal_append_over_cap(struct wal *w, const void *data, size_t len,
                        uint64_t *id);

/*
 * The record is done with (delivered, dropped, dead-lettered): it will not be
 * replayed.  Unknown or already released ids are ignored.  The marker that
 * says so on disk is buffered and written within sync_interval_ms (losing it
 * in a crash only replays the record again).  A segment file is deleted once
 * it and every older one hold no live record.  Release markers are written
 * even past max_bytes, so that releasing always frees space.
 */
void wal_release(struct wal *w, uint64_t id);

/*
 * Disk-cap policy "drop oldest": delete the oldest segment file, live records
 * and all.  Returns how many live records that discarded (for the loud
 * counter).  With a single segment it is emptied and starts afresh.
 */
uint64_t wal_drop_oldest(struct wal *w);

/*
 * A reader returns the live records with id >= from_id in id order, across
 * segments, including records appended after it was opened.  NULL when out
 * of memory.  A reader is used by one thread at a time (several readers may
 * run at once).  Close every reader before wal_close().
 */
struct wal_reader *wal_reader_open(struct wal *w, uint64_t from_id);

/*
 * Next record: 1 with *id, *data (malloc'd, never NULL; the caller frees it)
 * and *len set; 0 when caught up (call again later for newer records); or
 * WAL_EIO / IOTR_ENOMEM.  A record released (or dropped) before the reader
 * reaches it is not returned.
 */
int wal_reader_next(struct wal_reader *r, uint64_t *id, void **data,
                    size_t *len);
void wal_reader_close(struct wal_reader *r);

uint64_t wal_last_id(struct wal *w);       /* highest id assigned so far */
uint64_t wal_bytes(struct wal *w);         /* bytes in segment files */
uint64_t wal_live_records(struct wal *w);  /* appended and not released */

/* Copy the most recent error message into buf; returns buf ("" if none). */
const char *wal_error(struct wal *w, char *buf, size_t len);

/* Flush release markers (and sync in WAL_SYNC_FDATASYNC mode), close. */
void wal_close(struct wal *w);

#endif
