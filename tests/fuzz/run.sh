#!/bin/sh
# tests/fuzz/run.sh - build a libFuzzer target with clang and run it for a
# bounded time, from a seed corpus.
#
#   tests/fuzz/run.sh TARGET SECONDS   TARGET: wal, record, template, config,
#                                      luajson
#
# Needs clang (Debian: apt-get install clang).  The binary, the corpus it
# grows and any crashing input go under $FUZZ_OUT (default
# ${TMPDIR:-/tmp}/iotrouter-fuzz/TARGET), so a later run starts from what
# the last one found.  Exits 0 when the time ran out without a finding;
# otherwise non-zero, with the input that did it under .../artifacts/
# (replay it: $FUZZ_OUT/TARGET/fuzz FILE).
set -eu
cd "$(dirname "$0")/../.."

usage() { echo "usage: tests/fuzz/run.sh TARGET SECONDS   (TARGET: wal, record, template, config, luajson)" >&2; exit 2; }
[ $# -eq 2 ] || usage
target=$1
seconds=$2
case $seconds in ''|*[!0-9]*) usage ;; esac

cc=${CC_FUZZ:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
	echo "run.sh: $cc not found: install clang (apt-get install clang) or set CC_FUZZ" >&2
	exit 2
fi

out=${FUZZ_OUT:-${TMPDIR:-/tmp}/iotrouter-fuzz}/$target
mkdir -p "$out/corpus" "$out/artifacts"
# The fuzz build does not need ./configure: a stub config.h is enough.
printf '#define _GNU_SOURCE 1\n' > "$out/config.h"
flags="-g -O1 -fno-omit-frame-pointer -I$out -Irouter -pthread"
sanitize="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
# The router's own sources need jansson and libconfig.
flags="$flags $(pkg-config --cflags jansson libconfig)"
libs="$(pkg-config --libs jansson libconfig) -ldl"
dict=

case $target in
wal)
	src="tests/fuzz/fuzz_wal_replay.c router/wal.c"
	printf '"IWAL"\n"\\x01\\x01\\x00\\x00"\n"\\x02\\x01\\x00\\x00"\n' > "$out/dict"
	dict=$out/dict
	;;
record)
	# Message records as kept in the log (router/msg.c).
	src="tests/fuzz/fuzz_record.c router/msg.c router/route.c router/template.c"
	;;
template)
	# Topic filters, templates and ${json:...} extraction.
	src="tests/fuzz/fuzz_template.c router/msg.c router/route.c router/template.c router/instance.c"
	printf 'sensors/+site/+device/#\niot.${site}.${json:a.b.0}.${topic[1]}\nsensors/s1/d1/x\n{"a":{"b":[1.5,2]}}' \
		> "$out/corpus/seed-template"
	;;
config)
	# The configuration loader, seeded with the shipped examples.
	src="tests/fuzz/fuzz_config.c router/conf.c router/instance.c router/route.c router/template.c router/msg.c router/log.c router/metrics.c"
	cp config/*.conf "$out/corpus/" 2>/dev/null || true
	;;
luajson)
	# The lua plugin's JSON decoder against jansson's (Lua 5.4 too).
	src="tests/fuzz/fuzz_luajson.c tests/unit/luajson_oracle.c plugins/lua/luajson.c"
	flags="$flags -Iplugins/lua -Iplugins/common -Itests/unit $(pkg-config --cflags lua5.4)"
	libs="$libs $(pkg-config --libs lua5.4) -lm"
	cat > "$out/dict" <<'DICT'
"\\u"
"\\ud83d\\ude00"
"true"
"false"
"null"
"1e"
"-0."
DICT
	dict=$out/dict
	printf '{"device":"dev-0001","value":21.53,"seq":1234,"xs":[1,2.5e3,null,true],"s":"caf\303\251 \\u00e9\\n"}' \
		> "$out/corpus/seed-reading"
	;;
*)
	echo "run.sh: unknown target '$target' (known: wal, record, template, config, luajson)" >&2
	exit 2
	;;
esac

# shellcheck disable=SC2086
$cc $flags $sanitize -o "$out/fuzz" $src $libs
if [ "$target" = wal ] && [ -z "$(ls -A "$out/corpus")" ]; then
	# shellcheck disable=SC2086
	$cc $flags -DWAL_FUZZ_SEEDS -o "$out/seeds" $src
	"$out/seeds" "$out/corpus"
fi

# Run in slices of at most $FUZZ_SLICE seconds, each a fresh process: ASan
# keeps a record of every thread that ever ran, and the log starts one per
# open, so one long process would grow towards libFuzzer's RSS limit.
slice_max=${FUZZ_SLICE:-120}
left=$seconds
echo "run.sh: fuzzing $target for ${seconds}s (corpus $out/corpus)"
while [ "$left" -gt 0 ]; do
	slice=$((left < slice_max ? left : slice_max))
	LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS} \
	"$out/fuzz" -max_total_time="$slice" -timeout=10 -print_final_stats=1 \
		${dict:+-dict="$dict"} -artifact_prefix="$out/artifacts/" "$out/corpus"
	left=$((left - slice))
done
echo "run.sh: $target: no crash in ${seconds}s"
