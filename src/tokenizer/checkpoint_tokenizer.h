#pragma once
// The tokenizer of a checkpoint: the GGUF's embedded one, or the HF directory's tokenizer.json.
#include "io/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace atom {

// Throws atom::Error naming the checkpoint when it carries no tokenizer.
Tokenizer load_tokenizer(const Checkpoint& checkpoint);

}  // namespace atom
