#include "hostd/e2b_store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "common/unique_fd.hpp"

namespace vesicle::hostd::e2b {

namespace {

constexpr std::uint32_t kVersion = 1;
// A table larger than this is not one hostd wrote.
constexpr std::size_t kMaxTableBytes = 64u << 20;

StoredSandbox stored(const Sandbox& sandbox) {
  StoredSandbox out;
  out.set_id(sandbox.id);
  out.set_owner(sandbox.owner);
  out.set_frozen_vid(sandbox.frozen_vid);
  out.set_space_id(sandbox.space_id);
  out.set_token(sandbox.token);
  out.set_traffic_token(sandbox.traffic_token);
  out.set_public_traffic(sandbox.public_traffic);
  out.set_template_id(sandbox.template_id);
  out.mutable_metadata()->insert(sandbox.metadata.begin(), sandbox.metadata.end());
  out.mutable_env_vars()->insert(sandbox.env_vars.begin(), sandbox.env_vars.end());
  out.set_started_ms(sandbox.started_ms);
  out.set_end_ms(sandbox.end_ms);
  out.set_vcpus(sandbox.vcpus);
  out.set_memory_mib(sandbox.memory_mib);
  out.set_disk_mib(sandbox.disk_mib);
  return out;
}

std::shared_ptr<Sandbox> restored(const StoredSandbox& in) {
  auto out = std::make_shared<Sandbox>();
  out->id = in.id();
  out->owner = in.owner();
  out->frozen_vid = in.frozen_vid();
  out->space_id = in.space_id();
  out->token = in.token();
  out->traffic_token = in.traffic_token();
  out->public_traffic = in.public_traffic();
  out->template_id = in.template_id();
  out->metadata.insert(in.metadata().begin(), in.metadata().end());
  out->env_vars.insert(in.env_vars().begin(), in.env_vars().end());
  out->started_ms = in.started_ms();
  out->end_ms = in.end_ms();
  out->vcpus = in.vcpus();
  out->memory_mib = in.memory_mib();
  out->disk_mib = in.disk_mib();
  return out;
}

Result<void> write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("write", path);
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

} // namespace

std::string table_path(const std::string& state_dir) {
  return state_dir + "/e2b-sandboxes.json";
}

Result<void> save_table(const std::string& path,
                        const std::map<std::string, std::shared_ptr<Sandbox>>& sandboxes) {
  StoredTable table;
  table.set_version(kVersion);
  for (const auto& [id, sandbox] : sandboxes)
    if (sandbox->vid.empty() && !sandbox->space_id.empty())
      *table.add_sandboxes() = stored(*sandbox);
  const std::string text = print(table, true) + "\n";
  const std::string temporary = path + ".tmp";
  UniqueFd fd(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return sys_error("create", temporary).with_context("saving the E2B table");
  auto written = write_all(fd.get(), text, temporary);
  if (!written || ::fsync(fd.get()) != 0) {
    auto error = written ? sys_error("fsync", temporary) : std::move(written).error();
    ::unlink(temporary.c_str());
    return error.with_context("saving the E2B table");
  }
  fd.reset();
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    auto error = sys_error("rename", temporary + " to " + path);
    ::unlink(temporary.c_str());
    return error.with_context("saving the E2B table");
  }
  UniqueFd dir(::open(std::filesystem::path(path).parent_path().c_str(),
                      O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  return {};
}

Result<std::map<std::string, std::shared_ptr<Sandbox>>> load_table(const std::string& path) {
  std::map<std::string, std::shared_ptr<Sandbox>> out;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT) return out;
    return sys_error("open", path).with_context("loading the E2B table");
  }
  std::string text;
  char buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("read", path).with_context("loading the E2B table");
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > kMaxTableBytes)
      return make_error("load the E2B table", "larger than 64 MiB; not a table hostd wrote", path);
  }
  StoredTable table;
  if (auto parsed = parse(text, table); !parsed)
    return std::move(parsed).error().with_context("loading the E2B table " + path +
                                                  " (move it away to start without it)");
  if (table.version() != kVersion)
    return make_error("load the E2B table",
                      "version " + std::to_string(table.version()) + ", this hostd reads " +
                          std::to_string(kVersion),
                      path);
  for (const auto& entry : table.sandboxes()) {
    if (entry.id().empty() || entry.space_id().empty() || entry.token().empty()) continue;
    out[entry.id()] = restored(entry);
  }
  return out;
}

} // namespace vesicle::hostd::e2b
