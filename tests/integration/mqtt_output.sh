#!/bin/bash
# mqtt_output.sh - the mqtt output, as an MQTT -> MQTT bridge on one real
# mosquitto broker: messages on in/DEV/WHAT come out on out/DEV/WHAT
# unchanged and in order per device, MQTT 5 headers travel as user
# properties, a broker restart while messages flow loses none, messages the
# broker refuses for good (an ACL, a topic with '+') are dead-lettered, and a
# clean stop accounts for every message.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

# The broker refuses publishing (and reading) under out/forbidden/.
mkdir -p "$TEST_TMPDIR/mosquitto"
printf 'topic readwrite #\ntopic deny out/forbidden/#\n' >"$TEST_TMPDIR/mosquitto/acl"
start_mosquitto "" "acl_file $TEST_TMPDIR/mosquitto/acl" || bail_out "mosquitto did not start"

# A persistent MQTT 5 subscriber to what the router publishes: topic, user
# properties and payload, one line each.  It reconnects after the restart.
sub=$TEST_TMPDIR/sub.txt
mqtt_sub_bg "$sub" -V mqttv5 -c -i mqtt-output-test-sub -q 1 -t 'out/#' -t dead \
	-F '%t\t%P\t%p'
wait_for 10 grep -q 'mqtt-output-test-sub' "$MQTT_DIR/mosquitto.log" ||
	bail_out "mosquitto_sub did not connect"
sleep 0.5

conf=$(router_config bridge <<'CONF'
router = {
	workers = 3;
	dead_letter_topic = "dead";
};
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "bridge-in";
	topics = [ "in/#", "wild/#" ]; qos = 1;
	reconnect_min_ms = 100; reconnect_max_ms = 1000;
} );
outputs = ( {
	name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "bridge-out";
	qos = 1; max_inflight = 200;
	reconnect_min_ms = 100; reconnect_max_ms = 1000;
} );
routes = (
	{ name = "bridge"; match = "in/+dev/+what"; topic = "out/${dev}/${what}";
	  key = "${dev}"; },
	{ name = "wild"; match = "wild/+dev"; topic = "out/+/${dev}"; }
);
CONF
)
router_start "$conf" || bail_out "router did not start"
assert_cmd "the output connects to the broker" \
	grep -q "\[plugin:out\] connected to 127.0.0.1:$MQTT_PORT as \"bridge-out\"" "$ROUTER_LOG"

# 500 QoS 1 commands, 100 for each of 5 devices, published concurrently.
for d in 1 2 3 4 5; do
	for i in $(seq 1 100); do
		printf '{"dev":"d%s","seq":%d,"cmd":"set speed %d km/h"}\n' "$d" "$i" "$((i * d))"
	done >"$TEST_TMPDIR/in.d$d"
done
for d in 1 2 3 4 5; do
	mqtt_pub -q 1 -t "in/d$d/cmd" -l <"$TEST_TMPDIR/in.d$d" &
done
wait_until 30 '[ "$(grep -c "^out/d[1-5]/cmd	" "$sub")" -ge 500 ]'
assert_eq 500 "$(grep -c '^out/d[1-5]/cmd	' "$sub")" "500 QoS 1 messages come out on out/DEV/cmd"
same=0
for d in 1 2 3 4 5; do
	grep "^out/d$d/cmd	" "$sub" | cut -f3 >"$TEST_TMPDIR/out.d$d"
	cmp -s "$TEST_TMPDIR/in.d$d" "$TEST_TMPDIR/out.d$d" && same=$((same + 1))
done
assert_eq 5 "$same" "each device's messages arrive exactly as sent, in order"

# MQTT 5 headers become user properties.
mqtt_pub -V mqttv5 -q 1 -t in/veh1/cmd -D publish user-property driver alice -m unlock
wait_until 10 'grep -q "^out/veh1/cmd	" "$sub"'
line=$(grep "^out/veh1/cmd	" "$sub")
assert_match 'driver:alice' "$line" "an MQTT 5 user property is carried as a user property"
assert_match '	unlock$' "$line" "with the payload"

# Refused for good: dead-lettered through the same output to "dead".
mqtt_pub -q 1 -t in/forbidden/cmd -m denied-by-acl
mqtt_pub -q 1 -t wild/dev9 -m wildcard-topic
wait_until 10 '[ "$(grep -c "^dead	" "$sub")" -ge 2 ]'
line=$(grep "^dead	.*denied-by-acl" "$sub")
assert_match 'iotrouter.error:[^	]*refused the message to "out/forbidden/cmd": Not authorized' \
	"$line" "a PUBACK refusal (ACL) dead-letters the message with the broker's reason"
line=$(grep "^dead	.*wildcard-topic" "$sub")
assert_match "iotrouter.error:[^	]*\"out/\\+/dev9\" is not a topic one can publish to" \
	"$line" "a topic with '+' is dead-lettered"
assert_fails "nothing is published under out/forbidden" grep -q '^out/forbidden/' "$sub"

