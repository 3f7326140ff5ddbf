#!/bin/bash
# mqtt_tls.sh - the mqtt input over TLS against a real mosquitto listener
# that requires client certificates: messages flow with the right CA and
# client certificate; a wrong CA and a missing client certificate each keep
# the router from subscribing, with a log line that says why.  The
# certificates are made here with openssl, valid for a day.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup
command -v openssl >/dev/null || skip_all "openssl is not installed"

pki=$TEST_TMPDIR/pki
mkdir -p "$pki"
# ca NAME: a self-signed CA; leaf NAME CA CN [SAN]: a certificate it signs
ca() {
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=$1" \
		-keyout "$pki/$1.key" -out "$pki/$1.crt" >/dev/null 2>&1
}
leaf() {
	local ext=$pki/$1.ext
	printf 'basicConstraints=CA:FALSE\n%s\n' "${4:+subjectAltName=$4}" >"$ext"
	openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$pki/$1.key" \
		-out "$pki/$1.csr" >/dev/null 2>&1 &&
	openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$2.crt" -CAkey "$pki/$2.key" \
		-CAcreateserial -days 1 -extfile "$ext" -out "$pki/$1.crt" >/dev/null 2>&1
}
ca test-ca && ca other-ca &&
	leaf server test-ca 127.0.0.1 "IP:127.0.0.1,DNS:localhost" &&
	leaf client test-ca iotrouter-test ||
	bail_out "openssl could not make the test certificates"

TLS_PORT=$(free_port) || bail_out "no free port"
start_mosquitto "" \
	"listener $TLS_PORT 127.0.0.1" \
	"cafile $pki/test-ca.crt" \
	"certfile $pki/server.crt" \
	"keyfile $pki/server.key" \
	"require_certificate true" || bail_out "mosquitto did not start"
wait_for 10 _iotr_pid_listens "$MQTT_PID" "$TLS_PORT" || bail_out "mosquitto does not listen on the TLS port"

# tls_conf NAME CA [CERT_LINES]: a router reading sensors/# over TLS
tls_conf() {
	router_config "$1" <<CONF
router = { workers = 1; };
inputs = ( {
	name = "in"; plugin = "mqtt"; host = "127.0.0.1"; port = $TLS_PORT;
	client_id = "tls-$1"; topics = [ "sensors/#" ]; qos = 1;
	tls = true; tls_ca_file = "$pki/$2.crt"; $3
	connect_timeout_ms = 3000;
} );
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/$1.jsonl"; } );
routes = ( { match = "sensors/#"; topic = "t"; } );
CONF
}

client_cert="tls_cert_file = \"$pki/client.crt\"; tls_key_file = \"$pki/client.key\";"
conf=$(tls_conf good test-ca "$client_cert")
router_start "$conf" || bail_out "the router did not connect over TLS"
assert_cmd "it connects over TLS with the CA and a client certificate" \
	grep -q "connected to 127.0.0.1:$TLS_PORT" "$ROUTER_LOG"
sim --devices 5 --count 200 --rate 0 --qos 1
wait_for 20 test "$(wc -l <"$TEST_TMPDIR/good.jsonl" 2>/dev/null || echo 0)" -ge 200
assert_eq 200 "$(wc -l <"$TEST_TMPDIR/good.jsonl")" "200 QoS 1 readings arrive through the TLS connection"
router_stop
assert_eq 0 "$ROUTER_RC" "and it stops cleanly"
assert_eq 0 "$(router_counter router.lost)" "none lost"

# refused NAME CONF PATTERN WHAT: a router that must not get a session: its
# log says PATTERN within 20 s, and it never subscribes.
refused() {
	local log=$TEST_TMPDIR/$1.log pid
	"$IOTROUTER" -c "$2" -P "$IOTR_PLUGIN_DIR" >"$log" 2>&1 &
	pid=$!
	register_pid "$pid"
	wait_for 20 grep -q "$3" "$log"
	assert_cmd "$4" grep -q "$3" "$log"
	assert_fails "and the router does not subscribe" grep -q "subscribed to" "$log"
	stop_pid "$pid" 20
}

refused wrongca "$(tls_conf wrongca other-ca "$client_cert")" \
	"warning: \[plugin:in\] .*certificate verify failed" \
	"a CA that did not sign the broker's certificate is reported as a failed verification"
refused nocert "$(tls_conf nocert test-ca "")" \
	"warning: \[plugin:in\] cannot connect.*certificate required" \
	"without the client certificate the listener requires, the router says so"

tap_done
