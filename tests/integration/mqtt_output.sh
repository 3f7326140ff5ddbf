#!/bin/bash
# mqtt_output.sh - the mqtt output, as an MQTT -> MQTT bridge on one real
# mosquitto broker: messages on in/DEV/WHAT come out on out/DEV/WHAT
# unchanged and in order per device, at QoS 1, 0 and 2 (at 2 none twice),
# MQTT 5 headers travel as user properties, a broker restart while messages
# flow loses none, messages the broker refuses for good (an ACL, a topic
# with '+') are dead-lettered, a message larger than the broker's Maximum
# Packet Size is dead-lettered with the sizes while the others go on, and a
# clean stop accounts for every message.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

# The broker refuses publishing (and reading) under out/forbidden/, to
# anonymous clients and to the user iotr alike.  The restart test below
# connects as iotr: after a restart, mosquitto 2.0 gives a restored session
# its ACLs back only if the client has a user name, and denies an anonymous
# one every message until it reconnects (see doc/plugin-mqtt.md, Sessions).
mkdir -p "$TEST_TMPDIR/mosquitto"
printf 'topic readwrite #\ntopic deny out/forbidden/#\nuser iotr\ntopic readwrite #\ntopic deny out/forbidden/#\n' \
	>"$TEST_TMPDIR/mosquitto/acl"
start_mosquitto "" "acl_file $TEST_TMPDIR/mosquitto/acl" || bail_out "mosquitto did not start"

# A persistent MQTT 5 subscriber to what the router publishes: topic, user
# properties and payload, one line each.  It reconnects after the restart.
sub=$TEST_TMPDIR/sub.txt
mqtt_sub_bg "$sub" -V mqttv5 -u iotr -c -i mqtt-output-test-sub -q 1 -t 'out/#' -t dead \
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

# sub_mark PORT FILE TOPIC: publish a marker of its own at QoS 2 to TOPIC on
# the broker at PORT and wait (20 s at most) until it shows in FILE, a
# subscriber's output.  The broker sends one subscriber its messages in the
# order it took them, so once the marker is there, so is everything the
# broker had before: the subscriber is ready, or has received it all.
sub_mark() {
	local marker
	marker=marker-$(date +%s%N)
	mosquitto_pub -h 127.0.0.1 -p "$1" -V mqttv5 -q 2 -t "$3" -m "$marker" &&
		wait_until 20 "grep -q '$marker' '$2'"
}

# persistent_sub PORT FILE ID FILTER [VERSION]: a subscriber at QoS 2 with a
# persistent session on the broker at PORT (MQTT 5, or VERSION such as
# mqttv311), in the background, writing
# "topic<TAB>qos<TAB>properties<TAB>payload" lines to FILE; returns once it
# is subscribed and receiving (a marker published to FILTER's first level,
# again every second or so, arrived), at most 40 s.  Sets PSUB_PID.
persistent_sub() {
	local port=$1 file=$2 id=$3 filter=$4 version=${5:-mqttv5} i
	mosquitto_sub -h 127.0.0.1 -p "$port" -V "$version" -c -i "$id" -q 2 \
		-t "$filter" -F '%t\t%q\t%P\t%p' >"$file" 2>"$file.err" &
	PSUB_PID=$!
	register_pid "$PSUB_PID"
	for ((i = 0; i < 40; i++)); do
		mosquitto_pub -h 127.0.0.1 -p "$port" -t "${filter%%/*}/marker" -m ready
		wait_until 1 "grep -q '	ready\$' '$file'" && return 0
	done
	diag "subscriber $id: no marker within 40 s"
	diag_file "$file.err"
	return 1
}