router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
received=$(router_counter router.received)
assert_eq 503 "$received" "the router counts every message received"
assert_eq "$received" "$(router_counter router.delivered)" "and every one delivered (dead letters included)"
assert_eq 2 "$(router_counter router.dead_lettered)" "two were dead-lettered"
assert_eq 0 "$(router_counter router.lost)" "none lost"
assert_eq 0 "$(router_counter out.retried)" "none left unreported at the stop"

# A restart of the output's broker while messages flow through the router
# (1000 a second for 3 s).  The input reads from a second broker that keeps
# running, so that what is tested is the output's side: every message
# published by iotrouter-sim and acknowledged arrives on out/..., none lost.
# The output waits 3 s before it reconnects, so that the test's subscriber
# (mosquitto_sub retries after 1 s) is back first: mosquitto 2.0 does not
# queue messages for a restored session whose client has not reconnected
# since the restart.
IN_PORT=$(free_port) || bail_out "no free port"
mkdir -p "$TEST_TMPDIR/in-broker"
printf 'user %s\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' \
	"$(id -un)" "$IN_PORT" >"$TEST_TMPDIR/in-broker/mosquitto.conf"
"$MOSQUITTO_BIN" -c "$TEST_TMPDIR/in-broker/mosquitto.conf" >"$TEST_TMPDIR/in-broker/out" 2>&1 &
in_broker=$!
register_pid "$in_broker"
wait_for 10 _iotr_pid_listens "$in_broker" "$IN_PORT" || bail_out "the input's broker did not start"

conf=$(router_config restart <<CONF
router = { workers = 3; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = $IN_PORT; client_id = "restart-in";
	topics = [ "in/#" ]; qos = 1;
} );
outputs = ( {
	name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "restart-out";
	qos = 1; max_inflight = 200;
	reconnect_min_ms = 3000; reconnect_max_ms = 3000;
} );
routes = ( { match = "in/+dev/+what"; topic = "out/\${dev}/\${what}"; key = "\${dev}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start"
"$IOTROUTER_SIM" --host 127.0.0.1 --port "$IN_PORT" --quiet --devices 10 --count 3000 \
	--rate 1000 --qos 1 --topic 'in/{device}/reading' &
sim_pid=$!
register_pid "$sim_pid"
wait_until 20 '[ "$(grep -c "^out/dev-" "$sub")" -ge 1000 ]'
diag "messages through when the broker stops: $(grep -c "^out/dev-" "$sub")"
restart_mosquitto || bail_out "mosquitto did not restart"
sim_rc=0
wait "$sim_pid" || sim_rc=$?
assert_eq 0 "$sim_rc" "the publisher got all 3000 messages acknowledged"
wait_until 60 '[ "$(grep "^out/dev-[0-9]*/reading	" "$sub" | cut -f3 | sort -u | wc -l)" -ge 3000 ]'
grep '^out/dev-[0-9]*/reading	' "$sub" | cut -f3 >"$TEST_TMPDIR/readings"
seq_report 3000 "$TEST_TMPDIR/readings"
diag "$REPORT"
assert_eq 0 "$MISSING" "a restart of the output's broker while messages flow loses none of them"
diag "$(grep 'plugin:out.*disconnected from' "$ROUTER_LOG" || true)"
wait_until 20 '[ "$(router_live_counter out.connects)" -ge 2 ]'
assert_ge 2 "$(router_live_counter out.connects)" "the output reconnected"

router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
received=$(router_counter router.received)
assert_ge 3000 "$received" "the router counts every message received"
assert_eq "$received" "$(router_counter router.delivered)" "and every one delivered"
assert_eq "$received" "$(router_counter out.delivered)" "each acknowledged by the broker"
assert_eq 0 "$(router_counter router.lost)" "none lost"

# retain = true against a broker that keeps no retained messages (MQTT 5
# Retain Available 0): said once at connect, and messages still go out.
stop_mosquitto   # the harness stops one broker of its own at exit
start_mosquitto "$TEST_TMPDIR/noretain" "retain_available false" ||
	bail_out "the broker without retain did not start"
sub_nr=$TEST_TMPDIR/noretain.tsv
mqtt_sub_bg "$sub_nr" -V mqttv5 -q 1 -t 'out/#' -F '%t %r %p'
conf=$(router_config noretain <<'CONF'
inputs = ( { name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "nr-in";
	topics = [ "in/#" ]; qos = 1; } );
outputs = ( { name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "nr-out";
	protocol = "5"; qos = 1; retain = true; } );
routes = ( { match = "in/+dev"; topic = "out/${dev}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start against the broker without retain"
mqtt_pub -q 1 -t in/d1 -m 'kept?'
wait_until 20 'grep -q "^out/d1 " "$sub_nr"'
assert_match "^out/d1 0 kept\?" "$(cat "$sub_nr")" \
	"with Retain Available 0 the message is published, without the flag"
assert_match "retain = true, but 127.0.0.1:$MQTT_PORT does not keep retained messages" \
	"$(cat "$ROUTER_LOG")" "and the router says why the flag is gone"
router_stop

tap_done
