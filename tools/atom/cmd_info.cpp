// atom info PATH: architecture, sizes, tensor dtypes of a checkpoint.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <memory>
#include <string>

#include "commands.h"
#include "io/checkpoint.h"
#include "io/gguf.h"

namespace atom::cli {

namespace {

void run_info(const std::string& path, bool list_tensors) {
  const Checkpoint ckpt = open_checkpoint(path);
  const ModelConfig& c = ckpt.config;
  fmt::print("checkpoint     {} ({})\n", path,
             ckpt.format == CheckpointFormat::Gguf ? fmt::format("GGUF v{}", ckpt.gguf->version())
                                                   : std::string("Hugging Face directory"));
  fmt::print("architecture   {}\n", c.architecture);
  fmt::print("layers         {}\n", c.num_layers);
  fmt::print("hidden         {}  (intermediate {})\n", c.hidden_size, c.intermediate_size);
  fmt::print("heads          {} query, {} key/value, head_dim {}\n", c.num_heads, c.num_kv_heads, c.head_dim);
  fmt::print("vocab          {}\n", c.vocab_size);
  fmt::print("context        {}\n", c.max_position_embeddings);
  fmt::print("rope           theta {}{}\n", c.rope_theta,
             c.rope_scaling.type.empty() ? std::string()
                                         : fmt::format(", {} scaling x{}", c.rope_scaling.type, c.rope_scaling.factor));
  fmt::print("rms_norm_eps   {}\n", c.rms_norm_eps);
  fmt::print("tied embedding {}\n", c.tie_word_embeddings ? "yes" : "no");
  fmt::print("q/k/v bias     {}\n", c.attention_bias ? "yes" : "no");

  std::map<std::string, std::pair<int, std::int64_t>> by_dtype;  // dtype -> (tensors, elements)
  std::int64_t params = 0, bytes = 0;
  const auto names = ckpt.tensors->names();
  for (const auto& name : names) {
    const TensorView& t = ckpt.tensors->get(name);
    auto& [count, elems] = by_dtype[std::string(dtype_name(t.dtype))];
    ++count;
    elems += t.numel();
    params += t.numel();
    bytes += static_cast<std::int64_t>(t.nbytes);
  }
  fmt::print("parameters     {:.1f} M in {} tensors, {:.1f} MiB ({:.2f} bits/param)\n", params / 1e6, names.size(),
             bytes / 1048576.0, params ? 8.0 * bytes / params : 0.0);
  for (const auto& [dtype, ce] : by_dtype)
    fmt::print("  {:<6} {:>4} tensors {:>12} elements\n", dtype, ce.first, ce.second);
  if (list_tensors) {
    for (const auto& name : names) {
      const TensorView& t = ckpt.tensors->get(name);
      fmt::print("  {:<56} {:<5} [{}]\n", name, dtype_name(t.dtype), fmt::join(t.shape, ", "));
    }
  }
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print a checkpoint's architecture, sizes and tensor dtypes");
  auto path = std::make_shared<std::string>();
  auto list = std::make_shared<bool>(false);
  cmd->add_option("path", *path, "GGUF file or Hugging Face model directory")->required();
  cmd->add_flag("--tensors", *list, "List every tensor with its dtype and shape");
  cmd->callback([path, list] { run_info(*path, *list); });
}

}  // namespace atom::cli
