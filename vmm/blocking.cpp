#include "vmm/blocking.hpp"

namespace vesicle::vmm {

// Two threads: the host has few cores, and the work here waits on the
// kernel (unlink, rmdir, waitid) more than it computes. Never destroyed:
// work posted at exit (a VM destroyed by a static) must find it.
asio::thread_pool& blocking_pool() {
  static auto* threads = new asio::thread_pool(2);
  return *threads;
}

} // namespace vesicle::vmm
