# shellcheck shell=bash
# tests/harness/router.sh - run iotrouter and the simulator in integration
# tests.  Source after lib.sh; needs $IOTROUTER and $IOTR_PLUGIN_DIR (set by
# `make check`), and honours $IOTR_WRAPPER (e.g. "valgrind -q
# --error-exitcode=99") to run the router under a checker.
#
#   router_config NAME <<'EOF' ... EOF   write $TEST_TMPDIR/NAME.conf, with
#                                        @MQTT_PORT@ and @DIR@ filled in
#   router_start CONF [ARGS...]          start it; waits until it runs
#   router_stop                          SIGTERM, wait; $ROUTER_RC
#   router_counter NAME                  a final counter from the log
#   sim [ARGS...]                        iotrouter-sim against the test broker

IOTROUTER=${IOTROUTER:-$IOTR_SRCDIR/iotrouter}
IOTROUTER_SIM=${IOTROUTER_SIM:-$IOTR_SRCDIR/iotrouter-sim}
IOTR_PLUGIN_DIR=${IOTR_PLUGIN_DIR:-$IOTR_SRCDIR/plugins/.libs}

router_config() {
	local f=$TEST_TMPDIR/$1.conf
	sed -e "s|@MQTT_PORT@|${MQTT_PORT:-1883}|g" -e "s|@DIR@|$TEST_TMPDIR|g" \
	    -e "s|@KAFKA@|${KAFKA:-}|g" >"$f"
	printf '%s\n' "$f"
}

# router_start CONF [ARGS...]: start the router in the background (log in
# $ROUTER_LOG) and wait until it runs and its MQTT inputs have subscribed.
router_start() {
	local conf=$1 n
	shift
	ROUTER_LOG=$TEST_TMPDIR/router.$((++_router_runs)).log
	# shellcheck disable=SC2086
	${IOTR_WRAPPER:-} "$IOTROUTER" -c "$conf" -P "$IOTR_PLUGIN_DIR" -v "$@" \
		>"$TEST_TMPDIR/router.stdout" 2>"$ROUTER_LOG" &
	ROUTER_PID=$!
	register_pid "$ROUTER_PID"
	# the mqtt inputs (not outputs): each logs "subscribed to" when ready
	n=$(awk '/^inputs *=/ { f = 1 } f && /plugin = "mqtt"/ { n++ }
		f && /\);/ { f = 0 } END { print n + 0 }' "$conf")
	if ! wait_for 60 _router_ready "$n"; then
		diag "the router did not start; its log:"
		diag_file "$ROUTER_LOG"
		return 1
	fi
}

_router_ready() {
	kill -0 "$ROUTER_PID" 2>/dev/null || return 2
	grep -q 'running with' "$ROUTER_LOG" || return 1
	[ "$(grep -c 'subscribed to' "$ROUTER_LOG")" -ge "$1" ]
}

# router_stop [TIMEOUT_S]: SIGTERM and wait; sets ROUTER_RC.
router_stop() {
	local t=${1:-60} i
	ROUTER_RC=0
	kill -TERM "$ROUTER_PID" 2>/dev/null || true
	for ((i = 0; i < t * 10; i++)); do
		kill -0 "$ROUTER_PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$ROUTER_PID" 2>/dev/null; then
		diag "the router did not stop within ${t}s; killing it"
		kill -KILL "$ROUTER_PID" 2>/dev/null
		ROUTER_RC=137
	fi
	wait "$ROUTER_PID" 2>/dev/null || ROUTER_RC=$?
}

# router_counter NAME: the value of a counter in the router's final line.
router_counter() {
	grep 'final counters' "$ROUTER_LOG" | tr ' ' '\n' |
		sed -n "s/^$1=//p" | tail -1
}

# router_live_counter NAME: a counter of the running router (asks with
# SIGUSR1 and reads the line it logs).
router_live_counter() {
	local before
	before=$(grep -c ' counters: ' "$ROUTER_LOG")
	kill -USR1 "$ROUTER_PID" 2>/dev/null || return 1
	wait_for 5 test "$(grep -c ' counters: ' "$ROUTER_LOG")" -gt "$before"
	grep ' counters: ' "$ROUTER_LOG" | tail -1 | tr ' ' '\n' |
		sed -n "s/^$1=//p"
}

# router_wait_received N [TIMEOUT_S]: wait until the router has taken in N
# messages (the broker may still be handing them over after the publisher
# is done).
router_wait_received() {
	local want=$1 t=${2:-60} end n=0
	end=$((SECONDS + t))
	while [ "$SECONDS" -lt "$end" ]; do
		n=$(router_live_counter router.received)
		[ "${n:-0}" -ge "$want" ] && return 0
		sleep 0.2
	done
	diag "the router received ${n:-0} of $want messages"
	return 1
}

sim() {
	"$IOTROUTER_SIM" --host 127.0.0.1 --port "${MQTT_PORT:?}" --quiet "$@"
}

# check_order FILE: FILE has "key<TAB>json" lines in consumption order (one
# partition per key); succeeds if each key's "seq" values strictly increase.
# Prints the first violation.
check_order() {
	awk -F'\t' '
	match($2, /"seq":[0-9]+/) {
		s = substr($2, RSTART + 6, RLENGTH - 6) + 0
		if (($1 in last) && s <= last[$1]) {
			printf "line %d: key %s seq %d after %d\n", NR, $1, s, last[$1]
			bad = 1
			exit 1
		}
		last[$1] = s
	}
	END { exit bad }' "$1"
}

# seq_report SENT FILE: FILE holds the payloads read back from Kafka (one
# per line, from iotrouter-sim).  Sets REPORT to "sent=N delivered=N
# missing=N duplicates=N", where delivered counts distinct (device, seq)
# pairs, and MISSING and DUPLICATES to those numbers.  SENT is what the
# publisher had acknowledged.  (Not in $(...): it sets variables.)
seq_report() {
	local sent=$1 file=$2 line
	line=$(awk -v sent="$sent" '
	match($0, /"device":"[^"]*"/) {
		d = substr($0, RSTART + 10, RLENGTH - 11)
		if (!match($0, /"seq":[0-9]+/))
			next
		k = d " " substr($0, RSTART + 6, RLENGTH - 6)
		total++
		if (seen[k]++)
			dups++
		else
			distinct++
	}
	END {
		printf "sent=%d delivered=%d missing=%d duplicates=%d\n",
		       sent, distinct, sent - distinct, dups
	}' "$file")
	REPORT=$line
	MISSING=$(sed -E 's/.*missing=(-?[0-9]+).*/\1/' <<<"$line")
	DUPLICATES=$(sed -E 's/.*duplicates=([0-9]+).*/\1/' <<<"$line")
}

# kafka_payloads BOOTSTRAP TOPIC...: every record's payload, one per line.
kafka_payloads() {
	local b=$1 t
	shift
	for t in "$@"; do
		kcat -C -b "$b" -t "$t" -o beginning -e -q -m 20 -f '%s\n' 2>/dev/null
	done
}

# wait_until TIMEOUT_S EXPR: evaluate the shell expression EXPR every 0.1 s
# until it succeeds (0) or TIMEOUT_S pass (1).  Unlike wait_for with a
# "$(...)" argument, the command substitutions in EXPR run every time.
wait_until() {
	local t=$1 expr=$2 end
	end=$((SECONDS + t))
	while :; do
		if eval "$expr" >/dev/null 2>&1; then return 0; fi
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.1
	done
}