# The output at QoS 0 and at QoS 2, end to end: the same 500 commands as
# above arrive on qN-out/DEV/cmd, each once, in order per device, published
# at that QoS (the subscriber asks for QoS 2, so it gets each message at the
# QoS the router published it with), and the router's final counters add
# up.  At QoS 0 every hop is QoS 0, and "delivered" means written to the
# socket: on one host's loopback, with a broker that keeps running, that
# loses nothing.  At QoS 2 the publishers use QoS 2, but the input
# subscribes with QoS 1 and the test's subscriber speaks MQTT 3.1.1:
# mosquitto 2.0.11 (Debian 12) sends an MQTT 5 subscriber more
# unacknowledged QoS 2 messages than its Receive Maximum once a backlog is
# queued for it (fixed in mosquitto 2.0.13), and libmosquitto drops the
# connection over that (a protocol error).
qos_end_to_end() {
	local q=$1 in_q=$2 sub_version=$3 d pid pids pubs_ok=0 same=0 qsub=$TEST_TMPDIR/qos$1.tsv conf
	persistent_sub "$MQTT_PORT" "$qsub" "qos$q-test-sub" "q$q-out/#" "$sub_version" ||
		bail_out "the QoS $q subscriber did not get its marker"
	conf=$(router_config "qos$q" <<CONF
router = { workers = 3; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "qos$q-in";
	topics = [ "q$q-in/#" ]; qos = $in_q;
} );
outputs = ( {
	name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "qos$q-out";
	qos = $q; max_inflight = 100;
} );
routes = ( { match = "q$q-in/+dev/+what"; topic = "q$q-out/\${dev}/\${what}";
	key = "\${dev}"; default_headers = false; } );
CONF
)
	router_start "$conf" || bail_out "router did not start with qos = $q"
	pids=()
	for d in 1 2 3 4 5; do
		mqtt_pub -q "$q" -t "q$q-in/d$d/cmd" -l <"$TEST_TMPDIR/in.d$d" &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do
		wait "$pid" && pubs_ok=$((pubs_ok + 1))
	done
	assert_eq 5 "$pubs_ok" "QoS $q: the 5 publishers sent their 100 commands each"
	router_wait_received 500 30 || true
	wait_until 30 "[ \"\$(grep -c '^q$q-out/d[1-5]/cmd	' '$qsub')\" -ge 500 ]" ||
		diag "QoS $q: $(grep -c "^q$q-out/d[1-5]/cmd	" "$qsub") of 500 arrived within 30 s"
	router_stop
	assert_eq 0 "$ROUTER_RC" "QoS $q: SIGTERM stops the router cleanly"
	# after the router has gone: nothing more may come (no late duplicate)
	sub_mark "$MQTT_PORT" "$qsub" "q$q-out/marker" ||
		diag "QoS $q: the closing marker did not arrive"
	kill "$PSUB_PID" 2>/dev/null

	assert_eq 500 "$(grep -c "^q$q-out/d[1-5]/cmd	" "$qsub")" \
		"QoS $q: all 500 commands come out on q$q-out/DEV/cmd, none twice"
	for d in 1 2 3 4 5; do
		grep "^q$q-out/d$d/cmd	" "$qsub" | cut -f4 >"$TEST_TMPDIR/qos$q.d$d"
		cmp -s "$TEST_TMPDIR/in.d$d" "$TEST_TMPDIR/qos$q.d$d" && same=$((same + 1))
	done
	assert_eq 5 "$same" "QoS $q: each device's commands arrive exactly as sent, in order"
	assert_eq 0 "$(awk -F'\t' -v q="$q" '$1 ~ /\/cmd$/ && $2 != q' "$qsub" | wc -l)" \
		"QoS $q: the output published every one at QoS $q"
	assert_eq 500 "$(router_counter router.received)" "QoS $q: the router received 500"
	assert_eq 500 "$(router_counter router.delivered)" "QoS $q: and delivered 500"
	assert_eq "500 500 0 0 0" "$(router_counter out.published) $(router_counter out.delivered) $(router_counter out.retried) $(router_counter out.failed) $(router_counter router.lost)" \
		"QoS $q: the output published 500 and reported all 500 delivered: none retried, failed or lost"
}
qos_end_to_end 0 0 mqttv5
qos_end_to_end 2 1 mqttv311

# A restart of the broker while messages flow through the router (1000 a
# second for 3 s), with the input and the output on it: every message
# published by iotrouter-sim and acknowledged arrives on out/..., none
# lost.  Every client has the user name iotr (see the ACL file above).
conf=$(router_config restart <<CONF
router = { workers = 3; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "restart-in";
	username = "iotr"; topics = [ "in/#" ]; qos = 1;
	reconnect_min_ms = 100; reconnect_max_ms = 1000;
} );
outputs = ( {
	name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "restart-out";
	username = "iotr"; qos = 1; max_inflight = 200;
	reconnect_min_ms = 100; reconnect_max_ms = 1000;
} );
routes = ( { match = "in/+dev/+what"; topic = "out/\${dev}/\${what}"; key = "\${dev}"; } );
CONF
)
router_start "$conf" || bail_out "router did not start"
"$IOTROUTER_SIM" --host 127.0.0.1 --port "$MQTT_PORT" --username iotr --quiet \
	--devices 10 --count 3000 --rate 1000 --qos 1 --topic 'in/{device}/reading' &
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
assert_ge 2 "$(router_live_counter in.connects)" "and so did the input"

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

# A second broker, without limits, for the input and the dead letters below.
IN_PORT=$(free_port) || bail_out "no free port"
mkdir -p "$TEST_TMPDIR/in-broker"
printf 'user %s\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n' \
	"$(id -un)" "$IN_PORT" >"$TEST_TMPDIR/in-broker/mosquitto.conf"
"$MOSQUITTO_BIN" -c "$TEST_TMPDIR/in-broker/mosquitto.conf" >"$TEST_TMPDIR/in-broker/out" 2>&1 &
in_broker=$!
register_pid "$in_broker"
wait_for 10 _iotr_pid_listens "$in_broker" "$IN_PORT" || bail_out "the input's broker did not start"

