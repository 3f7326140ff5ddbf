#!/usr/bin/env bash
# kafka.sh - a throwaway single-node Apache Kafka broker (KRaft, broker+controller
# in one JVM) on 127.0.0.1, for iotrouter's integration tests.
#
# Kafka version: 4.4.0 (org.apache.kafka:kafka_2.13, see pom.xml beside this file),
# the newest release served by Maven Central here. Debian's librdkafka 2.0.2 (the
# library the router links against, and kcat's) was checked against it: plain
# produce (-K), idempotent produce (enable.idempotence=true, acks=all, zstd),
# consume to end (-e) and balanced consumer groups (-G) all work. Kafka 4.x removed
# old protocol versions, but librdkafka 2.0.2 negotiates newer ones, so the 3.9 line
# is not needed. To try another version: mvn ... -Dkafka.version=X (also change
# log4j.version in pom.xml to the log4j2 version that release depends on).
#
# Usage:
#   kafka.sh fetch          download the broker jars into the cache dir
#                           ($IOTR_KAFKA_HOME, default tests/kafka/lib); idempotent,
#                           instant when already there; start then works offline.
#   kafka.sh start DIR      write DIR/server.properties (free loopback ports), format
#                           DIR/data, start the broker in the background (DIR/kafka.log,
#                           DIR/kafka.pid, DIR/bootstrap, DIR/gc.log), wait until a
#                           metadata request succeeds, print "127.0.0.1:PORT" on stdout.
#                           Starting a DIR that was stopped restarts the same broker
#                           (same ports, same data): use it for broker-outage tests.
#   kafka.sh stop DIR       SIGTERM, wait (bounded), then SIGKILL. Idempotent.
#   kafka.sh status DIR     exit 0 and print the bootstrap if the broker is up.
#
# The broker: node 1 as broker+controller, PLAINTEXT on 127.0.0.1 only, topics
# auto-created with 4 partitions, every internal topic at replication factor 1,
# group.initial.rebalance.delay.ms=0, heap 512 MiB. Logs at INFO (without the
# config dumps) in DIR/kafka.log. A fresh start takes about 2.5 s here.
#
# Environment:
#   IOTR_KAFKA_HOME            jar cache dir (default: <this dir>/lib)
#   IOTR_KAFKA_START_TIMEOUT   seconds to wait for the broker (default 90)
#   IOTR_KAFKA_STOP_TIMEOUT    seconds to wait after SIGTERM (default 30)
#   KAFKA_HEAP_OPTS            default "-Xms512m -Xmx512m"
#   KAFKA_JVM_OPTS             JVM flags replacing the default (G1, short pauses)
#   JAVA_HOME / JAVA           the java to run (default: java on PATH)
#   MAVEN_ARGS                 extra arguments for mvn in fetch (e.g. -o)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB=${IOTR_KAFKA_HOME:-$HERE/lib}
START_TIMEOUT=${IOTR_KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=${IOTR_KAFKA_STOP_TIMEOUT:-30}

if [ -n "${JAVA:-}" ]; then
	:
elif [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
	JAVA=$JAVA_HOME/bin/java
else
	JAVA=java
fi

die() {
	printf 'kafka.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '/^# Usage:/,/^# Environment:/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

# ---------------------------------------------------------------- fetch

# The stamp records which pom.xml the cache was made from, so editing the pom
# (another version) refetches, and an interrupted fetch is never mistaken for
# a complete one.
pom_stamp() {
	sha256sum "$HERE/pom.xml" | cut -d' ' -f1
}

have_jars() {
	[ -f "$LIB/.complete" ] && [ "$(cat "$LIB/.complete")" = "$(pom_stamp)" ]
}

cmd_fetch() {
	if have_jars; then
		return 0
	fi
	command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install maven)"
	local tmp
	mkdir -p "$(dirname "$LIB")"
	tmp=$(mktemp -d "${LIB%/}.tmp.XXXXXX")
	# shellcheck disable=SC2086 # MAVEN_ARGS is a list of words on purpose
	if ! mvn -q -B -Dstyle.color=never ${MAVEN_ARGS:-} -f "$HERE/pom.xml" \
		dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory="$tmp" >"$tmp/mvn.log" 2>&1; then
		cat "$tmp/mvn.log" >&2
		rm -rf "$tmp"
		die "fetching the Kafka jars with Maven failed"
	fi
	rm -f "$tmp/mvn.log"
	ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || {
		rm -rf "$tmp"
		die "Maven ran but no kafka_2.13 jar arrived"
	}
	pom_stamp >"$tmp/.complete"
	rm -rf "$LIB"
	mv "$tmp" "$LIB"
}

# ---------------------------------------------------------------- helpers

# A TCP port on 127.0.0.1 that nothing uses now, outside the kernel's ephemeral
# range (so an outgoing connection cannot grab it between now and the bind).
# Ports given in $* are avoided as well.
pick_port() {
	local lo=20000 hi=32000 p i
	if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
		read -r i _ </proc/sys/net/ipv4/ip_local_port_range
		if [ "$i" -gt 12000 ] && [ "$i" -le 32768 ]; then hi=$((i - 1)); lo=$((i - 12000)); fi
	fi
	for i in $(seq 1 200); do
		p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
		case " $* " in *" $p "*) continue ;; esac
		if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
			echo "$p"
			return 0
		fi
	done
	die "no free TCP port found"
}

# Kafka's Uuid: 16 random bytes, URL-safe base64 without padding; Kafka's own
# generator also avoids a leading '-' (it reads like a command-line option).
random_uuid() {
	local u
	while :; do
		u=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
		case $u in -*) ;; *) break ;; esac
	done
	echo "$u"
}

