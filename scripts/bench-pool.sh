#!/usr/bin/env bash
# scripts/bench-pool.sh -- pool the runs that scripts/bench.sh recorded in
# bench/results/process.tsv and print, per invocation and over all of them
# (or over the commits given), the median of each measurement and the
# cedana/raw ratios. The figures in docs/benchmarks.md come from here.
#
#   bash scripts/bench-pool.sh                 # every invocation recorded
#   bash scripts/bench-pool.sh COMMIT…         # only invocations of these commits
#   RESULTS=FILE bash scripts/bench-pool.sh    # another results file
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench/results/process.tsv}
[ -s "$RESULTS" ] || { echo "no results in $RESULTS: run scripts/bench.sh first" >&2; exit 1; }
awk -F'\t' -v commits="$*" '
  BEGIN { n = split(commits, c, " "); for (i = 1; i <= n; i++) want[c[i]] = 1 }
  NR == 1 { next }
  n > 0 && !($2 in want) { next }
  {
    inv = $1 " " $2 " (" $3 " MiB)"
    if (!(inv in seen)) { seen[inv] = 1; order[++ninv] = inv }
    k = inv SUBSEP $5; vals[k] = vals[k] " " $6
    a = "all" SUBSEP $5; vals[a] = vals[a] " " $6; if ($5 == "raw_dump") runs[inv]++
  }
  function median(s,   arr, m, i, j, t) {
    m = split(s, arr, " ")
    for (i = 2; i <= m; i++) { t = arr[i] + 0; for (j = i - 1; j >= 1 && arr[j] + 0 > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
    if (m == 0) return ""
    return (m % 2) ? arr[(m + 1) / 2] : (arr[m / 2] + arr[m / 2 + 1]) / 2
  }
  function row(label, key,   rd, cd, rr, cr, fr, rc, cc) {
    rd = median(vals[key SUBSEP "raw_dump"]); cd = median(vals[key SUBSEP "cedana_dump"])
    rr = median(vals[key SUBSEP "raw_restore"]); cr = median(vals[key SUBSEP "cedana_restore"])
    fr = median(vals[key SUBSEP "floor_restore"])
    rc = median(vals[key SUBSEP "raw_restore_cold"]); cc = median(vals[key SUBSEP "cedana_restore_cold"])
    printf "| %s | %.3f / %.3f s = **%.2f×** | %.3f / %.3f s = **%.2f×** | %s | %s |\n", label, cd, rd, cd / rd, cr, rr, cr / rr, \
      (fr != "" ? sprintf("%.2f×", fr / rr) : "-"), (rc != "" && cc != "" ? sprintf("%.2f×", cc / rc) : "-")
  }
  END {
    print "| invocation | dump: cedana / raw | restore: cedana / raw | floor / raw | cold restore |"
    print "| --- | --- | --- | --- | --- |"
    for (i = 1; i <= ninv; i++) row(order[i] ", " runs[order[i]] " runs", order[i])
    if (ninv > 1) row("**pooled**", "all")
  }' "$RESULTS"