# A message larger than the Maximum Packet Size the output's broker announces
# in its CONNACK (mosquitto: max_packet_size; MQTT 5) can never be
# published: the output refuses it at once and it is dead-lettered, with
# the sizes in the reason, while the messages before and after it (one of
# them close to the limit) arrive in order and the connection stays up.
# The input and the dead letters use the broker without a limit
# ($IN_PORT): the dead letter carries the whole payload.
stop_mosquitto
start_mosquitto "$TEST_TMPDIR/maxpacket" "max_packet_size 1024" ||
	bail_out "the broker with max_packet_size did not start"
big_sub=$TEST_TMPDIR/maxpacket.tsv
persistent_sub "$MQTT_PORT" "$big_sub" maxpacket-sub 'big/#' ||
	bail_out "the subscriber to the broker with max_packet_size is not ready"
dead_sub=$TEST_TMPDIR/maxpacket-dead.tsv
persistent_sub "$IN_PORT" "$dead_sub" maxpacket-dead-sub 'big-dead/#' ||
	bail_out "the dead-letter subscriber is not ready"
conf=$(router_config maxpacket <<CONF
router = { workers = 2; dead_letter_topic = "big-dead/d1"; dead_letter_output = "dead"; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = $IN_PORT; client_id = "maxpacket-in";
	topics = [ "big-in/#" ]; qos = 1;
} );
outputs = (
	{ name = "out"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "maxpacket-out"; qos = 1; },
	{ name = "dead"; plugin = "mqtt"; port = $IN_PORT; client_id = "maxpacket-dead"; qos = 1; }
);
routes = ( { name = "big"; match = "big-in/+dev"; topic = "big/\${dev}"; key = "\${dev}";
	output = "out"; default_headers = false; } );
CONF
)
router_start "$conf" || bail_out "router did not start against the broker with max_packet_size"
# 40 commands of one device: #21 has a payload of 4096 bytes, #22 of 900
# (with its topic, below the limit of 1024), the others about 40.
big_line() { # SEQ SIZE: a JSON line of exactly SIZE bytes
	local head
	head=$(printf '{"dev":"d1","seq":%d,"pad":"' "$1")
	printf '%s%s"}\n' "$head" "$(head -c $(($2 - ${#head} - 2)) /dev/zero | tr '\0' x)"
}
for i in $(seq 1 40); do
	case $i in
	21) big_line 21 4096 ;;
	22) big_line 22 900 ;;
	*) printf '{"dev":"d1","seq":%d,"cmd":"small"}\n' "$i" ;;
	esac
done >"$TEST_TMPDIR/big.in"
mosquitto_pub -h 127.0.0.1 -p "$IN_PORT" -q 1 -t big-in/d1 -l <"$TEST_TMPDIR/big.in" ||
	bail_out "publishing the commands to the input's broker failed"
wait_until 30 '[ "$(grep -c "^big/d1	" "$big_sub")" -ge 39 ] && grep -q "^big-dead/d1	" "$dead_sub"' ||
	diag "within 30 s: $(grep -c "^big/d1	" "$big_sub") of 39 messages, $(grep -c "^big-dead/d1	" "$dead_sub") dead letters"
grep "^big/d1	" "$big_sub" | cut -f4 >"$TEST_TMPDIR/big.out"
assert_cmd "the 39 commands around the large one (one of 900 bytes) arrive as sent, in order" \
	cmp "$TEST_TMPDIR/big.out" <(grep -v '"seq":21,' "$TEST_TMPDIR/big.in")
line=$(grep "^big-dead/d1	" "$dead_sub" | head -1)
assert_eq 4096 "$(printf '%s' "$line" | cut -f4 | tr -d '\n' | wc -c)" \
	"the 4096-byte command is dead-lettered, whole"
assert_match "iotrouter.error:[^	]*a message of 4096 bytes to \"big/d1\" [^	]*exceeds the maximum packet size of 1024 bytes of MQTT broker 127.0.0.1:$MQTT_PORT" \
	"$(printf '%s' "$line" | cut -f3)" "the dead letter's reason names the message's size and the broker's limit"
assert_eq 0 "$(router_live_counter out.disconnects)" \
	"the broker never saw the large message: the output's connection stayed up"
router_stop
assert_eq 0 "$ROUTER_RC" "SIGTERM stops the router cleanly"
assert_eq "40 40 1 0" "$(router_counter router.received) $(router_counter router.delivered) $(router_counter router.dead_lettered) $(router_counter router.lost)" \
	"the router received 40 and delivered 40 (one of them as a dead letter): none lost"
assert_eq "39 39 1 1" "$(router_counter out.published) $(router_counter out.delivered) $(router_counter out.failed) $(router_counter dead.delivered)" \
	"the output published 39 and failed 1, which went out as a dead letter"

tap_done
