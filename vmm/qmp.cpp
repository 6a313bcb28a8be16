#include "vmm/qmp.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "vmm/async.hpp"

namespace vesicle::vmm {

namespace {

using Socket = asio::local::stream_protocol::socket;
using detail::Clock;
using Reply = json::Value;

// A reply to ringbuf-read of a 64 KiB console in base64 is ~90 KB; nothing
// QEMU sends legitimately comes near this.
constexpr std::size_t kMaxLineBytes = 4u << 20;

class SocketQmpClient final : public QmpClient,
                              public std::enable_shared_from_this<SocketQmpClient> {
public:
  explicit SocketQmpClient(Socket socket, std::string path)
      : executor_(socket.get_executor()), socket_(std::move(socket)), path_(std::move(path)),
        buffer_(kMaxLineBytes), write_lock_(executor_) {}

  // Reads the greeting and sends qmp_capabilities before the reader starts,
  // so nothing else can interleave with the negotiation.
  asio::awaitable<Result<void>> handshake(Clock::time_point deadline) {
    auto greeting = co_await read_message_until(deadline);
    // QEMU 7.2 can send an event (a RESUME as the VM starts) on a connection
    // it has accepted before its greeting: the monitor is not yet in
    // negotiation mode then. A few of them are skipped; anything else first
    // is not QEMU's monitor.
    for (int skipped = 0; greeting && greeting->contains("event") && skipped < 8; ++skipped)
      greeting = co_await read_message_until(deadline);
    if (!greeting) co_return std::move(greeting).error();
    if (!greeting->contains("QMP")) {
      co_return make_error("QMP handshake", "expected a greeting, got " + greeting->dump(), path_);
    }
    start();
    // Arguments named, not built in the co_await expression: g++ 12
    // destroys braced temporaries there twice.
    json::Object no_arguments;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    auto negotiated = co_await execute("qmp_capabilities", std::move(no_arguments), left);
    if (!negotiated) co_return std::move(negotiated).error();
    co_return Result<void>{};
  }

  asio::awaitable<Result<json::Value>> execute(std::string command, json::Object arguments,
                                               std::chrono::milliseconds timeout) override {
    co_return co_await run(std::move(command), std::move(arguments), -1, timeout);
  }

  asio::awaitable<Result<json::Value>> execute_with_fd(std::string command, json::Object arguments,
                                                       int fd,
                                                       std::chrono::milliseconds timeout) override {
    if (fd < 0) co_return make_error("QMP " + command, "no file descriptor to pass", path_);
    co_return co_await run(std::move(command), std::move(arguments), fd, timeout);
  }

  void on_event(EventHandler handler) override { handler_ = std::move(handler); }
  bool connected() const override { return !closed_.has_value(); }
  void close() override { fail("closed by the host"); }

private:
  // Sends `command` (with `fd` attached when it is >= 0) and waits for its
  // reply.
  asio::awaitable<Result<json::Value>> run(std::string command, json::Object arguments, int fd,
                                           std::chrono::milliseconds timeout) {
    auto self = shared_from_this();
    if (closed_) co_return *closed_;
    const std::int64_t id = next_id_++;
    json::Object message{{"execute", json::Value(command)}, {"id", json::Value(id)}};
    if (!arguments.empty()) message.emplace("arguments", std::move(arguments));
    std::string line = json::Value(std::move(message)).dump() + "\n";

    auto inbox = std::make_shared<detail::Mailbox<Reply>>(executor_);
    pending_[id] = inbox;
    struct Forget {
      SocketQmpClient* client;
      std::int64_t id;
      ~Forget() { client->pending_.erase(id); }
    } forget{this, id};

    {
      co_await write_lock_.lock();
      detail::AsyncLockGuard guard(write_lock_);
      if (closed_) co_return *closed_;
      const boost::system::error_code ec = co_await write_line(line, fd);
      if (ec) {
        fail("writing to QMP failed: " + ec.message());
        co_return *closed_;
      }
    }
    auto reply = co_await inbox->receive(Clock::now() + timeout);
    if (!reply) {
      co_return make_error("QMP " + command,
                           "no reply within " + std::to_string(timeout.count()) + " ms", path_);
    }
    if (!*reply) co_return std::move(*reply).error().with_context("QMP " + command);
    const json::Value& value = reply->value();
    if (value.contains("error")) {
      const auto& error = value["error"];
      co_return make_error("QMP " + command,
                           error["class"].as_string() + ": " + error["desc"].as_string());
    }
    co_return value["return"];
  }

  // Writes `line`. With `fd` >= 0 the first sendmsg carries it: QEMU's
  // monitor keeps the fds that arrive with a command's bytes for that
  // command, so the fd must travel with these bytes and no others.
  asio::awaitable<boost::system::error_code> write_line(const std::string& line, int fd) {
    std::size_t sent = 0;
    while (fd >= 0) {
      const ssize_t n = send_with_fd(line, fd);
      if (n >= 0) {
        sent = static_cast<std::size_t>(n);
        break;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        co_return boost::system::error_code(errno, boost::system::system_category());
      boost::system::error_code ec;
      co_await socket_.async_wait(Socket::wait_write,
                                  asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return ec;
    }
    boost::system::error_code ec;
    if (sent < line.size()) {
      co_await asio::async_write(socket_, asio::buffer(line.data() + sent, line.size() - sent),
                                 asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return ec;
  }

  // One non-blocking sendmsg of `bytes` with `fd` as SCM_RIGHTS ancillary
  // data; the count sent, or -1 with errno.
  ssize_t send_with_fd(const std::string& bytes, int fd) {
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof(int));
    // MSG_DONTWAIT: the executor's thread never blocks on a full socket.
    return ::sendmsg(socket_.native_handle(), &message, MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  void start() {
    asio::co_spawn(
        executor_, [self = shared_from_this()] { return self->read_loop(); }, asio::detached);
  }

  void fail(const std::string& cause) {
    if (closed_) return;
    closed_ = make_error("QMP connection closed", cause, path_);
    boost::system::error_code ignored;
    socket_.close(ignored);
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, inbox] : pending)
      inbox->close(*closed_);
  }

  // One message; the timer closes the socket at the deadline so the read
  // cannot outlive it (used only during the handshake).
  asio::awaitable<Result<json::Value>> read_message_until(Clock::time_point deadline) {
    asio::steady_timer timer(executor_, deadline);
    auto expired = std::make_shared<bool>(false);
    timer.async_wait([self = shared_from_this(), expired](boost::system::error_code ec) {
      if (ec) return;
      *expired = true;
      boost::system::error_code ignored;
      self->socket_.cancel(ignored);
    });
    auto message = co_await read_message();
    timer.cancel();
    if (*expired) co_return make_error("QMP handshake", "no greeting from QEMU in time", path_);
    co_return message;
  }

  asio::awaitable<Result<json::Value>> read_message() {
    boost::system::error_code ec;
    const std::size_t n = co_await asio::async_read_until(
        socket_, buffer_, '\n', asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return make_error(
          "read QMP", ec == asio::error::eof ? "QEMU closed the monitor" : ec.message(), path_);
    }
    std::string line(asio::buffers_begin(buffer_.data()), asio::buffers_begin(buffer_.data()) + n);
    buffer_.consume(n);
    auto value = json::parse(line);
    if (!value) co_return std::move(value).error().with_context("reading QMP from " + path_);
    co_return value;
  }

  asio::awaitable<void> read_loop() {
    auto self = shared_from_this();
    while (!closed_) {
      auto message = co_await read_message();
      if (!message) {
        fail(message.error().message());
        break;
      }
      const json::Value& value = message.value();
      if (value.contains("event")) {
        if (handler_) handler_(value["event"].as_string(), value);
        continue;
      }
      auto it = pending_.find(value["id"].as_int(-1));
      if (it != pending_.end()) it->second->push(std::move(message.value()));
    }
  }

  asio::any_io_executor executor_;
  Socket socket_;
  std::string path_;
  asio::streambuf buffer_;
  detail::AsyncMutex write_lock_;
  std::unordered_map<std::int64_t, std::shared_ptr<detail::Mailbox<Reply>>> pending_;
  std::optional<Error> closed_;
  std::int64_t next_id_ = 1;
  EventHandler handler_;
};

} // namespace

asio::awaitable<Result<std::shared_ptr<QmpClient>>>
QmpClient::connect(asio::any_io_executor executor, std::filesystem::path socket_path,
                   std::chrono::steady_clock::time_point deadline, std::function<bool()> abandon) {
  const std::string path = socket_path.string();
  boost::system::error_code last_error;
  for (;;) {
    Socket socket(executor);
    boost::system::error_code ec;
    co_await socket.async_connect(asio::local::stream_protocol::endpoint(path),
                                  asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      auto client = std::make_shared<SocketQmpClient>(std::move(socket), path);
      auto shaken = co_await client->handshake(deadline);
      if (!shaken) co_return std::move(shaken).error();
      co_return std::shared_ptr<QmpClient>(std::move(client));
    }
    last_error = ec;
    // QEMU creates the socket a few hundred milliseconds after it starts.
    if (ec != asio::error::not_found && ec != boost::system::errc::no_such_file_or_directory &&
        ec != asio::error::connection_refused) {
      break;
    }
    if (Clock::now() >= deadline || (abandon && abandon())) break;
    asio::steady_timer pause(executor, std::chrono::milliseconds(20));
    co_await pause.async_wait(asio::use_awaitable);
  }
  co_return Error{
      last_error.value(), "connect", path, "QEMU's monitor socket did not accept a connection", {}};
}

} // namespace vesicle::vmm
