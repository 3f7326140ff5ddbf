#!/usr/bin/env bash
# Self-test of tests/harness/lib.sh: TAP helpers, a real mosquitto (pub/sub
# round trip, a persistent session surviving a broker restart) and, when a real
# Kafka broker is there, kcat produce/count/dump.
#
#   tests/harness/selftest.sh                                   # MQTT only, Kafka skipped
#   IOTR_TEST_KAFKA=127.0.0.1:PORT tests/harness/selftest.sh    # the run-wide broker
#   IOTR_SELFTEST_OWN_KAFKA=1 tests/harness/selftest.sh         # start one of its own
set -u

# shellcheck source=tests/harness/lib.sh
. "$(dirname "$0")/lib.sh"

tmpdir_setup

# --- the helpers themselves
assert_eq "a b" "a b" "assert_eq on equal strings"
assert_ge 3 10 "assert_ge 10 >= 3"
assert_match '^[0-9]+$' "12345" "assert_match"
assert_cmd "assert_cmd on true" true
assert_fails "assert_fails on false" false
p1=$(free_port)
p2=$(free_port)
assert_match '^[0-9]+$' "$p1" "free_port gives a number ($p1)"
assert_ne "$p1" "$p2" "free_port gives distinct ports"
start=$SECONDS
if wait_for 1 false; then r=0; else r=1; fi
assert_eq "1 yes" "$r $([ $((SECONDS - start)) -le 3 ] && echo yes)" "wait_for times out"
assert_cmd "wait_for succeeds" wait_for 5 test -d "$TEST_TMPDIR"

# --- mosquitto
if ! start_mosquitto "$TEST_TMPDIR/mqtt"; then
	bail_out "mosquitto did not start"
fi
ok "mosquitto started on port $MQTT_PORT (pid $MQTT_PID)"

# Round trip: create the persistent session first (-E: exit once subscribed),
# so nothing is lost between starting the subscriber and publishing.
mqtt_sub -i selftest-rt -c -q 1 -t 'selftest/rt/#' -E
mqtt_sub -i selftest-rt -c -q 1 -t 'selftest/rt/#' -C 100 -W 20 -v >"$TEST_TMPDIR/rt.out" 2>&1 &
sub=$!
register_pid "$sub"
seq 1 100 | sed 's/^/msg-/' | mqtt_pub -q 1 -t selftest/rt/a -l
wait "$sub"
assert_eq 100 "$(grep -c '^selftest/rt/a msg-' "$TEST_TMPDIR/rt.out")" "MQTT pub/sub round trip of 100 messages"
assert_eq "selftest/rt/a msg-100" "$(tail -n 1 "$TEST_TMPDIR/rt.out")" "MQTT messages in order"

# Offline persistent session: messages queue in the broker, survive a restart.
mqtt_sub -i selftest-q -c -q 1 -t selftest/q -E
seq 1 50 | mqtt_pub -q 1 -t selftest/q -l
old_port=$MQTT_PORT
if restart_mosquitto; then
	ok "restart_mosquitto"
else
	not_ok "restart_mosquitto"
fi
assert_eq "$old_port" "$MQTT_PORT" "same port after restart"
got=$(mqtt_sub -i selftest-q -c -q 1 -t selftest/q -C 50 -W 10 | wc -l)
assert_eq 50 "$got" "queued QoS 1 messages survive a mosquitto restart"
stop_mosquitto
assert_fails "mosquitto stopped" mqtt_pub -t selftest/x -m x

# --- Kafka
B=$(kafka_bootstrap)
if [ -z "$B" ] && [ -n "${IOTR_SELFTEST_OWN_KAFKA:-}" ]; then
	if start_kafka "$TEST_TMPDIR/kafka"; then
		B=$KAFKA_BOOTSTRAP
		ok "start_kafka ($B)"
	else
		not_ok "start_kafka"
	fi
fi
if [ -z "$B" ]; then
	for t in "kcat produce" "kcat_count" "kcat_dump" "wait_kafka_count"; do
		skip "$t" "no Kafka broker (IOTR_TEST_KAFKA unset)"
	done
else
	topic=$(unique_name selftest)
	assert_cmd "kcat produces 1000 keyed messages to $topic" \
		bash -c "seq 1 1000 | awk '{print \"k\" (\$1 % 10) \":v\" \$1}' | kcat -P -b '$B' -t '$topic' -K: -X enable.idempotence=true"
	assert_eq 1000 "$(kcat_count "$B" "$topic")" "kcat_count"
	dump=$(kcat_dump "$B" "$topic" | sort -t v -k 2 -n)
	assert_eq "$(printf 'k1\tv1')" "$(printf '%s\n' "$dump" | head -n 1)" "kcat_dump prints key<TAB>payload"
	assert_eq 100 "$(printf '%s\n' "$dump" | grep -c '^k3	')" "kcat_dump: 100 records with key k3"
	assert_cmd "wait_kafka_count" wait_kafka_count "$B" "$topic" 1000 10
fi

tap_done
