#!/bin/bash
# shutdown.sh - SIGTERM keeps its deadline even when Kafka is unreachable
# and the queues are full: the router stops in time, says how many messages
# it could not deliver, and counts every one of them.  Then an output that
# rejects what it holds only at its final flush(), after the workers have
# stopped: without the write-ahead log those messages are counted lost with
# the reason (no worker is left to dead-letter them); with it they are
# deferred, and the next start sends them.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

conf=$(router_config outage <<'CONF'
router = { workers = 1; queue_size = 2; shutdown_timeout_ms = 2000; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "outage";
	topics = [ "t/#" ]; qos = 1;
} );
outputs = ( {
	name = "kafka"; plugin = "kafka"; brokers = "127.0.0.1:1";
	properties = [ "queue.buffering.max.messages=5" ];
} );
routes = ( { match = "t/+dev"; topic = "t"; key = "${dev}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start"
sim --devices 2 --count 50 --rate 0 --qos 1 --topic 't/{device}'
wait_for 10 grep -q 'queue_full' "$ROUTER_LOG" || true
received=$(router_live_counter router.received)
assert_ge 5 "${received:-0}" "with Kafka down the router still takes in messages until its queues are full (got ${received:-0})"

start=$SECONDS
router_stop 30
took=$((SECONDS - start))
assert_eq 0 "$ROUTER_RC" "SIGTERM during a Kafka outage still ends in a clean exit"
assert_cmd "and the router stops within its 2 s deadline plus the input's disconnect (took ${took}s)" \
	test "$took" -le 6
assert_cmd "it says how many messages missed the deadline" \
	grep -Eq 'shutdown deadline of 2000 ms passed with [0-9]+ messages not yet delivered' "$ROUTER_LOG"
r=$(router_counter router.received)
l=$(router_counter router.lost)
d=$(router_counter router.delivered)
assert_eq "$r" "$((l + d))" "every message it received is counted as delivered or lost ($r = $d + $l)"
assert_ge 1 "$l" "the undelivered ones are counted as lost"
assert_cmd "and reported at exit" grep -q "messages were lost" "$ROUTER_LOG"

# --- rejected at the final flush ---------------------------------------
# $1 name, $2 extra router settings, $3 the route's output
flush_config() {
	router_config "$1" <<CONF
router = { workers = 1; shutdown_timeout_ms = 1000; dead_letter_topic = "dead";
           dead_letter_output = "file"; $2 };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "flush-$1";
	topics = [ "f/#" ]; qos = 1; clean_session = false;
} );
outputs = (
	{ name = "held"; plugin = "$IOTR_TEST_PLUGIN_DIR/refuse_at_flush.so"; },
	{ name = "file"; plugin = "file"; path = "@DIR@/$1.jsonl"; }
);
routes = ( { match = "f/+dev"; topic = "f"; key = "\${dev}"; output = "$3"; } );
CONF
}

# $1 config: start, publish 20, wait until all are taken in, stop
held_run() {
	router_start "$1" || bail_out "router did not start"
	sim --devices 2 --count 20 --rate 0 --qos 1 --topic 'f/{device}'
	router_wait_received 20 || true
	router_stop 30
}

held_run "$(flush_config nowal "" held)"
assert_eq 0 "$ROUTER_RC" "a rejection at the final flush still ends in a clean exit"
assert_eq "20 20 0" "$(router_counter router.received) $(router_counter router.lost) $(router_counter router.dead_lettered)" \
	"without the log, all 20 rejected at the final flush are counted lost, none dead-lettered"
assert_eq 20 "$(grep -c 'refused by refuse_at_flush at the final flush (after the workers had stopped, so not dead-lettered)' "$ROUTER_LOG")" \
	"each loss is logged with the output's reason and why it was not dead-lettered"
assert_cmd "nothing reached the dead-letter output" test ! -s "$TEST_TMPDIR/nowal.jsonl"

wal="wal_dir = \"@DIR@/wal\";"
held_run "$(flush_config wal "$wal" held)"
assert_eq 0 "$ROUTER_RC" "with the write-ahead log, too"
assert_eq "20 0 20" "$(router_counter router.received) $(router_counter router.lost) $(router_counter router.deferred)" \
	"with the log, all 20 are deferred, none lost"
assert_cmd "the deadline line says they stay in the log" \
	grep -q 'not yet delivered; those in the write-ahead log stay there' "$ROUTER_LOG"
# the next start routes them under its own configuration: to the file
conf=$(flush_config wal "$wal" file)
router_start "$conf" || bail_out "router did not start"
wait_until 20 '[ "$(wc -l <"$TEST_TMPDIR/wal.jsonl" 2>/dev/null || echo 0)" -ge 20 ]'
router_stop 30
assert_eq 20 "$(grep -c '"topic":"f"' "$TEST_TMPDIR/wal.jsonl" 2>/dev/null)" \
	"the next start sends all 20 from the log to the route's new output"
seq_report 20 "$TEST_TMPDIR/wal.jsonl"
assert_eq "0 0" "$MISSING $DUPLICATES" "each reading once ($REPORT)"

tap_done
