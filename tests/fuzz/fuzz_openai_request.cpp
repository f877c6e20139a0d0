// The OpenAI request parser (both endpoints): any body must give a request or a 4xx ApiError.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "server/openai_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (auto endpoint : {atom::ApiEndpoint::completions, atom::ApiEndpoint::chat_completions}) {
    try {
      (void)atom::parse_api_request(endpoint, body);
    } catch (const atom::ApiError& e) {
      if (e.status() < 400 || e.status() >= 500) {
        std::fprintf(stderr, "status %d for a request body: %s\n", e.status(), e.what());
        std::abort();
      }
      // As the server sends it (invalid UTF-8 of the request may be quoted in the message).
      (void)e.body().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  return 0;
}
