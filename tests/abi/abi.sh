#!/bin/bash
# abi.sh - the plugin ABI is versioned, and the versioning is tested:
#  - a plugin built against each released header (frozen in tests/abi/vX.Y)
#    still loads and runs in a real route;
#  - plugins the router cannot use are refused, by `iotrouter --check` and by
#    --list-plugins, with a message naming the plugin, its file and why:
#    another major, a newer minor, no entry symbol, a NULL descriptor, a
#    descriptor too small, a NULL required callback of each kind, and a
#    library the plugin needs that cannot be found (dlopen's reason);
#  - <iotrouter/plugin.h> compiles on its own as strict C99 and as C++, and
#    a C++ plugin loads and runs.
. "$(dirname "$0")/../harness/lib.sh"
. "$(dirname "$0")/../harness/router.sh"
tmpdir_setup

: "${top_srcdir:=$IOTR_SRCDIR}" "${top_builddir:=$IOTR_SRCDIR}"
ABI_PLUGINS=$top_builddir/tests/abi/plugins/.libs
DEP_LIBDIR=$top_builddir/tests/abi/.libs
HEADER=$top_srcdir/router/iotrouter/plugin.h
major=$(sed -n 's/^#define IOTR_ABI_MAJOR \([0-9]*\).*/\1/p' "$HEADER")
minor=$(sed -n 's/^#define IOTR_ABI_MINOR \([0-9]*\).*/\1/p' "$HEADER")
ABI=$major.$minor
REBUILD="rebuild the plugin against this router's <iotrouter/plugin.h>"
[ -f "$ABI_PLUGINS/frozen_v1_0.so" ] ||
	bail_out "no test plugins in $ABI_PLUGINS: run this through make check"

# assert_line LINE OUTPUT DESC: OUTPUT has LINE as one whole line.
assert_line() {
	if grep -qxF -- "$1" <<<"$2"; then
		ok "$3"
	else
		not_ok "$3" "expected the line: $1" "in: $2"
	fi
}

# The regular expression that matches exactly the text $1.
re_quote() {
	printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'
}

# --- every refusal, through --check ------------------------------------------

# Each case: the instance name, its section, the plugin file, and the reason
# the loader must give after "plugin 'NAME' (PATH): ".
P=$ABI_PLUGINS
conf=$TEST_TMPDIR/refused.conf
cat >"$conf" <<CONF
inputs = (
	{ name = "nostop"; plugin = "input_no_stop"; }
);
transforms = (
	{ name = "major"; plugin = "abi_major2"; },
	{ name = "minor"; plugin = "$P/abi_minor99.so"; },
	{ name = "noentry"; plugin = "no_entry_symbol"; },
	{ name = "nulldesc"; plugin = "null_entry"; },
	{ name = "short"; plugin = "short_descriptor"; },
	{ name = "noprocess"; plugin = "transform_no_process"; },
	{ name = "nodep"; plugin = "needs_dep"; }
);
outputs = (
	{ name = "noflush"; plugin = "output_no_flush"; }
);
routes = ( { match = "a/#"; topic = "t"; } );
CONF
out=$("$IOTROUTER" --check -c "$conf" -P "$P" 2>&1); rc=$?
assert_eq 3 "$rc" "--check exits 3 when a plugin is refused"
assert_line "$conf:2: input 'nostop': plugin 'input_no_stop' ($P/input_no_stop.so): an input plugin must define stop(), and this one leaves it NULL" \
	"$out" "an input without stop() is refused, naming stop()"
assert_line "$conf:5: transform 'major': plugin 'abi_major2' ($P/abi_major2.so): built for ABI 2.0, this router provides $ABI; $REBUILD" \
	"$out" "a plugin of another major ABI is refused, naming both versions"
assert_line "$conf:6: transform 'minor': plugin 'abi_minor99' ($P/abi_minor99.so): built for ABI $major.99, this router provides $ABI; $REBUILD" \
	"$out" "a plugin of a newer minor ABI is refused, naming both versions"
assert_line "$conf:7: transform 'noentry': $P/no_entry_symbol.so is not an iotrouter plugin: it does not export iotr_plugin_entry()" \
	"$out" "a .so without the entry symbol is refused, naming the symbol"
assert_line "$conf:8: transform 'nulldesc': plugin $P/null_entry.so: iotr_plugin_entry() returned NULL" \
	"$out" "an entry point returning NULL is refused"
