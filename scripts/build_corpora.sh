#!/usr/bin/env bash
# Builds the plain-text corpora from Debian packages, with a fixed train/test split (idempotent, cached).
#   kjv:    King James Bible (bible-kjv).  train = Old Testament (Genesis-Malachi),
#                                           test  = New Testament (Matthew-Revelation).
#   austen: Jane Austen's novels (r-cran-janeaustenr). train = Sense & Sensibility, Pride & Prejudice,
#           Mansfield Park, Emma, Northanger Abbey; test = Persuasion.
# Calibration reads train splits only; perplexity reads test splits only.
# Output: $ATOM_CACHE/corpora/{kjv,austen}/{train,test}.txt  (default cache <repo>/.cache)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${ATOM_CACHE:-$ROOT/.cache}
DIR=$CACHE/corpora
mkdir -p "$DIR/kjv" "$DIR/austen"

# One verse per line, without the "Ge1:1 " reference.
kjv() { bible -f "$1" | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //'; }
if [[ ! -s $DIR/kjv/test.txt ]]; then
  kjv "Gen1:1-Mal4:6" > "$DIR/kjv/train.txt.tmp"
  kjv "Mat1:1-Rev22:21" > "$DIR/kjv/test.txt.tmp"
  mv "$DIR/kjv/train.txt.tmp" "$DIR/kjv/train.txt"
  mv "$DIR/kjv/test.txt.tmp" "$DIR/kjv/test.txt"
fi

if [[ ! -s $DIR/austen/test.txt ]]; then
  Rscript --vanilla -e '
    library(janeaustenr)
    b <- austen_books()
    args <- commandArgs(trailingOnly = TRUE)
    test <- b$book == "Persuasion"
    writeLines(as.character(b$text[!test]), args[1])
    writeLines(as.character(b$text[test]), args[2])
  ' "$DIR/austen/train.txt.tmp" "$DIR/austen/test.txt.tmp" >/dev/null
  mv "$DIR/austen/train.txt.tmp" "$DIR/austen/train.txt"
  mv "$DIR/austen/test.txt.tmp" "$DIR/austen/test.txt"
fi
for f in "$DIR"/*/*.txt; do echo "$f $(wc -c < "$f") bytes"; done
