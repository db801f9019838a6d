#!/usr/bin/env bash
# Prints the README's performance tables from fresh runs: the hot path by time (divan,
# `hot_path`; and interleaved, `hot_path_pairs`, over PLACEMENTS heap placements, default 16)
# and by instruction count (callgrind through gungraun, `hot_path_instructions`),
# and the layer's throughput ratio (`throughput`), each run RUNS times (default 3), the runs
# interleaved so that a busy moment of the machine does not land on one kind only.
#
# Within a run, `hot_path` runs PASSES times (default 3) back to back, and a contender's time
# figures are its fastest sample over the passes and the median of the passes' medians: on a
# shared VM a burst of load can cover one contender's whole half second of samples, and a
# single pass then reports the burst as that contender's cost.
#
#   benches/report.sh            # needs valgrind and gungraun-runner (see hot_path_instructions.rs)
#   RUNS=1 PASSES=1 benches/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
passes=${PASSES:-3}
placements=${PLACEMENTS:-16}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo bench --no-run --bench hot_path --bench hot_path_pairs --bench hot_path_instructions --bench throughput 2>"$out/build" ||
    { cat "$out/build" >&2; exit 1; }
for run in $(seq "$runs"); do
    echo "run $run/$runs" >&2
    for pass in $(seq "$passes"); do
        cargo bench -q --bench hot_path >"$out/time.$run.$pass" 2>/dev/null
    done
    for pad in $(seq 0 16 $((16 * (placements - 1)))); do
        PAIRS_HEAP_PAD=$pad PAIRS_ROUNDS=1000 cargo bench -q --bench hot_path_pairs 2>/dev/null
    done >"$out/pairs.$run"
    GUNGRAUN_COLOR=never cargo bench -q --bench hot_path_instructions >"$out/instr.$run" 2>/dev/null
    cargo bench -q --bench throughput >"$out/throughput.$run" 2>/dev/null
    THROUGHPUT_BASE=layer cargo bench -q --bench throughput >"$out/cae.$run" 2>/dev/null
done

# divan: "├─ name  fastest │ slowest │ median │ mean │ samples │ iters", then the allocation
# profiler's rows ("alloc:" and the next row holds the count). Prints "name fastest_ns median_ns
# allocations".
divan_rows() {
    awk -F'│' '
        function ns(text,   value, unit) {
            value = text; unit = text
            gsub(/[^0-9.]/, "", value); gsub(/[0-9. ]/, "", unit)
            if (unit == "ps") return value / 1000
            if (unit == "µs") return value * 1000
            if (unit == "ms") return value * 1000000
            return value + 0
        }
        /(├─|╰─) [a-z_]+ / {
            split($1, head, " "); name = head[2]
            fastest = $1; sub(/^.*─ [a-z_]+ +/, "", fastest)
            times[name] = sprintf("%.0f %.0f", ns(fastest), ns($3)); allocs[name] = 0
            order[++count] = name; row = ""; next
        }
        /(^|│) +alloc:/ { row = "alloc"; next }
        row == "alloc" { match($0, /[0-9.]+/); allocs[name] = substr($0, RSTART, RLENGTH) + 0 }
        { row = "" }
        END { for (i = 1; i <= count; i++) print order[i], times[order[i]], allocs[order[i]] }
    ' "$1"
}

# gungraun: "hot_path_instructions::hot_path::name calls_0:(…)" (N requests; calls_1 serves 2N),
# then "Instructions: count|…". Prints "name per_request", per_request = (Ir(2N) − Ir(N)) / N.
calls=$(sed -n 's/^const N: usize = \([0-9_]*\);/\1/p' benches/hot_path_instructions.rs | tr -d _)
instruction_rows() {
    awk -v calls="$calls" '
        /^hot_path_instructions::/ { split($1, path, "::"); name = path[3]; id = $2; sub(/:.*/, "", id) }
        /Instructions:/ {
            count = $2; sub(/\|.*$/, "", count); ir[name, id] = count
            if (!(name in seen)) { seen[name] = 1; order[++k] = name }
        }
        END {
            for (i = 1; i <= k; i++) {
                name = order[i]
                printf "%s %.0f\n", name, (ir[name, "calls_1"] - ir[name, "calls_0"]) / calls
            }
        }
    ' "$1"
}