# Is $1 a live broker of $DIR? Checked on its command line, so a recycled pid
# is never signalled. (No "| grep -q" in this script: under pipefail, grep -q
# quitting early can fail the pipeline through SIGPIPE in the writer.)
is_our_broker() {
	local -a argv
	[ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
	mapfile -d '' -t argv <"/proc/$1/cmdline" 2>/dev/null || return 1
	case " ${argv[*]} " in *" kafka.Kafka $DIR/server.properties "*) return 0 ;; esac
	return 1
}

# Every live broker of $DIR: the one in kafka.pid and, in case that file was
# lost or overwritten, any other process whose command line names DIR.
broker_pids() {
	local pid f known=
	if [ -f "$DIR/kafka.pid" ]; then
		known=$(cat "$DIR/kafka.pid")
		if is_our_broker "$known"; then echo "$known"; fi
	fi
	for f in /proc/[0-9]*; do
		pid=${f#/proc/}
		[ "$pid" != "$known" ] || continue
		if is_our_broker "$pid"; then echo "$pid"; fi
	done
}

metadata_ok() {
	local md
	md=$(kcat -L -b "$1" -m 5 2>/dev/null) || return 1
	case $md in *" 1 brokers:"*) return 0 ;; esac
	return 1
}

# The JVM command line up to the main class, in the array JCMD.
java_cmd() {
	local heap=${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}
	local opts=${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
	# shellcheck disable=SC2206 # the *_OPTS variables are lists of words
	JCMD=("$JAVA" $heap $opts
		"-Dlog4j2.configurationFile=$DIR/log4j2.properties"
		"-Dkafka.logs.dir=$DIR"
		-cp "$LIB/*")
}

write_config() {
	local port cport
	port=$(pick_port)
	cport=$(pick_port "$port")
	mkdir -p "$DIR/data"
	cat >"$DIR/server.properties" <<EOF
# written by tests/kafka/kafka.sh: single-node KRaft, loopback only
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.segment.bytes=67108864
EOF
	echo "127.0.0.1:$port" >"$DIR/bootstrap"
}

write_log4j() {
	cat >"$DIR/log4j2.properties" <<'EOF'
# written by tests/kafka/kafka.sh: INFO to stdout (-> kafka.log), without the config dumps
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
EOF
}

fail_start() {
	printf 'kafka.sh: %s\n' "$*" >&2
	signal_and_wait KILL 10 || true
	rm -f "$DIR/kafka.pid"
	if [ -f "$DIR/kafka.log" ]; then
		printf 'kafka.sh: last lines of %s:\n' "$DIR/kafka.log" >&2
		tail -n 40 "$DIR/kafka.log" | sed 's/^/    /' >&2
	fi
	exit 1
}

# ---------------------------------------------------------------- start / stop

# Does process $1 listen on 127.0.0.1:$2? (So a probe never mistakes another
# test run's broker on a colliding port for ours.)
pid_listens() {
	local l
	l=$(ss -Htlnp "( sport = :$2 )" 2>/dev/null) || return 1
	case $l in *"pid=$1,"*) return 0 ;; esac
	return 1
}

