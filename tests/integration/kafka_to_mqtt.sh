#!/bin/bash
# kafka_to_mqtt.sh - the reverse path against a real Apache Kafka broker and a
# real mosquitto: commands produced to Kafka with kcat, keyed by vehicle, are
# consumed by the router's kafka input and published by its mqtt output on
# vehicles/<VIN>/commands.  Checks count, content, per-vehicle order, Kafka
# headers as MQTT 5 user properties, records without a key or with a key
# that would add topic levels dead-lettered, that a restarted router goes on
# after the offsets it committed, that with the write-ahead log kill -9
# loses no command whose offset was committed, that a property that
# would commit records early is refused, and that a Kafka outage while the
# input consumes (on a broker of the test's own) loses no command.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

# A property that would commit records before the router has them is
# refused at start-up, naming the fix (no broker needed for that).
cat >"$TEST_TMPDIR/bad.conf" <<'CONF'
inputs = ( { name = "cmd"; plugin = "kafka"; brokers = "127.0.0.1:9"; group_id = "g";
	topics = [ "t" ]; properties = [ "enable.auto.offset.store=true" ]; } );
outputs = ( { name = "out"; plugin = "stdout"; } );
routes = ( { match = "t"; topic = "x"; } );
CONF
out=$(timeout 30 "$IOTROUTER" -c "$TEST_TMPDIR/bad.conf" -P "$IOTR_PLUGIN_DIR" 2>&1); rc=$?
assert_eq 1 "$rc" "the router refuses to start with enable.auto.offset.store=true"
assert_match "properties: enable.auto.offset.store=true would commit records before the router has them; remove it" \
	"$out" "and says why and what to do"

KAFKA=$(kafka_bootstrap)
if [ -z "$KAFKA" ]; then
	skip "the reverse path end to end" "no real Kafka broker (IOTR_TEST_KAFKA unset; scripts/test starts one)"
	tap_done
	exit
fi
start_mosquitto || bail_out "mosquitto did not start"
run=$(unique_name rev)
topic=$run.commands
kcat -X allow.auto.create.topics=true -L -b "$KAFKA" -t "$topic" >/dev/null 2>&1

# produce_to BOOTSTRAP TOPIC FIRST COUNT: COUNT commands for 10 vehicles,
# seq FIRST.., keyed by VIN, each with the Kafka header issuer=ops.
produce_to() {
	local first=$3 count=$4
	awk -v f="$first" -v n="$count" 'BEGIN {
		for (i = f; i < f + n; i++)
			printf "VIN%02d|{\"vin\":\"VIN%02d\",\"seq\":%d,\"cmd\":\"unlock\"}\n",
				i % 10, i % 10, i
	}' | kcat -P -b "$1" -t "$2" -K '|' -H issuer=ops -X linger.ms=5
}

# produce FIRST COUNT: the same to $topic on the run's broker.
produce() {
	produce_to "$KAFKA" "$topic" "$@"
}

