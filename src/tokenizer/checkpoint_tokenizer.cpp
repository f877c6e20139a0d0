#include "tokenizer/checkpoint_tokenizer.h"

#include "common/error.h"
#include "io/gguf.h"

namespace atom {

Tokenizer load_tokenizer(const Checkpoint& checkpoint) {
  if (checkpoint.gguf) return Tokenizer::from_gguf(*checkpoint.gguf);
  if (checkpoint.tokenizer_json.empty())
    fail("checkpoint '{}' has no tokenizer.json: a tokenizer is needed to turn text into tokens", checkpoint.path);
  return Tokenizer::from_hf_files(checkpoint.tokenizer_json, checkpoint.tokenizer_config_json);
}

}  // namespace atom