# Start the broker configured in $DIR and wait for it.
# Returns 0 when it answers, 1 when it died, 2 on time-out.
launch() {
	local bootstrap port pid deadline
	bootstrap=$(cat "$DIR/bootstrap")
	port=${bootstrap##*:}
	# stdin/stdout/stderr away from the caller, so "$(kafka.sh start DIR)" returns.
	# The java command itself goes to the background (not a function or a
	# subshell), so $! is the JVM's pid.
	java_cmd
	# Each GC pause with the wall clock in ms: scripts/bench lines them up
	# with its latency phases.
	"${JCMD[@]}" "-Xlog:gc:file=$DIR/gc.log:timemillis,uptime:filecount=0" \
		kafka.Kafka "$DIR/server.properties" </dev/null >>"$DIR/kafka.log" 2>&1 &
	pid=$!
	disown "$pid" # no "Killed" job notice from bash if fail_start kills it
	echo "$pid" >"$DIR/kafka.pid"
	deadline=$((SECONDS + START_TIMEOUT))
	until pid_listens "$pid" "$port" && metadata_ok "$bootstrap"; do
		kill -0 "$pid" 2>/dev/null || return 1
		[ "$SECONDS" -lt "$deadline" ] || return 2
		sleep 0.2
	done
}

format_new() {
	rm -rf "$DIR/data"
	write_config
	java_cmd
	if ! "${JCMD[@]}" kafka.tools.StorageTool format -t "$(random_uuid)" \
		-c "$DIR/server.properties" >"$DIR/format.log" 2>&1; then
		cat "$DIR/format.log" >&2
		die "formatting $DIR/data failed"
	fi
}

cmd_start() {
	command -v kcat >/dev/null 2>&1 || die "kcat not found (apt-get install kcat)"
	have_jars || cmd_fetch

	local pids bootstrap rc attempt
	pids=$(broker_pids)
	if [ -n "$pids" ]; then
		bootstrap=$(cat "$DIR/bootstrap")
		metadata_ok "$bootstrap" ||
			die "a broker (pid $(echo "$pids" | tr '\n' ' ')) runs in $DIR but does not answer at $bootstrap; stop it first"
		echo "$bootstrap"
		return 0
	fi

	write_log4j
	if [ -f "$DIR/server.properties" ] && [ -f "$DIR/data/meta.properties" ] && [ -f "$DIR/bootstrap" ]; then
		# restart of a stopped broker: same ports, same data
		rc=0
		launch || rc=$?
	else
		# fresh broker; if a port was taken between picking and binding, pick again
		for attempt in 1 2 3; do
			format_new
			rc=0
			launch || rc=$?
			if [ "$rc" -ne 1 ] || ! grep 'Address already in use' "$DIR/kafka.log" >/dev/null; then
				break
			fi
			echo "kafka.sh: port collision, retrying with other ports ($attempt)" >&2
			mv "$DIR/kafka.log" "$DIR/kafka.log.$attempt"
		done
	fi
	bootstrap=$(cat "$DIR/bootstrap")
	case $rc in
	0) echo "$bootstrap" ;;
	1) fail_start "the broker exited during startup" ;;
	*) fail_start "the broker did not answer at $bootstrap within ${START_TIMEOUT}s" ;;
	esac
}

# Signal every broker of $DIR with $1 and wait up to $2 seconds for them to go.
# Returns non-zero if one is still alive.
signal_and_wait() {
	local sig=$1 deadline=$((SECONDS + $2)) pid pids alive
	pids=$(broker_pids)
	for pid in $pids; do
		kill "-$sig" "$pid" 2>/dev/null || true
	done
	while :; do
		alive=
		for pid in $pids; do
			if is_our_broker "$pid"; then alive=1; fi
		done
		[ -n "$alive" ] || return 0
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

cmd_stop() {
	[ -d "$DIR" ] || return 0
	if ! signal_and_wait TERM "$STOP_TIMEOUT"; then
		echo "kafka.sh: broker in $DIR ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL" >&2
		signal_and_wait KILL 10 || die "broker in $DIR survived SIGKILL"
	fi
	rm -f "$DIR/kafka.pid"
}

cmd_status() {
	[ -n "$(broker_pids)" ] || return 1
	metadata_ok "$(cat "$DIR/bootstrap")" || return 1
	cat "$DIR/bootstrap"
}

# ---------------------------------------------------------------- main

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
fetch)
	[ $# -eq 0 ] || usage
	cmd_fetch
	;;
start | stop | status)
	[ $# -eq 1 ] || usage
	DIR=$1
	if [ "$cmd" = start ]; then mkdir -p "$DIR"; fi
	if [ -d "$DIR" ]; then DIR=$(cd "$DIR" && pwd -P); fi
	"cmd_$cmd"
	;;
-h | --help | help) usage ;;
*) usage ;;
esac