assert_match "$(re_quote "$conf:9: transform 'short': plugin 'short_descriptor' ($P/short_descriptor.so): descriptor is 16 bytes, too small for ABI $ABI")" \
	"$out" "a descriptor smaller than ABI 1.0's is refused"
assert_line "$conf:10: transform 'noprocess': plugin 'transform_no_process' ($P/transform_no_process.so): a transform plugin must define process(), and this one leaves it NULL" \
	"$out" "a transform without process() is refused, naming process()"
assert_line "$conf:11: transform 'nodep': cannot load plugin $P/needs_dep.so: libiotr_abi_dep.so: cannot open shared object file: No such file or directory; use ldd(1) to find a missing library" \
	"$out" "a plugin whose library is missing is refused with dlopen's reason"
assert_line "$conf:14: output 'noflush': plugin 'output_no_flush' ($P/output_no_flush.so): an output plugin must define flush(), and this one leaves it NULL" \
	"$out" "an output without flush() is refused, naming flush()"
assert_eq 9 "$(grep -cE "^$(re_quote "$conf"):[0-9]+: (input|transform|output) '" <<<"$out")" \
	"every refusal is reported in one run"

# --- a plugin of several kinds under one name (iotr_plugin_entries) -----------

conf=$TEST_TMPDIR/kinds.conf
cat >"$conf" <<CONF
inputs = ( { name = "in"; plugin = "two_kinds"; } );
transforms = ( { name = "misnamed"; plugin = "entries_misnamed"; } );
CONF
out=$("$IOTROUTER" --check -c "$conf" -P "$P" 2>&1)
assert_line "$conf:1: input 'in': plugin 'two_kinds' is a transform and output plugin; list it under transforms or outputs" \
	"$out" "a plugin of two kinds named in a third section names both kinds"
assert_line "$conf:2: transform 'misnamed': plugin $P/entries_misnamed.so: iotr_plugin_entries() lists 'something_else', but the plugin is named 'entries_misnamed'" \
	"$out" "iotr_plugin_entries() listing another name is refused"
cat >"$conf" <<CONF
inputs = ( { name = "in"; plugin = "kafka"; brokers = "127.0.0.1:9"; group_id = "g";
	topics = [ "a" ]; } );
transforms = ( { name = "t"; plugin = "two_kinds"; } );
outputs = ( { name = "o"; plugin = "two_kinds"; } );
routes = ( { match = "a"; topic = "t"; transforms = [ "t" ]; output = "o"; } );
CONF
out=$("$IOTROUTER" --check -c "$conf" -P "$P" -P "$IOTR_PLUGIN_DIR" 2>&1); rc=$?
assert_eq 0 "$rc" "one .so serves as a transform and as an output in one config" "$out"
out=$("$IOTROUTER" --help-plugin two_kinds -P "$P" 2>&1)
assert_match "two_kinds \(transform plugin.*two_kinds \(output plugin" "$(tr '\n' ' ' <<<"$out")" \
	"--help-plugin shows each kind of the plugin"

# The missing library is the only thing wrong with needs_dep: once the
# library can be found, the plugin loads.
out=$(LD_LIBRARY_PATH=$DEP_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
	"$IOTROUTER" --help-plugin needs_dep -P "$P" 2>&1); rc=$?
assert_eq "0 needs_dep (transform plugin" "$rc ${out%%,*}" \
	"with its library on the search path, needs_dep loads"

# --- every refusal, through --list-plugins -------------------------------------

