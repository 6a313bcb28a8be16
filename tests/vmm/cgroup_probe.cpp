// cgroup_test's probe: a program started inside a cgroup leaf the way the
// launcher starts QEMU (fork, "0" into the leaf's cgroup.procs, exec), that
// does what the leaf's limits must stop.
//
//   cgroup_probe memhog MIB  touches MIB MiB, 1 MiB at a time; prints "done"
//   cgroup_probe forks N     forks up to N children (they wait on stdin's
//                            pipe), prints "forked K" and, if a fork failed,
//                            " then <errno name>"
//   cgroup_probe wait        waits until stdin closes
//   cgroup_probe shmem MIB   fills a MIB MiB memfd (shared memory, like guest
//                            RAM), prints "held", waits until stdin closes
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

int memhog(long mib) {
  std::vector<char*> chunks;
  for (long i = 0; i < mib; ++i) {
    char* chunk = static_cast<char*>(std::malloc(1 << 20));
    if (!chunk) {
      std::printf("malloc failed at %ld MiB\n", i);
      return 1;
    }
    std::memset(chunk, 0x5a, 1 << 20); // touched: charged to the cgroup
    chunks.push_back(chunk);
  }
  std::printf("done\n");
  return 0;
}

int forks(long n) {
  int ready[2];
  if (pipe(ready) != 0) return 2;
  std::vector<pid_t> children;
  int failed = 0;
  for (long i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid < 0) {
      failed = errno;
      break;
    }
    if (pid == 0) {
      char byte;
      close(ready[1]);
      while (read(ready[0], &byte, 1) < 0 && errno == EINTR) {
      }
      _exit(0);
    }
    children.push_back(pid);
  }
  if (failed)
    std::printf("forked %zu then %s\n", children.size(), strerrorname_np(failed));
  else
    std::printf("forked %zu\n", children.size());
  std::fflush(stdout);
  close(ready[1]); // the children read EOF and exit
  for (pid_t pid : children)
    waitpid(pid, nullptr, 0);
  return 0;
}

int wait_for_stdin() {
  char byte;
  while (read(0, &byte, 1) != 0) {
  }
  return 0;
}

int shmem(long mib) {
  const int fd = memfd_create("cgroup-probe", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, mib << 20) != 0) return 2;
  std::vector<char> chunk(1 << 20, 0x5a);
  for (long i = 0; i < mib; ++i)
    if (pwrite(fd, chunk.data(), chunk.size(), i << 20) != static_cast<ssize_t>(chunk.size()))
      return 3;
  std::printf("held\n");
  std::fflush(stdout);
  return wait_for_stdin();
}

} // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "memhog" && argc == 3) return memhog(std::atol(argv[2]));
  if (command == "forks" && argc == 3) return forks(std::atol(argv[2]));
  if (command == "wait") return wait_for_stdin();
  if (command == "shmem" && argc == 3) return shmem(std::atol(argv[2]));
  std::fprintf(stderr, "usage: cgroup_probe memhog MIB | forks N | wait | shmem MIB\n");
  return 64;
}
