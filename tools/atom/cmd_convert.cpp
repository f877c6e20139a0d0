// atom convert IN OUT_DIR: any checkpoint Atom reads -> a Hugging Face directory (config.json,
// model.safetensors, tokenizer.json, tokenizer_config.json) that transformers loads.
#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "common/error.h"
#include "common/half.h"
#include "common/progress.h"
#include "common/staged_dir.h"
#include "io/checkpoint.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom::cli {

namespace {
namespace fs = std::filesystem;

struct ConvertOptions {
  std::string input, output, dtype = "f32";
  bool force = false;
};

void write_json(const fs::path& path, const nlohmann::json& json) {
  std::ofstream out(path);
  out << json.dump(2) << "\n";
  if (!out) fail("cannot write '{}'", path.string());
}

void run_convert(const ConvertOptions& opt) {
  const DType out_dtype = opt.dtype == "f32" ? DType::F32 : opt.dtype == "f16" ? DType::F16 : DType::BF16;
  // Refuses an existing output without --force ("OUT/" is "OUT"). Everything goes to a fresh sibling
  // staging directory first, so a failure leaves the output as it was.
  StagedDir staged(opt.output, opt.force, "convert");
  const fs::path& tmp_dir = staged.staging();

  const Checkpoint ckpt = open_checkpoint(opt.input);
  const Tokenizer tokenizer = load_tokenizer(ckpt);

  const auto names = ckpt.tensors->names();
  std::vector<std::vector<std::uint8_t>> buffers;
  std::vector<SafetensorsWriteTensor> tensors;
  buffers.reserve(names.size());
  Progress progress("convert", static_cast<std::int64_t>(names.size()));
  for (const auto& name : names) {
    const TensorView& view = ckpt.tensors->get(name);
    const std::vector<float> values = ckpt.tensors->load_f32(name);
    std::vector<std::uint8_t> bytes(values.size() * (out_dtype == DType::F32 ? 4 : 2));
    if (out_dtype == DType::F32) {
      std::memcpy(bytes.data(), values.data(), bytes.size());
    } else {
      auto* dst = reinterpret_cast<std::uint16_t*>(bytes.data());
      for (std::size_t i = 0; i < values.size(); ++i)
        dst[i] = out_dtype == DType::F16 ? fp32_to_fp16(values[i]) : fp32_to_bf16(values[i]);
    }
    buffers.push_back(std::move(bytes));
    tensors.push_back({name, out_dtype, view.shape, buffers.back()});
    progress.advance(1, name);
  }
  progress.finish();
  write_safetensors((tmp_dir / "model.safetensors").string(), tensors, {{"format", "pt"}});

  HfConfigExtras extras;
  extras.torch_dtype = out_dtype == DType::F32 ? "float32" : out_dtype == DType::F16 ? "float16" : "bfloat16";
  if (auto bos = tokenizer.bos_id()) extras.bos_token_id = *bos;
  if (!tokenizer.eos_ids().empty()) extras.eos_token_id = tokenizer.eos_ids().front();
  write_json(tmp_dir / "config.json", hf_config_json(ckpt.config, extras));
  write_json(tmp_dir / "tokenizer.json", tokenizer.to_hf_tokenizer_json());
  write_json(tmp_dir / "tokenizer_config.json", tokenizer.to_hf_tokenizer_config_json());

  staged.commit();
  fmt::print("wrote {} ({} tensors, {})\n", opt.output, names.size(), opt.dtype);
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto opt = std::make_shared<ConvertOptions>();
  auto* cmd = app.add_subcommand("convert", "Convert a checkpoint (e.g. GGUF) to a Hugging Face directory");
  cmd->add_option("input", opt->input, "GGUF file or Hugging Face directory")->required();
  cmd->add_option("output", opt->output, "Output directory (must not exist unless --force)")->required();
  cmd->add_option("--dtype", opt->dtype, "Tensor dtype written: f32 (exact), f16 or bf16")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_flag("--force", opt->force, "Replace an existing output directory");
  cmd->callback([opt] { run_convert(*opt); });
}

}  // namespace atom::cli