mkdir "$TEST_TMPDIR/plugins"
for so in "$P"/*.so; do
	ln -s "$so" "$TEST_TMPDIR/plugins/"
done
L=$TEST_TMPDIR/plugins
out=$("$IOTROUTER" --list-plugins -P "$L" 2>&1); rc=$?
assert_eq 0 "$rc" "--list-plugins succeeds when some plugins are refused"
list_refused() { # FILE REASON DESC
	if grep -qE -- "^$(re_quote "$1") +refused +$(re_quote "$2")\$" <<<"$out"; then
		ok "$3"
	else
		not_ok "$3" "expected: $1  refused  $2" "in: $out"
	fi
}
list_refused abi_major2.so "plugin 'abi_major2' ($L/abi_major2.so): built for ABI 2.0, this router provides $ABI; $REBUILD" \
	"--list-plugins shows a plugin of another major as refused, with both versions"
list_refused abi_minor99.so "plugin 'abi_minor99' ($L/abi_minor99.so): built for ABI $major.99, this router provides $ABI; $REBUILD" \
	"--list-plugins shows a plugin of a newer minor as refused, with both versions"
list_refused no_entry_symbol.so "$L/no_entry_symbol.so is not an iotrouter plugin: it does not export iotr_plugin_entry()" \
	"--list-plugins shows a .so without the entry symbol as refused"
list_refused input_no_stop.so "plugin 'input_no_stop' ($L/input_no_stop.so): an input plugin must define stop(), and this one leaves it NULL" \
	"--list-plugins shows an input without stop() as refused"
list_refused transform_no_process.so "plugin 'transform_no_process' ($L/transform_no_process.so): a transform plugin must define process(), and this one leaves it NULL" \
	"--list-plugins shows a transform without process() as refused"
list_refused output_no_flush.so "plugin 'output_no_flush' ($L/output_no_flush.so): an output plugin must define flush(), and this one leaves it NULL" \
	"--list-plugins shows an output without flush() as refused"
list_refused needs_dep.so "cannot load plugin $L/needs_dep.so: libiotr_abi_dep.so: cannot open shared object file: No such file or directory; use ldd(1) to find a missing library" \
	"--list-plugins shows dlopen's reason for a plugin whose library is missing"
assert_cmd "--list-plugins lists the plugin built against the frozen 1.0 header" \
	grep -qE '^frozen_v1_0 +transform +1\.0\.0 +test transform built against the frozen ABI 1\.0 header$' <<<"$out"

# --- the header on its own: strict C99 and C++ ---------------------------------

CC=${CC:-cc}
CXX=${CXX:-c++}
if command -v "$CC" >/dev/null 2>&1; then
	assert_cmd "<iotrouter/plugin.h> alone compiles as C89 (-pedantic -Werror)" \
		"$CC" -std=c89 -pedantic -Wall -Wextra -Werror -fsyntax-only \
		-I"$top_srcdir/router" -x c - <<<'#include <iotrouter/plugin.h>'
	assert_cmd "a plugin compiles as C99 with -pedantic -Werror, the header first" \
		"$CC" -std=c99 -pedantic -Wall -Wextra -Werror -Wmissing-prototypes \
		-Wstrict-prototypes -fPIC -shared -I"$top_srcdir/router" \
		-o "$TEST_TMPDIR/c99_plugin.so" "$top_srcdir/tests/abi/header/c99_plugin.c"
else
	skip "<iotrouter/plugin.h> alone compiles as C89" "no C compiler ($CC)"
	skip "a plugin compiles as C99" "no C compiler ($CC)"
fi
cxx_ok=
if command -v "$CXX" >/dev/null 2>&1; then
	for std in c++98 c++11 c++17 c++20; do
		if ! "$CXX" -std=$std -x c++ -E /dev/null >/dev/null 2>&1; then
			skip "a C++ plugin compiles as $std" "$CXX does not know -std=$std"
			continue
		fi
		assert_cmd "a C++ plugin compiles as $std with -Wall -Wextra -pedantic -Werror" \
			"$CXX" -std=$std -Wall -Wextra -pedantic -Werror -fPIC -shared \
			-I"$top_srcdir/router" -o "$TEST_TMPDIR/cxx_$std.so" \
			"$top_srcdir/tests/abi/header/cxx_plugin.cpp"
		[ -f "$TEST_TMPDIR/cxx_$std.so" ] && cxx_ok=$TEST_TMPDIR/cxx_$std.so
	done
else
	skip "a C++ plugin compiles" "no C++ compiler ($CXX)"
fi
if [ -n "$cxx_ok" ]; then
	out=$("$IOTROUTER" --help-plugin "$cxx_ok" 2>&1)
	assert_match "^cxx_plugin \(transform plugin, version 1\.0\.0\): test transform written in C\+\+" \
		"$out" "the router loads the C++ plugin"
fi

# --- the frozen 1.0 plugin, in a real route -------------------------------------

out=$("$IOTROUTER" --help-plugin frozen_v1_0 -P "$P" 2>&1)
assert_match "^frozen_v1_0 \(transform plugin, version 1\.0\.0\)" "$out" \
	"--help-plugin describes the frozen 1.0 plugin"
assert_match "n +integer, default 3, 1\.\.10" "$out" \
	"its schema (type, default, range) reads as it was compiled"

[ -f "$IOTR_PLUGIN_DIR/mqtt.so" ] || {
	skip "the frozen 1.0 plugin runs in a route" "the mqtt plugin is not built"
	tap_done
	exit
}
start_mosquitto || bail_out "mosquitto did not start"
chain='"frozen"' cxx_instance=
if [ -n "$cxx_ok" ]; then
	chain='"frozen", "cxx"'
	cxx_instance=",{ name = \"cxx\"; plugin = \"$cxx_ok\"; tag = \"abi\"; }"
fi
conf=$(router_config frozen <<CONF
router = { workers = 2; dead_letter_topic = "dead"; inline_transforms = true; };
inputs = ( {
	name = "in"; plugin = "mqtt"; port = @MQTT_PORT@; client_id = "abi-test";
	topics = [ "abi/#" ]; qos = 1;
} );
transforms = (
	{ name = "frozen"; plugin = "$P/frozen_v1_0.so"; tag = "T"; n = 5;
	  on = true; ratio = 0.25; names = [ "a", "b" ]; }
	$cxx_instance
);
outputs = ( { name = "out"; plugin = "file"; path = "@DIR@/out.jsonl"; } );
routes = ( {
	match = "abi/+dev/+sensor"; topic = "t.\${dev}"; key = "\${dev}";
	headers = [ "sensor=\${sensor}", "x-remove-me=yes" ];
	default_headers = false;
	transforms = [ $chain ];
} );
CONF
)
router_start "$conf" || bail_out "the router did not start with the frozen plugin"
mqtt_pub -q 1 -t abi/dev-1/temp -m '{"v":1}'
mqtt_pub -q 1 -t abi/dev-2/temp -m 'drop'
mqtt_pub -q 1 -t abi/dev-3/temp -m 'fail'
router_wait_received 3 20 || true
wait_for 10 test "$(wc -l <"$TEST_TMPDIR/out.jsonl" 2>/dev/null || echo 0)" -ge 2
router_stop
assert_eq 0 "$ROUTER_RC" "the router with the frozen plugin stops cleanly"

log=$(cat "$ROUTER_LOG")
assert_match "\[plugin:frozen\] frozen ABI 1\.0 plugin 'frozen' runs in a host of ABI $major\.$minor: tag=T n=5 on=1 ratio=0\.25 set=11 names=a\+b levels=7" \
	"$log" "create() gets every parameter type, defaults included, and the host's ABI"
assert_match "route '[^']*': transform 'frozen' was built for plugin ABI 1\.0, before lanes \(1\.2\), so the route's transforms run on the workers" \
	"$log" "with inline_transforms, a route with a plugin older than lanes stays on the workers, and the log says why"
line=$(grep '"source_topic":"abi/dev-1/temp"' "$TEST_TMPDIR/out.jsonl")
assert_match '"topic":"t\.dev-1\.frozen"' "$line" "msg_dest and msg_set_dest work from a 1.0 plugin"
assert_match '"key":"v1\.0-dev-1"' "$line" "msg_key and msg_set_key work"
assert_match '"payload":\[\{"v":1\}\]' "$line" "msg_payload and msg_set_payload work"
assert_match '"x-frozen":"[^"]* topic=abi/dev-1/temp dest=t\.dev-1 key=dev-1 dev=dev-1 sensor=temp qos=1 retain=0 time=ok headers=sensor\+x-remove-me past_end=einval"' \
	"$line" "the message accessors (topic, capture, header, qos, time) read right"
assert_fails "msg_remove_header works" grep -q 'x-remove-me"' <<<"$line"
if [ -n "$cxx_ok" ]; then
	assert_match '"x-cxx":"c\+\+:abi"' "$line" "the C++ plugin runs after the frozen one"
fi
line=$(grep '"source_topic":"abi/dev-3/temp"' "$TEST_TMPDIR/out.jsonl")
assert_match '"topic":"dead".*"iotrouter\.error":"transform .frozen. failed: frozen_v1_0 was asked to fail"' \
	"$line" "IOTR_FAIL with msg_set_error dead-letters the message with the reason"
assert_eq 1 "$(router_counter router.dropped)" "IOTR_DROP drops the message"
assert_eq 3 "$(router_counter frozen.seen)" "the plugin's counter counts every message"

tap_done
