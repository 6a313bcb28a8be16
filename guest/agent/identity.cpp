#include "guest/agent/identity.hpp"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>

#include "common/unique_fd.hpp"

// Linux 4.17+; older userspace headers lack the name.
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

namespace vesicle::agent {

namespace {

bool is_label_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

bool is_lower_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// Printable for an error message: the hostname came from the host, but a
// message with raw control bytes in it helps nobody.
std::string quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text.substr(0, 80)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '"' && c != '\\') {
      out.push_back(c);
    } else {
      static const char* digits = "0123456789abcdef";
      out += "\\x";
      out.push_back(digits[byte >> 4]);
      out.push_back(digits[byte & 15]);
    }
  }
  if (text.size() > 80) out += "...";
  return out + "\"";
}

std::optional<Error> add_entropy(std::string_view entropy) {
  const UniqueFd random(::open("/dev/urandom", O_WRONLY | O_CLOEXEC));
  if (!random) return sys_error("open", "/dev/urandom").with_context("adding the host's entropy");
  // rand_pool_info ends in a flexible array; build it in 32-bit words so
  // the buffer is aligned for it.
  std::vector<std::uint32_t> words(2 + (entropy.size() + 3) / 4, 0);
  auto* pool = reinterpret_cast<rand_pool_info*>(words.data());
  pool->entropy_count = static_cast<int>(entropy.size() * 8);
  pool->buf_size = static_cast<int>(entropy.size());
  std::memcpy(pool->buf, entropy.data(), entropy.size());
  if (::ioctl(random.get(), RNDADDENTROPY, pool) != 0) {
    return sys_error("ioctl RNDADDENTROPY", "/dev/urandom")
        .with_context("adding the host's entropy");
  }
  // Without this the new entropy only reaches getrandom() at the CRNG's next
  // scheduled reseed (up to a minute later); until then every clone would
  // keep producing the snapshot's stream.
  if (::ioctl(random.get(), RNDRESEEDCRNG) != 0) {
    return sys_error("ioctl RNDRESEEDCRNG", "/dev/urandom")
        .with_context("reseeding the kernel CRNG");
  }
  return std::nullopt;
}

std::optional<Error> set_clock(std::int64_t unix_time_ns) {
  timespec now{};
  now.tv_sec = static_cast<time_t>(unix_time_ns / 1000000000);
  now.tv_nsec = static_cast<long>(unix_time_ns % 1000000000);
  if (::clock_settime(CLOCK_REALTIME, &now) != 0) {
    return sys_error("clock_settime", "CLOCK_REALTIME").with_context("setting the clock");
  }
  return std::nullopt;
}

std::optional<Error> set_hostname(const std::string& hostname) {
  if (::sethostname(hostname.data(), hostname.size()) != 0) {
    return sys_error("sethostname", quoted(hostname)).with_context("setting the hostname");
  }
  return std::nullopt;
}

} // namespace

std::string check_hostname(std::string_view hostname) {
  if (hostname.empty()) return "hostname is empty; give 1 to 64 characters";
  if (hostname.size() > kMaxHostnameBytes) {
    return "hostname " + quoted(hostname) + " has " + std::to_string(hostname.size()) +
           " characters; the most is " + std::to_string(kMaxHostnameBytes);
  }
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = hostname.find('.', start);
    const std::string_view label = hostname.substr(
        start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty()) {
      return "hostname " + quoted(hostname) +
             " has an empty label (a leading, trailing or doubled dot)";
    }
    if (label.size() > 63) {
      return "hostname " + quoted(hostname) + " has a label of " + std::to_string(label.size()) +
             " characters; RFC 1123 allows at most 63";
    }
    for (char c : label) {
      if (!is_label_char(c)) {
        return "hostname " + quoted(hostname) +
               " has a character outside letters, digits, '-' and '.' (RFC 1123)";
      }
    }
    if (label.front() == '-' || label.back() == '-') {
      return "hostname " + quoted(hostname) +
             " has a label that starts or ends with '-', which RFC 1123 forbids";
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return {};
}

std::string check_machine_id(std::string_view machine_id) {
  if (machine_id.size() != 32) {
    return "machine_id " + quoted(machine_id) + " has " + std::to_string(machine_id.size()) +
           " characters; it must be 32 lowercase hexadecimal digits (machine-id(5))";
  }
  bool all_zero = true;
  for (char c : machine_id) {
    if (!is_lower_hex(c)) {
      return "machine_id " + quoted(machine_id) +
             " has a character that is not a lowercase hexadecimal digit (machine-id(5))";
    }
    all_zero = all_zero && c == '0';
  }
  if (all_zero)
    return "machine_id is all zeros, which machine-id(5) reserves; generate a random one";
  return {};
}

std::string check_identity(const guest::RefreshIdentity& identity) {
  const std::size_t entropy = identity.entropy().size();
  if (entropy < kMinIdentityEntropyBytes || entropy > kMaxIdentityEntropyBytes) {
    return "entropy has " + std::to_string(entropy) + " bytes; give " +
           std::to_string(kMinIdentityEntropyBytes) + " to " +
           std::to_string(kMaxIdentityEntropyBytes) + " fresh bytes from the host's CSPRNG";
  }
  if (identity.unix_time_ns() < kMinIdentityUnixTimeNs) {
    return "unix_time_ns " + std::to_string(identity.unix_time_ns()) +
           " is before 2000-01-01; send the host's CLOCK_REALTIME in nanoseconds (is the host "
           "clock set?)";
  }
  if (auto problem = check_hostname(identity.hostname()); !problem.empty()) return problem;
  if (auto problem = check_machine_id(identity.machine_id()); !problem.empty()) return problem;
  return {};
}

Result<void> write_machine_id(const std::string& path, std::string_view machine_id) {
  const std::string temporary = path + ".vesicle-new";
  const std::string text = std::string(machine_id) + "\n";
  // A leftover from an interrupted refresh, or a symlink planted there, is
  // replaced rather than followed.
  ::unlink(temporary.c_str());
  UniqueFd fd(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444));
  if (!fd) return sys_error("create", temporary).with_context("writing the machine-id");
  // machine-id(5) files are world-readable whatever the umask.
  if (::fchmod(fd.get(), 0444) != 0 ||
      ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    const int err = errno;
    ::unlink(temporary.c_str());
    return sys_error("write", temporary, err).with_context("writing the machine-id");
  }
  // No fsync: this runs on the sandbox-create path, and a machine that
  // crashes before writeback boots again from its snapshot, whose refresh
  // writes the id again. ext4 (auto_da_alloc) flushes a file renamed over
  // another with the rename, so a crash never leaves an empty file either.
  fd.reset();
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temporary.c_str());
    return sys_error("rename", temporary + " to " + path, err)
        .with_context("writing the machine-id");
  }
  return {};
}

std::vector<Error> apply_identity(const guest::RefreshIdentity& identity,
                                  const IdentityTargets& targets) {
  std::vector<Error> failures;
  auto note = [&failures](std::optional<Error> error) {
    if (error) failures.push_back(std::move(*error));
  };
  if (targets.kernel) {
    // Entropy first: whatever reads randomness after this, in this request
    // or later, reads the clone's own stream.
    note(add_entropy(identity.entropy()));
    note(set_clock(identity.unix_time_ns()));
    note(set_hostname(identity.hostname()));
  }
  if (!targets.machine_id_path.empty()) {
    if (auto written = write_machine_id(targets.machine_id_path, identity.machine_id()); !written) {
      failures.push_back(std::move(written).error());
    }
  }
  return failures;
}

} // namespace vesicle::agent
