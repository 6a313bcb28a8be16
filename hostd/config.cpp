#include "hostd/config.hpp"

#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "common/log.hpp"
#include "hostd/json.hpp"
#include "hostd/network.hpp"
#include "hostd/tiers.hpp"

namespace vesicle::hostd {

namespace {

// Collects the text-format parser's complaints (it names line and column).
class ErrorCollector : public google::protobuf::io::ErrorCollector {
public:
  void AddError(int line, int column, const std::string& message) override {
    if (!text.empty()) text += "; ";
    text += "line " + std::to_string(line + 1) + " column " + std::to_string(column + 1) + ": " +
            message;
  }
  std::string text;
};

} // namespace

Result<config::HostdConfig> parse_config(const std::string& text, bool json) {
  config::HostdConfig config;
  if (json) {
    auto parsed = from_json(text, config);
    if (!parsed) return std::move(parsed).error();
    return config;
  }
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config))
    return make_error("parse configuration",
                      errors.text.empty() ? "invalid text format" : errors.text);
  return config;
}

void apply_defaults(config::HostdConfig& c) {
  if (c.listen().empty()) c.set_listen("127.0.0.1:7070");
  if (c.log_level().empty()) c.set_log_level("info");
  if (c.state_dir().empty()) c.set_state_dir("/var/lib/vesicle");
  if (c.images_dir().empty()) c.set_images_dir(c.state_dir() + "/images");
  if (c.runtime_dir().empty()) c.set_runtime_dir(c.state_dir() + "/run");
  if (c.shm_dir().empty()) c.set_shm_dir("/dev/shm");
  if (c.max_sandboxes() == 0) c.set_max_sandboxes(8);
  if (c.default_vcpus() == 0) c.set_default_vcpus(2);
  if (c.default_memory_mib() == 0) c.set_default_memory_mib(1024);
  if (c.max_vcpus() == 0) c.set_max_vcpus(8);
  if (c.max_memory_mib() == 0) c.set_max_memory_mib(16384);
  if (c.boot_timeout_s() == 0) c.set_boot_timeout_s(90);
  if (!c.has_boot_stall_timeout_s()) c.set_boot_stall_timeout_s(20);
  if (c.qemu_binary().empty()) c.set_qemu_binary("qemu-system-x86_64");
  // 64 by measurement (BENCHMARKS.md, "Memory per sandbox"): an idle pool
  // sandbox touches ~20 MiB of it at any size from 32 up, and every smaller
  // size tried made a pandas cell cost measurably more CPU (48: +25%, 32:
  // 2x, 16: 6x; 8 could not even import numpy within the call deadline).
  if (c.tcg_translation_cache_mib() == 0) c.set_tcg_translation_cache_mib(64);
  if (c.tcg_thread().empty()) c.set_tcg_thread("single");
  if (c.max_json_body_bytes() == 0) c.set_max_json_body_bytes(1u << 20);
  if (c.request_timeout_s() == 0) c.set_request_timeout_s(30);
  if (c.write_timeout_s() == 0) c.set_write_timeout_s(60);
  if (c.max_connections() == 0) c.set_max_connections(256);
  if (c.templates_dir().empty()) c.set_templates_dir(c.state_dir() + "/templates");
  if (c.spaces_dir().empty()) c.set_spaces_dir(c.state_dir() + "/spaces");
  auto* admission = c.mutable_admission();
  if (admission->memory_reserve_mib() == 0) admission->set_memory_reserve_mib(1024);
  if (admission->memory_overcommit() == 0) admission->set_memory_overcommit(1.0);
  if (admission->vm_overhead_mib() == 0)
    admission->set_vm_overhead_mib(c.tcg_translation_cache_mib() + 96);
  if (admission->disk_reserve_mib() == 0) admission->set_disk_reserve_mib(1024);
  if (admission->disk_overcommit() == 0) admission->set_disk_overcommit(1.0);
  auto* agent = c.mutable_agent_deadlines();
  if (agent->exec_grace_s() == 0) agent->set_exec_grace_s(15);
  if (agent->call_timeout_s() == 0) agent->set_call_timeout_s(30);
  if (agent->liveness_s() == 0) agent->set_liveness_s(60);
  auto* confinement = c.mutable_confinement();
  if (confinement->uid_first() == 0) confinement->set_uid_first(1'900'000'000);
  if (confinement->uid_count() == 0) confinement->set_uid_count(65536);
  if (confinement->cgroup_parent().empty()) {
    std::string parent = "vesicle";
    if (c.runtime_dir() != kDefaultRuntimeDir) {
      char hash[9];
      std::snprintf(hash, sizeof hash, "%08x",
                    static_cast<unsigned>(std::hash<std::string>{}(c.runtime_dir())));
      parent += std::string("-") + hash;
    }
    confinement->set_cgroup_parent(parent);
  }
  if (c.disable_pools()) {
    c.clear_pools();
  } else if (c.pools_size() == 0) {
    auto* pool = c.add_pools();
    pool->add_preload_modules("numpy");
    pool->add_preload_modules("pandas");
  }
  for (auto& pool : *c.mutable_pools()) {
    if (pool.template_().empty()) pool.set_template_("default");
    if (pool.vcpus() == 0) pool.set_vcpus(c.default_vcpus());
    if (pool.memory_mib() == 0) pool.set_memory_mib(c.default_memory_mib());
    if (!pool.has_min_ready()) pool.set_min_ready(2);
    if (pool.max() == 0) pool.set_max(8);
  }
  apply_tier_defaults(c);
  apply_network_defaults(c);
}

Result<ListenAddress> parse_listen_address(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size())
    return make_error("parse listen address", "expected address:port, e.g. 127.0.0.1:7070", text);
  ListenAddress address;
  address.host = text.substr(0, colon);
  if (address.host.size() >= 2 && address.host.front() == '[' && address.host.back() == ']')
    address.host = address.host.substr(1, address.host.size() - 2);
  if (address.host.empty())
    return make_error("parse listen address", "the address part is empty", text);
  unsigned long port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535)
      return make_error("parse listen address", "the port must be a number 0..65535", text);
    port = port * 10 + static_cast<unsigned>(c - '0');
  }
  if (port > 65535)
    return make_error("parse listen address", "the port must be a number 0..65535", text);
  address.port = static_cast<unsigned short>(port);
  return address;
}

