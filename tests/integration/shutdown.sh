#!/bin/bash
# shutdown.sh - SIGTERM keeps its deadline even when Kafka is unreachable
# and the queues are full: the router stops in time, says how many messages
# it could not deliver, and counts every one of them.
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

tap_done