# The passes of one run as one row per contender: "name fastest median allocations", the
# fastest of the fastest samples, the median of the medians, the most allocations.
combined_passes() {
    awk '
        { names[$1] = 1; n[$1]++; fastest[$1, n[$1]] = $2; median[$1, n[$1]] = $3
          if (!($1 in allocs) || $4 > allocs[$1]) allocs[$1] = $4
          if (!($1 in seen)) { seen[$1] = 1; order[++count] = $1 } }
        END {
            for (i = 1; i <= count; i++) {
                name = order[i]; k = n[name]; best = fastest[name, 1]
                for (j = 1; j <= k; j++) { if (fastest[name, j] < best) best = fastest[name, j]; m[j] = median[name, j] }
                # insertion sort of the medians, then the middle one
                for (a = 2; a <= k; a++) { v = m[a]; b = a - 1; while (b >= 1 && m[b] > v) { m[b + 1] = m[b]; b-- } m[b + 1] = v }
                print name, best, m[int((k + 1) / 2)], allocs[name]
            }
        }
    ' "$@"
}

for run in $(seq "$runs"); do
    for pass in $(seq "$passes"); do divan_rows "$out/time.$run.$pass" >"$out/time.$run.$pass.rows"; done
    combined_passes "$out/time.$run".*.rows >"$out/time.$run.rows"
    instruction_rows "$out/instr.$run" >"$out/instr.$run.rows"
done

field() { awk -v name="$2" -v column="$3" '$1 == name { print $column }' "$1"; }
joined() { # contender column file-kind: the three runs' figures, ", "-separated
    local figures=()
    for run in $(seq "$runs"); do figures+=("$(field "$out/$3.$run.rows" "$1" "$2")"); done
    local IFS=/; echo "${figures[*]}" | sed 's#/#, #g'
}

echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $(date -u '+%Y-%m-%d'); $(rustc --version); commit $(git rev-parse --short HEAD)"
echo
echo "| per request ($runs runs of $passes passes) | time, fastest (ns) | time, median (ns) | fastest ÷ \`SetRequestHeader\` | median ÷ \`SetRequestHeader\` | instructions | instructions ÷ \`SetRequestHeader\` | heap allocations |"
echo "|---|---|---|---|---|---|---|---|"
# contender column kind: its figure ÷ the static SetRequestHeader's, per run
over_floor() {
    local ratios=()
    for run in $(seq "$runs"); do
        ratios+=("$(awk -v name="$1" -v column="$2" '$1 == "set_request_header_static" { floor = $column } $1 == name { own = $column } END { printf "%.2f×", own / floor }' "$out/$3.$run.rows")")
    done
    local IFS=/; echo "${ratios[*]}" | sed 's#/#, #g'
}
for name in bare_service set_request_header_static set_request_header_shared bearer_token bearer_token_with_cae bearer_token_over_client bearer_token_with_cae_over_client set_request_header_shared_cloned bearer_token_cloned; do
    label=$(case $name in
        bare_service) echo "bare ready service" ;;
        set_request_header_static) echo "tower-http \`SetRequestHeader\` (static value)" ;;
        set_request_header_shared) echo "tower-http \`SetRequestHeader\` (value made at run time)" ;;
        bearer_token) echo "\`BearerToken\`" ;;
        bearer_token_with_cae) echo "\`BearerToken\` with \`enable_cae(true)\`" ;;
        bearer_token_over_client) echo "\`BearerToken\`, inner service cloned like a hyper-util client" ;;
        bearer_token_with_cae_over_client) echo "\`BearerToken\` with CAE, inner service cloned like a hyper-util client" ;;
        set_request_header_shared_cloned) echo "\`SetRequestHeader\` (run-time value), a clone of a template per request" ;;
        bearer_token_cloned) echo "\`BearerToken\`, a clone of a template per request" ;;
    esac)
    echo "| $label | $(joined "$name" 2 time) | $(joined "$name" 3 time) | $(over_floor "$name" 2 time) | $(over_floor "$name" 3 time) | $(joined "$name" 2 instr) | $(over_floor "$name" 2 instr) | $(joined "$name" 4 time) |"
done
for clock in tokio std; do
    name=clock_${clock}_instant_now
    echo "| clock read: $clock \`Instant::now()\` | $(joined "$name" 2 time) | $(joined "$name" 3 time) | | | |"