Result<void> validate(const config::HostdConfig& c) {
  auto listen = parse_listen_address(c.listen());
  if (!listen) return std::move(listen).error().with_context("checking listen");
  auto check_absolute = [](const std::string& field, const std::string& value) -> Result<void> {
    if (!std::filesystem::path(value).is_absolute())
      return make_error("check configuration", "must be an absolute path", field + " = " + value);
    return {};
  };
  for (auto [field, value] :
       {std::pair{"state_dir", c.state_dir()}, std::pair{"images_dir", c.images_dir()},
        std::pair{"runtime_dir", c.runtime_dir()}, std::pair{"shm_dir", c.shm_dir()}}) {
    auto checked = check_absolute(field, value);
    if (!checked) return checked;
  }
  if (c.default_vcpus() > c.max_vcpus())
    return make_error("check configuration", "default_vcpus is larger than max_vcpus");
  if (c.default_memory_mib() > c.max_memory_mib())
    return make_error("check configuration", "default_memory_mib is larger than max_memory_mib");
  if (c.default_memory_mib() < 128)
    return make_error("check configuration", "default_memory_mib must be at least 128");
  if (const double ratio = c.admission().memory_overcommit(); !(ratio >= 0.1 && ratio <= 100))
    return make_error("check configuration",
                      "admission.memory_overcommit must be between 0.1 and 100 (1.0: no "
                      "overcommit)",
                      std::to_string(ratio));
  if (const double ratio = c.admission().disk_overcommit(); !(ratio >= 0.1 && ratio <= 100))
    return make_error("check configuration",
                      "admission.disk_overcommit must be between 0.1 and 100 (1.0: no "
                      "overcommit)",
                      std::to_string(ratio));
  if (c.tcg_thread() != "single" && c.tcg_thread() != "multi")
    return make_error("check configuration",
                      "tcg_thread must be \"single\" (every vCPU of a VM on one host thread) or "
                      "\"multi\" (a thread per vCPU)",
                      "tcg_thread = " + c.tcg_thread());
  if (auto checked = check_absolute("templates_dir", c.templates_dir()); !checked) return checked;
  if (auto checked = check_absolute("spaces_dir", c.spaces_dir()); !checked) return checked;
  if (c.sandbox_domain().size() > 200 ||
      c.sandbox_domain().find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") !=
          std::string::npos)
    return make_error("check configuration",
                      "sandbox_domain is a DNS name of at most 200 characters of [a-z0-9.-] "
                      "(e.g. \"sbx.example.com\")",
                      c.sandbox_domain());
  for (int i = 0; i < c.pools_size(); ++i) {
    const auto& pool = c.pools(i);
    const std::string where =
        "pools[" + std::to_string(i) + "] (template " + pool.template_() + ")";
    auto bad = [&](const std::string& what) {
      return make_error("check configuration", what, where);
    };
    if (pool.template_().size() > 24 ||
        pool.template_().find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") !=
            std::string::npos)
      return bad("a template name is 1 to 24 characters of [a-z0-9-]");
    if (pool.vcpus() > c.max_vcpus()) return bad("vcpus is larger than max_vcpus");
    if (pool.memory_mib() < 128 || pool.memory_mib() > c.max_memory_mib())
      return bad("memory_mib must be 128..max_memory_mib");
    if (pool.min_ready() > pool.max()) return bad("min_ready is larger than max");
    for (int j = 0; j < i; ++j) {
      const auto& other = c.pools(j);
      if (other.template_() == pool.template_() && other.vcpus() == pool.vcpus() &&
          other.memory_mib() == pool.memory_mib())
        return bad("a second pool for the same template and size; merge them");
    }
    for (const auto& module : pool.preload_modules()) {
      const bool plain = !module.empty() && module.front() != '.' && module.back() != '.' &&
                         module.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU"
                                                  "VWXYZ0123456789_.") == std::string::npos;
      if (!plain) return bad("preload_modules: \"" + module + "\" is not a module name");
    }
  }
  if (!parse_tier(c.default_key_tier()))
    return make_error("check configuration",
                      std::string("default_key_tier must be one of ") + kTierNames,
                      "default_key_tier = " + c.default_key_tier());
  if (const auto& removed = c.keys().removed_key_sandboxes();
      removed != "destroy" && removed != "keep")
    return make_error("check configuration",
                      "keys.removed_key_sandboxes must be \"destroy\" or \"keep\"",
                      "keys.removed_key_sandboxes = " + removed);
  if (!log::parse_level(c.log_level()))
    return make_error("check configuration", std::string("log_level must be ") + log::kLevelNames,
                      "log_level = " + c.log_level());
  if (auto network = bridge_config(c); !network) return std::move(network).error();
  return {};
}

Result<config::HostdConfig> load_config(const std::optional<std::filesystem::path>& file,
                                        const ConfigOverrides& overrides) {
  config::HostdConfig config;
  if (file) {
    std::ifstream in(*file);
    if (!in) return sys_error("open configuration", file->string());
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = parse_config(text.str(), file->extension() == ".json");
    if (!parsed) return std::move(parsed).error().with_context("reading " + file->string());
    config = std::move(parsed.value());
  }
  if (overrides.listen) config.set_listen(*overrides.listen);
  if (overrides.state_dir) config.set_state_dir(*overrides.state_dir);
  if (overrides.images_dir) config.set_images_dir(*overrides.images_dir);
  if (overrides.log_level) config.set_log_level(*overrides.log_level);
  apply_defaults(config);
  auto valid = validate(config);
  if (!valid) return std::move(valid).error();
  return config;
}

} // namespace vesicle::hostd
