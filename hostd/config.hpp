// hostd's configuration: messages/config.proto, read from one file (text
// format, or JSON for a name ending in .json), with defaults for what the
// file leaves out and command-line overrides on top.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "common/result.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

// runtime_dir when the configuration names neither it nor state_dir
// (state_dir + "/run").
inline constexpr const char* kDefaultRuntimeDir = "/var/lib/vesicle/run";

struct ConfigOverrides {
  std::optional<std::string> listen;
  std::optional<std::string> state_dir;
  std::optional<std::string> images_dir;
  std::optional<std::string> log_level;
};

// Parses a configuration's text; `json` picks the format.
Result<config::HostdConfig> parse_config(const std::string& text, bool json);

// Reads the file (none: an empty configuration), applies the overrides,
// fills the defaults and checks the values.
Result<config::HostdConfig> load_config(const std::optional<std::filesystem::path>& file,
                                        const ConfigOverrides& overrides);

// Fills every unset field with its default (config.proto says which).
void apply_defaults(config::HostdConfig& config);

// Checks values that would otherwise fail later and less clearly.
Result<void> validate(const config::HostdConfig& config);

struct ListenAddress {
  std::string host;
  unsigned short port = 0;
};
// "127.0.0.1:7070", "[::1]:7070", "0.0.0.0:0" (port 0: any free port).
Result<ListenAddress> parse_listen_address(const std::string& text);

} // namespace vesicle::hostd
