#include "guest/agent/files.hpp"

#include <fcntl.h>
#include <limits.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "guest/agent/events.hpp"
#include "guest/agent/spawn.hpp"
#include "messages/framing.hpp"

namespace vesicle::agent {

namespace {

std::string shown(const std::string& path) {
  return "\"" + clean_utf8(path, 4096) + "\"";
}

guest::Event not_a_file(const std::string& path, const struct stat& st) {
  const char* what = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISFIFO(st.st_mode) ? "a FIFO"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                                            : "not a regular file";
  return failure_event(guest::Failure::NOT_A_FILE, 0,
                       shown(path) + " is " + what + "; only regular files can be transferred");
}

std::string random_suffix() {
  unsigned char bytes[6] = {};
  if (::getrandom(bytes, sizeof bytes, GRND_NONBLOCK) != sizeof bytes) {
    // Early boot without entropy: uniqueness is all we need, and O_EXCL
    // catches a clash.
    const std::uint64_t now = monotonic_us() ^ static_cast<std::uint64_t>(::getpid());
    for (std::size_t i = 0; i < sizeof bytes; ++i)
      bytes[i] = static_cast<unsigned char>(now >> (8 * i));
  }
  char text[2 * sizeof bytes + 1];
  for (std::size_t i = 0; i < sizeof bytes; ++i)
    std::snprintf(text + 2 * i, 3, "%02x", bytes[i]);
  return text;
}

} // namespace

std::string check_path(const std::string& path) {
  if (path.empty()) return "path is empty; give an absolute path";
  if (path.find('\0') != std::string::npos) return "path holds a NUL byte";
  if (path.front() != '/') return "path " + shown(path) + " is not absolute; start it with '/'";
  if (path.size() >= PATH_MAX)
    return "path is longer than " + std::to_string(PATH_MAX - 1) + " bytes";
  return {};
}

// ---------------------------------------------------------------- Upload

Upload::~Upload() {
  remove_temporary();
}

void Upload::remove_temporary() {
  fd_.reset();
  if (!temporary_.empty()) {
    ::unlink(temporary_.c_str());
    temporary_.clear();
  }
}

void Upload::fail(guest::Event failure) {
  remove_temporary();
  finish(std::move(failure));
}

void Upload::begin(const guest::WriteFile& first) {
  if (auto problem = check_path(first.path()); !problem.empty()) {
    fail(failure_event(guest::Failure::BAD_REQUEST, 0, "write_file: " + problem));
    return;
  }
  target_ = first.path();
  const std::size_t slash = target_.rfind('/');
  const std::string parent = slash == 0 ? "/" : target_.substr(0, slash);
  const std::string name = target_.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    fail(failure_event(guest::Failure::BAD_REQUEST, 0,
                       "write_file: " + shown(target_) + " does not name a file"));
    return;
  }
  mode_ = first.mode() == 0 ? 0644 : (first.mode() & 07777);

  if (first.make_parents()) {
    if (auto made = make_directories(parent); !made) {
      fail(failure_from_error(std::move(made).error().with_context(
          "write_file: making the parents of " + shown(target_))));
      return;
    }
  }
  struct stat st {};
  if (::stat(parent.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      fail(failure_event(guest::Failure::NOT_FOUND, err,
                         "write_file: the folder " + shown(parent) +
                             " does not exist; set make_parents to create it"));
    } else {
      fail(failure_from_error(sys_error("stat", parent, err).with_context("write_file")));
    }
    return;
  }
  if (!S_ISDIR(st.st_mode)) {
    fail(failure_event(guest::Failure::NOT_FOUND, ENOTDIR,
                       "write_file: " + shown(parent) + " is not a directory"));
    return;
  }
  if (::stat(target_.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      fail(not_a_file(target_, st));
      return;
    }
  } else if (errno != ENOENT) {
    fail(failure_from_error(sys_error("stat", target_).with_context("write_file")));
    return;
  }

  // Beside the target, so the commit is a rename within one filesystem.
  // The name is cut so the temporary stays under NAME_MAX.
  const std::string stem = name.substr(0, 200);
  for (int attempt = 0; attempt < 8 && !fd_; ++attempt) {
    std::string candidate =
        (parent == "/" ? "" : parent) + "/." + stem + ".vesicle-upload-" + random_suffix();
    fd_ = UniqueFd(
        ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd_) {
      temporary_ = std::move(candidate);
    } else if (errno != EEXIST) {
      fail(failure_from_error(
          sys_error("create", candidate)
              .with_context("write_file: opening a temporary file for " + shown(target_))));
      return;
    }
  }
  if (!fd_) {
    fail(
        failure_event(guest::Failure::IO, EEXIST,
                      "write_file: could not find a free temporary name beside " + shown(target_)));
  }
}