conf=$(router_config rev <<CONF
router = { workers = 2; dead_letter_topic = "$run/dead"; };
inputs = ( {
	name = "commands"; plugin = "kafka"; brokers = "@KAFKA@";
	group_id = "$run"; topics = [ "$topic" ];
} );
outputs = ( {
	name = "vehicles"; plugin = "mqtt"; port = @MQTT_PORT@;
	client_id = "$run-out"; protocol = "5"; qos = 1;
} );
routes = ( {
	name = "commands";
	match = "$topic";
	topic = "vehicles/\${key}/commands";
	default_headers = false;
} );
CONF
)
conf=${conf//@KAFKA@/$KAFKA}

# A subscriber that sees every command (and the dead letters) as
# "topic<TAB>properties<TAB>payload".
sub_start() {
	mqtt_sub_bg "$1" -V mqttv5 -q 1 -t 'vehicles/+/commands' -t "$run/dead" \
		-F '%t\t%P\t%p'
	SUB_PID=$MQTT_SUB_PID
	sleep 0.5
}
sub=$TEST_TMPDIR/sub.tsv
sub_start "$sub"

produce 0 1000
printf '{"vin":null,"cmd":"no key"}\n' | kcat -P -b "$KAFKA" -t "$topic"
printf 'VIN01/config|{"cmd":"slash"}\n' | kcat -P -b "$KAFKA" -t "$topic" -K '|'
router_start "$conf" || bail_out "router did not start"

wait_until 60 '[ "$(grep -c "/commands	" "$sub")" -ge 1000 ]'
assert_eq 1000 "$(grep -c "/commands	" "$sub")" "all 1,000 commands reach MQTT subscribers"
bad=$(awk -F'\t' '$1 ~ /commands$/ {
	split($1, lv, "/"); if (index($3, "\"vin\":\"" lv[2] "\"") == 0) n++
} END { print n + 0 }' "$sub")
assert_eq 0 "$bad" "each command is published on its own vehicle's topic (the Kafka key)"
assert_eq 1000 "$(grep "/commands	" "$sub" | sed -E 's/.*"seq":([0-9]+).*/\1/' | sort -u | wc -l)" \
	"no command is published twice"
order=$(awk -F'\t' '$1 ~ /commands$/ {
	match($3, /"seq":[0-9]+/); s = substr($3, RSTART + 6, RLENGTH - 6) + 0
	if ($1 in last && s < last[$1]) bad++
	last[$1] = s
} END { print bad + 0 }' "$sub")
assert_eq 0 "$order" "each vehicle's commands arrive in the order they were produced"
assert_match 'issuer:ops' "$(grep -m1 "/commands	" "$sub" | cut -f2)" \
	"Kafka headers become MQTT 5 user properties"
wait_until 20 'grep -q "^$run/dead	" "$sub"'
assert_match '"no key"' "$(grep "^$run/dead	" "$sub")" \
	"a record without a key (the route needs \${key}) is dead-lettered"
wait_until 20 'grep -q "^$run/dead	.*slash" "$sub"'
assert_match "cannot be one topic level" "$(grep "^$run/dead	.*slash" "$sub" | cut -f2)" \
	"a key with a '/' cannot add topic levels: dead-lettered with the reason"

router_stop
assert_eq 1002 "$(router_counter commands.received)" "the input counted every record it consumed"

# A restarted router goes on after the offsets it committed: only the new
# commands are published.
kill "$SUB_PID" 2>/dev/null
sub2=$TEST_TMPDIR/sub2.tsv
sub_start "$sub2"
produce 1000 200
router_start "$conf" || bail_out "router did not restart"
wait_until 60 '[ "$(grep -c "/commands	" "$sub2")" -ge 200 ]'
sleep 1
assert_eq 200 "$(grep -c "/commands	" "$sub2")" \
	"after a restart, exactly the 200 new commands are published"
assert_eq 0 "$(grep "/commands	" "$sub2" | grep -c '"seq":[0-9]\{1,3\},')" \
	"none of the commands from before the stop is published again"
router_stop

# With the write-ahead log, a command the router took is kept across kill -9
# even though its offset is already committed: the MQTT broker is down, so
# 300 commands wait in the router; it is killed after Kafka has the offsets;
# the broker comes back, and the restarted router publishes all 300.
wal_conf=$(sed -e 's|^router = { |router = { wal_dir = "'"$TEST_TMPDIR"'/wal"; |' \
	-e 's|topics = \[ "'"$topic"'" \];|&\n\tproperties = [ "auto.commit.interval.ms=200" ];|' \
	"$conf" | router_config rev-wal)
kill "$SUB_PID" 2>/dev/null
stop_mosquitto
router_start "$wal_conf" || bail_out "router did not start with the write-ahead log"
produce 2000 300
wait_until 60 '[ "$(router_live_counter commands.received)" -ge 300 ]'
assert_eq 300 "$(router_live_counter commands.received)" \
	"the router took the 300 commands while the MQTT broker was down"
sleep 2   # several automatic commits
kill -KILL "$ROUTER_PID" 2>/dev/null
wait "$ROUTER_PID" 2>/dev/null
restart_mosquitto || bail_out "mosquitto did not restart"
sub3=$TEST_TMPDIR/sub3.tsv
sub_start "$sub3"
router_start "$wal_conf" || bail_out "router did not restart after kill -9"
wait_until 60 '[ "$(grep "/commands	" "$sub3" | grep -c "\"seq\":2[0-9][0-9][0-9],")" -ge 300 ]'
assert_eq 300 "$(grep "/commands	" "$sub3" | sed -E 's/.*"seq":([0-9]+).*/\1/' | awk '$1 >= 2000' | sort -u | wc -l)" \
	"after kill -9, the write-ahead log delivers all 300 commands"
router_stop
assert_eq 0 "$(router_counter router.lost)" "none is lost"

# distinct_seqs FILE: how many of the commands 10000..30999 are in FILE
# (each counted once, however many copies arrived).
distinct_seqs() {
	grep "/commands	" "$1" | sed -E 's/.*"seq":([0-9]+).*/\1/' |
		awk '$1 >= 10000 && $1 < 31000' | sort -u | wc -l
}

# A Kafka outage while the input consumes, on a broker of the test's own
# (never the run's shared one): it is stopped while commands flow to MQTT,
# stays away for $IOTR_OUTAGE_SECONDS (default 15), comes back on the same
# address with the same data, and more commands are produced.  Every command
# arrives (at least once: a record whose offset was not committed yet may
# be read again, so duplicates are counted, not refused), each vehicle's in
# order, and the router neither crashes nor stops.
kafka_outage() {
	local own own_topic=$run.outage outage=${IOTR_OUTAGE_SECONDS:-15} conf_o
	local sub4=$TEST_TMPDIR/sub4.tsv taken copies distinct order

	start_kafka "$TEST_TMPDIR/kafka" || bail_out "the test's own Kafka broker did not start"
	own=$KAFKA_BOOTSTRAP
	produce_to "$own" "$own_topic" 10000 20000 ||
		bail_out "producing to the test's own Kafka broker failed"
	kill "$SUB_PID" 2>/dev/null
	sub_start "$sub4"
	# the run's configuration, on this broker, topic, group and client id
	conf_o=$(sed -e "s|brokers = \"[^\"]*\"|brokers = \"$own\"|" \
		-e "s|group_id = \"$run\"|group_id = \"$run-outage\"|" \
		-e "s|\"$topic\"|\"$own_topic\"|g" \
		-e "s|client_id = \"$run-out\"|client_id = \"$run-outage-out\"|" \
		"$conf" | router_config rev-outage)
	router_start "$conf_o" || bail_out "router did not start against the test's own Kafka"
	wait_until 60 '[ "$(grep -c "/commands	" "$sub4")" -ge 1 ]' ||
		diag "no command arrived within 60 s before the outage"
	diag "Kafka stops when $(grep -c "/commands	" "$sub4") of the first 20000 commands are on MQTT"
	stop_kafka || bail_out "tests/kafka/kafka.sh stop failed"
	wait_until 60 "grep -q 'Kafka error .*(brokers $own)' '$ROUTER_LOG'"
	assert_match "Kafka error [^ ]+: .*\(brokers $own\)" \
		"$(grep 'Kafka error' "$ROUTER_LOG" | head -1)" \
		"the router logs that Kafka is unreachable, naming the brokers"
	sleep "$outage"   # the outage itself
	taken=$(router_live_counter commands.received)
	assert_match '^[0-9]+$' "$taken" \
		"after ${outage}s without Kafka the router still runs and answers (it took ${taken:-?} records)"
	start_kafka "$KAFKA_DIR" || bail_out "Kafka did not come back"
	assert_eq "$own" "$KAFKA_BOOTSTRAP" "Kafka came back on the same address"
	produce_to "$own" "$own_topic" 30000 1000 ||
		bail_out "producing after Kafka came back failed"

	wait_until 120 '[ "$(distinct_seqs "$sub4")" -ge 21000 ]' ||
		diag "within 120 s of Kafka's return: $(distinct_seqs "$sub4") of 21000 commands"
	distinct=$(distinct_seqs "$sub4")
	copies=$(grep -c "/commands	" "$sub4")
	diag "Kafka outage ${outage}s: sent=21000 delivered=$distinct missing=$((21000 - distinct)) duplicates=$((copies - distinct))"
	assert_eq 21000 "$distinct" \
		"a ${outage}s Kafka outage while consuming loses no command (all 21,000 reach MQTT)"
	order=$(awk -F'\t' '$1 ~ /commands$/ {
		match($3, /"seq":[0-9]+/); s = substr($3, RSTART + 6, RLENGTH - 6) + 0
		if (seen[s]++) next
		if ($1 in last && s < last[$1]) bad++
		last[$1] = s
	} END { print bad + 0 }' "$sub4")
	assert_eq 0 "$order" "each vehicle's commands still arrive in the order they were produced"
	assert_cmd "the router is still running after the outage" kill -0 "$ROUTER_PID"
	router_stop
	assert_eq 0 "$ROUTER_RC" "SIGTERM then stops it cleanly"
	assert_ge 21000 "$(router_counter commands.received)" "the input counted every record it took"
	assert_eq "0 $(router_counter router.received)" \
		"$(router_counter router.lost) $(router_counter vehicles.delivered)" \
		"none lost: every command taken was acknowledged by the MQTT broker"
	stop_kafka
}
if kafka_available; then
	kafka_outage
else
	skip "a Kafka outage while the input consumes" \
		"cannot start a Kafka broker of the test's own (tests/kafka/kafka.sh fetch, java)"
fi

tap_done
