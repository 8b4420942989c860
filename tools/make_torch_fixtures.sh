#!/usr/bin/env bash
# Regenerates tests/fixtures/torch_reference_*.json: for each fixture checkpoint below (written
# by weights/fixture.ts into a temp dir), the float64 torch reference (tools/torch_reference.py)
# logits for prompts of 1, 7 and 64 tokens and a 32-token greedy continuation of the 7-token
# prompt. tests/reference_model_test.ts rebuilds the same checkpoints from the recorded options.
# Run from the repository root: tools/make_torch_fixtures.sh
set -euo pipefail

PYTHON=/usr/bin/python3
OUT=tests/fixtures
# 64-token prompts store only these rows (first, second, middle, last two) to keep files small.
LONG_POSITIONS=0,1,31,62,63
GENERATE=32

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$OUT"

# name preset dtype shards omni fused tie
CASES=(
  "tiny_f32 TINY F32 1 false false false"
  "tiny_bf16 TINY BF16 1 false false false"
  "small_bf16 SMALL BF16 1 false false false"
  "omni_tiny_bf16 TINY BF16 3 true true false"
  "tiny_f16_fused_tied TINY F16 2 false true true"
)

# A prompt of n ids spread over the vocabulary: id_i = (7 + 37 i) mod V.
prompt() {
  "$PYTHON" -c "import sys; n, v = map(int, sys.argv[1:]); print(','.join(str((7 + 37 * i) % v) for i in range(n)))" "$1" "$2"
}

for case in "${CASES[@]}"; do
  read -r name preset dtype shards omni fused tie <<<"$case"
  dir="$tmp/$name"
  flags=(--out "$dir" --preset "$preset" --dtype "$dtype" --shards "$shards")
  [[ $omni == true ]] && flags+=(--omni)
  [[ $fused == true ]] && flags+=(--fused)
  [[ $tie == true ]] && flags+=(--tie)
  ./bin/deno run -A weights/fixture.ts "${flags[@]}" >/dev/null
  vocab=$("$PYTHON" -c "import json,sys; c=json.load(open(sys.argv[1])); c=c.get('thinker_config',{}).get('text_config',c); print(c['vocab_size'])" "$dir/config.json")
  "$PYTHON" tools/torch_reference.py --model "$dir" --ids "$(prompt 1 "$vocab")" >"$tmp/p1.json"
  "$PYTHON" tools/torch_reference.py --model "$dir" --ids "$(prompt 7 "$vocab")" \
    --generate "$GENERATE" >"$tmp/p7.json"
  "$PYTHON" tools/torch_reference.py --model "$dir" --ids "$(prompt 64 "$vocab")" \
    --positions "$LONG_POSITIONS" >"$tmp/p64.json"
  "$PYTHON" - "$OUT/torch_reference_$name.json" "$tmp" "$preset" "$dtype" "$shards" "$omni" \
    "$fused" "$tie" <<'EOF'
import json, sys
out, tmp, preset, dtype, shards, omni, fused, tie = sys.argv[1:]
record = {
    "generator": "tools/make_torch_fixtures.sh (tools/torch_reference.py, float64)",
    "fixture": {"preset": preset, "dtype": dtype, "shards": int(shards), "omni": omni == "true",
                "fusedExperts": fused == "true", "tieEmbeddings": tie == "true"},
    "cases": [json.load(open(f"{tmp}/{p}.json")) for p in ("p1", "p7", "p64")],
}
with open(out, "w") as f:
    json.dump(record, f, separators=(",", ":"))
    f.write("\n")
EOF
  echo "$OUT/torch_reference_$name.json ($(wc -c <"$OUT/torch_reference_$name.json") bytes)"
done
