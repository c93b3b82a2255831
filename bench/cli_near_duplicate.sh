#!/usr/bin/env bash
# The spine issue's literal procedure: `imagefinder index` the dev collection, then one
# `imagefinder search` process per query; scored with ../shared/benchmarks/score.py.
# usage: bench/cli_near_duplicate.sh [OUT.json]   (takes ~6 minutes: ~0.6 s per CLI search)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCHMARKS:-../shared/benchmarks}/near_duplicate
OUT=${1:-bench/results/cli_near_duplicate.json}
WORK=$(mktemp -d)
export IMAGEFINDER_HOME=$WORK/home
start=$(date +%s.%N)
.venv/bin/imagefinder index "$B/collection" --quiet > "$WORK/index.log"
indexed=$(date +%s.%N)
echo "query_file,rank,collection_file,score" > "$WORK/results.csv"
for q in "$B"/queries/*.jpg; do
  .venv/bin/imagefinder search "$q" -k 10 --json | .venv/bin/python -c '
import json, os, sys
body = json.load(sys.stdin)
for rank, r in enumerate(body["results"], 1):
    print(f"{os.path.basename(sys.argv[1])},{rank},{r[\"id\"]},{r[\"score\"]}")' "$q" >> "$WORK/results.csv"
done
done_at=$(date +%s.%N)
python3 "$B/../score.py" --gt "$B/ground_truth.csv" --results "$WORK/results.csv" --json "$WORK/scores.json" > /dev/null
.venv/bin/python - "$WORK" "$OUT" "$start" "$indexed" "$done_at" <<'PY'
import json, sys
work, out, start, indexed, done = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
scores = json.load(open(f"{work}/scores.json"))
queries = scores["overall"]["queries"]
result = {"index_command_s": round(indexed - start, 2), "index_summary": open(f"{work}/index.log").read().splitlines()[0],
          "search_commands": queries, "search_command_s_mean": round((done - indexed) / queries, 3),
          "overall": scores["overall"], "by_family": scores.get("by_family")}
json.dump(result, open(out, "w"), indent=1)
print(f"recall@1 {scores['overall']['recall@1']}  mAP {scores['overall']['mAP']}  uAP {scores['overall'].get('uAP')}  -> {out}")
PY
rm -rf "$WORK"
