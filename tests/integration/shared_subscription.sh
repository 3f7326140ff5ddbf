#!/bin/bash
# shared_subscription.sh - scaling out with MQTT shared subscriptions on a
# real mosquitto: two router instances in one $share group split the stream,
# one instance with connections = 2 does the same inside one process, and in
# normal operation every message is delivered exactly once.  A plain filter
# with connections = 2 is warned about (each message arrives twice).
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
start_mosquitto || bail_out "mosquitto did not start"

N=4000

# router_conf NAME CLIENT_ID TOPIC CONNECTIONS OUT: a router taking TOPIC
# into the file OUT, keyed by device.
router_conf() {
	router_config "$1" <<CONF
router = { workers = 2; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$2"; topics = [ "$3" ]; qos = 1; connections = $4;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/$5"; } );
routes = ( { match = "+root/+site/+device/+sensor"; topic = "t"; key = "\${device}"; } );
CONF
}

# "device seq" of every record in the files given
pairs() {
	cat "$@" 2>/dev/null | sed -nE 's/.*"key":"([^"]*)".*"seq":([0-9]+).*/\1 \2/p'
}

lines() {
	cat "$@" 2>/dev/null | wc -l
}

# Wait until the files hold at least $1 records in all, then a moment more
# so that a duplicate arriving late would be seen.
wait_records() {
	local want=$1
	shift
	WAIT_FILES=("$@")
	wait_until 60 '[ "$(lines "${WAIT_FILES[@]}")" -ge "$want" ]'
	sleep 1
}

# Both connections of an instance have subscribed (router_start waits for
# the first only).
subscribed_twice() {
	[ "$(grep -c 'subscribed to' "$ROUTER_LOG")" -ge 2 ]
}

# --- two instances, one group ------------------------------------------------

conf_a=$(router_conf a share-a '$share/g/sensors/#' 1 a.jsonl)
conf_b=$(router_conf b share-b '$share/g/sensors/#' 1 b.jsonl)
router_start "$conf_a" || bail_out "router a did not start"
pid_a=$ROUTER_PID log_a=$ROUTER_LOG
router_start "$conf_b" || bail_out "router b did not start"
pid_b=$ROUTER_PID log_b=$ROUTER_LOG

sim --topic 'sensors/{site}/{device}/{sensor}' --devices 20 --count $N --rate 0 --qos 1
wait_records $N "$TEST_TMPDIR/a.jsonl" "$TEST_TMPDIR/b.jsonl"
a=$(lines "$TEST_TMPDIR/a.jsonl")
b=$(lines "$TEST_TMPDIR/b.jsonl")
assert_eq $N "$((a + b))" "two instances in one \$share group write $N records between them"
assert_eq $N "$(pairs "$TEST_TMPDIR/a.jsonl" "$TEST_TMPDIR/b.jsonl" | sort -u | wc -l)" \
	"every device's every seq is there, none twice"
assert_eq 20 "$(pairs "$TEST_TMPDIR/a.jsonl" "$TEST_TMPDIR/b.jsonl" | cut -d' ' -f1 | sort -u | wc -l)" \
	"from all 20 devices"
assert_ge $((N / 10)) "$a" "instance a takes a share of the load ($a)"
assert_ge $((N / 10)) "$b" "instance b takes a share of the load ($b)"

ROUTER_PID=$pid_a ROUTER_LOG=$log_a
router_stop
assert_eq 0 "$ROUTER_RC" "instance a stops cleanly"
ra=$(router_counter router.received)
assert_eq 0 "$(router_counter router.lost)" "instance a lost nothing"
ROUTER_PID=$pid_b ROUTER_LOG=$log_b
router_stop
assert_eq 0 "$ROUTER_RC" "instance b stops cleanly"
rb=$(router_counter router.received)
assert_eq 0 "$(router_counter router.lost)" "instance b lost nothing"
assert_eq $N "$((ra + rb))" "the instances received $N messages between them"

# --- one instance, two connections ---------------------------------------------

conf_c=$(router_conf c share-c '$share/g2/plant/#' 2 c.jsonl)
router_start "$conf_c" || bail_out "router c did not start"
wait_for 10 subscribed_twice
assert_match 'connected to 127.0.0.1:[0-9]+ as "share-c" ' "$(grep 'connected to' "$ROUTER_LOG")" \
	"the first connection uses client_id as it is"
assert_match 'connected to 127.0.0.1:[0-9]+ as "share-c-1" ' "$(grep 'connected to' "$ROUTER_LOG")" \
	"the second connection uses client_id-1"
assert_eq 2 "$(grep -c 'subscribed to "\$share/g2/plant/#" (QoS 1) as "share-c' "$ROUTER_LOG")" \
	"both connections subscribe to the shared filter"

sim --topic 'plant/{site}/{device}/{sensor}' --devices 20 --count $N --rate 0 --qos 1
wait_records $N "$TEST_TMPDIR/c.jsonl"
assert_eq $N "$(lines "$TEST_TMPDIR/c.jsonl")" "connections = 2 with a shared filter writes $N records"
assert_eq $N "$(pairs "$TEST_TMPDIR/c.jsonl" | sort -u | wc -l)" "each of them once"
router_stop
assert_eq 0 "$ROUTER_RC" "it stops cleanly"
assert_eq $N "$(router_counter router.received)" "and counts $N messages received"
assert_eq 2 "$(router_counter in.connects)" "over two connections"
assert_eq 0 "$(router_counter router.lost)" "none lost"

# --- a plain filter with two connections --------------------------------------

conf_d=$(router_conf d share-d 'dup/#' 2 d.jsonl)
router_start "$conf_d" || bail_out "router d did not start"
wait_for 10 subscribed_twice
assert_match 'warning: .*connections = 2 but topics\[0\] = "dup/#" is not a shared subscription' \
	"$(grep 'not a shared subscription' "$ROUTER_LOG")" \
	"a plain filter with connections = 2 is warned about"
sim --topic 'dup/{site}/{device}/{sensor}' --devices 5 --count 100 --rate 0 --qos 1
wait_records 200 "$TEST_TMPDIR/d.jsonl"
router_stop
assert_eq 200 "$(router_counter router.received)" "and each message is received twice, as the warning says"

# --- the parameter's range ------------------------------------------------------

conf_e=$(router_conf e share-e '$share/g/x/#' 65 e.jsonl)
assert_fails "connections = 65 is refused (range 1..64)" \
	"$IOTROUTER" --check -c "$conf_e" -P "$IOTR_PLUGIN_DIR"
conf_e=$(router_conf e share-e '$share/g/x/#' 0 e.jsonl)
assert_fails "connections = 0 is refused" \
	"$IOTROUTER" --check -c "$conf_e" -P "$IOTR_PLUGIN_DIR"

tap_done
