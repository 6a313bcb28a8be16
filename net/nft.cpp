#include "net/nft.hpp"

#include <nftables/libnftables.h>

#include <mutex>

namespace vesicle::net {
namespace {
std::mutex& nft_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  return text;
}
} // namespace

Nft::~Nft() {
  std::lock_guard lock(nft_mutex());
  nft_ctx_free(ctx_);
}

Result<std::unique_ptr<Nft>> Nft::open(std::string namespace_label) {
  std::lock_guard lock(nft_mutex());
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  if (!ctx) return make_error("nft_ctx_new", "could not open a netfilter socket", namespace_label);
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  return std::unique_ptr<Nft>(new Nft(ctx, std::move(namespace_label)));
}

Result<std::string> Nft::run(std::string_view script) {
  std::lock_guard lock(nft_mutex());
  std::string text(script);
  int rc = nft_run_cmd_from_buffer(ctx_, text.c_str());
  std::string output = nft_ctx_get_output_buffer(ctx_);
  std::string errors = trim(nft_ctx_get_error_buffer(ctx_));
  if (rc != 0) {
    return make_error("nft", errors.empty() ? "failed without a message" : errors, "in " + label_);
  }
  return output;
}

Result<void> Nft::check(std::string_view script) {
  std::lock_guard lock(nft_mutex());
  std::string text(script);
  nft_ctx_set_dry_run(ctx_, true);
  int rc = nft_run_cmd_from_buffer(ctx_, text.c_str());
  nft_ctx_set_dry_run(ctx_, false);
  nft_ctx_get_output_buffer(ctx_);
  std::string errors = trim(nft_ctx_get_error_buffer(ctx_));
  if (rc != 0) return make_error("nft --check", errors, "in " + label_);
  return {};
}

} // namespace vesicle::net
