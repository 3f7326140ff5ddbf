#!/bin/bash
# read_after.sh - tools/bench-kafka-latency --read-after, the far end of
# scripts/bench's saturation phases against a real broker: it reads nothing
# between the warm-up and --expect-file, then counts every record, and the
# rate it reports comes from the broker's append times, not from when it
# read them.  Real broker only: librdkafka's mock cluster keeps the
# producers' timestamps.
. "$(dirname "$0")/../harness/lib.sh"
LAT=$IOTR_SRCDIR/tools/bench-kafka-latency
PRODUCE=$IOTR_SRCDIR/tools/bench-kafka-produce
[ -x "$LAT" ] && [ -x "$PRODUCE" ] || skip_all "the bench tools are not built (they need librdkafka)"
require_kafka
tmpdir_setup

N=5000
WARM=20
HOLD=3      # seconds the records wait before it may read them
run=ra$$$RANDOM
topic=bench.$run.site-1

"$LAT" --brokers "$KAFKA" --topic "$topic" --read-after \
	--ready-file "$TEST_TMPDIR/ready" --expect-file "$TEST_TMPDIR/expect" \
	--warm-marker '"device":"warm-' --warm-file "$TEST_TMPDIR/warm" \
	--warm-count $WARM --idle 10 --timeout 120 \
	>"$TEST_TMPDIR/lat.out" 2>"$TEST_TMPDIR/lat.err" &
lat_pid=$!
register_pid "$lat_pid"
wait_for 60 test -f "$TEST_TMPDIR/ready" || bail_out "it did not start fetching: $(cat "$TEST_TMPDIR/lat.err")"

for ((i = 0; i < WARM; i++)); do
	printf '{"device":"warm-%04d","seq":%d}\n' "$i" "$i"
done | kcat -P -b "$KAFKA" -t "$topic" 2>"$TEST_TMPDIR/kcat.err"
assert_eq 0 $? "the warm-up records were produced"
wait_for 30 test -f "$TEST_TMPDIR/warm"
assert_eq 0 $? "it saw the $WARM warm-up records"

"$PRODUCE" --brokers "$KAFKA" --topic "$topic" --count $N --compact \
	>"$TEST_TMPDIR/produce.out" 2>"$TEST_TMPDIR/produce.err"
assert_eq 0 $? "the $N records were produced and acknowledged"
sleep $HOLD
echo $N >"$TEST_TMPDIR/expect"
rc=0
wait "$lat_pid" || rc=$?
assert_eq 0 "$rc" "it ends with status 0 once all $N are read"
line=$(cat "$TEST_TMPDIR/lat.out")
diag "far end: $line"
assert_match "^received=$N .* complete=1" "$line" "it counts every record and none of the warm-up"
elapsed=$(sed -n 's/.* elapsed_s=\([0-9.]*\) .*/\1/p' <<<"$line")
p50=$(sed -n 's/.* p50_us=\([0-9]*\) .*/\1/p' <<<"$line")
assert_match '^[0-9.]+$' "$elapsed" "it reports the elapsed time"
assert_eq 1 "$(awk -v e="$elapsed" -v h=$HOLD 'BEGIN { print (e > 0 && e < h) }')" \
	"the elapsed time ends at the last append ($elapsed s), not when it read the records $HOLD s later"
assert_eq 1 "$((p50 < HOLD * 1000000))" \
	"a record's age is publish to append ($p50 us at the median), not publish to reading"

# A topic that keeps the producers' timestamps: said, and the run fails
ct=bench.$run-ct.site-1
echo '{"seq":1}' | kcat -P -b "$KAFKA" -t "$ct" 2>"$TEST_TMPDIR/kcat.err"
wait_kafka_count "$KAFKA" "$ct" 1 30 >/dev/null
echo 1 >"$TEST_TMPDIR/expect-ct"
rc=0
"$LAT" --brokers "$KAFKA" --topic "$ct" --read-after --expect-file "$TEST_TMPDIR/expect-ct" \
	--warm-marker '"device":"warm-' --idle 10 --timeout 60 \
	>"$TEST_TMPDIR/ct.out" 2>"$TEST_TMPDIR/ct.err" || rc=$?
assert_eq 1 "$rc" "on a topic made by a producer it exits 1"
assert_match "topic $ct keeps the producers' timestamps, not the broker's append time" \
	"$(cat "$TEST_TMPDIR/ct.err")" "and says why, and what to do"

rc=0
out=$("$LAT" --brokers "$KAFKA" --topic "$topic" --read-after 2>&1) || rc=$?
assert_eq 2 "$rc" "--read-after without --expect-file is refused"
assert_match "read-after needs --warm-marker and --expect-file" "$out" "with a message that names both"
tap_done