done
# plain cae file: the CAE contender's figure ÷ the plain one's
over_plain() {
    awk -v plain="$1" -v cae="$2" '$1 == plain { p = $2 } $1 == cae { c = $2 } END { printf "%.2f×", c / p }' "$3"
}
for inner in "" _over_client; do
    cae=()
    for run in $(seq "$runs"); do
        cae+=("$(over_plain "bearer_token$inner" "bearer_token_with_cae$inner" "$out/time.$run.rows") by fastest time, $(over_plain "bearer_token$inner" "bearer_token_with_cae$inner" "$out/instr.$run.rows") by instructions")
    done
    echo
    echo "CAE ÷ plain \`BearerToken\`${inner:+ (inner service cloned like a hyper-util client)}, per run: $(IFS=';'; echo "${cae[*]}" | sed 's/;/; /g')"
done
cloned=()
for run in $(seq "$runs"); do
    cloned+=("$(over_plain set_request_header_shared_cloned bearer_token_cloned "$out/time.$run.rows") by fastest time, $(over_plain set_request_header_shared_cloned bearer_token_cloned "$out/instr.$run.rows") by instructions")
done
echo
echo "A clone of a template per request, \`BearerToken\` ÷ \`SetRequestHeader\`, per run: $(IFS=';'; echo "${cloned[*]}" | sed 's/;/; /g')"
echo
echo "Interleaved (\`hot_path_pairs\`, services on the heap, the 5th percentile of each contender's batches), the median ratio over $placements heap placements (\`PAIRS_HEAP_PAD\` 0, 16, … bytes) and its range, per run:"
# "pair: A ÷ B: 1.234×" lines, one per pair and placement; per pair, one "median (min–max)" a run.
for run in $(seq "$runs"); do
    sed -n 's/^pair: //p' "$out/pairs.$run" | sed 's/×$//' |
        awk -F': ' -v run="$run" '{ if (!($1 in n)) order[++k] = $1; v[$1, ++n[$1]] = $2 }
            END { for (i = 1; i <= k; i++) { p = order[i]; m = n[p]
                for (a = 1; a <= m; a++) s[a] = v[p, a]
                for (a = 2; a <= m; a++) { x = s[a]; b = a - 1; while (b >= 1 && s[b] > x) { s[b + 1] = s[b]; b-- } s[b + 1] = x }
                mid = m % 2 ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2
                printf "%s\t%.3f× (%.3f–%.3f)\n", p, mid, s[1], s[m] } }'
done | awk -F'\t' '{ if (!($1 in r)) order[++k] = $1; r[$1] = r[$1] (r[$1] == "" ? "" : "; ") $2 }
    END { for (i = 1; i <= k; i++) print "- " order[i] ": " r[order[i]] }'
echo
# The rows of the throughput bench's table, per run, from the outputs named $1.RUN.
throughput_rows() {
    for run in $(seq "$runs"); do
        grep -E '^\| (wall clock|client CPU time) \|' "$out/$1.$run" | sed "s/^|/| $run |/"
    done
}
echo "Throughput: layer ÷ bare client per ABBA round, and the cost the median implies:"
echo
echo "| run | measure | bare client, per request (median) | layer ÷ bare (median) | IQR | min–max | layer's cost implied |"
echo "|---|---|---|---|---|---|---|"
throughput_rows throughput
echo
echo "Throughput with CAE: the layer with \`enable_cae(true)\` ÷ the layer per ABBA round:"
echo
echo "| run | measure | layer, per request (median) | CAE ÷ layer (median) | IQR | min–max | CAE's cost implied |"
echo "|---|---|---|---|---|---|---|"
throughput_rows cae
echo
echo "Heap allocations per request on the client's thread, per run:"
for run in $(seq "$runs"); do
    grep -h '^Heap allocations' "$out/throughput.$run" "$out/cae.$run" |
        sed -e 's/^Heap allocations per request on the client.s thread, median (min–max) over blocks: //' \
            -e "s/^/- run $run: /"
done
echo
echo "Commands: cargo bench --bench hot_path; cargo bench --bench hot_path_pairs; cargo bench --bench hot_path_instructions; cargo bench --bench throughput; THROUGHPUT_BASE=layer cargo bench --bench throughput (this table: benches/report.sh)"
