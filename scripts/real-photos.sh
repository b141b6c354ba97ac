#!/usr/bin/env bash
# Reproduces the README's "How good is it on real photos" figures on the
# shared grocery photos (and the Fruits-360 sample), with the verger binary
# given as $VERGER (default: the debug build of scripts/test.sh's target).
# About 45 minutes on 2 cores. Everything goes under $WORK (default
# out/real-photos); nothing in ../shared is touched.
#
#   scripts/real-photos.sh                 # all four experiments
#   VERGER=target/release/verger scripts/real-photos.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/verger-target}"
VERGER="${VERGER:-$target/debug/verger}"
WORK="${WORK:-out/real-photos}"
GROCERY=../shared/datasets/grocery-photos
SAMPLE=../shared/datasets/fruits360-sample
if [[ -z "${ORT_DYLIB_PATH:-}" ]]; then
    ORT_DYLIB_PATH="$PWD/$(ls -1 .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n 1)"
    export ORT_DYLIB_PATH
fi
[[ -x "$VERGER" ]] || { echo "no verger binary at $VERGER (cargo build, or set VERGER)" >&2; exit 1; }
mkdir -p "$WORK"

step() { printf '\n==> %s\n' "$*"; }

step "1. views: 22 per photo, train with negatives (answer fraction 0.9 and 0.8), evaluate on Validation"
"$VERGER" run --input "$GROCERY" --output "$WORK/grocery-views" --views training --overwrite
for fraction in 0.9 0.8; do
    "$VERGER" train --features "$WORK/grocery-views" --out "$WORK/model-views-$fraction" \
        --negatives other --answer-fraction "$fraction"
    "$VERGER" evaluate --classifier "$WORK/model-views-$fraction" --features "$WORK/grocery-views" \
        --test-split Validation
done
"$VERGER" report --input "$WORK/grocery-views" --out "$WORK/report" \
    --evaluation "$WORK/model-views-0.9/evaluation.json"

step "2. vegetables and cartons never seen: every third other/ label (sorted) held out"
held="$WORK/heldout-input"
rm -rf "$held"
mkdir -p "$held/other/Training" "$held/heldout"
cp -r "$GROCERY/fruit" "$held/fruit"
i=0
while IFS= read -r label; do
    if (( i % 3 == 2 )); then
        cp -r "$GROCERY/other/Training/$label" "$held/heldout/$label"
    else
        cp -r "$GROCERY/other/Training/$label" "$held/other/Training/$label"
    fi
    i=$((i + 1))
done < <(ls -1 "$GROCERY/other/Training" | LC_ALL=C sort)
"$VERGER" run --input "$held" --output "$WORK/heldout-views" --views training --overwrite
"$VERGER" train --features "$WORK/heldout-views" --out "$WORK/model-heldout" --negatives other
"$VERGER" evaluate --classifier "$WORK/model-heldout" --features "$WORK/heldout-views" \
    --test-split Validation --not-fruit heldout

step "3. one view per photo, for comparison (with negatives; fruit only with other/ scored)"
"$VERGER" run --input "$GROCERY" --output "$WORK/grocery" --overwrite
"$VERGER" run --input "$GROCERY/fruit" --output "$WORK/grocery-fruit" --overwrite
"$VERGER" train --features "$WORK/grocery" --out "$WORK/model-one-view" --negatives other
"$VERGER" evaluate --classifier "$WORK/model-one-view" --features "$WORK/grocery" --test-split Validation
"$VERGER" train --features "$WORK/grocery-fruit" --out "$WORK/model-fruit-only"
"$VERGER" evaluate --classifier "$WORK/model-fruit-only" --features "$WORK/grocery" \
    --test-split Validation --not-fruit other

step "4. Fruits-360 and grocery together (41 labels; Apple Granny Smith merged)"
both="$WORK/both-input"
rm -rf "$both"
for split in Training Test; do
    for dir in "$SAMPLE/$split"/*/; do
        label=$(basename "$dir")
        [[ "$label" == "Apple Granny Smith" ]] && label="Apple Granny-Smith"
        mkdir -p "$both/$split/$label"
        cp "$dir"* "$both/$split/$label/"
    done
done
for split in Training Validation; do
    for dir in "$GROCERY/fruit/$split"/*/; do
        label=$(basename "$dir")
        mkdir -p "$both/$split/$label"
        cp "$dir"* "$both/$split/$label/"
    done
done
"$VERGER" run --input "$both" --output "$WORK/both" --overwrite
"$VERGER" train --features "$WORK/both" --out "$WORK/model-both"
"$VERGER" evaluate --classifier "$WORK/model-both" --features "$WORK/both" --test-split Validation \
    --out "$WORK/model-both/evaluation-grocery.json"
"$VERGER" evaluate --classifier "$WORK/model-both" --features "$WORK/both" --test-split Test \
    --out "$WORK/model-both/evaluation-fruits360.json"
