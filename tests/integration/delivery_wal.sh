#!/bin/bash
# delivery_wal.sh - the write-ahead log at its limits, with Kafka away:
#   1. the disk cap reached with wal_full_policy = "drop_oldest": exactly the
#      messages counted as dropped are missing, everything else arrives;
#   2. the cap reached with "block": intake waits, the broker keeps the rest,
#      and nothing is missing;
#   3. a log damaged in the middle and at its tail after a crash: the router
#      starts, reports what it skipped, and delivers the rest;
#   4. a Lua rule that fans each reading out into two new messages, killed
#      with SIGKILL while they wait for Kafka: after a restart both copies
#      of every reading arrive (the reading's record is kept until all that
#      was made from it is delivered);
#   5. the same fan-out stopped cleanly while Kafka is away: the copies are
#      deferred, and the next start sends both;
#   6. a windowing rule (scripts/rules/window_stats.lua) stopped while Kafka
#      is away: the aggregates its on_stop flushes are deferred in the log,
#      not lost, and the next start sends them.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

require_kafka
start_mosquitto || bail_out "mosquitto did not start"
run=$(unique_name wal)

# $1 name, $2 brokers, $3 extra router settings
wal_config() {
	router_config "$1" <<CONF
router = { workers = 1; queue_size = 100; shutdown_timeout_ms = 3000;
           wal_dir = "@DIR@/wal-$1"; $3 };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run-$1"; topics = [ "$run/$1/#" ]; qos = 1;
	clean_session = false;
} );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "$2";
	properties = [ "queue.buffering.max.messages=50" ]; } );
routes = ( { match = "$run/+case/+device/+sensor"; topic = "$run.\${case}"; key = "\${device}"; } );
CONF
}

# 1. drop_oldest
cap="wal_max_bytes = 65536; wal_segment_bytes = 8192; wal_full_policy = \"drop_oldest\";"
down=$(wal_config drop 127.0.0.1:1 "$cap")
sed "s|127.0.0.1:1|$KAFKA|" "$down" >"$TEST_TMPDIR/drop-up.conf"
router_start "$down" || bail_out "router did not start"
sim --devices 10 --count 3000 --rate 0 --qos 1 --topic "$run/drop/{device}/{sensor}"
router_wait_received 3000
router_stop
dropped=$(router_counter router.wal_dropped)
assert_ge 1 "${dropped:-0}" "a 64 KiB log cannot hold 3000 readings: the oldest were dropped and counted (${dropped:-0})"
assert_cmd "and each drop is logged as an error" \
	grep -q "dropped its oldest segment" "$ROUTER_LOG"
router_start "$TEST_TMPDIR/drop-up.conf" || bail_out "router did not restart"
n=$(wait_kafka_count "$KAFKA" "$run.drop" $((3000 - dropped)) 60)
sleep 1
router_stop
kafka_payloads "$KAFKA" "$run.drop" >"$TEST_TMPDIR/drop.payloads"
seq_report 3000 "$TEST_TMPDIR/drop.payloads"
report=$REPORT
echo "# disk cap, drop_oldest: $report dropped=$dropped"
assert_eq "$dropped" "$MISSING" "exactly the dropped messages are missing, no more ($report)"

# 2. block
cap="wal_max_bytes = 65536; wal_segment_bytes = 8192; wal_full_policy = \"block\";"
down=$(wal_config block 127.0.0.1:1 "$cap")
sed "s|127.0.0.1:1|$KAFKA|" "$down" >"$TEST_TMPDIR/block-up.conf"
router_start "$down" || bail_out "router did not start"
sim --devices 10 --count 3000 --rate 0 --qos 1 --topic "$run/block/{device}/{sensor}"
wait_for 20 grep -q "write-ahead log is full" "$ROUTER_LOG"
assert_cmd "with block, a full log pauses intake and says so" \
	grep -q "write-ahead log is full" "$ROUTER_LOG"