void Upload::take(const guest::WriteFile& chunk) {
  if (finished()) return;
  const std::string& data = chunk.data();
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd_.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      if (err == ENOSPC || err == EDQUOT) {
        fail(failure_event(guest::Failure::NO_SPACE, err,
                           "write_file: the disk is full writing " + shown(target_) + " after " +
                               std::to_string(size_ + done) +
                               " bytes; free space or ask for a larger disk"));
      } else {
        fail(failure_from_error(
            sys_error("write", temporary_, err).with_context("write_file " + shown(target_))));
      }
      return;
    }
    done += static_cast<std::size_t>(n);
  }
  size_ += data.size();
  if (chunk.last()) commit();
}

void Upload::commit() {
  const auto failed = [&](const char* op, const std::string& subject) {
    const int err = errno;
    if (err == ENOSPC || err == EDQUOT) {
      fail(failure_event(guest::Failure::NO_SPACE, err,
                         "write_file: the disk is full committing " + shown(target_)));
    } else if (err == EISDIR) {
      fail(failure_event(guest::Failure::NOT_A_FILE, err,
                         "write_file: " + shown(target_) + " became a directory meanwhile"));
    } else {
      fail(failure_from_error(
          sys_error(op, subject, err).with_context("write_file " + shown(target_))));
    }
  };
  if (::fchmod(fd_.get(), mode_) != 0) return failed("fchmod", temporary_);
  // Durable before visible: after a crash the target is either the old
  // file or the complete new one.
  if (::fsync(fd_.get()) != 0) return failed("fsync", temporary_);
  if (::close(fd_.release()) != 0) return failed("close", temporary_);
  if (::rename(temporary_.c_str(), target_.c_str()) != 0) return failed("rename", target_);
  temporary_.clear();
  const std::size_t slash = target_.rfind('/');
  const std::string parent = slash == 0 ? "/" : target_.substr(0, slash);
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  finish(done_event(size_));
}

void Upload::cancel() {
  if (finished()) return;
  fail(failure_event(guest::Failure::IO, ECANCELED,
                     "write_file " + shown(target_) + " was cancelled; the target is unchanged"));
}

// ---------------------------------------------------------------- Download

void Download::begin(const guest::ReadFile& request) {
  if (auto problem = check_path(request.path()); !problem.empty()) {
    finish(failure_event(guest::Failure::BAD_REQUEST, 0, "read_file: " + problem));
    return;
  }
  path_ = request.path();
  // stat first so that a FIFO or device is refused without being opened:
  // opening some devices has effects of its own.
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      finish(failure_event(guest::Failure::NOT_FOUND, err,
                           "read_file: " + shown(path_) + " does not exist"));
    } else {
      finish(failure_from_error(sys_error("stat", path_, err).with_context("read_file")));
    }
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    finish(not_a_file(path_, st));
    return;
  }
  // O_NONBLOCK: should the path be swapped for a FIFO after the stat, the
  // open still returns at once and the fstat below refuses it.
  fd_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd_) {
    const int err = errno;
    if (err == ENOENT) {
      finish(failure_event(guest::Failure::NOT_FOUND, err,
                           "read_file: " + shown(path_) + " does not exist"));
    } else {
      finish(failure_from_error(sys_error("open", path_, err).with_context("read_file")));
    }
    return;
  }
  if (::fstat(fd_.get(), &st) != 0) {
    finish(failure_from_error(sys_error("fstat", path_).with_context("read_file")));
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    finish(not_a_file(path_, st));
    return;
  }
  mode_ = st.st_mode & 07777;
  position_ = request.offset();
  if (request.length() > 0) {
    bounded_ = true;
    end_ = request.offset() + request.length();
    if (end_ < position_) end_ = UINT64_MAX; // overflow: read to the end
  }
  pump();
}

void Download::on_room() {
  pump();
}

void Download::pump() {
  static char buffer[wire::kMaxChunkBytes];
  while (!finished()) {
    if (!orphaned() && !agent_.channel().has_room()) {
      agent_.channel().wait_for_room(this);
      return;
    }
    std::size_t want = sizeof buffer;
    if (bounded_ && end_ - position_ < want) want = static_cast<std::size_t>(end_ - position_);
    ssize_t n = 0;
    if (want > 0) {
      n = ::pread(fd_.get(), buffer, want, static_cast<off_t>(position_));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        finish(failure_from_error(sys_error("read", path_).with_context("read_file")));
        return;
      }
    }
    if (n == 0) {
      struct stat st {};
      const std::uint64_t size =
          ::fstat(fd_.get(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : position_;
      // A read cut short by `length` is at end of file only if nothing
      // follows; /proc files report size 0 and end with a 0-byte read.
      const bool eof = want > 0 || position_ >= size;
      fd_.reset();
      finish(done_event(size, mode_, eof));
      return;
    }
    guest::Event event;
    event.set_file_data(buffer, static_cast<std::size_t>(n));
    emit(std::move(event));
    position_ += static_cast<std::uint64_t>(n);
  }
}

void Download::cancel() {
  if (finished()) return;
  agent_.channel().stop_waiting(this);
  fd_.reset();
  finish(
      failure_event(guest::Failure::IO, ECANCELED, "read_file " + shown(path_) + " was cancelled"));
}

} // namespace vesicle::agent
