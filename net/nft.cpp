#include "net/nft.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <nftables/libnftables.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "common/unique_fd.hpp"

namespace vesicle::net {
namespace {

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  return text;
}

// The one thread every libnftables call runs on, with a descriptor table of
// its own (unshare(CLONE_FILES), the inherited copies closed).
//
// Why: libnftables 1.0.6 waits for the kernel's answers with select(), and
// glibc aborts the process ("bit out of range 0 - FD_SETSIZE on fd_set")
// when the netlink socket's number is 1024 or more. hostd holds several
// descriptors per sandbox, so past ~100 sandboxes with networking every new
// socket got such a number and hostd died (density_bench, 2026-12-06).
// In a table of its own the sockets count only libnftables' own: a few
// per open context. It also serialises the calls, as libnftables' process-wide
// state (an interface cache, one-time init) needs.
class NftThread {
public:
  static NftThread& get() {
    // Never joined: it lives as long as the process. A child made by
    // fork() has no such thread (only the forking one is copied), so it
    // starts its own at its first call.
    static std::once_flag registered;
    std::call_once(registered,
                   [] { ::pthread_atfork(nullptr, nullptr, [] { instance() = nullptr; }); });
    std::lock_guard lock(creating());
    if (!instance()) instance() = new NftThread;
    return *instance();
  }

  // Runs `job` on the thread and waits for it.
  template <class F> auto run(F job) -> std::invoke_result_t<F&> {
    using R = std::invoke_result_t<F&>;
    std::packaged_task<R()> task(std::move(job));
    auto done = task.get_future();
    {
      std::lock_guard lock(mutex_);
      jobs_.emplace_back([&task] { task(); });
    }
    wake_.notify_one();
    return done.get();
  }

  // The namespace the thread returns to after working in another.
  int home_netns() const { return home_.get(); }

private:
  NftThread() {
    std::promise<void> ready;
    auto started = ready.get_future();
    std::thread([this, &ready] {
      // A table of its own, holding nothing of hostd's (closing these
      // copies leaves hostd's descriptors open).
      if (::unshare(CLONE_FILES) == 0) ::close_range(3, ~0U, 0);
      home_.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
      ready.set_value();
      loop();
    }).detach();
    started.wait();
  }

  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  static NftThread*& instance() {
    static NftThread* thread = nullptr;
    return thread;
  }
  static std::mutex& creating() {
    static std::mutex mutex;
    return mutex;
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  UniqueFd home_;
};

// Runs fn on the nft thread inside the namespace `netns_fd` (a descriptor
// in that thread's table), then takes the thread home again.
template <class F> auto in_context_netns(int netns_fd, F fn) -> std::invoke_result_t<F&> {
  auto& thread = NftThread::get();
  return thread.run([&]() -> std::invoke_result_t<F&> {
    if (::setns(netns_fd, CLONE_NEWNET) != 0) return sys_error("setns", "the nft context's netns");
    auto result = fn();
    (void)::setns(thread.home_netns(), CLONE_NEWNET);
    return result;
  });
}

} // namespace

Nft::~Nft() {
  NftThread::get().run([this] {
    nft_ctx_free(ctx_);
    ::close(netns_fd_);
  });
}

Result<std::unique_ptr<Nft>> Nft::open(std::string namespace_label) {
  // The caller's namespace, named by its thread: the nft thread joins it to
  // open the context there (the socket is bound to it for good).
  const std::string caller_ns =
      "/proc/self/task/" + std::to_string(::syscall(SYS_gettid)) + "/ns/net";
  return NftThread::get().run([&]() -> Result<std::unique_ptr<Nft>> {
    UniqueFd netns(::open(caller_ns.c_str(), O_RDONLY | O_CLOEXEC));
    if (!netns) return sys_error("open", caller_ns);
    if (::setns(netns.get(), CLONE_NEWNET) != 0) return sys_error("setns", namespace_label);
    nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    (void)::setns(NftThread::get().home_netns(), CLONE_NEWNET);
    if (!ctx)
      return make_error("nft_ctx_new", "could not open a netfilter socket", namespace_label);
    nft_ctx_buffer_output(ctx);
    nft_ctx_buffer_error(ctx);
    return std::unique_ptr<Nft>(new Nft(ctx, netns.release(), std::move(namespace_label)));
  });
}

Result<std::string> Nft::run(std::string_view script) {
  return in_context_netns(netns_fd_, [&]() -> Result<std::string> {
    std::string text(script);
    int rc = nft_run_cmd_from_buffer(ctx_, text.c_str());
    std::string output = nft_ctx_get_output_buffer(ctx_);
    std::string errors = trim(nft_ctx_get_error_buffer(ctx_));
    if (rc != 0)
      return make_error("nft", errors.empty() ? "failed without a message" : errors,
                        "in " + label_);
    return output;
  });
}

Result<void> Nft::check(std::string_view script) {
  return in_context_netns(netns_fd_, [&]() -> Result<void> {
    std::string text(script);
    nft_ctx_set_dry_run(ctx_, true);
    int rc = nft_run_cmd_from_buffer(ctx_, text.c_str());
    nft_ctx_set_dry_run(ctx_, false);
    nft_ctx_get_output_buffer(ctx_);
    std::string errors = trim(nft_ctx_get_error_buffer(ctx_));
    if (rc != 0) return make_error("nft --check", errors, "in " + label_);
    return Result<void>{};
  });
}

} // namespace vesicle::net