received=$(router_live_counter router.received)
router_stop
assert_eq 0 "$(router_counter router.lost)" "stopping while intake waits loses nothing"
router_start "$TEST_TMPDIR/block-up.conf" || bail_out "router did not restart"
n=$(wait_kafka_count "$KAFKA" "$run.block" 3000 60)
router_stop
kafka_payloads "$KAFKA" "$run.block" >"$TEST_TMPDIR/block.payloads"
seq_report 3000 "$TEST_TMPDIR/block.payloads"
report=$REPORT
echo "# disk cap, block: $report (first run took in $received)"
assert_eq 0 "$MISSING" "the broker held what the log could not: none missing ($report)"

# 3. damage
down=$(wal_config damage 127.0.0.1:1 "")
sed "s|127.0.0.1:1|$KAFKA|" "$down" >"$TEST_TMPDIR/damage-up.conf"
router_start "$down" || bail_out "router did not start"
sim --devices 10 --count 1000 --rate 0 --qos 1 --topic "$run/damage/{device}/{sensor}"
router_wait_received 1000
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null
seg=$(ls "$TEST_TMPDIR"/wal-damage/*.wal | head -1)
size=$(stat -c %s "$seg")
diag "damaging $seg ($size bytes): 16 bytes in the middle, 7 bytes off the end"
printf 'XXXXXXXXXXXXXXXX' | dd of="$seg" bs=1 seek=$((size / 2)) conv=notrunc status=none
truncate -s $((size - 7)) "$seg"
router_start "$TEST_TMPDIR/damage-up.conf" || bail_out "router did not start on a damaged log"
assert_cmd "the router starts on a damaged log and reports what it skipped" \
	grep -Eq "write-ahead log in .* was damaged.*truncated a torn tail of [1-9][0-9]* bytes, skipped [1-9][0-9]* bytes" "$ROUTER_LOG"
n=$(wait_kafka_count "$KAFKA" "$run.damage" 995 60)
sleep 1
router_stop
kafka_payloads "$KAFKA" "$run.damage" >"$TEST_TMPDIR/damage.payloads"
seq_report 1000 "$TEST_TMPDIR/damage.payloads"
report=$REPORT
echo "# damaged log: $report"
assert_cmd "only the two damaged records are missing ($report)" test "$MISSING" -le 2
assert_eq 0 "$ROUTER_RC" "and it stops cleanly"

# 4. fan-out

# both_copies NAME COUNT WHEN: wait for COUNT readings in $run.NAME-a and
# $run.NAME-b, stop the router, and check that no reading's copy is missing.
both_copies() {
	local copy
	for copy in a b; do
		wait_kafka_count "$KAFKA" "$run.$1-$copy" "$2" 60 >/dev/null
	done
	router_stop
	for copy in a b; do
		kafka_payloads "$KAFKA" "$run.$1-$copy" >"$TEST_TMPDIR/$1-$copy.payloads"
		seq_report "$2" "$TEST_TMPDIR/$1-$copy.payloads"
		echo "# $1, copy $copy: $REPORT"
		assert_eq 0 "$MISSING" "$3, every reading's copy $copy arrives ($REPORT)"
	done
}
cat >"$TEST_TMPDIR/fanout.lua" <<'LUA'
-- each reading becomes two new messages; the reading itself goes no further
function on_message(msg)
	router.emit{ kafka_topic = router.vars.a, key = msg.key, payload = msg.payload }
	router.emit{ kafka_topic = router.vars.b, key = msg.key, payload = msg.payload }
	return nil
end
LUA
down=$(router_config fanout <<CONF
router = { workers = 2; queue_size = 100; shutdown_timeout_ms = 3000;
           wal_dir = "@DIR@/wal-fanout"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run-fanout"; topics = [ "$run/fanout/#" ]; qos = 1;
	clean_session = false;
} );
transforms = ( { name = "fan"; plugin = "lua"; script = "@DIR@/fanout.lua";
	vars = [ "a=$run.fanout-a", "b=$run.fanout-b" ]; } );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "127.0.0.1:1"; } );
routes = ( { match = "$run/fanout/+device/+sensor"; topic = "$run.fanout";
	key = "\${device}"; transforms = [ "fan" ]; } );
CONF
)
sed "s|127.0.0.1:1|$KAFKA|" "$down" >"$TEST_TMPDIR/fanout-up.conf"
router_start "$down" || bail_out "router did not start"
sim --devices 10 --count 1000 --rate 0 --qos 1 --topic "$run/fanout/{device}/{sensor}"
router_wait_received 1000
wait_until 20 '[ "$(router_live_counter fan.emitted)" = 2000 ]'
assert_eq 2000 "$(router_live_counter fan.emitted)" "the rule made two messages of each of the 1000 readings"
# What the log releases reaches its disk within wal_sync_interval_ms (100):
# wait for it, so that a record released too early is gone from the disk
# when the router is killed (without this the test could miss that bug).
sleep 1
kill -KILL "$ROUTER_PID"
wait "$ROUTER_PID" 2>/dev/null
router_start "$TEST_TMPDIR/fanout-up.conf" || bail_out "router did not restart"
assert_cmd "the restarted router finds the readings in its log" \
	grep -q "holds [0-9]* undelivered messages from before" "$ROUTER_LOG"
both_copies fanout 1000 "after kill -9"
assert_eq 0 "$ROUTER_RC" "and it stops cleanly"
router_start "$TEST_TMPDIR/fanout-up.conf" || bail_out "router did not restart"
router_stop
assert_fails "once both copies are delivered, the readings' records are released" \
	grep -q "holds [0-9]* undelivered messages from before" "$ROUTER_LOG"

# 5. fan-out, clean stop while Kafka is away
sed "s|$run.fanout-|$run.fanstop-|g; s|wal-fanout|wal-fanstop|; s|$run-fanout\"|$run-fanstop\"|; s|$run/fanout|$run/fanstop|g" \
	"$down" >"$TEST_TMPDIR/fanstop.conf"
sed "s|127.0.0.1:1|$KAFKA|" "$TEST_TMPDIR/fanstop.conf" >"$TEST_TMPDIR/fanstop-up.conf"
router_start "$TEST_TMPDIR/fanstop.conf" || bail_out "router did not start"
sim --devices 10 --count 500 --rate 0 --qos 1 --topic "$run/fanstop/{device}/{sensor}"
router_wait_received 500
router_stop
assert_eq "0 1000" "$(router_counter router.lost) $(router_counter router.deferred)" \
	"stopped while Kafka is away, the 1000 copies are deferred, none lost"
router_start "$TEST_TMPDIR/fanstop-up.conf" || bail_out "router did not restart"
both_copies fanstop 500 "after a stop while Kafka was away"

# 6. windows flushed at a stop while Kafka is away
down=$(router_config windows <<CONF
router = { workers = 2; shutdown_timeout_ms = 2000; wal_dir = "@DIR@/wal-windows"; };
inputs = ( {
	name = "sensors"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run-windows"; topics = [ "$run/windows/#" ]; qos = 1;
	clean_session = false;
} );
transforms = ( { name = "win"; plugin = "lua"; tick_ms = 250;
	script = "$IOTR_SRCDIR/scripts/rules/window_stats.lua";
	vars = [ "window_seconds=600", "stats_topic=$run.windows" ]; } );
outputs = ( { name = "kafka"; plugin = "kafka"; brokers = "127.0.0.1:1"; } );
routes = ( { match = "$run/windows/+site/+device/+sensor"; topic = "$run.raw";
	key = "\${device}"; transforms = [ "win" ]; } );
CONF
)
sed "s|127.0.0.1:1|$KAFKA|" "$down" >"$TEST_TMPDIR/windows-up.conf"
router_start "$down" || bail_out "router did not start"
sim --devices 5 --count 300 --rate 0 --qos 1 --topic "$run/windows/{site}/{device}/{sensor}"
router_wait_received 300
router_stop
made=$(router_counter win.emitted)
assert_ge 1 "${made:-0}" "the rule flushed its open windows at the stop (${made:-0} aggregates)"
assert_eq "0 ${made:-0}" "$(router_counter router.lost) $(router_counter router.deferred)" \
	"Kafka away: every aggregate is deferred in the log, none lost"
router_start "$TEST_TMPDIR/windows-up.conf" || bail_out "router did not restart"
n=$(wait_kafka_count "$KAFKA" "$run.windows" "${made:-1}" 60)
router_stop
assert_eq "${made:-0}" "$n" "the next start sends all ${made:-0} aggregates to Kafka"
assert_eq 0 "$(router_counter router.lost)" "and loses none"

tap_done
