#include "engine/token_id_codec.h"

#include "common/error.h"

namespace atom {
namespace {

class SilentDecoder final : public IncrementalDecoder {
 public:
  std::string push(std::int32_t) override { return {}; }
  std::string flush() override { return {}; }
};

}  // namespace

std::vector<std::int32_t> TokenIdCodec::encode(const std::string&, bool) const {
  fail("model '{}' has no tokenizer (random weights): give prompts as token ids", model_name_);
}

std::string TokenIdCodec::apply_chat_template(const std::vector<ChatMessage>&) const {
  fail("model '{}' has no tokenizer or chat template (random weights)", model_name_);
}

std::unique_ptr<IncrementalDecoder> TokenIdCodec::new_decoder() const {
  return std::make_unique<SilentDecoder>();
}

}  // namespace atom
