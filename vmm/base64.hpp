// Decoding base64: QEMU's ringbuf-read hands the console back in it, and
// hostd's MCP server (hostd/mcp.cpp) decodes files a client sends. Apart
// from vmm/qemu.cpp so the MCP fuzz target (tests/fuzz/fuzz_mcp.cpp) can
// link it without QEMU's code.
#pragma once

#include <string>
#include <string_view>

namespace vesicle::vmm::qemu {

// Lenient: characters outside the alphabet (padding, whitespace) are
// skipped, and trailing bits that make no whole byte are dropped.
std::string base64_decode(std::string_view text);

} // namespace vesicle::vmm::qemu
